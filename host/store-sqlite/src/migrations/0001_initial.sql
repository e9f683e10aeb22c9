-- Components by the digest of their bytes: an instance replays on exactly the
-- component it started with.
CREATE TABLE components (
    digest     TEXT PRIMARY KEY,
    bytes      BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL,
    input         TEXT NOT NULL,
    output        TEXT,
    custom_status TEXT,
    component     TEXT NOT NULL REFERENCES components (digest),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    history_len   INTEGER NOT NULL
);
CREATE INDEX instances_by_created ON instances (created_at, id);
CREATE INDEX instances_by_name ON instances (name, created_at);

CREATE TABLE history (
    instance_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    timestamp   INTEGER NOT NULL,
    event       TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;

CREATE TABLE inbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    message     TEXT NOT NULL,
    -- 1 for terminate/suspend/resume, which reach a suspended instance.
    control     INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE INDEX inbox_by_instance ON inbox (instance_id, id);

CREATE TABLE timers (
    instance_id TEXT NOT NULL,
    task        INTEGER NOT NULL,
    fire_at     INTEGER NOT NULL,
    PRIMARY KEY (instance_id, task)
);
CREATE INDEX timers_by_due ON timers (fire_at);
