-- The query view: one row per command, keyed by the command id so that a
-- redelivered record is a no-op (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE timestamp_records (
    id              uuid        PRIMARY KEY,
    event_timestamp timestamptz NOT NULL,
    created_at      timestamptz NOT NULL
);
