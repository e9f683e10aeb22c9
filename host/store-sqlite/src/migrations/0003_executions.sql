-- Executions: every start, restart and continue-as-new of an instance gets
-- a new id. Episodes commit only to the execution they were computed for,
-- and a timer completes only a task of the execution that created it.
ALTER TABLE instances ADD COLUMN execution_id TEXT NOT NULL DEFAULT '';
UPDATE instances SET execution_id = lower(hex(randomblob(16)));

ALTER TABLE timers ADD COLUMN execution_id TEXT NOT NULL DEFAULT '';
UPDATE timers SET execution_id =
    (SELECT execution_id FROM instances WHERE instances.id = timers.instance_id);
