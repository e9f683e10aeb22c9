//! The embedded SQLite store: WAL, `synchronous=FULL`, one writer thread that
//! group-commits every write waiting for it, and a pool of read connections.
//!
//! An SQLite file belongs to one `duro` host at a time, so instance leases
//! are kept in memory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};

use duro_core::model::{
    ActivityCall, HistoryEntry, HistoryEvent, InboxEntry, Instance, InstanceQuery, Message, Millis,
    RuntimeStatus, canonical_json_text, input_hash,
};
use duro_core::schedule::ScheduleRow;
use duro_core::store::plan::{self, Write};
use duro_core::store::{
    ActivityFinish, ActivityWork, ClientStore, EpisodeCommit, LeaseSet, LoadedInstance,
    RuntimeStore, ScheduleCommit, StoreCounts, StoreError, StoreResult, Version,
};
use duro_store_sql::listing::{self, SqlValue};
pub use duro_store_sql::rows::INSTANCE_COLUMNS;
use duro_store_sql::rows::{self, InstanceRow, corrupt};

/// PRAGMAs applied to every connection, in order.
const PRAGMAS: &[(&str, &str)] = &[
    ("journal_mode", "WAL"),
    ("synchronous", "FULL"),
    ("foreign_keys", "ON"),
    ("busy_timeout", "5000"),
];

/// The writer maps the file, so its reads (guards, index pages) are not
/// copied in with a system call each, and its small cache mostly holds the
/// pages it writes. Read connections do not: a read transaction that finds
/// the WAL changed by another connection drops its map, and the next one
/// maps it again and faults every page it touches in anew. With writes
/// every millisecond that was nearly every read: two munmap/mmap pairs a
/// seed lifecycle, 10-16 % of duro's CPU at one client.
const WRITER_MMAP_BYTES: i64 = 256 << 20;

/// The writer's page cache (SQLite's default is 2 MiB). With the file
/// mapped ([`WRITER_MMAP_BYTES`]), pages are read from the map and the cache mostly holds the ones
/// written; 32 MiB was no faster than 4 (lifebench over 100,000 stored
/// instances, a 100,000-instance purge) and kept 20-30 MiB more resident.
const WRITER_CACHE_KIB: i64 = 4 * 1024;

/// A step of a migration that SQL alone cannot do.
type MigrationCode = fn(&Connection) -> StoreResult<()>;

/// Numbered schema migrations, each SQL and then optional code, in one
/// transaction; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[(&str, Option<MigrationCode>)] = &[
    (include_str!("migrations/0001_initial.sql"), None),
    (
        include_str!("migrations/0002_instance_queries.sql"),
        Some(backfill_input_hashes),
    ),
    (include_str!("migrations/0003_executions.sql"), None),
    (include_str!("migrations/0004_activities.sql"), None),
    (include_str!("migrations/0005_sub_orchestrations.sql"), None),
    (include_str!("migrations/0006_trace_context.sql"), None),
    (include_str!("migrations/0007_schedules.sql"), None),
    (include_str!("migrations/0008_entities.sql"), None),
];

/// Store every existing input canonically, with its hash.
fn backfill_input_hashes(conn: &Connection) -> StoreResult<()> {
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT id, input FROM instances")
        .map_err(backend)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(backend)?
        .collect::<rusqlite::Result<_>>()
        .map_err(backend)?;
    let mut update = conn
        .prepare("UPDATE instances SET input = ?2, input_hash = ?3 WHERE id = ?1")
        .map_err(backend)?;
    for (id, input) in rows {
        let canonical = canonical_json_text(input);
        update
            .execute(params![id, canonical, input_hash(&canonical)])
            .map_err(backend)?;
    }
    Ok(())
}

/// Most writes folded into one transaction.
const MAX_GROUP: usize = 512;

/// The statements of the workers and clients, besides listings (which
/// `listing` builds): named so that the query-plan test explains exactly
/// the text the store runs.
pub mod sql {
    /// Whether any message waits in the inbox of instance ?1.
    pub const MESSAGES_WAIT: &str = "SELECT EXISTS (SELECT 1 FROM inbox WHERE instance_id = ?1)";
    /// A message into an instance's inbox (?1 instance, ?2 message, ?3
    /// control, ?4 when).
    pub const INSERT_MESSAGE: &str =
        "INSERT INTO inbox (instance_id, message, control, created_at) VALUES (?1, ?2, ?3, ?4)";
    /// [`INSERT_MESSAGE`], if the instance exists.
    pub const INSERT_MESSAGE_IF_PRESENT: &str = "INSERT INTO inbox \
         (instance_id, message, control, created_at) \
         SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM instances WHERE id = ?1)";
    /// Instances by status (the status index, no table read).
    pub const COUNT_BY_STATUS: &str = duro_store_sql::rows::COUNT_BY_STATUS;
    /// Messages in inboxes.
    pub const COUNT_INBOX: &str = "SELECT count(*) FROM inbox";
    /// Timers not fired.
    pub const COUNT_TIMERS: &str = "SELECT count(*) FROM timers";
    /// Timers due at ?1.
    pub const COUNT_TIMERS_DUE: &str = "SELECT count(*) FROM timers WHERE fire_at <= ?1";
    /// Activity calls not finished.
    pub const COUNT_ACTIVITIES: &str = "SELECT count(*) FROM activities";
    /// Instances with messages to process (a suspended one only for control
    /// messages). Reads the inbox in index order and stops at the limit.
    pub const CLAIM_READY: &str = "SELECT DISTINCT i.instance_id FROM inbox i \
         JOIN instances s ON s.id = i.instance_id \
         WHERE s.status != 'Suspended' OR i.control = 1 LIMIT ?1";
    /// One instance row (columns of `INSTANCE_COLUMNS`).
    pub const GET_INSTANCE: &str = concat!(
        "SELECT ",
        duro_store_sql::instance_columns!(),
        " FROM instances WHERE id = ?1"
    );
    /// An instance's history.
    pub const LOAD_HISTORY: &str =
        "SELECT seq, timestamp, event FROM history WHERE instance_id = ?1 ORDER BY seq";
    /// A page of an instance's history: from seq ?2, at most ?3 events.
    pub const LOAD_HISTORY_PAGE: &str = "SELECT seq, timestamp, event FROM history \
         WHERE instance_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3";
    /// An instance's inbox.
    pub const LOAD_INBOX: &str = "SELECT id, message FROM inbox WHERE instance_id = ?1 ORDER BY id";
    /// How many messages an instance has waiting, counted up to ?2 only.
    pub const COUNT_WAITING: &str =
        "SELECT count(*) FROM (SELECT 1 FROM inbox WHERE instance_id = ?1 LIMIT ?2)";
    /// Schedules due by ?1, at most ?2, soonest first.
    pub const DUE_SCHEDULES: &str = "SELECT name, origin, spec, state, due_at, version \
         FROM schedules WHERE due_at <= ?1 ORDER BY due_at LIMIT ?2";
    /// When the soonest schedule is due.
    pub const NEXT_SCHEDULE_DUE: &str = "SELECT MIN(due_at) FROM schedules";
    /// Every schedule.
    pub const ALL_SCHEDULES: &str =
        "SELECT name, origin, spec, state, due_at, version FROM schedules ORDER BY name";
    /// One schedule.
    pub const GET_SCHEDULE: &str =
        "SELECT name, origin, spec, state, due_at, version FROM schedules WHERE name = ?1";
    /// A new schedule (?9 unused: the version read, none).
    pub const INSERT_SCHEDULE: &str = "INSERT INTO schedules (name, origin, spec, state, due_at, \
         waiting, last_instance, updated_at, version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, COALESCE(?9, 0)) ON CONFLICT (name) DO NOTHING";
    /// A schedule's row, if still at version ?9.
    pub const UPDATE_SCHEDULE: &str = "UPDATE schedules SET origin = ?2, spec = ?3, state = ?4, \
         due_at = ?5, waiting = ?6, last_instance = ?7, updated_at = ?8, version = version + 1 \
         WHERE name = ?1 AND version = ?9";
    /// A schedule's last run ended (?1 schedule, ?2 run, ?3 when).
    pub const SCHEDULED_RUN_ENDED: &str = "UPDATE schedules SET version = version + 1, \
         due_at = CASE WHEN waiting THEN ?3 ELSE due_at END \
         WHERE name = ?1 AND last_instance = ?2";
    /// Timers due now, taken out of the table.
    pub const FIRE_DUE_TIMERS: &str = "DELETE FROM timers WHERE fire_at <= ?1 \
         RETURNING instance_id, task, fire_at, execution_id";
    /// When the next timer is due.
    pub const NEXT_TIMER_DUE: &str = "SELECT MIN(fire_at) FROM timers";
    /// Whether an instance has messages, due timers or activities to run.
    pub const HAS_PENDING_WORK: &str = "SELECT EXISTS (SELECT 1 FROM inbox WHERE instance_id = ?1) \
         OR EXISTS (SELECT 1 FROM timers WHERE instance_id = ?1 AND fire_at <= ?2) \
         OR EXISTS (SELECT 1 FROM activities WHERE instance_id = ?1 AND run_at <= ?2)";
    /// Activity rows due now, in due order.
    pub const CLAIM_ACTIVITIES: &str = "SELECT id, instance_id, execution_id, task, name, input, \
         retry, attempt, first_at FROM activities WHERE run_at <= ?1 ORDER BY run_at, id LIMIT ?2";
    /// When the next activity row is due.
    pub const NEXT_ACTIVITY_DUE: &str = "SELECT MIN(run_at) FROM activities";
    /// One statement per table an instance owns (`plan::OWNED_ROWS`, the
    /// instance row last) for a batch of purged ids (a JSON array).
    pub static PURGE_BATCH: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        duro_core::store::plan::OWNED_ROWS
            .iter()
            .map(|(table, column)| {
                format!("DELETE FROM {table} WHERE {column} IN (SELECT value FROM json_each(?1))")
            })
            .collect()
    });
}

type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: run against the writer's connection (or, with an error, not run
/// at all), it returns what to tell its caller once the transaction ends.
type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Finish + Send>;

/// What the writer thread is asked to do.
enum WriterTask {
    /// A write, for the next group transaction.
    Write(Job),
    /// Free the page cache, between transactions.
    ReleaseMemory,
}

/// The SQLite store.
pub struct SqliteStore {
    writer: Mutex<mpsc::Sender<WriterTask>>,
    readers: Arc<Readers>,
    /// Instances some worker of this process is stepping.
    leased: LeaseSet,
    /// Activity rows some activity worker of this process is running.
    leased_activities: Mutex<HashSet<i64>>,
    /// Most messages one instance may have waiting ([`SqliteStore::open_with`]).
    max_inbox: usize,
}

fn backend(e: rusqlite::Error) -> StoreError {
    let retriable = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    StoreError::Backend {
        message: e.to_string(),
        retriable,
    }
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(backend)?;
    for (name, value) in PRAGMAS {
        conn.pragma_update(None, name, value).map_err(backend)?;
    }
    // Plans never depend on bound values (every listing names its index):
    // without this, binding a new LIMIT or a value SQLite's STAT4 code looks
    // at marks a cached statement expired and it is compiled again on its
    // next step (a tenth of the host's CPU under load, measured with perf).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let done: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if done > MIGRATIONS.len() {
        return Err(StoreError::Backend {
            message: format!(
                "the database is at schema version {done}, newer than this duro knows ({})",
                MIGRATIONS.len()
            ),
            retriable: false,
        });
    }
    for (index, (sql, code)) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        if let Some(code) = code {
            code(&tx)?;
        }
        tx.pragma_update(None, "user_version", index + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path`, migrate it and start the
    /// writer thread.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        Self::open_with(path, duro_core::store::DEFAULT_MAX_INBOX)
    }

    /// [`SqliteStore::open`], with at most `max_inbox` messages waiting
    /// for any one instance (`enqueue` refuses more with `InboxFull`).
    pub fn open_with(path: impl AsRef<Path>, max_inbox: usize) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend {
                message: format!("cannot create {}: {e}", dir.display()),
                retriable: false,
            })?;
        }
        let mut conn = open_connection(&path)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(backend)?;
        conn.pragma_update(None, "mmap_size", WRITER_MMAP_BYTES)
            .map_err(backend)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<WriterTask>();
        std::thread::Builder::new()
            .name("duro-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Backend {
                message: format!("cannot start the writer thread: {e}"),
                retriable: false,
            })?;
        Ok(SqliteStore {
            writer: Mutex::new(tx),
            readers: Arc::new(Readers {
                path,
                pool: Mutex::default(),
            }),
            leased: LeaseSet::default(),
            leased_activities: Mutex::default(),
            max_inbox,
        })
    }

    /// Hand `op` to the writer for its next group transaction: the reply
    /// comes once that transaction is durable, and no thread waits for it.
    fn submit<R: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> PendingWrite<R> {
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel::<StoreResult<R>>();
        let sent = self.submit_with(op, move |result| {
            let _ = reply_tx.send(result);
        });
        PendingWrite(sent.then_some(reply_rx))
    }

    /// Hand `op` to the writer; `reply` gets its result once the group's
    /// transaction has ended. False if the writer has stopped.
    fn submit_with<R: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
        reply: impl FnOnce(StoreResult<R>) + Send + 'static,
    ) -> bool {
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => in_savepoint(conn, op),
                Err(why) => Err(StoreError::Backend {
                    message: why.to_string(),
                    retriable: true,
                }),
            };
            Box::new(move |committed| {
                let result = match (result, committed) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(message)) => Err(StoreError::Backend {
                        message,
                        retriable: true,
                    }),
                };
                reply(result);
            })
        });
        self.writer
            .lock()
            .expect("writer sender poisoned")
            .send(WriterTask::Write(job))
            .is_ok()
    }

    /// Run `op` inside the writer's next group transaction; resolves once
    /// that transaction is durable.
    async fn write<R: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        self.submit(op).await
    }

    /// Run `op` on a pooled read connection, on the calling thread: for
    /// reads answered from an index in microseconds (an instance, its
    /// inbox, a claim), which a thread hop would only slow down.
    fn read<R>(&self, op: impl FnOnce(&Connection) -> StoreResult<R>) -> StoreResult<R> {
        self.readers.read(op)
    }

    /// Run `op` on a pooled read connection on a blocking thread: for
    /// reads whose size the caller picks (histories, listings, counts,
    /// component bytes), which must not hold up an async worker.
    async fn read_aside<R: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let readers = self.readers.clone();
        match tokio::task::spawn_blocking(move || readers.read(op)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Backend {
                message: format!("the read was cancelled: {e}"),
                retriable: true,
            }),
        }
    }
}

/// The read connections of a store, opened as needed and kept for reuse.
struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl Readers {
    fn read<R>(&self, op: impl FnOnce(&Connection) -> StoreResult<R>) -> StoreResult<R> {
        let pooled = self.pool.lock().expect("reader pool poisoned").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = op(&conn);
        // A connection left inside a transaction (a COMMIT that failed)
        // would answer every later read from its old snapshot: end it, or
        // drop the connection.
        if !conn.is_autocommit() && run(&conn, "ROLLBACK").is_err() {
            return result;
        }
        self.pool.lock().expect("reader pool poisoned").push(conn);
        result
    }
}

impl SqliteStore {
    /// An instance and its inbox, with its history if `with_history`.
    fn load_parts(&self, id: &str, with_history: bool) -> StoreResult<LoadedInstance> {
        self.read(|conn| {
            // The three reads see the same snapshot.
            in_snapshot(conn, || {
                let instance =
                    get_instance(conn, id)?.ok_or_else(|| StoreError::NotFound(id.into()))?;
                let history = if with_history {
                    get_history(conn, id)?
                } else {
                    Vec::new()
                };
                let mut stmt = conn.prepare_cached(sql::LOAD_INBOX).map_err(backend)?;
                let rows = stmt
                    .query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                    .map_err(backend)?;
                let mut inbox = Vec::new();
                for row in rows {
                    let (id, message) = row.map_err(backend)?;
                    inbox.push(InboxEntry {
                        id,
                        message: rows::message(&message)?,
                    });
                }
                Ok(LoadedInstance {
                    instance,
                    history,
                    inbox,
                })
            })
        })
    }

    /// The plan SQLite chooses for `sql` with `args`: the detail column of
    /// `EXPLAIN QUERY PLAN`, one line per step (for the query-plan test).
    pub fn explain(&self, sql: &str, args: &[SqlValue]) -> StoreResult<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .map_err(backend)?;
            let args = args.iter().map(sql_value);
            stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)
        })
    }

    /// Test and benchmark fixtures: insert finished instances, each with a
    /// two-event history (started, then its end), in one transaction. Rows
    /// are written as `create_instance` and an episode would write them, so
    /// every query and purge treats them like any other instance.
    pub async fn insert_finished(&self, instances: Vec<Instance>) -> StoreResult<usize> {
        self.write(move |conn| {
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO instances (id, name, status, input, output, custom_status, \
                     component, created_at, updated_at, history_len, input_hash, execution_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?8, 2, ?9, ?10)",
                )
                .map_err(backend)?;
            for instance in &instances {
                let last = match instance.status {
                    RuntimeStatus::Completed => HistoryEvent::ExecutionCompleted {
                        output: instance.output.clone().unwrap_or_else(|| "null".into()),
                    },
                    RuntimeStatus::Failed => HistoryEvent::ExecutionFailed {
                        error: instance.output.clone().unwrap_or_default(),
                    },
                    RuntimeStatus::Terminated => HistoryEvent::ExecutionTerminated { reason: None },
                    other => {
                        return Err(StoreError::Backend {
                            message: format!("a fixture instance must be finished, not {other}"),
                            retriable: false,
                        });
                    }
                };
                insert
                    .execute(params![
                        instance.id,
                        instance.name,
                        instance.status.as_str(),
                        instance.input,
                        instance.output,
                        instance.component,
                        instance.created_at as i64,
                        instance.updated_at as i64,
                        input_hash(&instance.input),
                        instance.execution_id,
                    ])
                    .map_err(backend)?;
                let started = HistoryEvent::ExecutionStarted {
                    name: instance.name.clone(),
                    input: instance.input.clone(),
                };
                append_events(conn, &instance.id, 0, &[started, last], instance.created_at)?;
            }
            Ok(instances.len())
        })
        .await
    }
}

/// A write handed to the writer thread (none if the writer had stopped):
/// resolves once its transaction is durable (or has failed).
struct PendingWrite<R>(Option<tokio::sync::oneshot::Receiver<StoreResult<R>>>);

impl<R> std::future::Future for PendingWrite<R> {
    type Output = StoreResult<R>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<StoreResult<R>> {
        let Some(reply) = self.0.as_mut() else {
            return std::task::Poll::Ready(Err(writer_stopped()));
        };
        std::pin::Pin::new(reply)
            .poll(cx)
            .map(|reply| reply.unwrap_or_else(|_| Err(writer_stopped())))
    }
}

#[cfg(test)]
impl<R> PendingWrite<R> {
    /// Its result, waited for on this thread (tests).
    fn wait(self) -> StoreResult<R> {
        self.0
            .ok_or_else(writer_stopped)?
            .blocking_recv()
            .map_err(|_| writer_stopped())?
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Backend {
        message: "the write was not applied: the SQLite writer failed while running \
                  its transaction (see the log)"
            .into(),
        retriable: true,
    }
}

/// Run one operation of a group so that its failure undoes only itself.
fn in_savepoint<R>(
    conn: &Connection,
    op: impl FnOnce(&Connection) -> StoreResult<R>,
) -> StoreResult<R> {
    run(conn, "SAVEPOINT op")?;
    let result = op(conn);
    if result.is_err() {
        run(conn, "ROLLBACK TO op")?;
    }
    run(conn, "RELEASE op")?;
    result
}

/// Run the reads of `op` in one read transaction, so that they see one
/// snapshot, unless `conn` is in a transaction already (the writer's).
fn in_snapshot<T>(conn: &Connection, op: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    if !conn.is_autocommit() {
        return op();
    }
    run(conn, "BEGIN")?;
    let result = op();
    // A read-only transaction: ending it either way changes nothing.
    run(conn, if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    result
}

/// Run a statement without parameters or rows from the statement cache:
/// `execute_batch` would parse it again on every call (a tenth of the
/// host's CPU under load, measured with perf).
fn run(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.raw_execute())
        .map(drop)
        .map_err(backend)
}

/// The writer thread: folds every waiting write into one transaction. A
/// write that panics fails its group (rolled back), and the thread goes on:
/// one bug never leaves every later write failing.
fn writer_loop(conn: Connection, tasks: mpsc::Receiver<WriterTask>) {
    while let Ok(first) = tasks.recv() {
        let mut group = Vec::new();
        let mut release_memory = false;
        let mut next = Some(first);
        while let Some(task) = next.take() {
            match task {
                WriterTask::Write(job) => group.push(job),
                WriterTask::ReleaseMemory => release_memory = true,
            }
            if group.len() < MAX_GROUP {
                next = tasks.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group_guarded(&conn, group);
        }
        if release_memory {
            // Outside a transaction, so that no page is pinned.
            if let Err(e) = run(&conn, "PRAGMA shrink_memory") {
                tracing::warn!("the SQLite writer could not free its cache: {e}");
            }
        }
    }
}

/// [`commit_group`], rolling back what a panicking write left behind.
fn commit_group_guarded(conn: &Connection, group: Vec<Job>) {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit_group(conn, group)));
    if ran.is_err() {
        // The waiters of the group were told (their reply channels closed
        // while unwinding); undo whatever the group had written.
        tracing::error!("a write panicked in the SQLite writer; its group was rolled back");
        if !conn.is_autocommit() {
            let _ = run(conn, "ROLLBACK");
        }
    }
}

/// Run `group` in as few transactions as possible: one, unless SQLite rolls
/// a transaction back by itself inside a write (disk full, I/O error). Then
/// the writes of that transaction fail (none of them is applied) and the
/// rest run in a new one, never one by one in autocommit mode.
fn commit_group(conn: &Connection, group: Vec<Job>) {
    let mut jobs = group.into_iter().peekable();
    while jobs.peek().is_some() {
        if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
            let why = format!("cannot begin a transaction: {e}");
            tracing::error!("{why}");
            for job in jobs {
                job(Err(&why))(Err(why.clone()));
            }
            return;
        }
        let mut finishers: Vec<Finish> = Vec::new();
        let mut rolled_back = false;
        for job in jobs.by_ref() {
            finishers.push(job(Ok(conn)));
            if conn.is_autocommit() {
                rolled_back = true;
                break;
            }
        }
        let committed = if rolled_back {
            let why = "SQLite rolled the transaction back; the write was not applied".to_string();
            tracing::error!("{why}");
            Err(why)
        } else {
            run(conn, "COMMIT").map_err(|e| {
                let _ = run(conn, "ROLLBACK");
                format!("commit failed: {e}")
            })
        };
        for finish in finishers {
            finish(committed.clone());
        }
    }
}

/// An instance row (its columns in the order of `INSTANCE_COLUMNS`), to
/// be decoded (`InstanceRow::decode`).
fn instance_row(row: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        id: row.get(0)?,
        name: row.get(1)?,
        status: row.get(2)?,
        input: row.get(3)?,
        output: row.get(4)?,
        custom_status: row.get(5)?,
        component: row.get(6)?,
        execution_id: row.get(7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
        history_len: row.get(10)?,
        parent_instance: row.get(11)?,
        parent_execution: row.get(12)?,
        parent_task: row.get(13)?,
        trace_parent: row.get(14)?,
        scheduled_by: row.get(15)?,
    })
}

fn get_instance(conn: &Connection, id: &str) -> StoreResult<Option<Instance>> {
    let row = conn
        .prepare_cached(sql::GET_INSTANCE)
        .map_err(backend)?
        .query_row([id], instance_row)
        .optional()
        .map_err(backend)?;
    row.map(InstanceRow::decode).transpose()
}

fn get_history(conn: &Connection, id: &str) -> StoreResult<Vec<HistoryEntry>> {
    let mut stmt = conn.prepare_cached(sql::LOAD_HISTORY).map_err(backend)?;
    history_rows(stmt.query([id]).map_err(backend)?)
}

fn get_history_page(
    conn: &Connection,
    id: &str,
    from: u64,
    limit: usize,
) -> StoreResult<Vec<HistoryEntry>> {
    let mut stmt = conn
        .prepare_cached(sql::LOAD_HISTORY_PAGE)
        .map_err(backend)?;
    history_rows(
        stmt.query(params![id, from as i64, limit as i64])
            .map_err(backend)?,
    )
}

/// History rows (seq, timestamp, event) as entries.
fn history_rows(mut rows: rusqlite::Rows<'_>) -> StoreResult<Vec<HistoryEntry>> {
    let mut history = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        // Decoded from the row's own text, not a copy of it.
        let event = row.get_ref(2).map_err(backend)?;
        let event = event.as_str().map_err(|e| corrupt("history event", e))?;
        history.push(rows::history_entry(
            row.get(0).map_err(backend)?,
            row.get(1).map_err(backend)?,
            event,
        )?);
    }
    Ok(history)
}

fn append_events(
    conn: &Connection,
    id: &str,
    first_seq: u64,
    events: &[HistoryEvent],
    at: Millis,
) -> StoreResult<()> {
    let now = at as i64;
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO history (instance_id, seq, timestamp, event) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    for (offset, event) in events.iter().enumerate() {
        let json = serde_json::to_string(event).map_err(|e| corrupt("history event", e))?;
        stmt.execute(params![id, (first_seq + offset as u64) as i64, now, json])
            .map_err(backend)?;
    }
    Ok(())
}

/// Put a message into the inbox of an instance the caller knows exists (it
/// just read or wrote it, or a row only a live instance has).
fn push_message(conn: &Connection, id: &str, message: &Message, at: Millis) -> StoreResult<()> {
    insert_message(conn, sql::INSERT_MESSAGE, id, message, at)
}

/// `plan::Write::Push`: put a message into an instance's inbox if the
/// instance exists (a parent may have been purged).
fn push_if_present(conn: &Connection, id: &str, message: &Message, at: Millis) -> StoreResult<()> {
    insert_message(conn, sql::INSERT_MESSAGE_IF_PRESENT, id, message, at)
}

fn insert_message(
    conn: &Connection,
    statement: &str,
    id: &str,
    message: &Message,
    at: Millis,
) -> StoreResult<()> {
    let json = serde_json::to_string(message).map_err(|e| corrupt("message", e))?;
    conn.prepare_cached(statement)
        .map_err(backend)?
        .execute(params![id, json, message.is_control(), at as i64])
        .map_err(backend)?;
    Ok(())
}

/// Delete instances and everything they own, one statement per table for
/// the whole batch; returns how many instances there were.
fn delete_instances(conn: &Connection, ids: &[String]) -> StoreResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let ids = serde_json::to_string(ids).map_err(|e| corrupt("instance ids", e))?;
    let mut deleted = 0;
    for statement in sql::PURGE_BATCH.iter() {
        // The last statement deletes the instance rows themselves.
        deleted = conn
            .prepare_cached(statement)
            .map_err(backend)?
            .execute([&ids])
            .map_err(backend)?;
    }
    Ok(deleted)
}

/// The rows of `columns` for the instances matching `query`, in the
/// listing's order: each statement is an index range scan (see `listing`),
/// and the rows of several (one per status) are merged.
fn list_rows<T>(
    conn: &Connection,
    query: &InstanceQuery,
    columns: &str,
    row: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
    key: impl Fn(&T) -> (Millis, &str),
) -> StoreResult<Vec<T>> {
    let limit = query.limit.max(1);
    let (statements, order) = listing::statements(query, columns, limit);
    if let [statement] = &statements[..] {
        return select(conn, statement, &row);
    }
    // Several statements read one snapshot: an instance that changes status
    // meanwhile is found once, not twice nor not at all.
    let rows = in_snapshot(conn, || {
        let mut rows = Vec::new();
        for statement in &statements {
            rows.extend(select(conn, statement, &row)?);
        }
        Ok(rows)
    })?;
    Ok(listing::merge(rows, query.newest_first, limit, |r| {
        let (created, id) = key(r);
        order.key(created, id)
    }))
}

/// The rows of one listing statement.
fn select<T>(
    conn: &Connection,
    statement: &listing::Statement,
    row: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(&statement.sql).map_err(backend)?;
    let args = statement.args.iter().map(sql_value);
    stmt.query_map(rusqlite::params_from_iter(args), row)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<T>>>()
        .map_err(backend)
}

fn sql_value(value: &SqlValue) -> rusqlite::types::Value {
    match value {
        SqlValue::Int(i) => rusqlite::types::Value::Integer(*i),
        SqlValue::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

fn list_instances(conn: &Connection, query: &InstanceQuery) -> StoreResult<Vec<Instance>> {
    static WITHOUT_INPUT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| listing::without_input(INSTANCE_COLUMNS));
    list_rows(
        conn,
        query,
        if query.skip_input {
            WITHOUT_INPUT.as_str()
        } else {
            INSTANCE_COLUMNS
        },
        instance_row,
        |i| (i.created_at.max(0) as Millis, i.id.as_str()),
    )?
    .into_iter()
    .map(InstanceRow::decode)
    .collect()
}

/// Create an instance with its `ExecutionStarted` event and a start message.
/// Like Durable Functions, an id whose instance has finished may be started
/// again (the old execution is replaced); a live one may not.
/// `plan::Write::Create`.
fn insert_instance(conn: &Connection, instance: &Instance, start_taken: bool) -> StoreResult<()> {
    if let Some(existing) = get_instance(conn, &instance.id)? {
        if !existing.status.is_terminal() {
            return Err(StoreError::AlreadyExists(instance.id.clone()));
        }
        delete_instances(conn, std::slice::from_ref(&instance.id))?;
    }
    let parent = instance.parent.as_ref();
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO instances (id, name, status, input, output, custom_status, \
             component, created_at, updated_at, history_len, input_hash, execution_id, \
             parent_instance, parent_execution, parent_task, trace_parent, scheduled_by) \
             VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5, ?6, ?6, 1, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .map_err(backend)?
        .execute(params![
            instance.id,
            instance.name,
            RuntimeStatus::Pending.as_str(),
            instance.input,
            instance.component,
            instance.created_at as i64,
            input_hash(&instance.input),
            instance.execution_id,
            parent.map(|p| &p.instance),
            parent.map(|p| &p.execution),
            parent.map(|p| p.task),
            instance.trace_parent,
            rows::scheduled_by_json(instance),
        ])
        .map_err(backend)?;
    if inserted == 0 {
        return Err(StoreError::AlreadyExists(instance.id.clone()));
    }
    append_events(
        conn,
        &instance.id,
        0,
        &[HistoryEvent::ExecutionStarted {
            name: instance.name.clone(),
            input: instance.input.clone(),
        }],
        instance.created_at,
    )?;
    if start_taken {
        return Ok(());
    }
    push_message(conn, &instance.id, &Message::Start, instance.created_at)
}

/// `plan::Write::EnsureEntity`.
fn insert_entity(conn: &Connection, row: &Instance) -> StoreResult<()> {
    conn.prepare_cached(rows::INSERT_ENTITY)
        .map_err(backend)?
        .execute(params![
            row.id,
            row.name,
            row.status.as_str(),
            row.input,
            row.output,
            row.component,
            row.created_at as i64,
            input_hash(&row.input),
            row.execution_id,
        ])
        .map_err(backend)?;
    Ok(())
}

/// Put a message into the inbox of a live instance (see
/// `ClientStore::enqueue`); only its status is read, on every message.
fn enqueue_live(
    conn: &Connection,
    id: &str,
    message: &Message,
    max_inbox: usize,
    at: Millis,
) -> StoreResult<()> {
    if let Some(Write::EnsureEntity { row }) = plan::ensure_entity(id, at) {
        insert_entity(conn, &row)?;
    }
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM instances WHERE id = ?1")
        .map_err(backend)?
        .query_row([id], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    let status = status.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    let status = RuntimeStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
    if status.is_terminal() {
        return Err(StoreError::Finished {
            id: id.to_string(),
            status,
        });
    }
    // Control messages (terminate, suspend, resume) always go in: a flood
    // of events must not make an instance impossible to stop.
    let waiting: i64 = if message.is_control() {
        0
    } else {
        conn.prepare_cached(sql::COUNT_WAITING)
            .map_err(backend)?
            .query_row(params![id, max_inbox as i64], |r| r.get(0))
            .map_err(backend)?
    };
    if waiting as usize >= max_inbox {
        return Err(StoreError::InboxFull {
            id: id.to_string(),
            limit: max_inbox,
        });
    }
    push_message(conn, id, message, at)
}

/// Refuse a write computed from another version of the instance.
fn check_version(conn: &Connection, id: &str, expected: &Version) -> StoreResult<()> {
    let actual = conn
        .prepare_cached("SELECT execution_id, history_len, component FROM instances WHERE id = ?1")
        .map_err(backend)?
        .query_row([id], |r| {
            Ok(Version {
                execution_id: r.get(0)?,
                history_len: r.get::<_, i64>(1)? as u64,
                component: r.get(2)?,
            })
        })
        .optional()
        .map_err(backend)?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    match expected.change_to(&actual) {
        Some(change) => Err(StoreError::Conflict {
            instance: id.to_string(),
            change,
        }),
        None => Ok(()),
    }
}

/// Apply an episode: its writes (`plan::episode`), in order.
fn apply_episode(conn: &Connection, episode: &EpisodeCommit) -> StoreResult<()> {
    plan::episode(episode)
        .iter()
        .try_for_each(|write| apply(conn, write))
}

/// Say one write of a commit in SQLite's dialect (see `plan::Write` for
/// what each means).
fn apply(conn: &Connection, write: &Write<'_>) -> StoreResult<()> {
    let exec = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> StoreResult<usize> {
        conn.prepare_cached(sql)
            .map_err(backend)?
            .execute(args)
            .map_err(backend)
    };
    match write {
        // One writer holds the file: the transaction is the lock.
        Write::Guard {
            id,
            expected,
            unread_inbox,
        } => {
            check_version(conn, id, expected)?;
            if *unread_inbox {
                let waiting: bool = conn
                    .prepare_cached(sql::MESSAGES_WAIT)
                    .map_err(backend)?
                    .query_row([id], |r| r.get(0))
                    .map_err(backend)?;
                if waiting {
                    return Err(plan::unread_messages_wait(id));
                }
            }
        }
        Write::ClearHistory { id } => {
            exec("DELETE FROM history WHERE instance_id = ?1", &[id])?;
        }
        Write::DropScheduledWork { id } => {
            exec("DELETE FROM timers WHERE instance_id = ?1", &[id])?;
            exec("DELETE FROM activities WHERE instance_id = ?1", &[id])?;
        }
        // The input only changes with the execution (continue-as-new):
        // leaving it out of the common UPDATE spares its index an update
        // per episode.
        Write::NewExecution {
            id,
            input,
            execution_id,
        } => {
            exec(
                "UPDATE instances SET input = ?2, input_hash = ?3, execution_id = ?4 WHERE id = ?1",
                &[id, input, &input_hash(input), execution_id],
            )?;
        }
        Write::AppendEvents {
            id,
            first_seq,
            events,
            at,
        } => append_events(conn, id, *first_seq, events, *at)?,
        Write::Consume { id, messages } => {
            for message in *messages {
                exec(
                    "DELETE FROM inbox WHERE instance_id = ?1 AND id = ?2",
                    &[id, message],
                )?;
            }
        }
        // Leases live in memory (`release_all` gives them back).
        Write::UpdateInstance { instance } => {
            exec(
                "UPDATE instances SET status = ?2, output = ?3, custom_status = ?4, \
                 updated_at = ?5, history_len = ?6 WHERE id = ?1",
                &[
                    &instance.id,
                    &instance.status.as_str(),
                    &instance.output,
                    &instance.custom_status,
                    &(instance.updated_at as i64),
                    &(instance.history_len as i64),
                ],
            )?;
        }
        Write::PutTimers { timers } => {
            for timer in *timers {
                exec(
                    "INSERT OR REPLACE INTO timers (instance_id, task, fire_at, execution_id) \
                     VALUES (?1, ?2, ?3, ?4)",
                    &[
                        &timer.instance,
                        &timer.task,
                        &(timer.fire_at as i64),
                        &timer.execution,
                    ],
                )?;
            }
        }
        Write::CancelTimers { id, tasks } => {
            for task in *tasks {
                exec(
                    "DELETE FROM timers WHERE instance_id = ?1 AND task = ?2",
                    &[id, task],
                )?;
            }
        }
        Write::ScheduleActivities { calls, at } => {
            for call in *calls {
                let retry = call
                    .retry
                    .as_ref()
                    .map(|r| serde_json::to_string(r).map_err(|e| corrupt("retry policy", e)))
                    .transpose()?;
                exec(
                    "INSERT INTO activities (instance_id, execution_id, task, name, input, retry, run_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    &[
                        &call.instance,
                        &call.execution,
                        &call.task,
                        &call.name,
                        &call.input,
                        &retry,
                        &(*at as i64),
                    ],
                )?;
            }
        }
        Write::Create {
            instance,
            start_taken,
        } => insert_instance(conn, instance, *start_taken)?,
        Write::CreateChild {
            child,
            if_taken,
            at,
        } => {
            // In a savepoint of its own: a child refused undoes only itself.
            run(conn, "SAVEPOINT child")?;
            let created = insert_instance(conn, child, false);
            if created.is_err() {
                run(conn, "ROLLBACK TO child")?;
            }
            run(conn, "RELEASE child")?;
            match (created, &child.parent, if_taken) {
                (Err(StoreError::AlreadyExists(_)), Some(parent), Some(if_taken)) => {
                    push_message(conn, &parent.instance, if_taken, *at)?;
                }
                (Err(StoreError::AlreadyExists(_)), _, None) => {}
                (created, _, _) => created?,
            }
        }
        Write::EnsureEntity { row } => insert_entity(conn, row)?,
        Write::Push { id, message, at } => push_if_present(conn, id, message, *at)?,
        Write::PutSchedule {
            name,
            expected,
            row,
            at,
        } => put_schedule(conn, name, *expected, *row, *at)?,
        Write::ScheduledRunEnded { schedule, id, at } => {
            conn.prepare_cached(sql::SCHEDULED_RUN_ENDED)
                .map_err(backend)?
                .execute(params![schedule, id, *at as i64])
                .map_err(backend)?;
        }
    }
    Ok(())
}

/// `plan::Write::PutSchedule`.
fn put_schedule(
    conn: &Connection,
    name: &str,
    expected: Option<u64>,
    row: Option<&ScheduleRow>,
    at: Millis,
) -> StoreResult<()> {
    let changed = match (expected, row) {
        (None, None) => 0,
        (Some(version), None) => conn
            .prepare_cached("DELETE FROM schedules WHERE name = ?1 AND version = ?2")
            .map_err(backend)?
            .execute(params![name, version as i64])
            .map_err(backend)?,
        (expected, Some(row)) => {
            let (spec, state) = rows::schedule_json(row)?;
            let values = params![
                name,
                row.origin.as_str(),
                spec,
                state,
                row.due_at.map(|t| t as i64),
                row.waiting(),
                row.state.last_instance,
                at as i64,
                expected.map(|v| v as i64),
            ];
            let statement = if expected.is_some() {
                sql::UPDATE_SCHEDULE
            } else {
                sql::INSERT_SCHEDULE
            };
            conn.prepare_cached(statement)
                .map_err(backend)?
                .execute(values)
                .map_err(backend)?
        }
    };
    match (changed, expected) {
        (0, None) => Err(StoreError::ScheduleExists(name.to_string())),
        (0, Some(_)) => Err(StoreError::ScheduleChanged(name.to_string())),
        _ => Ok(()),
    }
}

fn schedule_from_row(row: &Row<'_>) -> rusqlite::Result<StoreResult<ScheduleRow>> {
    Ok(rows::schedule_row(
        &row.get::<_, String>(0)?,
        &row.get::<_, String>(1)?,
        &row.get::<_, String>(2)?,
        &row.get::<_, String>(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn read_schedules(
    conn: &Connection,
    statement: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<ScheduleRow>> {
    let mut stmt = conn.prepare_cached(statement).map_err(backend)?;
    let rows = stmt
        .query_map(params, schedule_from_row)
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    rows.into_iter().collect()
}

#[async_trait::async_trait]
impl RuntimeStore for SqliteStore {
    /// Closes the pooled reader connections (each holds a page cache of
    /// its own; the next reads open new ones) and has the writer free its
    /// page cache between transactions.
    fn release_memory(&self) {
        let readers = std::mem::take(&mut *self.readers.pool.lock().expect("reader pool poisoned"));
        drop(readers);
        let _ = self
            .writer
            .lock()
            .expect("writer sender poisoned")
            .send(WriterTask::ReleaseMemory);
    }

    /// Leases live in memory: one host owns the file, and a crash ends all
    /// of them anyway, so making them durable would only cost an fsync per
    /// round.
    async fn claim_ready(
        &self,
        max: usize,
        _now: Millis,
        _lease_until: Millis,
    ) -> StoreResult<Vec<String>> {
        // The lease set is held across the read: a lease given back after
        // its commit must not be taken again by a claim that read the rows
        // from before that commit.
        let mut leased = self.leased.held();
        let held = leased.len();
        let candidates: Vec<String> = self.read(|conn| {
            let mut stmt = conn.prepare_cached(sql::CLAIM_READY).map_err(backend)?;
            stmt.query_map([(max + held) as i64], |r| r.get(0))
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(backend)
        })?;
        Ok(candidates
            .into_iter()
            .filter(|id| leased.insert(id.clone()))
            .take(max)
            .collect())
    }

    fn lease_local(&self, instance: &str) -> bool {
        self.leased.take(instance)
    }

    fn release_local(&self, instance: &str) {
        self.leased.give_back(instance);
    }

    fn leased_here(&self, instance: &str) -> bool {
        self.leased.holds(instance)
    }

    async fn release(&self, instance: &str) -> StoreResult<()> {
        self.release_local(instance);
        Ok(())
    }

    /// On the calling thread: the runtime loads from its episode threads,
    /// which wait for the answer anyway.
    async fn load(&self, id: &str) -> StoreResult<LoadedInstance> {
        self.load_parts(id, true)
    }

    async fn load_head(&self, id: &str) -> StoreResult<LoadedInstance> {
        self.load_parts(id, false)
    }

    async fn commit_episodes(&self, episodes: Vec<EpisodeCommit>) -> Vec<StoreResult<()>> {
        // Each episode is its own job: the writer folds them (and any other
        // waiting writes) into one transaction, each in its own savepoint.
        let ids: Vec<String> = episodes.iter().map(|e| e.instance.id.clone()).collect();
        let pending: Vec<_> = episodes
            .into_iter()
            .map(|episode| self.submit(move |conn| apply_episode(conn, &episode)))
            .collect();
        let mut results = Vec::with_capacity(pending.len());
        for result in pending {
            results.push(result.await);
        }
        self.leased.give_back_committed(&ids, &results);
        results
    }

    async fn fire_due_timers(&self, now: Millis) -> StoreResult<usize> {
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(sql::FIRE_DUE_TIMERS).map_err(backend)?;
            let due = stmt
                .query_map([now as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?;
            for (instance, task, fire_at, execution) in due.iter().cloned() {
                let fired = plan::timer_fired(task, fire_at as Millis, execution);
                push_message(conn, &instance, &fired, now)?;
            }
            Ok(due.len())
        })
        .await
    }

    async fn next_timer_due(&self) -> StoreResult<Option<Millis>> {
        self.read(|conn| {
            conn.query_row(sql::NEXT_TIMER_DUE, [], |r| r.get::<_, Option<i64>>(0))
                .map(|t| t.map(|t| t as Millis))
                .map_err(backend)
        })
    }

    async fn has_pending_work(&self, instance: &str, now: Millis) -> StoreResult<bool> {
        self.read(|conn| {
            conn.prepare_cached(sql::HAS_PENDING_WORK)
                .map_err(backend)?
                .query_row(params![instance, now as i64], |r| r.get(0))
                .map_err(backend)
        })
    }

    async fn claim_activities(
        &self,
        max: usize,
        now: Millis,
        _lease_until: Millis,
    ) -> StoreResult<Vec<ActivityWork>> {
        // Held across the read (see `claim_ready`): otherwise an attempt that
        // finishes between the read and the filter (row deleted, lease given
        // back) is claimed, and run, a second time.
        let mut leased = self.leased_activities.lock().expect("lease set poisoned");
        let held = leased.len();
        let rows: Vec<ActivityWork> = self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(sql::CLAIM_ACTIVITIES)
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![now as i64, (max + held) as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        ActivityCall {
                            instance: r.get(1)?,
                            execution: r.get(2)?,
                            task: r.get(3)?,
                            name: r.get(4)?,
                            input: r.get(5)?,
                            retry: None,
                        },
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, u32>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                    ))
                })
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?;
            rows.into_iter()
                .map(|(id, mut call, retry, attempt, first_at)| {
                    call.retry = retry
                        .map(|r| serde_json::from_str(&r).map_err(|e| corrupt("retry policy", e)))
                        .transpose()?;
                    Ok(ActivityWork {
                        id,
                        call,
                        attempt,
                        first_at: first_at.map(|t| t as Millis),
                    })
                })
                .collect()
        })?;
        Ok(rows
            .into_iter()
            .filter(|row| leased.insert(row.id))
            .take(max)
            .collect())
    }

    async fn finish_activity(
        &self,
        id: i64,
        _instance: &str,
        finish: ActivityFinish,
        now: Millis,
    ) -> StoreResult<()> {
        let result = self
            .write(move |conn| {
            match finish {
                ActivityFinish::Retry {
                    attempt,
                    run_at,
                    first_at,
                } => {
                    conn.prepare_cached(
                        "UPDATE activities SET attempt = ?2, run_at = ?3, first_at = ?4 WHERE id = ?1",
                    )
                    .map_err(backend)?
                    .execute(params![id, attempt, run_at as i64, first_at as i64])
                    .map_err(backend)?;
                }
                ActivityFinish::Done(message) => {
                    let instance: Option<String> = conn
                        .prepare_cached("DELETE FROM activities WHERE id = ?1 RETURNING instance_id")
                        .map_err(backend)?
                        .query_row([id], |r| r.get(0))
                        .optional()
                        .map_err(backend)?;
                    // Gone with its instance (purged, finished, continued
                    // as new): nobody waits for the result.
                    if let Some(instance) = instance {
                        push_message(conn, &instance, &message, now)?;
                    }
                }
            }
            Ok(())
        })
            .await;
        self.leased_activities
            .lock()
            .expect("lease set poisoned")
            .remove(&id);
        result
    }

    async fn next_activity_due(&self) -> StoreResult<Option<Millis>> {
        self.read(|conn| {
            conn.query_row(sql::NEXT_ACTIVITY_DUE, [], |r| r.get::<_, Option<i64>>(0))
                .map(|t| t.map(|t| t as Millis))
                .map_err(backend)
        })
    }

    async fn due_schedules(&self, now: Millis, max: usize) -> StoreResult<Vec<ScheduleRow>> {
        self.read(|conn| read_schedules(conn, sql::DUE_SCHEDULES, params![now as i64, max as i64]))
    }

    async fn next_schedule_due(&self) -> StoreResult<Option<Millis>> {
        self.read(|conn| {
            conn.query_row(sql::NEXT_SCHEDULE_DUE, [], |r| r.get::<_, Option<i64>>(0))
                .map(|t| t.map(|t| t as Millis))
                .map_err(backend)
        })
    }

    async fn component(&self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
        let digest = digest.to_string();
        self.read_aside(move |conn| {
            conn.query_row(
                "SELECT bytes FROM components WHERE digest = ?1",
                [digest],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }
}

#[async_trait::async_trait]
impl ClientStore for SqliteStore {
    async fn put_component(&self, digest: &str, bytes: &[u8], now: Millis) -> StoreResult<()> {
        let (digest, bytes) = (digest.to_string(), bytes.to_vec());
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO components (digest, bytes, created_at) VALUES (?1, ?2, ?3)",
                params![digest, bytes, now as i64],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn create_instance(&self, instance: &Instance) -> StoreResult<()> {
        let instance = instance.clone();
        self.write(move |conn| {
            plan::creation(&instance)
                .iter()
                .try_for_each(|write| apply(conn, write))
        })
        .await
    }

    async fn set_component(
        &self,
        id: &str,
        digest: &str,
        expected: &Version,
        now: Millis,
    ) -> StoreResult<()> {
        let (id, digest, expected) = (id.to_string(), digest.to_string(), expected.clone());
        self.write(move |conn| {
            check_version(conn, &id, &expected)?;
            conn.execute(
                "UPDATE instances SET component = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, digest, now as i64],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn enqueue(&self, instance: &str, message: &Message, now: Millis) -> StoreResult<()> {
        let (id, message, max) = (instance.to_string(), message.clone(), self.max_inbox);
        self.write(move |conn| enqueue_live(conn, &id, &message, max, now))
            .await
    }

    async fn instance(&self, id: &str) -> StoreResult<Option<Instance>> {
        self.read(|conn| get_instance(conn, id))
    }

    async fn counts(&self, now: Millis) -> StoreResult<StoreCounts> {
        self.read_aside(move |conn| {
            let mut counts = StoreCounts::default();
            let mut by_status = conn.prepare_cached(sql::COUNT_BY_STATUS).map_err(backend)?;
            let rows = by_status
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            for row in rows {
                let (status, n) = row.map_err(backend)?;
                let status =
                    RuntimeStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
                counts.instances.push((status, n as u64));
            }
            let count = |statement: &str, now: Option<i64>| -> StoreResult<u64> {
                let mut statement = conn.prepare_cached(statement).map_err(backend)?;
                let n: i64 = match now {
                    Some(now) => statement.query_row([now], |r| r.get(0)),
                    None => statement.query_row([], |r| r.get(0)),
                }
                .map_err(backend)?;
                Ok(n as u64)
            };
            counts.entities = count(rows::COUNT_ENTITIES, None)?;
            counts.inbox_messages = count(sql::COUNT_INBOX, None)?;
            counts.timers = count(sql::COUNT_TIMERS, None)?;
            counts.timers_due = count(sql::COUNT_TIMERS_DUE, Some(now as i64))?;
            counts.activities = count(sql::COUNT_ACTIVITIES, None)?;
            Ok(counts)
        })
        .await
    }

    async fn history(&self, id: &str) -> StoreResult<Vec<HistoryEntry>> {
        let id = id.to_string();
        self.read_aside(move |conn| get_history(conn, &id)).await
    }

    async fn history_page(
        &self,
        id: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<HistoryEntry>> {
        let id = id.to_string();
        self.read_aside(move |conn| get_history_page(conn, &id, from, limit))
            .await
    }

    /// A small lookup by input (a trigger finding its instance) reads a few
    /// index entries: on the calling thread, as a point read. Other
    /// listings go to a blocking thread.
    async fn list(&self, query: &InstanceQuery) -> StoreResult<Vec<Instance>> {
        if query.input.is_some() && query.limit <= 100 {
            return self.read(|conn| list_instances(conn, query));
        }
        let query = query.clone();
        self.read_aside(move |conn| list_instances(conn, &query))
            .await
    }

    async fn purge(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.write(move |conn| match get_instance(conn, &id)? {
            None => Ok(false),
            Some(instance) => match plan::purge_refused(&id, instance.status) {
                Some(refused) => Err(refused),
                None => Ok(delete_instances(conn, &[id])? > 0),
            },
        })
        .await
    }

    async fn purge_entity(&self, id: &str, version: u64) -> StoreResult<bool> {
        let id = id.to_string();
        self.write(move |conn| {
            let at_version = get_instance(conn, &id)?.is_some_and(|i| i.history_len == version);
            let waiting: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM inbox WHERE instance_id = ?1)")
                .map_err(backend)?
                .query_row([&id], |r| r.get(0))
                .map_err(backend)?;
            Ok(at_version && !waiting && delete_instances(conn, &[id])? > 0)
        })
        .await
    }

    async fn schedules(&self) -> StoreResult<Vec<ScheduleRow>> {
        self.read_aside(|conn| read_schedules(conn, sql::ALL_SCHEDULES, []))
            .await
    }

    async fn schedule(&self, name: &str) -> StoreResult<Option<ScheduleRow>> {
        self.read(|conn| Ok(read_schedules(conn, sql::GET_SCHEDULE, [name])?.pop()))
    }

    async fn commit_schedule(&self, commit: ScheduleCommit) -> StoreResult<()> {
        self.write(move |conn| {
            plan::schedule(&commit)
                .iter()
                .try_for_each(|write| apply(conn, write))
        })
        .await
    }

    async fn in_flight_versions(&self) -> StoreResult<Vec<(String, String, u64)>> {
        self.read_aside(|conn| {
            let mut stmt = conn
                .prepare_cached(&rows::in_flight_versions_sql())
                .map_err(backend)?;
            let pairs = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(rows::count_versions(pairs))
        })
        .await
    }

    async fn purge_batch(&self, query: &InstanceQuery) -> StoreResult<usize> {
        let query = query.clone();
        self.write(move |conn| {
            let ids: Vec<String> = list_rows(
                conn,
                &query,
                "id, created_at",
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as Millis)),
                |(id, created)| (*created, id.as_str()),
            )?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
            delete_instances(conn, &ids)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(store: &SqliteStore, id: &str) -> i64 {
        store
            .read(|conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM components WHERE digest = ?1",
                    [id],
                    |r| r.get(0),
                )
                .map_err(backend)
            })
            .unwrap()
    }

    fn put(store: &SqliteStore, digest: &str) -> PendingWrite<()> {
        let digest = digest.to_string();
        store.submit(move |conn| {
            conn.execute(
                "INSERT INTO components (digest, bytes, created_at) VALUES (?1, x'00', 0)",
                [digest],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    /// Hold the writer (once it runs this, alone) until the writes after it
    /// have queued up, so that they form one group.
    fn hold_writer(store: &SqliteStore) -> PendingWrite<()> {
        let (started, running) = mpsc::channel();
        let held = store.submit(move |_| {
            started.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            Ok(())
        });
        running.recv().unwrap();
        held
    }

    #[test]
    fn a_transaction_rolled_back_inside_a_group_fails_its_writes_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("w.db")).unwrap();
        let held = hold_writer(&store);
        let before = put(&store, "before");
        // What SQLite does by itself on a full disk or an I/O error.
        let rolls_back = store.submit(|conn| {
            conn.execute_batch("ROLLBACK").map_err(backend)?;
            Ok(())
        });
        let after = put(&store, "after");
        held.wait().unwrap();
        assert!(before.wait().is_err(), "rolled back with its transaction");
        assert!(rolls_back.wait().is_err());
        after.wait().expect("runs in a transaction of its own");
        assert_eq!(count(&store, "before"), 0);
        assert_eq!(count(&store, "after"), 1);
        // Nothing was left in autocommit mode: the next group commits whole.
        put(&store, "later").wait().unwrap();
        assert_eq!(count(&store, "later"), 1);
    }

    #[test]
    fn a_write_that_panics_fails_its_group_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("w.db")).unwrap();
        let held = hold_writer(&store);
        let before = put(&store, "before");
        let panics = store.submit(|_| -> StoreResult<()> { panic!("a bug in a write") });
        held.wait().unwrap();
        let error = before.wait().unwrap_err();
        assert!(error.to_string().contains("not applied"), "{error}");
        assert!(error.is_retriable());
        assert!(panics.wait().is_err());
        assert_eq!(count(&store, "before"), 0);
        put(&store, "after").wait().expect("the writer still runs");
        assert_eq!(count(&store, "after"), 1);
    }
}
