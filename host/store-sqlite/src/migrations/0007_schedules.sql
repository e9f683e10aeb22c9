-- Schedules: a row per schedule, its definition and state as JSON, and the
-- columns the store reads or writes without them: when a round is due (an
-- index of due schedules), whether a buffered tick waits for `last_instance`
-- to end, and a version every change bumps (a round is committed only
-- against the version it read).
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    origin        TEXT NOT NULL,
    spec          TEXT NOT NULL,
    state         TEXT NOT NULL,
    due_at        INTEGER,
    waiting       INTEGER NOT NULL DEFAULT 0,
    last_instance TEXT,
    version       INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX schedules_due ON schedules (due_at) WHERE due_at IS NOT NULL;
-- The schedule and tick that started an instance (JSON), if one did.
ALTER TABLE instances ADD COLUMN scheduled_by TEXT;
