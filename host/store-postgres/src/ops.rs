//! The statements of the PostgreSQL store, one function per operation, each
//! on a pooled connection or inside the caller's transaction. Every
//! statement goes through the connection's prepared-statement cache.

use deadpool_postgres::{GenericClient, Object, Transaction};
use duro_core::model::{
    ActivityCall, HistoryEntry, HistoryEvent, InboxEntry, Instance, InstanceQuery, Message, Millis,
    RuntimeStatus, input_hash,
};
use duro_core::schedule::ScheduleRow;
use duro_core::store::plan::{self, Write};
use duro_core::store::{
    ActivityFinish, ActivityWork, LoadedInstance, StoreCounts, StoreError, StoreResult, Version,
};
use duro_store_sql::listing::{self, SqlValue};
use duro_store_sql::rows::{self, InstanceRow, corrupt};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::backend;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The statements the workers and clients run besides listings (which
/// `listing` builds), named so that the query-plan test explains exactly
/// the text the store runs.
pub mod sql {
    /// A row if any message waits in the inbox of instance `$1`.
    pub const MESSAGES_WAIT: &str = "SELECT 1 FROM inbox WHERE instance_id = $1 LIMIT 1";
    /// What an episode starts from (`ops::loaded_from_row` reads it): the
    /// instance row, then its history as three arrays in `seq` order (none
    /// unless `$history_if`) and its inbox as two in `id` order, of the
    /// instance `$key` names; an empty set's arrays are NULL. One snapshot,
    /// one statement, whatever the number of instances `$from` yields.
    macro_rules! loaded {
        ($from:literal, $key:literal, $history_if:literal, $where:literal) => {
            concat!(
                "SELECT ",
                duro_store_sql::instance_columns!(),
                ", h.seqs, h.stamps, h.events, m.ids, m.messages ",
                $from,
                " LEFT JOIN LATERAL (SELECT array_agg(seq ORDER BY seq) AS seqs, \
                     array_agg(timestamp ORDER BY seq) AS stamps, \
                     array_agg(event ORDER BY seq) AS events \
                     FROM history WHERE instance_id = ",
                $key,
                " AND ",
                $history_if,
                ") h ON TRUE \
                 LEFT JOIN LATERAL (SELECT array_agg(inbox.id ORDER BY inbox.id) AS ids, \
                     array_agg(message ORDER BY inbox.id) AS messages \
                     FROM inbox WHERE instance_id = ",
                $key,
                ") m ON TRUE",
                $where
            )
        };
    }

    pub use duro_store_sql::rows::INSTANCE_COLUMNS;
    /// One instance row.
    pub const GET_INSTANCE: &str = concat!(
        "SELECT ",
        duro_store_sql::instance_columns!(),
        " FROM instances WHERE id = $1"
    );
    /// Lease up to $4 instances ($1 owner, $2 until): those whose lease
    /// expired by $3 (their host died), then ready ones nobody leases,
    /// oldest first; each from a partial index of the queue. The ready mark
    /// is cleared: a commit or a release sets it again if messages wait.
    /// The rows are updated by id from an array (`= ANY(ARRAY(…))`): an
    /// `IN (subquery)` lets the planner hash-join a sequential scan of the
    /// whole table, which it did under load. Each claimed instance comes
    /// back loaded (`loaded!`; its history only if at most $5 events
    /// long): its episode reads nothing more (`PgStore::load`). Its
    /// snapshot is the statement's: a message committed since waits
    /// for the next episode, and an episode another host committed since
    /// (an expired lease) makes this one's commit a conflict.
    pub const CLAIM_READY: &str = concat!(
        "WITH expired AS ( \
             SELECT instance_id FROM queue WHERE lease_owner IS NOT NULL AND lease_until < $3 \
             ORDER BY lease_until LIMIT $4 FOR UPDATE SKIP LOCKED), \
         ready AS ( \
             SELECT instance_id FROM queue WHERE ready_at IS NOT NULL AND lease_owner IS NULL \
             ORDER BY ready_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
             UPDATE queue SET lease_owner = $1, lease_until = $2, ready_at = NULL \
             WHERE instance_id = ANY(ARRAY( \
                 SELECT instance_id FROM expired UNION ALL SELECT instance_id FROM ready LIMIT $4)) \
             RETURNING instance_id) ",
        loaded!(
            "FROM claimed JOIN instances ON instances.id = claimed.instance_id",
            "claimed.instance_id",
            "instances.history_len <= $5",
            ""
        )
    );
    /// A new instance row; nothing if the id is taken.
    pub const INSERT_INSTANCE: &str = "INSERT INTO instances (id, name, status, input, output, \
         custom_status, component, created_at, updated_at, history_len, input_hash, execution_id, \
         parent_instance, parent_execution, parent_task, trace_parent, scheduled_by) \
         VALUES ($1, $2, $3, $4, NULL, NULL, $5, $6, $6, 1, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (id) DO NOTHING";
    /// A new instance's queue row, ready at once ($2 its creation time).
    pub const INSERT_QUEUED: &str = "INSERT INTO queue (instance_id, ready_at) VALUES ($1, $2)";
    /// A new instance's start message (the instance is ready already).
    pub const INSERT_START: &str =
        "INSERT INTO inbox (instance_id, message, control, created_at) VALUES ($1, $2, $3, $4)";
    /// The end of every statement that puts a message into an inbox, after
    /// a CTE `s` that locks the instance row and reads its status:
    /// mark the instance ready if it can take the message now (a suspended
    /// instance takes only control messages), under its queue row's lock,
    /// and insert the message. `$also` adds a condition the message needs.
    /// The instance row is locked before the queue row, in the order an
    /// episode's guard locks them, so the status read is the one an episode
    /// committing meanwhile leaves, and that episode's own readiness check
    /// cannot miss the message. The lock is exclusive (`FOR UPDATE`, as the
    /// episode's): a shared one let two messages share the row, then the
    /// one whose group also commits the instance's episode wait to upgrade
    /// it while the other waited for the queue row: a deadlock.
    /// ($2 message, $3 control, $4 now.)
    macro_rules! mark_ready_and_push {
        ($also:literal) => {
            concat!(
                "target AS ( \
                     UPDATE queue q SET ready_at = CASE WHEN $3 OR s.status <> 'Suspended' \
                         THEN COALESCE(q.ready_at, $4) ELSE q.ready_at END \
                     FROM s WHERE q.instance_id = s.id",
                $also,
                " RETURNING q.instance_id) \
                 INSERT INTO inbox (instance_id, message, control, created_at) \
                 SELECT instance_id, $2, $3, $4 FROM target"
            )
        };
    }
    /// Put a message into the inbox of an instance, if it exists
    /// (`mark_ready_and_push`; $1 instance).
    pub const PUSH_MESSAGE: &str = concat!(
        "WITH s AS (SELECT id, status FROM instances WHERE id = $1 FOR UPDATE), ",
        mark_ready_and_push!("")
    );
    /// A message for a live instance (not of a status in $5) from a client,
    /// while fewer than $6 wait (a control message always goes in:
    /// `mark_ready_and_push`; $1 instance).
    pub const ENQUEUE: &str = concat!(
        "WITH s AS (SELECT id, status FROM instances \
             WHERE id = $1 AND NOT status = ANY($5) FOR UPDATE), ",
        mark_ready_and_push!(
            " AND ($3 OR (SELECT count(*) FROM \
                 (SELECT 1 FROM inbox WHERE instance_id = $1 LIMIT $6) w) < $6)"
        )
    );
    /// An episode's new instance row (in place when the status stays: no
    /// index covers the other columns).
    pub const UPDATE_AFTER_EPISODE: &str = "UPDATE instances SET status = $2, output = $3, \
         custom_status = $4, updated_at = $5, history_len = $6 WHERE id = $1";
    /// After an episode ($1 instance, $2 its status, $3 its time): the
    /// lease goes back, and the instance stays ready, at the back of the
    /// queue, if messages it can take remain (read after the consumed ones
    /// were deleted).
    pub const REQUEUE_AFTER_EPISODE: &str = "UPDATE queue SET lease_owner = NULL, \
         lease_until = NULL, ready_at = CASE WHEN EXISTS (SELECT 1 FROM inbox \
             WHERE instance_id = $1 AND (control OR $2 <> 'Suspended')) THEN $3::BIGINT END \
         WHERE instance_id = $1";
    /// Give leases back ($1 ids, $2 owner).
    /// The instances are ready again if messages they can take wait.
    pub const RELEASE: &str = "UPDATE queue q SET lease_owner = NULL, lease_until = NULL, \
         ready_at = CASE WHEN EXISTS (SELECT 1 FROM inbox i JOIN instances s ON s.id = i.instance_id \
             WHERE i.instance_id = q.instance_id AND (i.control OR s.status <> 'Suspended')) \
             THEN COALESCE(q.ready_at, 0) ELSE q.ready_at END \
         WHERE instance_id = ANY($1) AND lease_owner = $2";
    /// An instance's history.
    pub const LOAD_HISTORY: &str =
        "SELECT seq, timestamp, event FROM history WHERE instance_id = $1 ORDER BY seq";
    /// A page of an instance's history: from seq $2, at most $3 events.
    pub const LOAD_HISTORY_PAGE: &str = "SELECT seq, timestamp, event FROM history \
         WHERE instance_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3";
    /// The instance rows of the ids $1 (status reads, grouped: `reader`).
    pub const GET_INSTANCES: &str = concat!(
        "SELECT ",
        duro_store_sql::instance_columns!(),
        " FROM instances WHERE id = ANY($1)"
    );
    /// What episodes start from (`loaded!`), for a group of loads
    /// (`reader`): per id of $1, its history only if its flag in $2 says so.
    pub const LOAD_MANY: &str = loaded!(
        "FROM UNNEST($1::text[], $2::boolean[]) AS k (key, full_history) \
         JOIN instances ON instances.id = k.key",
        "k.key",
        "k.full_history",
        " WHERE instances.id = ANY($1)"
    );
    /// An instance's version, its row locked.
    pub const LOCK_VERSION: &str =
        "SELECT execution_id, history_len, component FROM instances WHERE id = $1 FOR UPDATE";
    /// Lock the rows of the instances $1, in id order. Timer firing
    /// takes its timers' instances so before it takes the timers, in the
    /// order an episode that moves or cancels a timer locks them (its
    /// instance, then the timer).
    pub const LOCK_INSTANCES: &str =
        "SELECT 1 FROM instances WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE";
    /// Schedules due by $1, at most $2, soonest first.
    pub const DUE_SCHEDULES: &str = "SELECT name, origin, spec, state, due_at, version \
         FROM schedules WHERE due_at <= $1 ORDER BY due_at LIMIT $2";
    /// When the soonest schedule is due.
    pub const NEXT_SCHEDULE_DUE: &str = "SELECT MIN(due_at) FROM schedules";
    /// Every schedule.
    pub const ALL_SCHEDULES: &str =
        "SELECT name, origin, spec, state, due_at, version FROM schedules ORDER BY name";
    /// One schedule.
    pub const GET_SCHEDULE: &str =
        "SELECT name, origin, spec, state, due_at, version FROM schedules WHERE name = $1";
    /// A new schedule ($9, the version read, is none).
    pub const INSERT_SCHEDULE: &str = "INSERT INTO schedules (name, origin, spec, state, due_at, \
         waiting, last_instance, updated_at, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9::BIGINT, 0)) \
         ON CONFLICT (name) DO NOTHING";
    /// A schedule's row, if still at version $9.
    pub const UPDATE_SCHEDULE: &str = "UPDATE schedules SET origin = $2, spec = $3, state = $4, \
         due_at = $5, waiting = $6, last_instance = $7, updated_at = $8, version = version + 1 \
         WHERE name = $1 AND version = $9";
    /// A schedule, if still at version $2.
    pub const DELETE_SCHEDULE: &str = "DELETE FROM schedules WHERE name = $1 AND version = $2";
    /// A schedule's last run ended ($1 schedule, $2 run, $3 when).
    pub const SCHEDULED_RUN_ENDED: &str = "UPDATE schedules SET version = version + 1, \
         due_at = CASE WHEN waiting THEN $3 ELSE due_at END \
         WHERE name = $1 AND last_instance = $2";
    /// Who holds an instance's lease, its queue row locked (after the
    /// instance row: the order every writer locks them in).
    pub const LOCK_LEASE: &str = "SELECT lease_owner FROM queue WHERE instance_id = $1 FOR UPDATE";
    /// The instances of the oldest due timers (at most $2, due by $1),
    /// read without locks: their rows are locked first (`LOCK_INSTANCES`),
    /// then their timers taken.
    pub const DUE_TIMER_INSTANCES: &str =
        "SELECT instance_id FROM timers WHERE fire_at <= $1 ORDER BY fire_at LIMIT $2";
    /// The due timers of instances whose rows the caller holds ($3), taken
    /// out of the table, skipping rows another host is moving (as on
    /// SQLite, all of them in one transaction).
    /// The rows go by their physical address (`ctid`, stable while they
    /// are locked), never by a join the planner may turn into a scan.
    /// At most $2 of them per statement, oldest first: an index range
    /// scan whatever the planner guesses of how many are due.
    pub const FIRE_DUE_TIMERS: &str = "DELETE FROM timers WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM timers WHERE fire_at <= $1 AND instance_id = ANY($3) \
             ORDER BY fire_at LIMIT $2 FOR UPDATE SKIP LOCKED)) \
         RETURNING instance_id, task, fire_at, execution_id";
    /// Whether an instance has messages, due timers or due activities.
    pub const HAS_PENDING_WORK: &str = "SELECT EXISTS (SELECT 1 FROM inbox WHERE instance_id = $1) \
         OR EXISTS (SELECT 1 FROM timers WHERE instance_id = $1 AND fire_at <= $2) \
         OR EXISTS (SELECT 1 FROM activities WHERE instance_id = $1 AND run_at <= $2)";
    /// Lease due activity rows whose lease is free or expired.
    pub const CLAIM_ACTIVITIES: &str = "UPDATE activities SET lease_owner = $1, lease_until = $2 \
         WHERE id = ANY(ARRAY( \
             SELECT id FROM activities \
             WHERE run_at <= $3 AND (lease_until IS NULL OR lease_until < $5) \
             ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)) \
         RETURNING id, instance_id, execution_id, task, name, input, retry, attempt, first_at";
    /// An episode's timers ($1 instances, $2 tasks, $3 due times, $4
    /// executions: arrays), one moved if its task has one already.
    pub const PUT_TIMERS: &str = "INSERT INTO timers (instance_id, task, fire_at, execution_id) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[]) \
         ON CONFLICT (instance_id, task) \
         DO UPDATE SET fire_at = EXCLUDED.fire_at, execution_id = EXCLUDED.execution_id";
    /// Timers an episode cancelled ($2 their tasks).
    pub const CANCEL_TIMERS: &str = "DELETE FROM timers WHERE instance_id = $1 AND task = ANY($2)";
    /// An episode's activity calls (arrays of their columns; $7 when due).
    pub const SCHEDULE_ACTIVITIES: &str = "INSERT INTO activities \
         (instance_id, execution_id, task, name, input, retry, run_at) \
         SELECT i, e, t, n, p, r, $7 FROM UNNEST($1::text[], $2::text[], $3::bigint[], \
             $4::text[], $5::text[], $6::text[]) AS a (i, e, t, n, p, r)";
    /// An activity's result: its row ($1) deleted and, if it was there,
    /// the result ($2, control $3, at $4) put into its instance's inbox,
    /// the instance marked ready (as `PUSH_MESSAGE` does). The instance
    /// row is locked before the activity row, in the order an episode
    /// that drops its activities locks them.
    pub const DELIVER_RESULT: &str = concat!(
        "WITH s AS (SELECT id, status FROM instances \
             WHERE id = (SELECT instance_id FROM activities WHERE id = $1) FOR UPDATE), \
         done AS (DELETE FROM activities WHERE id = $1 \
             AND (instance_id = (SELECT id FROM s) OR NOT EXISTS (SELECT 1 FROM s)) \
             RETURNING instance_id), ",
        mark_ready_and_push!(" AND EXISTS (SELECT 1 FROM done)")
    );
    /// Inbox messages an episode consumed.
    pub const DELETE_CONSUMED: &str = "DELETE FROM inbox WHERE instance_id = $1 AND id = ANY($2)";
    /// When the next timer is due.
    pub const NEXT_TIMER_DUE: &str = "SELECT MIN(fire_at) FROM timers";
    /// Instances by status.
    pub const COUNT_BY_STATUS: &str = duro_store_sql::rows::COUNT_BY_STATUS;
    /// Messages in inboxes, timers (all, and due at $1) and activity calls.
    pub const COUNT_WORK: &str = "SELECT (SELECT count(*) FROM inbox), \
         (SELECT count(*) FROM timers), (SELECT count(*) FROM timers WHERE fire_at <= $1), \
         (SELECT count(*) FROM activities)";
    /// When the next activity row is due.
    pub const NEXT_ACTIVITY_DUE: &str = "SELECT MIN(run_at) FROM activities";
    /// Renew every lease a host holds ($1 owner, $2 until).
    /// Rows locked by a write under way are skipped (that write is about
    /// to give the lease back), so renewal never deadlocks with one.
    pub const RENEW_LEASES: [&str; 2] = [
        "UPDATE queue SET lease_until = $2 WHERE instance_id = ANY(ARRAY( \
             SELECT instance_id FROM queue WHERE lease_owner IS NOT NULL AND lease_owner = $1 \
             ORDER BY lease_until FOR UPDATE SKIP LOCKED))",
        "UPDATE activities SET lease_until = $2 WHERE id = ANY(ARRAY( \
             SELECT id FROM activities WHERE lease_owner = $1 FOR UPDATE SKIP LOCKED))",
    ];
    /// One statement per table an instance owns (`plan::OWNED_ROWS`, the
    /// instance row last) for a batch of purged ids ($1, a text array).
    /// On PostgreSQL an instance also owns its queue row, deleted just
    /// before the instance row.
    pub static PURGE_BATCH: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let (instances, owned) = duro_core::store::plan::OWNED_ROWS
            .split_last()
            .expect("the instance row is owned");
        owned
            .iter()
            .chain([&("queue", "instance_id"), instances])
            .map(|(table, column)| format!("DELETE FROM {table} WHERE {column} = ANY($1)"))
            .collect()
    });
}

pub(crate) async fn exec(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> StoreResult<u64> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.execute(&stmt, params).await.map_err(backend)
}

pub(crate) async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> StoreResult<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query(&stmt, params).await.map_err(backend)
}

async fn row(c: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<Option<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query_opt(&stmt, params).await.map_err(backend)
}

pub(crate) fn to_json<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

/// An instance row (columns of `sql::INSTANCE_COLUMNS`, in order) as an
/// instance (`InstanceRow::decode`): a column of the wrong type or a NULL
/// where a value belongs is an error, not a panic.
pub(crate) fn instance_from_row(row: &Row) -> StoreResult<Instance> {
    let bad = |e: tokio_postgres::Error| corrupt("instance row", e);
    InstanceRow {
        id: row.try_get(0).map_err(bad)?,
        name: row.try_get(1).map_err(bad)?,
        status: row.try_get(2).map_err(bad)?,
        input: row.try_get(3).map_err(bad)?,
        output: row.try_get(4).map_err(bad)?,
        custom_status: row.try_get(5).map_err(bad)?,
        component: row.try_get(6).map_err(bad)?,
        execution_id: row.try_get(7).map_err(bad)?,
        created_at: row.try_get(8).map_err(bad)?,
        updated_at: row.try_get(9).map_err(bad)?,
        history_len: row.try_get(10).map_err(bad)?,
        parent_instance: row.try_get(11).map_err(bad)?,
        parent_execution: row.try_get(12).map_err(bad)?,
        parent_task: row.try_get(13).map_err(bad)?,
        trace_parent: row.try_get(14).map_err(bad)?,
        scheduled_by: row.try_get(15).map_err(bad)?,
    }
    .decode()
}

pub async fn get_instance(c: &impl GenericClient, id: &str) -> StoreResult<Option<Instance>> {
    row(c, sql::GET_INSTANCE, &[&id])
        .await?
        .map(|r| instance_from_row(&r))
        .transpose()
}

pub async fn get_history(c: &impl GenericClient, id: &str) -> StoreResult<Vec<HistoryEntry>> {
    let found = rows(c, sql::LOAD_HISTORY, &[&id]).await?;
    found.iter().map(history_entry).collect()
}

pub async fn get_history_page(
    c: &impl GenericClient,
    id: &str,
    from: u64,
    limit: usize,
) -> StoreResult<Vec<HistoryEntry>> {
    let found = rows(
        c,
        sql::LOAD_HISTORY_PAGE,
        &[&id, &(from as i64), &(limit as i64)],
    )
    .await?;
    found.iter().map(history_entry).collect()
}

/// A history row (seq, timestamp, event) as its entry.
fn history_entry(r: &Row) -> StoreResult<HistoryEntry> {
    let bad = |e: tokio_postgres::Error| corrupt("history row", e);
    rows::history_entry(
        r.try_get(0).map_err(bad)?,
        r.try_get(1).map_err(bad)?,
        r.try_get(2).map_err(bad)?,
    )
}

async fn append_events(
    c: &impl GenericClient,
    id: &str,
    first_seq: u64,
    events: &[HistoryEvent],
    at: Millis,
) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    // One statement for the episode's events, whatever their number.
    let json = events
        .iter()
        .map(|event| to_json("history event", event))
        .collect::<StoreResult<Vec<String>>>()?;
    exec(
        c,
        "INSERT INTO history (instance_id, seq, timestamp, event) \
         SELECT $1, $2 + n - 1, $3, event FROM UNNEST($4::text[]) WITH ORDINALITY AS e (event, n)",
        &[&id, &(first_seq as i64), &(at as i64), &json],
    )
    .await?;
    Ok(())
}

/// Put a message into the inbox of an instance, if it exists, marking it
/// ready (`plan::Write::Push`; the writer tells other hosts after the
/// commit).
async fn push_message(
    c: &impl GenericClient,
    id: &str,
    message: &Message,
    at: Millis,
) -> StoreResult<()> {
    let json = to_json("message", message)?;
    exec(
        c,
        sql::PUSH_MESSAGE,
        &[&id, &json, &message.is_control(), &(at as i64)],
    )
    .await?;
    Ok(())
}

/// `plan::Write::EnsureEntity`: the row and its queue row, unless there.
async fn ensure_entity(c: &impl GenericClient, row: &Instance) -> StoreResult<()> {
    static INSERT_ENTITY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| rows::INSERT_ENTITY.replace('?', "$"));
    let (status, at) = (row.status.as_str(), row.created_at as i64);
    let hash = input_hash(&row.input);
    let params: Params<'_> = &[
        &row.id,
        &row.name,
        &status,
        &row.input,
        &row.output,
        &row.component,
        &at,
        &hash,
        &row.execution_id,
    ];
    let queued: Params<'_> = &[&row.id];
    let (inserted, queued) = tokio::join!(
        biased;
        exec(c, &INSERT_ENTITY, params),
        exec(
            c,
            "INSERT INTO queue (instance_id) VALUES ($1) ON CONFLICT (instance_id) DO NOTHING",
            queued,
        ),
    );
    inserted?;
    queued?;
    Ok(())
}

/// Delete instances and everything they own, one statement per table for
/// the whole batch; returns how many instances there were.
async fn delete_instances(c: &impl GenericClient, ids: &[String]) -> StoreResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut deleted = 0;
    for statement in sql::PURGE_BATCH.iter() {
        // The last statement deletes the instance rows themselves.
        deleted = exec(c, statement, &[&ids]).await?;
    }
    Ok(deleted as usize)
}

/// `plan::Write::Create`, step by step: a finished instance with the same
/// id is deleted first, a live one refuses.
async fn create_careful(
    c: &impl GenericClient,
    instance: &Instance,
    start_taken: bool,
) -> StoreResult<()> {
    if let Some(existing) = get_instance(c, &instance.id).await? {
        if !existing.status.is_terminal() {
            return Err(StoreError::AlreadyExists(instance.id.clone()));
        }
        delete_instances(c, std::slice::from_ref(&instance.id)).await?;
    }
    create_fast(c, instance, start_taken).await
}

/// `plan::Write::Create` in one round trip, for an id no instance has: the
/// row (ready at once), its first event and its start message are sent
/// together. An id taken makes it fail (`AlreadyExists`), whether the
/// instance there has finished or not: the writer then runs the write
/// again step by step (`create_careful`). With `start_taken`, no start
/// message (the episode committed with it took the start).
async fn create_fast(
    c: &impl GenericClient,
    instance: &Instance,
    start_taken: bool,
) -> StoreResult<()> {
    let parent = instance.parent.as_ref();
    let started = [HistoryEvent::ExecutionStarted {
        name: instance.name.clone(),
        input: instance.input.clone(),
    }];
    let start = to_json("message", &Message::Start)?;
    let (control, created_at) = (Message::Start.is_control(), instance.created_at as i64);
    let (parent_instance, parent_execution, parent_task) = (
        parent.map(|p| p.instance.as_str()),
        parent.map(|p| p.execution.as_str()),
        parent.map(|p| p.task as i64),
    );
    let hash = input_hash(&instance.input);
    let scheduled_by = rows::scheduled_by_json(instance);
    let row: Params<'_> = &[
        &instance.id,
        &instance.name,
        &RuntimeStatus::Pending.as_str(),
        &instance.input,
        &instance.component,
        &created_at,
        &hash,
        &instance.execution_id,
        &parent_instance,
        &parent_execution,
        &parent_task,
        &instance.trace_parent,
        &scheduled_by,
    ];
    let start_row: Params<'_> = &[&instance.id, &start, &control, &created_at];
    let queued_row: Params<'_> = &[&instance.id, &created_at];
    let (inserted, queued, appended, pushed) = tokio::join!(
        biased;
        exec(c, sql::INSERT_INSTANCE, row),
        exec(c, sql::INSERT_QUEUED, queued_row),
        append_events(c, &instance.id, 0, &started, instance.created_at),
        async {
            match start_taken {
                true => Ok(0),
                false => exec(c, sql::INSERT_START, start_row).await,
            }
        },
    );
    if inserted? == 0 {
        return Err(StoreError::AlreadyExists(instance.id.clone()));
    }
    queued?;
    appended.and(pushed.map(drop))
}

pub async fn put_component(c: &Object, digest: &str, bytes: &[u8], now: Millis) -> StoreResult<()> {
    exec(
        c,
        "INSERT INTO components (digest, bytes, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (digest) DO NOTHING",
        &[&digest, &bytes, &(now as i64)],
    )
    .await?;
    Ok(())
}

pub async fn component(c: &Object, digest: &str) -> StoreResult<Option<Vec<u8>>> {
    Ok(row(
        c,
        "SELECT bytes FROM components WHERE digest = $1",
        &[&digest],
    )
    .await?
    .map(|r| r.get(0)))
}

/// The version of an instance, its row locked until the transaction ends,
/// and who holds its lease.
async fn lock_version(tx: &impl GenericClient, id: &str) -> StoreResult<(Version, Option<String>)> {
    // Sent together, the instance row first (see `sql::LOCK_LEASE`).
    let params: Params<'_> = &[&id];
    let (version, lease) = tokio::join!(
        biased;
        row(tx, sql::LOCK_VERSION, params),
        row(tx, sql::LOCK_LEASE, params),
    );
    let found = version?.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    Ok((
        Version {
            execution_id: found.get(0),
            history_len: found.get::<_, i64>(1) as u64,
            component: found.get(2),
        },
        lease?.and_then(|r| r.get(0)),
    ))
}

pub(crate) fn conflict(id: &str, change: String) -> StoreError {
    StoreError::Conflict {
        instance: id.to_string(),
        change,
    }
}

/// Refuse a write computed from another version of the instance.
async fn check_version(tx: &impl GenericClient, id: &str, expected: &Version) -> StoreResult<()> {
    let (actual, _) = lock_version(tx, id).await?;
    match expected.change_to(&actual) {
        Some(change) => Err(conflict(id, change)),
        None => Ok(()),
    }
}

pub async fn set_component(
    c: &mut Object,
    id: &str,
    digest: &str,
    expected: &Version,
    now: Millis,
) -> StoreResult<()> {
    let tx = c.transaction().await.map_err(backend)?;
    check_version(&tx, id, expected).await?;
    exec(
        &tx,
        "UPDATE instances SET component = $2, updated_at = $3 WHERE id = $1",
        &[&id, &digest, &(now as i64)],
    )
    .await?;
    tx.commit().await.map_err(backend)
}

/// Put a message into the inbox of a live instance (see
/// `ClientStore::enqueue`).
pub async fn enqueue(
    tx: &impl GenericClient,
    id: &str,
    message: &Message,
    max_inbox: usize,
    at: Millis,
) -> StoreResult<()> {
    if let Some(Write::EnsureEntity { row }) = plan::ensure_entity(id, at) {
        ensure_entity(tx, &row).await?;
    }
    // One statement: the message goes in only beside its live instance,
    // and an event only while fewer than `max_inbox` messages wait for it
    // (control messages always: a flood must not make it unstoppable).
    let json = to_json("message", message)?;
    let finished = plan::finished_statuses();
    let inserted = exec(
        tx,
        sql::ENQUEUE,
        &[
            &id,
            &json,
            &message.is_control(),
            &(at as i64),
            &finished,
            &(max_inbox as i64),
        ],
    )
    .await?;
    if inserted > 0 {
        return Ok(());
    }
    // Why not: rare, so a second statement is fine.
    match get_instance(tx, id).await? {
        None => Err(StoreError::NotFound(id.to_string())),
        Some(instance) if instance.status.is_terminal() => Err(StoreError::Finished {
            id: id.to_string(),
            status: instance.status,
        }),
        Some(_) => Err(StoreError::InboxFull {
            id: id.to_string(),
            limit: max_inbox,
        }),
    }
}

pub async fn list_instances(c: &Object, query: &InstanceQuery) -> StoreResult<Vec<Instance>> {
    static WITHOUT_INPUT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| listing::without_input(sql::INSTANCE_COLUMNS));
    let columns = if query.skip_input {
        WITHOUT_INPUT.as_str()
    } else {
        sql::INSTANCE_COLUMNS
    };
    list_rows(c, query, columns)
        .await?
        .iter()
        .map(instance_from_row)
        .collect()
}

/// The rows of `columns` (which include `id` and `created_at`) for the
/// instances matching `query`, in the listing's order (see `listing`).
async fn list_rows(
    c: &impl GenericClient,
    query: &InstanceQuery,
    columns: &str,
) -> StoreResult<Vec<Row>> {
    let limit = query.limit.max(1);
    let (statements, order) = listing::statements(query, columns, limit);
    // One statement, so one snapshot (and one round trip).
    let statement = listing::union_all(&statements).to_postgres();
    let found = {
        let args: Vec<Box<dyn ToSql + Sync + Send>> = statement
            .args
            .iter()
            .map(|value| -> Box<dyn ToSql + Sync + Send> {
                match value {
                    SqlValue::Int(i) => Box::new(*i),
                    SqlValue::Text(t) => Box::new(t.clone()),
                }
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        rows(c, &statement.sql, &params).await?
    };
    if statements.len() == 1 {
        return Ok(found);
    }
    let keyed: Vec<(Millis, String, Row)> = found
        .into_iter()
        .map(|r| {
            let created = r.get::<_, i64>("created_at") as Millis;
            (created, r.get::<_, String>("id"), r)
        })
        .collect();
    Ok(
        listing::merge(keyed, query.newest_first, limit, |(created, id, _)| {
            order.key(*created, id)
        })
        .into_iter()
        .map(|(_, _, r)| r)
        .collect(),
    )
}

pub async fn purge(c: &mut Object, id: &str) -> StoreResult<bool> {
    let tx = c.transaction().await.map_err(backend)?;
    let purged = match get_instance(&tx, id).await? {
        None => false,
        Some(instance) => match plan::purge_refused(id, instance.status) {
            Some(refused) => return Err(refused),
            None => delete_instances(&tx, &[id.to_string()]).await? > 0,
        },
    };
    tx.commit().await.map_err(backend)?;
    Ok(purged)
}

/// `ClientStore::purge_entity`: the row locked, then its version and
/// inbox read under the lock (a message committed first is seen).
pub async fn purge_entity(c: &mut Object, id: &str, version: u64) -> StoreResult<bool> {
    let tx = c.transaction().await.map_err(backend)?;
    let locked = tx
        .query_opt(
            "SELECT history_len FROM instances WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(backend)?;
    let at_version = locked.is_some_and(|row| row.get::<_, i64>(0) as u64 == version);
    let waiting = at_version
        && tx
            .query_opt("SELECT 1 FROM inbox WHERE instance_id = $1 LIMIT 1", &[&id])
            .await
            .map_err(backend)?
            .is_some();
    let purged = at_version && !waiting && delete_instances(&tx, &[id.to_string()]).await? > 0;
    tx.commit().await.map_err(backend)?;
    Ok(purged)
}

pub async fn purge_batch(c: &mut Object, query: &InstanceQuery) -> StoreResult<usize> {
    let tx = c.transaction().await.map_err(backend)?;
    let ids: Vec<String> = list_rows(&tx, query, "id, created_at")
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let deleted = delete_instances(&tx, &ids).await?;
    tx.commit().await.map_err(backend)?;
    Ok(deleted)
}

/// Lease up to `max` instances with messages to process (a suspended one
/// only for control messages) whose lease is free or expired, and load
/// them (`sql::CLAIM_READY`): each with whether its history came too.
pub async fn claim_ready(
    c: &impl GenericClient,
    owner: &str,
    now: Millis,
    lease_until: i64,
    max: usize,
    history_up_to: u64,
) -> StoreResult<Vec<(LoadedInstance, bool)>> {
    let claimed = rows(
        c,
        sql::CLAIM_READY,
        &[
            &owner,
            &lease_until,
            &(now as i64),
            &(max as i64),
            &(history_up_to as i64),
        ],
    )
    .await?;
    claimed
        .iter()
        .map(|row| {
            let loaded = loaded_from_row(row)?;
            let whole = loaded.instance.history_len <= history_up_to;
            Ok((loaded, whole))
        })
        .collect()
}

/// Give leases back (only those this host still holds).
pub async fn release(c: &impl GenericClient, owner: &str, ids: &[String]) -> StoreResult<()> {
    exec(c, sql::RELEASE, &[&ids, &owner]).await?;
    Ok(())
}

/// Lock instance rows in id order (`LOCK_INSTANCES`).
async fn lock_instances(c: &impl GenericClient, instances: &[&str]) -> StoreResult<()> {
    exec(c, sql::LOCK_INSTANCES, &[&instances]).await?;
    Ok(())
}

/// A row of `sql::LOAD_MANY` as what an episode starts from.
pub(crate) fn loaded_from_row(found: &Row) -> StoreResult<LoadedInstance> {
    let instance = instance_from_row(found)?;
    let bad = |e: tokio_postgres::Error| corrupt("loaded instance", e);
    let column = |n: usize| found.try_get::<_, Option<Vec<i64>>>(n).map_err(bad);
    let texts = |n: usize| found.try_get::<_, Option<Vec<String>>>(n).map_err(bad);
    let (seqs, stamps, events) = (column(16)?, column(17)?, texts(18)?);
    let history = seqs
        .unwrap_or_default()
        .into_iter()
        .zip(stamps.unwrap_or_default())
        .zip(events.unwrap_or_default())
        .map(|((seq, stamp), event)| rows::history_entry(seq, stamp, &event))
        .collect::<StoreResult<Vec<_>>>()?;
    let inbox = column(19)?
        .unwrap_or_default()
        .into_iter()
        .zip(texts(20)?.unwrap_or_default())
        .map(|(id, message)| {
            Ok(InboxEntry {
                id,
                message: rows::message(&message)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(LoadedInstance {
        instance,
        history,
        inbox,
    })
}

/// Apply a commit's writes (`plan`) with every statement sent at once, in
/// order, without waiting for answers in between: one round trip. For a
/// transaction that is rolled back whole if any write fails; each write
/// takes its one-round form (a create fails on any taken id). The first
/// failure, in order, is the result.
pub async fn apply_pipelined(
    c: &impl GenericClient,
    owner: &str,
    writes: &[Write<'_>],
) -> StoreResult<()> {
    // A first episode's instance is created before the rest is sent: a
    // statement still being prepared runs after one that was not, and the
    // episode's update must find the row.
    let (created, writes) = match writes.split_first() {
        Some((first @ Write::Create { .. }, rest)) => (Some(first), rest),
        _ => (None, writes),
    };
    if let Some(create) = created {
        apply(c, owner, create, Form::OneRound).await?;
    }
    let sent = futures_util::future::join_all(
        writes
            .iter()
            .map(|write| apply(c, owner, write, Form::OneRound)),
    )
    .await;
    sent.into_iter().collect()
}

/// Apply a commit's writes one after another, each answered before the
/// next is sent: after a pipelined attempt failed, so that the failure is
/// found and, where the plan says so (a child whose id is taken), undone
/// alone.
pub async fn apply_in_order(
    c: &impl GenericClient,
    owner: &str,
    writes: &[Write<'_>],
) -> StoreResult<()> {
    for write in writes {
        apply(c, owner, write, Form::StepByStep).await?;
    }
    Ok(())
}

/// How a write is said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Its statements sent at once, none depending on another's answer.
    OneRound,
    /// Statements that depend on answers (a create replacing a finished
    /// instance, a child in a savepoint).
    StepByStep,
}

/// Say one write in PostgreSQL's dialect (see `plan::Write` for what each
/// means).
fn apply<'a>(
    c: &'a impl GenericClient,
    owner: &'a str,
    write: &'a Write<'a>,
    form: Form,
) -> Op<'a, ()> {
    Box::pin(async move {
        match write {
            // The row stays locked until the transaction ends; a lease
            // held by another host refuses the write (this host's expired).
            Write::Guard {
                id,
                expected,
                unread_inbox,
            } => {
                let (actual, lease_owner) = lock_version(c, id).await?;
                if let Some(holder) = lease_owner.filter(|holder| holder != owner) {
                    return Err(conflict(
                        id,
                        format!("its lease passed to {holder} (this host's had expired)"),
                    ));
                }
                if let Some(change) = expected.change_to(&actual) {
                    return Err(conflict(id, change));
                }
                // Last, as the grouped statement and SQLite check it.
                if *unread_inbox && row(c, sql::MESSAGES_WAIT, &[id]).await?.is_some() {
                    return Err(plan::unread_messages_wait(id));
                }
            }
            Write::ClearHistory { id } => {
                exec(c, "DELETE FROM history WHERE instance_id = $1", &[id]).await?;
            }
            Write::DropScheduledWork { id } => {
                let params: Params<'_> = &[id];
                let (timers, activities) = tokio::join!(
                    biased;
                    exec(c, "DELETE FROM timers WHERE instance_id = $1", params),
                    exec(c, "DELETE FROM activities WHERE instance_id = $1", params),
                );
                timers?;
                activities?;
            }
            Write::NewExecution {
                id,
                input,
                execution_id,
            } => {
                exec(
                    c,
                    "UPDATE instances SET input = $2, input_hash = $3, execution_id = $4 WHERE id = $1",
                    &[id, input, &input_hash(input), execution_id],
                )
                .await?;
            }
            Write::AppendEvents {
                id,
                first_seq,
                events,
                at,
            } => append_events(c, id, *first_seq, events, *at).await?,
            Write::Consume { id, messages } => {
                exec(c, sql::DELETE_CONSUMED, &[id, messages]).await?;
            }
            Write::UpdateInstance { instance } => {
                let (status, at) = (instance.status.as_str(), instance.updated_at as i64);
                let history_len = instance.history_len as i64;
                let row: Params<'_> = &[
                    &instance.id,
                    &status,
                    &instance.output,
                    &instance.custom_status,
                    &at,
                    &history_len,
                ];
                let queued: Params<'_> = &[&instance.id, &status, &at];
                let (updated, requeued) = tokio::join!(
                    biased;
                    exec(c, sql::UPDATE_AFTER_EPISODE, row),
                    exec(c, sql::REQUEUE_AFTER_EPISODE, queued),
                );
                updated?;
                requeued?;
            }
            Write::PutTimers { timers } => {
                let ids: Vec<&str> = timers.iter().map(|t| t.instance.as_str()).collect();
                let tasks: Vec<i64> = timers.iter().map(|t| t.task as i64).collect();
                let due: Vec<i64> = timers.iter().map(|t| t.fire_at as i64).collect();
                let executions: Vec<&str> = timers.iter().map(|t| t.execution.as_str()).collect();
                exec(c, sql::PUT_TIMERS, &[&ids, &tasks, &due, &executions]).await?;
            }
            Write::CancelTimers { id, tasks } => {
                let tasks: Vec<i64> = tasks.iter().map(|&t| t as i64).collect();
                exec(c, sql::CANCEL_TIMERS, &[id, &tasks]).await?;
            }
            Write::ScheduleActivities { calls, at } => {
                let retries = calls
                    .iter()
                    .map(|call| {
                        call.retry
                            .as_ref()
                            .map(|r| to_json("retry policy", r))
                            .transpose()
                    })
                    .collect::<StoreResult<Vec<Option<String>>>>()?;
                let ids: Vec<&str> = calls.iter().map(|c| c.instance.as_str()).collect();
                let executions: Vec<&str> = calls.iter().map(|c| c.execution.as_str()).collect();
                let tasks: Vec<i64> = calls.iter().map(|c| c.task as i64).collect();
                let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
                let inputs: Vec<&str> = calls.iter().map(|c| c.input.as_str()).collect();
                exec(
                    c,
                    sql::SCHEDULE_ACTIVITIES,
                    &[
                        &ids,
                        &executions,
                        &tasks,
                        &names,
                        &inputs,
                        &retries,
                        &(*at as i64),
                    ],
                )
                .await?;
            }
            Write::Create {
                instance,
                start_taken,
            } => match form {
                Form::OneRound => create_fast(c, instance, *start_taken).await?,
                Form::StepByStep => create_careful(c, instance, *start_taken).await?,
            },
            Write::CreateChild {
                child,
                if_taken,
                at,
            } => match form {
                Form::OneRound => create_fast(c, child, false).await?,
                Form::StepByStep => {
                    let created = in_savepoint(c, create_careful(c, child, false)).await?;
                    match (created, &child.parent, if_taken) {
                        (Err(StoreError::AlreadyExists(_)), Some(parent), Some(if_taken)) => {
                            push_message(c, &parent.instance, if_taken, *at).await?;
                        }
                        (Err(StoreError::AlreadyExists(_)), _, None) => {}
                        (created, _, _) => created?,
                    }
                }
            },
            Write::EnsureEntity { row } => ensure_entity(c, row).await?,
            Write::Push { id, message, at } => push_message(c, id, message, *at).await?,
            Write::PutSchedule {
                name,
                expected,
                row,
                at,
            } => put_schedule(c, name, *expected, *row, *at).await?,
            Write::ScheduledRunEnded { schedule, id, at } => {
                exec(c, sql::SCHEDULED_RUN_ENDED, &[schedule, id, &(*at as i64)]).await?;
            }
        }
        Ok(())
    })
}

/// `plan::Write::PutSchedule`.
async fn put_schedule(
    c: &impl GenericClient,
    name: &str,
    expected: Option<u64>,
    row: Option<&ScheduleRow>,
    at: Millis,
) -> StoreResult<()> {
    let version = expected.map(|v| v as i64);
    let changed = match row {
        None if expected.is_none() => 0,
        None => exec(c, sql::DELETE_SCHEDULE, &[&name, &version]).await?,
        Some(row) => {
            let (spec, state) = rows::schedule_json(row)?;
            let due_at = row.due_at.map(|t| t as i64);
            let values: Params<'_> = &[
                &name,
                &row.origin.as_str(),
                &spec,
                &state,
                &due_at,
                &row.waiting(),
                &row.state.last_instance,
                &(at as i64),
                &version,
            ];
            let statement = if expected.is_some() {
                sql::UPDATE_SCHEDULE
            } else {
                sql::INSERT_SCHEDULE
            };
            exec(c, statement, values).await?
        }
    };
    match (changed, expected) {
        (0, None) => Err(StoreError::ScheduleExists(name.to_string())),
        (0, Some(_)) => Err(StoreError::ScheduleChanged(name.to_string())),
        _ => Ok(()),
    }
}

/// Schedules read by `sql` with `params`.
pub async fn schedules(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> StoreResult<Vec<ScheduleRow>> {
    let bad = |e: tokio_postgres::Error| corrupt("schedule row", e);
    rows(c, sql, params)
        .await?
        .iter()
        .map(|row| {
            rows::schedule_row(
                row.try_get(0).map_err(bad)?,
                row.try_get(1).map_err(bad)?,
                row.try_get(2).map_err(bad)?,
                row.try_get(3).map_err(bad)?,
                row.try_get(4).map_err(bad)?,
                row.try_get(5).map_err(bad)?,
            )
        })
        .collect()
}

/// Run `op` in a savepoint of its own, so that its failure undoes only
/// what it wrote: its result, inside the transaction's (whose error means
/// the transaction itself failed). Savepoints nest: a name reused inside
/// one refers to the innermost.
pub async fn in_savepoint<T>(
    tx: &impl GenericClient,
    op: impl Future<Output = StoreResult<T>>,
) -> StoreResult<StoreResult<T>> {
    tx.batch_execute("SAVEPOINT op").await.map_err(backend)?;
    let result = op.await;
    if result.is_err() {
        tx.batch_execute("ROLLBACK TO SAVEPOINT op")
            .await
            .map_err(backend)?;
    }
    tx.batch_execute("RELEASE SAVEPOINT op")
        .await
        .map_err(backend)?;
    Ok(result)
}

/// A write of a group, boxed: the writer's task must stay `Send`, which a
/// lazily mapped iterator of borrowed futures trips over.
pub type Op<'a, T> = std::pin::Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// Run `ops` one after another in one transaction, each in a savepoint of
/// its own (see [`in_savepoint`]), without a round trip for the
/// savepoints: each op's `SAVEPOINT` (and the `RELEASE` of the one before)
/// is sent together with the op's first statement, and `COMMIT` releases
/// the last. The outer error is the transaction's.
pub async fn each_in_savepoint<T>(
    tx: &Transaction<'_>,
    ops: Vec<Op<'_, T>>,
) -> StoreResult<Vec<StoreResult<T>>> {
    let mut results = Vec::new();
    let mut open = "SAVEPOINT op";
    for op in ops {
        let (opened, result) = tokio::join!(biased; tx.batch_execute(open), op);
        opened.map_err(backend)?;
        if result.is_err() {
            tx.batch_execute("ROLLBACK TO SAVEPOINT op")
                .await
                .map_err(backend)?;
        }
        results.push(result);
        open = "RELEASE SAVEPOINT op; SAVEPOINT op";
    }
    Ok(results)
}

/// Move due timers into their instances' inboxes, skipping rows another
/// host is moving: each timer fires once.
pub async fn fire_due_timers(c: &mut Object, now: Millis) -> StoreResult<usize> {
    /// Timers taken by one statement.
    const BATCH: i64 = 1_000;
    let tx = c.transaction().await.map_err(backend)?;
    let mut fired = 0;
    loop {
        // Instance rows before timer rows, in the order every group of
        // writes locks them: an episode moving or cancelling a timer that
        // is firing waits, or makes this wait, but the two never deadlock.
        let due = rows(&tx, sql::DUE_TIMER_INSTANCES, &[&(now as i64), &BATCH]).await?;
        let mut instances: Vec<&str> = due.iter().map(|row| row.get(0)).collect();
        if instances.is_empty() {
            break;
        }
        instances.sort_unstable();
        instances.dedup();
        lock_instances(&tx, &instances).await?;
        let taken = rows(
            &tx,
            sql::FIRE_DUE_TIMERS,
            &[&(now as i64), &BATCH, &instances],
        )
        .await?;
        let messages: Vec<(String, Message)> = taken
            .iter()
            .map(|timer| {
                let fired = plan::timer_fired(
                    timer.get::<_, i64>(1) as u32,
                    timer.get::<_, i64>(2) as Millis,
                    timer.get(3),
                );
                (timer.get(0), fired)
            })
            .collect();
        // Sent together, in order (one round trip).
        let pushed = futures_util::future::join_all(
            messages
                .iter()
                .map(|(instance, message)| push_message(&tx, instance, message, now)),
        )
        .await;
        pushed.into_iter().collect::<StoreResult<Vec<()>>>()?;
        fired += taken.len();
        if (due.len() as i64) < BATCH {
            break;
        }
    }
    tx.commit().await.map_err(backend)?;
    Ok(fired)
}

pub async fn min_of(c: &Object, sql: &str) -> StoreResult<Option<Millis>> {
    let found = row(c, sql, &[]).await?;
    Ok(found
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .map(|t| t as Millis))
}

pub async fn counts(c: &Object, now: Millis) -> StoreResult<StoreCounts> {
    let mut counts = StoreCounts::default();
    let stmt = c
        .prepare_cached(sql::COUNT_BY_STATUS)
        .await
        .map_err(backend)?;
    for r in c.query(&stmt, &[]).await.map_err(backend)? {
        let status: String = r.get(0);
        let status = RuntimeStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
        counts.instances.push((status, r.get::<_, i64>(1) as u64));
    }
    if let Some(r) = row(c, rows::COUNT_ENTITIES, &[]).await? {
        counts.entities = r.get::<_, i64>(0) as u64;
    }
    if let Some(r) = row(c, sql::COUNT_WORK, &[&(now as i64)]).await? {
        counts.inbox_messages = r.get::<_, i64>(0) as u64;
        counts.timers = r.get::<_, i64>(1) as u64;
        counts.timers_due = r.get::<_, i64>(2) as u64;
        counts.activities = r.get::<_, i64>(3) as u64;
    }
    Ok(counts)
}

pub async fn has_pending_work(c: &Object, id: &str, now: Millis) -> StoreResult<bool> {
    let pending = row(c, sql::HAS_PENDING_WORK, &[&id, &(now as i64)]).await?;
    Ok(pending.is_some_and(|r| r.get(0)))
}

/// Lease up to `max` activity rows due at `now` whose lease is free or
/// expired.
pub async fn claim_activities(
    c: &Object,
    owner: &str,
    lease_until: i64,
    max: usize,
    now: Millis,
) -> StoreResult<Vec<ActivityWork>> {
    let now = now as i64;
    let claimed = rows(
        c,
        sql::CLAIM_ACTIVITIES,
        &[&owner, &lease_until, &now, &(max as i64), &now],
    )
    .await?;
    claimed
        .iter()
        .map(|r| {
            let retry: Option<String> = r.get(6);
            Ok(ActivityWork {
                id: r.get(0),
                call: ActivityCall {
                    instance: r.get(1),
                    execution: r.get(2),
                    task: r.get::<_, i64>(3) as u32,
                    name: r.get(4),
                    input: r.get(5),
                    retry: retry
                        .map(|r| serde_json::from_str(&r).map_err(|e| corrupt("retry policy", e)))
                        .transpose()?,
                },
                attempt: r.get::<_, i64>(7) as u32,
                first_at: r.get::<_, Option<i64>>(8).map(|t| t as Millis),
            })
        })
        .collect()
}

/// Record what became of an attempt. A retry moves the row on (if this host
/// still holds it); a result goes into the inbox with the row, once: a
/// second host that ran the same row after this one's lease expired finds
/// it gone.
pub async fn finish_activity(
    tx: &impl GenericClient,
    owner: &str,
    id: i64,
    finish: &ActivityFinish,
    at: Millis,
) -> StoreResult<()> {
    match finish {
        ActivityFinish::Retry {
            attempt,
            run_at,
            first_at,
        } => {
            exec(
                tx,
                "UPDATE activities SET attempt = $2, run_at = $3, first_at = $4, \
                 lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $5",
                &[
                    &id,
                    &(*attempt as i64),
                    &(*run_at as i64),
                    &(*first_at as i64),
                    &owner,
                ],
            )
            .await?;
        }
        // One statement: the row goes and, if it was there, its result
        // goes into its instance's inbox (as `sql::PUSH_MESSAGE` puts it).
        ActivityFinish::Done(message) => {
            let json = to_json("message", message)?;
            exec(
                tx,
                sql::DELIVER_RESULT,
                &[&id, &json, &message.is_control(), &(at as i64)],
            )
            .await?;
        }
    }
    Ok(())
}
