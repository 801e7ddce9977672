-- The version at which a pipeline was created, or created again after a
-- deletion. It names the pipeline's consumer group: a pipeline applied
-- again under a deleted one's name is a new pipeline, and starts where its
-- definition says, not at the offsets the deleted one left in its group.
-- Rows already here keep 1, so that a pipeline running now keeps its group.
ALTER TABLE pipelines
    ADD COLUMN created_version integer NOT NULL DEFAULT 1
        CHECK (created_version > 0 AND created_version <= version);
