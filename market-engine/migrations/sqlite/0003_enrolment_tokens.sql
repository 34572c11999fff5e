-- Issue 13: one-time enrolment tokens, issued by `market-engine enrolment-token`.
-- Only the SHA-256 (hex) of a token is stored; a token enrols one participant and its gateway,
-- expires at `expires_at` (Unix seconds) and is used up (`used_at`) when the gateway is enrolled.
CREATE TABLE enrolment_tokens (
    token_sha256 TEXT PRIMARY KEY,
    participant TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
