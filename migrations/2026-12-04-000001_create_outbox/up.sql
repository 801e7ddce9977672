-- The transactional outbox of the command sides (accounts, shop). A command
-- inserts its events here in the transaction that writes its rows, so that an
-- event exists exactly when its rows committed; the outbox relay publishes
-- them to Kafka afterwards (at least once) and marks them published.
CREATE SCHEMA outbox;

-- The version of every aggregate that has had an event. A command takes its
-- aggregate's next version with an upsert on this row, which also locks it
-- until the command commits: two commands on one aggregate are serialised
-- and its versions are gapless in commit order. A rolled-back command
-- gives its version back with everything else.
CREATE TABLE outbox.aggregate_versions (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL CHECK (version > 0),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Events waiting to be published, and published ones until OUTBOX_RETENTION
-- has passed. `id` is only a tie-breaker: a sequence value is taken before a
-- transaction commits, so ids are not in commit order; the relay orders an
-- aggregate's events by aggregate_version.
CREATE TABLE outbox.events (
    id                bigserial   PRIMARY KEY,
    event_id          uuid        NOT NULL UNIQUE,
    aggregate_type    text        NOT NULL,
    aggregate_id      text        NOT NULL,
    aggregate_version bigint      NOT NULL CHECK (aggregate_version > 0),
    event_type        text        NOT NULL,
    correlation_id    text        NOT NULL,
    -- The record's value: the event envelope, exactly as published.
    payload           text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    published_at      timestamptz,
    UNIQUE (aggregate_type, aggregate_id, aggregate_version)
);

-- The relay's scan: unpublished events only.
CREATE INDEX outbox_events_unpublished ON outbox.events (id) WHERE published_at IS NULL;
-- The clean-up of published events.
CREATE INDEX outbox_events_published_at ON outbox.events (published_at) WHERE published_at IS NOT NULL;

-- Wakes the active relay (LISTEN outbox_events) when a transaction that
-- wrote events commits; PostgreSQL delivers the notification only then, and
-- only once per transaction. A relay that misses one finds the events at its
-- next poll (OUTBOX_POLL_INTERVAL) anyway.
CREATE FUNCTION outbox.notify_relay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_events_notify_relay AFTER INSERT ON outbox.events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_relay();

-- The last version of each aggregate that the relay has published. An event
-- is published only when it is the next version, so an aggregate's events
-- reach the topic in version (that is, commit) order even when a later
-- version became visible first.
CREATE TABLE outbox.published_versions (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
