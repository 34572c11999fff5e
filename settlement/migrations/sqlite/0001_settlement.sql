-- Settlement schema (SQLite). Signed envelopes are kept verbatim (payload, signature, key).
CREATE TABLE gateways (gateway TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE participants (participant TEXT PRIMARY KEY, public_key TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE readings (
    reading_key TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    device TEXT NOT NULL,
    participant TEXT NOT NULL,
    interval_start BIGINT NOT NULL,
    minutes BIGINT NOT NULL,
    sequence BIGINT NOT NULL,
    payload BLOB NOT NULL,
    signature BLOB NOT NULL,
    public_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    grid_import BIGINT NOT NULL,
    grid_export BIGINT NOT NULL,
    pv BIGINT NOT NULL,
    battery_discharge BIGINT NOT NULL,
    status TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX readings_by_interval ON readings (interval_start, minutes);
CREATE INDEX readings_by_digest ON readings (digest);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at BIGINT NOT NULL,
    source TEXT NOT NULL,
    reading_key TEXT,
    gateway TEXT,
    raw BLOB NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    resolved_at BIGINT
);
CREATE TABLE results (
    interval_key TEXT PRIMARY KEY,
    interval_start BIGINT NOT NULL,
    minutes BIGINT NOT NULL,
    body TEXT NOT NULL,
    settled BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE statements (
    interval_key TEXT NOT NULL,
    participant TEXT NOT NULL,
    interval_start BIGINT NOT NULL,
    net BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (interval_key, participant)
);
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    op_digest TEXT UNIQUE,
    block_height BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE blocks (
    height BIGINT PRIMARY KEY,
    interval_key TEXT NOT NULL UNIQUE,
    header BLOB NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    signature BLOB NOT NULL,
    public_key TEXT NOT NULL
);
CREATE TABLE lots (
    lot TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    origin_mint TEXT NOT NULL,
    parent_lot TEXT,
    initial BIGINT NOT NULL,
    remaining BIGINT NOT NULL,
    retired BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX lots_by_holder ON lots (holder);
CREATE TABLE withheld_mints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    interval_key TEXT NOT NULL,
    body TEXT NOT NULL,
    released BIGINT NOT NULL DEFAULT 0
);
