-- Issue 11: signed results, signed operating envelopes, operator limit overrides.
-- The market's signed attestation (JSON SignedEnvelope of a ResultAttestation) of each result's
-- exact body bytes; NULL for results cleared before signing existed (signed on first request).
ALTER TABLE results ADD COLUMN attestation TEXT;
-- One signed operating envelope per cleared interval and enrolled gateway (JSON SignedEnvelope).
CREATE TABLE envelopes (
    interval_start BIGINT NOT NULL,
    gateway TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (interval_start, gateway)
);
CREATE INDEX envelopes_by_gateway ON envelopes (gateway, interval_start);
-- Operator limit overrides (JSON LimitOverride in body; the window duplicated for queries).
CREATE TABLE limit_overrides (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    from_ts BIGINT NOT NULL,
    until_ts BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX limit_overrides_by_window ON limit_overrides (from_ts, until_ts);
