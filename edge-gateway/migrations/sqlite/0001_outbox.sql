-- The gateway's durable state: signed readings waiting for delivery, counters that must
-- survive restarts, and the interval history the bidding agent forecasts from.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,           -- = the reading's sequence number; delivery order
    idempotency_key TEXT NOT NULL UNIQUE,
    interval_start INTEGER NOT NULL,
    envelope TEXT NOT NULL,           -- JSON SignedEnvelope, exactly as published
    bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE signed_intervals (
    interval_start INTEGER PRIMARY KEY,
    sequence INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    deltas TEXT NOT NULL,             -- JSON Registers
    soc_permille INTEGER,
    flags INTEGER NOT NULL
);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
