-- Participants, gateways, signed orders, the topology and immutable interval results.
CREATE TABLE participants (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE gateways (
    gateway TEXT PRIMARY KEY,
    participant TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE,
    participant TEXT NOT NULL,
    nonce BIGINT NOT NULL,
    interval_start BIGINT NOT NULL,
    node TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    limit_price BIGINT NOT NULL,
    envelope TEXT NOT NULL,
    received_at TEXT NOT NULL,
    cancelled BIGINT NOT NULL DEFAULT 0,
    UNIQUE (participant, nonce)
);
CREATE INDEX orders_by_interval ON orders (interval_start, seq);
CREATE TABLE results (
    interval_start BIGINT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE topology (
    id BIGINT PRIMARY KEY,
    body TEXT NOT NULL
);
