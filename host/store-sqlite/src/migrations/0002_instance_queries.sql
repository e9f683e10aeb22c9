-- Instance queries that an index answers whatever the number of instances
-- (see store/listing.rs for which query uses which index).

-- A 64-bit hash of the canonical input, filled in by the migration code for
-- instances that exist already.
ALTER TABLE instances ADD COLUMN input_hash INTEGER NOT NULL DEFAULT 0;

DROP INDEX instances_by_name;
CREATE INDEX instances_by_name ON instances (name, created_at, id);
CREATE INDEX instances_by_status ON instances (status, created_at, id);
CREATE INDEX instances_by_name_status ON instances (name, status, created_at, id);
CREATE INDEX instances_by_input ON instances (input_hash, name, created_at, id);
