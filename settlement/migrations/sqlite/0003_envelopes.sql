-- Operating envelopes (issue 11): per home and interval, metered energy against the envelope
-- the market issued, written in the same transaction as the interval's statements; and the
-- market's signed attestation of each result when results are read signed.
CREATE TABLE compliance (
    interval_key TEXT NOT NULL,
    interval_start BIGINT NOT NULL,
    gateway TEXT NOT NULL,
    participant TEXT NOT NULL,
    excess_export BIGINT NOT NULL,
    excess_import BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (interval_key, gateway)
);
CREATE INDEX compliance_by_start ON compliance (interval_start);
CREATE INDEX compliance_by_participant ON compliance (participant, interval_start);
-- JSON of the market's SignedEnvelope over `gridmesh/result/v1`; `body` then holds the exact
-- signed body bytes. NULL for results read unsigned.
ALTER TABLE results ADD COLUMN attestation TEXT;
