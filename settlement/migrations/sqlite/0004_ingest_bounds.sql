-- Issue 14. A holder's token-operation nonce is used once per kind (`transfer`, `retire`): an
-- operation reusing it with other content (another amount, lot or recipient) is refused. The
-- nonce is the signed u64, stored as the BIGINT with the same bits.
CREATE TABLE token_nonces (
    holder TEXT NOT NULL,
    kind TEXT NOT NULL,
    nonce BIGINT NOT NULL,
    op_digest TEXT NOT NULL,
    PRIMARY KEY (holder, kind, nonce)
);
-- The quarantine is listed newest first, filtered by gateway, reason code or status; held
-- readings are looked up by gateway.
CREATE INDEX quarantine_by_gateway ON quarantine (gateway, id);
CREATE INDEX quarantine_by_code ON quarantine (code, id);
CREATE INDEX quarantine_by_status ON quarantine (status, id);
