-- Activities called by committed episodes and not finished yet: a worker
-- runs a row once `run_at` is reached; a failed attempt that may be retried
-- moves `run_at` on; the result goes into the instance's inbox and the row
-- goes, in one transaction.
CREATE TABLE activities (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id  TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    task         INTEGER NOT NULL,
    name         TEXT NOT NULL,
    input        TEXT NOT NULL,
    -- The retry policy as JSON, NULL for one attempt.
    retry        TEXT,
    -- The number of the next attempt, from 1.
    attempt      INTEGER NOT NULL DEFAULT 1,
    -- When the first attempt started (for the retry timeout).
    first_at     INTEGER,
    run_at       INTEGER NOT NULL
);
CREATE INDEX activities_by_due ON activities (run_at, id);
CREATE INDEX activities_by_instance ON activities (instance_id, task);
