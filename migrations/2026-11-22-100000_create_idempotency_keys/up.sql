-- The command side's memory of Idempotency-Key headers (the command role's
-- DATABASE_URL). A key's row is committed before its command is produced, so
-- that every retry of the key, from any command process, produces the same
-- command id and event timestamp; the record's place in the log is added
-- once the broker has acknowledged it (partition, log_offset, completed_at
-- stay NULL while the key is pending). A request holds the row's lock
-- (SELECT ... FOR UPDATE) while it produces: concurrent retries wait on it.
-- Rows older than IDEMPOTENCY_KEY_TTL are ignored and purged.
CREATE TABLE idempotency_keys (
    key                 text        PRIMARY KEY CHECK (char_length(key) BETWEEN 1 AND 128),
    command_id          uuid        NOT NULL,
    event_timestamp     timestamptz NOT NULL,
    -- The timestamp the request named; NULL for a command at the server's
    -- current time. A retry must name the same one.
    requested_timestamp timestamptz,
    partition           integer,
    log_offset          bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz,
    CHECK ((partition IS NULL) = (log_offset IS NULL)
       AND (partition IS NULL) = (completed_at IS NULL))
);

-- The purge finds expired keys without reading the whole table.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
