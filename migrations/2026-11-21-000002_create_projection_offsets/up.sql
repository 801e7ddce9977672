-- The next offset to apply per consumer group and partition, written in the
-- same transaction as the rows it covers. A batch below it has already been
-- applied and is skipped, so a redelivery never re-applies anything.
CREATE TABLE projection_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
