-- Pipeline definitions, versioned. `pipelines` holds each pipeline's
-- current version (a deleted pipeline keeps its row, marked deleted, so that
-- its versions go on counting if the name is used again); every version
-- ever applied, a deletion included, is a row of `pipeline_versions`.
CREATE TABLE pipelines (
    name       text        PRIMARY KEY CHECK (name ~ '^[a-z0-9-]{1,63}$'),
    version    integer     NOT NULL CHECK (version > 0),
    definition jsonb       NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- `change` numbers every change of every pipeline, in commit order (changes
-- are made one at a time, under a lock): a process that has seen change N
-- knows whether anything changed since with one index lookup,
-- `SELECT max(change) FROM pipeline_versions`.
CREATE TABLE pipeline_versions (
    name       text        NOT NULL REFERENCES pipelines (name),
    version    integer     NOT NULL CHECK (version > 0),
    change     bigint      NOT NULL UNIQUE CHECK (change > 0),
    definition jsonb       NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
