-- duro's schema on PostgreSQL: the same tables as on SQLite (see
-- host/store-sqlite/src/migrations), plus the leases that let several hosts
-- share the work. Text keys use the "C" collation so that ids order byte-wise,
-- as instance listings and their continuations expect.

CREATE TABLE components (
    digest     TEXT COLLATE "C" PRIMARY KEY,
    bytes      BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE instances (
    id               TEXT COLLATE "C" PRIMARY KEY,
    name             TEXT COLLATE "C" NOT NULL,
    status           TEXT COLLATE "C" NOT NULL,
    input            TEXT NOT NULL,
    output           TEXT,
    custom_status    TEXT,
    component        TEXT COLLATE "C" NOT NULL REFERENCES components (digest),
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    history_len      BIGINT NOT NULL,
    input_hash       BIGINT NOT NULL,
    execution_id     TEXT NOT NULL,
    parent_instance  TEXT,
    parent_execution TEXT,
    parent_task      BIGINT,
    -- The host stepping the instance, until when (renewed while it lives).
    lease_owner      TEXT,
    lease_until      BIGINT
);
CREATE INDEX instances_by_created ON instances (created_at, id);
CREATE INDEX instances_by_name ON instances (name, created_at, id);
CREATE INDEX instances_by_status ON instances (status, created_at, id);
CREATE INDEX instances_by_name_status ON instances (name, status, created_at, id);
CREATE INDEX instances_by_input ON instances (input_hash, name, created_at, id);
CREATE INDEX instances_by_lease ON instances (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE history (
    instance_id TEXT COLLATE "C" NOT NULL,
    seq         BIGINT NOT NULL,
    timestamp   BIGINT NOT NULL,
    event       TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

CREATE TABLE inbox (
    id          BIGSERIAL PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    message     TEXT NOT NULL,
    -- Terminate/suspend/resume, which reach a suspended instance.
    control     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL
);
CREATE INDEX inbox_by_instance ON inbox (instance_id, id);

CREATE TABLE timers (
    instance_id  TEXT COLLATE "C" NOT NULL,
    task         BIGINT NOT NULL,
    fire_at      BIGINT NOT NULL,
    execution_id TEXT NOT NULL,
    PRIMARY KEY (instance_id, task)
);
CREATE INDEX timers_by_due ON timers (fire_at);

CREATE TABLE activities (
    id           BIGSERIAL PRIMARY KEY,
    instance_id  TEXT COLLATE "C" NOT NULL,
    execution_id TEXT NOT NULL,
    task         BIGINT NOT NULL,
    name         TEXT NOT NULL,
    input        TEXT NOT NULL,
    retry        TEXT,
    attempt      BIGINT NOT NULL DEFAULT 1,
    first_at     BIGINT,
    run_at       BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT
);
CREATE INDEX activities_by_due ON activities (run_at, id);
CREATE INDEX activities_by_instance ON activities (instance_id, task);
CREATE INDEX activities_by_lease ON activities (lease_owner) WHERE lease_owner IS NOT NULL;
