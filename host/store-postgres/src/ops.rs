//! The statements of the PostgreSQL store, one function per operation, each
//! on a pooled connection or inside the caller's transaction. Every
//! statement goes through the connection's prepared-statement cache.

use deadpool_postgres::{GenericClient, Object, Transaction};
use duro_core::model::{
    ActivityCall, HistoryEntry, HistoryEvent, InboxEntry, Instance, InstanceQuery, Message, Millis,
    ParentCall, RuntimeStatus, input_hash,
};
use duro_core::store::listing::{self, SqlValue};
use duro_core::store::{
    ActivityFinish, ActivityWork, EpisodeCommit, LoadedInstance, StoreCounts, StoreError,
    StoreResult, Version,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::backend;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The statements the workers and clients run besides listings (which
/// `listing` builds), named so that the query-plan test explains exactly
/// the text the store runs.
pub mod sql {
    /// The columns `instance_from_row` reads.
    macro_rules! instance_columns {
        () => {
            "id, name, status, input, output, custom_status, component, execution_id, \
             created_at, updated_at, history_len, parent_instance, parent_execution, parent_task, \
             trace_parent"
        };
    }
    /// The columns `instance_from_row` reads.
    pub const INSTANCE_COLUMNS: &str = instance_columns!();
    /// One instance row.
    pub const GET_INSTANCE: &str = concat!(
        "SELECT ",
        instance_columns!(),
        " FROM instances WHERE id = $1"
    );
    /// Lease up to $4 ready instances whose lease is free or expired at $3,
    /// oldest first, from the ready index ($1 owner, $2 until).
    pub const CLAIM_READY: &str = "UPDATE instances SET lease_owner = $1, lease_until = $2 \
         WHERE id IN ( \
             SELECT id FROM instances WHERE ready_at IS NOT NULL \
               AND (lease_until IS NULL OR lease_until < $3) \
             ORDER BY ready_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
         RETURNING id";
    /// Put a message into an inbox and mark its instance ready if the
    /// message can be taken now (a suspended instance takes only control
    /// messages). The row lock this takes orders it after an episode of
    /// the instance under way, whose own readiness check then cannot miss
    /// the message. ($1 instance, $2 message, $3 control, $4 now.)
    pub const PUSH_MESSAGE: &str = "WITH pushed AS ( \
             INSERT INTO inbox (instance_id, message, control, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING instance_id) \
         UPDATE instances SET ready_at = COALESCE(ready_at, $4) \
         WHERE id = $1 AND ($3 OR status <> 'Suspended')";
    /// An episode's new instance row; the commit gives the lease back, and
    /// the instance stays ready, at the back of the queue, if messages it
    /// can take remain (read after the consumed ones were deleted).
    pub const UPDATE_AFTER_EPISODE: &str = "UPDATE instances SET status = $2, output = $3, \
         custom_status = $4, updated_at = $5, history_len = $6, lease_owner = NULL, \
         lease_until = NULL, ready_at = CASE WHEN EXISTS (SELECT 1 FROM inbox \
             WHERE instance_id = $1 AND (control OR $2 <> 'Suspended')) THEN $5::BIGINT END \
         WHERE id = $1";
    /// Give leases back ($1 ids, $2 owner).
    pub const RELEASE: &str = "UPDATE instances SET lease_owner = NULL, lease_until = NULL \
         WHERE id = ANY($1) AND lease_owner = $2";
    /// An instance's history.
    pub const LOAD_HISTORY: &str =
        "SELECT seq, timestamp, event FROM history WHERE instance_id = $1 ORDER BY seq";
    /// A page of an instance's history: from seq $2, at most $3 events.
    pub const LOAD_HISTORY_PAGE: &str = "SELECT seq, timestamp, event FROM history \
         WHERE instance_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3";
    /// An instance's inbox.
    pub const LOAD_INBOX: &str = "SELECT id, message FROM inbox WHERE instance_id = $1 ORDER BY id";
    /// An instance's version and lease holder, its row locked.
    pub const LOCK_VERSION: &str = "SELECT execution_id, history_len, component, lease_owner FROM instances \
         WHERE id = $1 FOR UPDATE";
    /// Every due timer taken out of the table, skipping rows another host
    /// holds (as on SQLite, all of them in one transaction).
    pub const FIRE_DUE_TIMERS: &str = "DELETE FROM timers WHERE (instance_id, task) IN ( \
             SELECT instance_id, task FROM timers WHERE fire_at <= $1 \
             FOR UPDATE SKIP LOCKED) \
         RETURNING instance_id, task, fire_at, execution_id";
    /// Whether an instance has messages, due timers or due activities.
    pub const HAS_PENDING_WORK: &str = "SELECT EXISTS (SELECT 1 FROM inbox WHERE instance_id = $1) \
         OR EXISTS (SELECT 1 FROM timers WHERE instance_id = $1 AND fire_at <= $2) \
         OR EXISTS (SELECT 1 FROM activities WHERE instance_id = $1 AND run_at <= $2)";
    /// Lease due activity rows whose lease is free or expired.
    pub const CLAIM_ACTIVITIES: &str = "UPDATE activities a SET lease_owner = $1, lease_until = $2 \
         FROM ( \
             SELECT id FROM activities \
             WHERE run_at <= $3 AND (lease_until IS NULL OR lease_until < $5) \
             ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED \
         ) due \
         WHERE a.id = due.id \
         RETURNING a.id, a.instance_id, a.execution_id, a.task, a.name, a.input, a.retry, \
             a.attempt, a.first_at";
    /// Inbox messages an episode consumed.
    pub const DELETE_CONSUMED: &str = "DELETE FROM inbox WHERE instance_id = $1 AND id = ANY($2)";
    /// When the next timer is due.
    pub const NEXT_TIMER_DUE: &str = "SELECT MIN(fire_at) FROM timers";
    /// Instances by status.
    pub const COUNT_BY_STATUS: &str = "SELECT status, count(*) FROM instances GROUP BY status";
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
        "UPDATE instances SET lease_until = $2 WHERE id IN ( \
             SELECT id FROM instances WHERE lease_owner = $1 FOR UPDATE SKIP LOCKED)",
        "UPDATE activities SET lease_until = $2 WHERE id IN ( \
             SELECT id FROM activities WHERE lease_owner = $1 FOR UPDATE SKIP LOCKED)",
    ];
    /// One statement per table for a batch of purged ids ($1, a text array).
    pub const PURGE_BATCH: [&str; 5] = [
        "DELETE FROM history WHERE instance_id = ANY($1)",
        "DELETE FROM inbox WHERE instance_id = ANY($1)",
        "DELETE FROM timers WHERE instance_id = ANY($1)",
        "DELETE FROM activities WHERE instance_id = ANY($1)",
        "DELETE FROM instances WHERE id = ANY($1)",
    ];
}

async fn exec(c: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<u64> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.execute(&stmt, params).await.map_err(backend)
}

async fn rows(c: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query(&stmt, params).await.map_err(backend)
}

async fn row(c: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<Option<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query_opt(&stmt, params).await.map_err(backend)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        message: format!("stored {what} cannot be read: {e}"),
        retriable: false,
    }
}

fn to_json<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

fn instance_from_row(row: &Row) -> StoreResult<Instance> {
    let status: String = row.get("status");
    Ok(Instance {
        id: row.get("id"),
        name: row.get("name"),
        status: RuntimeStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        input: row.get("input"),
        output: row.get("output"),
        custom_status: row.get("custom_status"),
        component: row.get("component"),
        execution_id: row.get("execution_id"),
        created_at: row.get::<_, i64>("created_at") as Millis,
        updated_at: row.get::<_, i64>("updated_at") as Millis,
        history_len: row.get::<_, i64>("history_len") as u64,
        parent: row
            .get::<_, Option<String>>("parent_instance")
            .map(|instance| ParentCall {
                instance,
                execution: row.get("parent_execution"),
                task: row.get::<_, Option<i64>>("parent_task").unwrap_or(0) as u32,
            }),
        trace_parent: row.get("trace_parent"),
    })
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
    let event: &str = r.get(2);
    Ok(HistoryEntry {
        seq: r.get::<_, i64>(0) as u64,
        timestamp: r.get::<_, i64>(1) as Millis,
        event: serde_json::from_str(event).map_err(|e| corrupt("history event", e))?,
    })
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

/// Put a message into an inbox, marking the instance ready (the writer
/// tells other hosts after the commit).
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

/// Delete instances and everything they own, one statement per table for
/// the whole batch; returns how many instances there were.
async fn delete_instances(c: &impl GenericClient, ids: &[String]) -> StoreResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut deleted = 0;
    for statement in sql::PURGE_BATCH {
        // The last statement deletes the instance rows themselves.
        deleted = exec(c, statement, &[&ids]).await?;
    }
    Ok(deleted as usize)
}

/// Create an instance with its `ExecutionStarted` event and a start message,
/// replacing a finished one with the same id (as on SQLite).
pub async fn insert_instance(c: &impl GenericClient, instance: &Instance) -> StoreResult<()> {
    if let Some(existing) = get_instance(c, &instance.id).await? {
        if !existing.status.is_terminal() {
            return Err(StoreError::AlreadyExists(instance.id.clone()));
        }
        delete_instances(c, std::slice::from_ref(&instance.id)).await?;
    }
    let parent = instance.parent.as_ref();
    let inserted = exec(
        c,
        "INSERT INTO instances (id, name, status, input, output, custom_status, component, \
         created_at, updated_at, history_len, input_hash, execution_id, parent_instance, \
         parent_execution, parent_task, trace_parent, ready_at) \
         VALUES ($1, $2, $3, $4, NULL, NULL, $5, $6, $6, 1, $7, $8, $9, $10, $11, $12, $6) \
         ON CONFLICT (id) DO NOTHING",
        &[
            &instance.id,
            &instance.name,
            &RuntimeStatus::Pending.as_str(),
            &instance.input,
            &instance.component,
            &(instance.created_at as i64),
            &input_hash(&instance.input),
            &instance.execution_id,
            &parent.map(|p| p.instance.as_str()),
            &parent.map(|p| p.execution.as_str()),
            &parent.map(|p| p.task as i64),
            &instance.trace_parent,
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(StoreError::AlreadyExists(instance.id.clone()));
    }
    let started = HistoryEvent::ExecutionStarted {
        name: instance.name.clone(),
        input: instance.input.clone(),
    };
    // Sent together (one round trip): a biased join polls, so sends, in
    // order. The row is ready from its insert on: the start message goes
    // in directly.
    let start = to_json("message", &Message::Start)?;
    let (control, created_at) = (Message::Start.is_control(), instance.created_at as i64);
    let start_row: Params<'_> = &[&instance.id, &start, &control, &created_at];
    let (appended, pushed) = tokio::join!(
        biased;
        append_events(
            c,
            &instance.id,
            0,
            std::slice::from_ref(&started),
            instance.created_at
        ),
        exec(
            c,
            "INSERT INTO inbox (instance_id, message, control, created_at) VALUES ($1, $2, $3, $4)",
            start_row,
        ),
    );
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
async fn lock_version(tx: &Transaction<'_>, id: &str) -> StoreResult<(Version, Option<String>)> {
    let found = row(tx, sql::LOCK_VERSION, &[&id])
        .await?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    Ok((
        Version {
            execution_id: found.get(0),
            history_len: found.get::<_, i64>(1) as u64,
            component: found.get(2),
        },
        found.get(3),
    ))
}

fn conflict(id: &str, change: String) -> StoreError {
    StoreError::Conflict {
        instance: id.to_string(),
        change,
    }
}

/// Refuse a write computed from another version of the instance.
async fn check_version(tx: &Transaction<'_>, id: &str, expected: &Version) -> StoreResult<()> {
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
    tx: &Transaction<'_>,
    id: &str,
    message: &Message,
    max_inbox: usize,
    at: Millis,
) -> StoreResult<()> {
    // One statement: the message goes in only beside its live instance,
    // and an event only while fewer than `max_inbox` messages wait for it
    // (control messages always: a flood must not make it unstoppable).
    let json = to_json("message", message)?;
    let finished: Vec<&str> = RuntimeStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(RuntimeStatus::as_str)
        .collect();
    // The instance's row is locked and marked ready first (see
    // `sql::PUSH_MESSAGE`), and the message goes in only if it qualified.
    let inserted = exec(
        tx,
        "WITH target AS ( \
             UPDATE instances SET ready_at = CASE WHEN $3 OR status <> 'Suspended' \
                 THEN COALESCE(ready_at, $4) ELSE ready_at END \
             WHERE id = $1 AND NOT status = ANY($5) AND ($3 OR ( \
                 SELECT count(*) FROM (SELECT 1 FROM inbox WHERE instance_id = $1 LIMIT $6) w) < $6) \
             RETURNING id) \
         INSERT INTO inbox (instance_id, message, control, created_at) \
         SELECT id, $2, $3, $4 FROM target",
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
        Some(instance) if !instance.status.is_terminal() => {
            return Err(StoreError::NotFinished {
                id: id.to_string(),
                status: instance.status,
            });
        }
        Some(_) => delete_instances(&tx, &[id.to_string()]).await? > 0,
    };
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
/// only for control messages) whose lease is free or expired.
pub async fn claim_ready(
    c: &Object,
    owner: &str,
    now: Millis,
    lease_until: i64,
    max: usize,
) -> StoreResult<Vec<String>> {
    let claimed = rows(
        c,
        sql::CLAIM_READY,
        &[&owner, &lease_until, &(now as i64), &(max as i64)],
    )
    .await?;
    Ok(claimed.iter().map(|r| r.get(0)).collect())
}

/// Give leases back (only those this host still holds).
pub async fn release(c: &Object, owner: &str, ids: &[String]) -> StoreResult<()> {
    exec(c, sql::RELEASE, &[&ids, &owner]).await?;
    Ok(())
}

pub async fn load(c: &mut Object, id: &str, with_history: bool) -> StoreResult<LoadedInstance> {
    // One snapshot for the three reads, and one round trip for all of it:
    // the statements are prepared first (a cache hit after the first use
    // on a connection), then BEGIN, the reads and COMMIT are sent without
    // waiting for each other's answers (tokio-postgres sends a request when
    // its future is first polled, and a biased `join!` polls them in order). A read
    // that fails aborts the transaction, and COMMIT then rolls it back, so
    // the connection goes back to the pool clean either way.
    let get = c.prepare_cached(sql::GET_INSTANCE).await.map_err(backend)?;
    let history = c.prepare_cached(sql::LOAD_HISTORY).await.map_err(backend)?;
    let inbox = c.prepare_cached(sql::LOAD_INBOX).await.map_err(backend)?;
    let client: &tokio_postgres::Client = c;
    let params: Params<'_> = &[&id];
    let (begun, instance, history, inbox, committed) = tokio::join!(
        biased;
        client.batch_execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
        client.query_opt(&get, params),
        async {
            if with_history {
                client.query(&history, params).await.map(Some)
            } else {
                Ok(None)
            }
        },
        client.query(&inbox, params),
        client.batch_execute("COMMIT"),
    );
    begun.map_err(backend)?;
    let (instance, history, inbox) = (
        instance.map_err(backend)?,
        history.map_err(backend)?,
        inbox.map_err(backend)?,
    );
    committed.map_err(backend)?;
    let instance = instance
        .map(|r| instance_from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(id.into()))?;
    let history = history
        .unwrap_or_default()
        .iter()
        .map(history_entry)
        .collect::<StoreResult<Vec<_>>>()?;
    let inbox = inbox
        .iter()
        .map(|r| {
            let message: String = r.get(1);
            Ok(InboxEntry {
                id: r.get(0),
                message: serde_json::from_str(&message).map_err(|e| corrupt("inbox message", e))?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(LoadedInstance {
        instance,
        history,
        inbox,
    })
}

/// Apply one episode, if its host still holds the lease and the instance
/// is at the version the episode was computed from.
pub async fn apply_episode(
    tx: &Transaction<'_>,
    owner: &str,
    episode: &EpisodeCommit,
) -> StoreResult<()> {
    let instance = &episode.instance;
    let id = instance.id.as_str();
    let (actual, lease_owner) = lock_version(tx, id).await?;
    if let Some(holder) = lease_owner.filter(|holder| holder != owner) {
        return Err(conflict(
            id,
            format!("its lease passed to {holder} (this host's had expired)"),
        ));
    }
    if let Some(change) = episode.expected.change_to(&actual) {
        return Err(conflict(id, change));
    }
    let first_seq = if episode.reset_history {
        exec(tx, "DELETE FROM history WHERE instance_id = $1", &[&id]).await?;
        drop_scheduled_work(tx, id).await?;
        0
    } else {
        episode.expected.history_len
    };
    if episode.reset_history {
        exec(
            tx,
            "UPDATE instances SET input = $2, input_hash = $3, execution_id = $4 WHERE id = $1",
            &[
                &id,
                &instance.input,
                &input_hash(&instance.input),
                &instance.execution_id,
            ],
        )
        .await?;
    }
    // The events, the consumed messages and the row (the commit gives the
    // lease back) touch different rows: sent together, one round trip (a
    // biased join polls, so sends, in order; the row's readiness is read
    // after the consumed messages went).
    let (status, updated_at, history_len) = (
        instance.status.as_str(),
        instance.updated_at as i64,
        instance.history_len as i64,
    );
    let new_row: Params<'_> = &[
        &id,
        &status,
        &instance.output,
        &instance.custom_status,
        &updated_at,
        &history_len,
    ];
    let (appended, consumed, updated) = tokio::join!(
        biased;
        append_events(tx, id, first_seq, &episode.new_events, instance.updated_at),
        async {
            if episode.consumed.is_empty() {
                return Ok(0);
            }
            exec(tx, sql::DELETE_CONSUMED, &[&id, &episode.consumed]).await
        },
        exec(tx, sql::UPDATE_AFTER_EPISODE, new_row),
    );
    appended?;
    updated?;
    consumed?;
    for timer in &episode.new_timers {
        exec(
            tx,
            "INSERT INTO timers (instance_id, task, fire_at, execution_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (instance_id, task) \
             DO UPDATE SET fire_at = EXCLUDED.fire_at, execution_id = EXCLUDED.execution_id",
            &[
                &timer.instance,
                &(timer.task as i64),
                &(timer.fire_at as i64),
                &timer.execution,
            ],
        )
        .await?;
    }
    for task in &episode.cancelled_timers {
        exec(
            tx,
            "DELETE FROM timers WHERE instance_id = $1 AND task = $2",
            &[&id, &(*task as i64)],
        )
        .await?;
    }
    for call in &episode.new_activities {
        let retry = call
            .retry
            .as_ref()
            .map(|r| to_json("retry policy", r))
            .transpose()?;
        exec(
            tx,
            "INSERT INTO activities (instance_id, execution_id, task, name, input, retry, run_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &call.instance,
                &call.execution,
                &(call.task as i64),
                &call.name,
                &call.input,
                &retry,
                &(instance.updated_at as i64),
            ],
        )
        .await?;
    }
    for child in &episode.new_children {
        // A child whose id a live instance holds fails the call, not the
        // parent's episode.
        let created = in_savepoint(tx, insert_instance(tx, child)).await?;
        if let (Err(e), Some(parent)) = (created, &child.parent) {
            let failed = Message::ChildDone {
                task: parent.task,
                execution: parent.execution.clone(),
                result: Err(format!("sub-orchestration not started: {e}")),
            };
            push_message(tx, &parent.instance, &failed, instance.updated_at).await?;
        }
    }
    if instance.status.is_terminal() {
        notify_parent(tx, instance).await?;
        drop_scheduled_work(tx, id).await?;
    }
    for message in &episode.follow_up {
        push_message(tx, id, message, instance.updated_at).await?;
    }
    Ok(())
}

/// Run `op` in a savepoint of its own, so that its failure undoes only
/// what it wrote: its result, inside the transaction's (whose error means
/// the transaction itself failed). Savepoints nest: a name reused inside
/// one refers to the innermost.
pub async fn in_savepoint<T>(
    tx: &Transaction<'_>,
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

/// Delete the timers and activity calls of an execution that has ended.
async fn drop_scheduled_work(tx: &Transaction<'_>, id: &str) -> StoreResult<()> {
    let params: Params<'_> = &[&id];
    let (timers, activities) = tokio::join!(
        biased;
        exec(tx, "DELETE FROM timers WHERE instance_id = $1", params),
        exec(tx, "DELETE FROM activities WHERE instance_id = $1", params),
    );
    timers?;
    activities?;
    Ok(())
}

/// Tell the parent of a sub-orchestration that has just ended how it ended.
async fn notify_parent(tx: &Transaction<'_>, child: &Instance) -> StoreResult<()> {
    let Some(parent) = &child.parent else {
        return Ok(());
    };
    if row(
        tx,
        "SELECT 1 FROM instances WHERE id = $1",
        &[&parent.instance],
    )
    .await?
    .is_none()
    {
        return Ok(());
    }
    let message = Message::ChildDone {
        task: parent.task,
        execution: parent.execution.clone(),
        result: duro_core::model::child_result(child),
    };
    push_message(tx, &parent.instance, &message, child.updated_at).await
}

/// Move due timers into their instances' inboxes, skipping rows another
/// host is moving: each timer fires once.
pub async fn fire_due_timers(c: &mut Object, now: Millis) -> StoreResult<usize> {
    let tx = c.transaction().await.map_err(backend)?;
    let mut due = rows(&tx, sql::FIRE_DUE_TIMERS, &[&(now as i64)]).await?;
    // Instance rows are locked in id order, as other writers' are likeliest
    // to be, so that fewer lock waits can close a cycle.
    due.sort_by(|a, b| a.get::<_, &str>(0).cmp(b.get::<_, &str>(0)));
    for timer in &due {
        let instance: String = timer.get(0);
        let message = Message::TimerFired {
            task: timer.get::<_, i64>(1) as u32,
            fire_at: timer.get::<_, i64>(2) as Millis,
            execution: Some(timer.get(3)),
        };
        push_message(&tx, &instance, &message, now).await?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(due.len())
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
    tx: &Transaction<'_>,
    owner: &str,
    id: i64,
    finish: ActivityFinish,
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
                    &(attempt as i64),
                    &(run_at as i64),
                    &(first_at as i64),
                    &owner,
                ],
            )
            .await?;
        }
        ActivityFinish::Done(message) => {
            let done = row(
                tx,
                "DELETE FROM activities WHERE id = $1 RETURNING instance_id",
                &[&id],
            )
            .await?;
            if let Some(done) = done {
                let instance: String = done.get(0);
                push_message(tx, &instance, &message, at).await?;
            }
        }
    }
    Ok(())
}
