-- Issue 13: every key a participant has had and when it was valid (Unix seconds; valid_until
-- is exclusive and NULL for the latest key). A key rotation, signed by the key in force, closes
-- the latest period and opens the new key's; rotation_nonce (NULL for a registered key) is
-- never reused by the participant. Keys registered before rotation existed are valid from 0.
CREATE TABLE participant_keys (
    participant TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_from BIGINT NOT NULL,
    valid_until BIGINT,
    rotation_nonce BIGINT,
    PRIMARY KEY (participant, valid_from),
    UNIQUE (participant, rotation_nonce)
);
INSERT INTO participant_keys (participant, public_key, valid_from, valid_until)
    SELECT id, json_extract(body, '$.public_key'), 0, NULL FROM participants;
