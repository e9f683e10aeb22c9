//! The shared store: PostgreSQL, so that several `duro serve` processes can
//! share one database and the work in it.
//!
//! Hosts share work through leases in the rows themselves: an instance or an
//! activity row is claimed with `FOR UPDATE SKIP LOCKED` by the host that
//! sets its `lease_owner`, until `lease_until`. A background task renews
//! the leases a live host holds; a host that dies stops renewing, and once
//! its leases expire another host claims the work. An episode commits only
//! while its host still holds the instance's lease and the instance is at
//! the version it was computed from. Due timers are moved to the inbox by a
//! `DELETE … RETURNING` that skips rows another host has locked, so each
//! fires once. Idle hosts hear of new work through `LISTEN/NOTIFY`. Writes
//! are group-committed (`writer`).
//!
//! The store runs on its caller's tokio runtime: `open` starts the writer
//! lanes, the notifier and the lease renewal there, and dropping the store
//! stops them.

mod batch;
mod notifier;
mod ops;
mod reader;
mod writer;

pub use batch::{GROUPED_SETTINGS, sql as batch_sql};
pub use ops::sql;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use duro_core::model::{HistoryEntry, Instance, InstanceQuery, Message, Millis, now_millis};
use duro_core::schedule::ScheduleRow;
use duro_core::store::{
    ActivityFinish, ActivityWork, ClientStore, EpisodeCommit, FinishFn, LeaseSet, LoadedInstance,
    RuntimeStore, ScheduleCommit, StoreCounts, StoreError, StoreResult, Version, WakeFn, WorkKind,
};
use tokio::task::AbortHandle;
use tokio_postgres::NoTls;

/// Numbered schema migrations, applied in order under an advisory lock (two
/// hosts starting at once migrate once); `duro_migrations` says which ran.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_trace_context.sql"),
    include_str!("migrations/0003_ready.sql"),
    include_str!("migrations/0004_schedules.sql"),
    include_str!("migrations/0005_entities.sql"),
];

/// The channel on which hosts tell each other the instances their commits
/// finished (payload: the host's name, then the ids, one a line).
const FINISHED_CHANNEL: &str = "duro_finished";

/// The channel on which a host says what its waiters wait for (payload: its
/// name, then the ids, one a line): the others tell it if they finish one
/// in the next `WAITER_HEARD_FOR`. (A payload of the name alone, from an
/// earlier version, has them tell it every finish for that long.)
const WAITING_CHANNEL: &str = "duro_waiting";

/// The advisory lock key that serialises migrations ("duro" in ASCII).
const MIGRATION_LOCK: i64 = 0x6475_726f;

/// The channels hosts notify and listen on.
const CHANNELS: [(&str, WorkKind); 3] = [
    ("duro_instances", WorkKind::Instances),
    ("duro_timers", WorkKind::Timers),
    ("duro_activities", WorkKind::Activities),
];

/// How a PostgreSQL store is opened.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema to keep duro's tables in (created if missing); none: the
    /// connection's default `search_path`.
    pub schema: Option<String>,
    /// How long a lease lasts without renewal: how soon the work of a host
    /// that died moves to another.
    pub lease_ttl: Duration,
    /// Most connections in the pool.
    pub max_connections: usize,
    /// Renew this host's leases while it lives (on, but for tests that
    /// play a host that hangs and loses its leases).
    pub renew_leases: bool,
    /// Most messages one instance may have waiting (`enqueue` refuses more
    /// with `InboxFull`).
    pub max_inbox: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: None,
            lease_ttl: Duration::from_secs(10),
            max_connections: 32,
            renew_leases: true,
            max_inbox: duro_core::store::DEFAULT_MAX_INBOX,
        }
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    /// This host's name in `lease_owner`.
    owner: String,
    lease_ttl: Duration,
    /// Most messages one instance may have waiting.
    max_inbox: usize,
    /// Whom to wake when another host makes work.
    wake: Arc<Mutex<Option<WakeFn>>>,
    /// Whom to tell of instances another host finished.
    finish: Arc<Mutex<Option<FinishFn>>>,
    /// Group commit of the writes.
    writer: writer::Writer,
    /// Grouped reads of instance rows (status requests).
    rows: reader::Reader<Instance>,
    /// Grouped loads of what episodes start from.
    loads: reader::Reader<LoadedInstance>,
    /// Connections of the grouped statements (`batch::GROUPED_SETTINGS`).
    grouped: Pool,
    /// Instances this host claimed, loaded by the claim, until their
    /// episode asks (`Prefetched`).
    prefetched: Mutex<HashMap<String, Prefetched>>,
    /// Instances leased to this host: claimed (a row says so too), or
    /// leased in memory for an episode that carries what it runs on
    /// (`RuntimeStore::lease_carried`: no row says so, for no other host
    /// sees work for them until that episode commits, and its commit is
    /// fenced by the instance's version and stored lease holder).
    leased: LeaseSet,
    /// Tells other hosts of new work.
    notifier: Arc<notifier::Notifier>,
    /// The store's background tasks, stopped with it.
    tasks: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The longest history a claim loads with its instance: a longer one is
/// read when the episode asks (a warm instance does not).
const PREFETCH_HISTORY: u64 = 64;

/// How long a claim's load is kept for its episode: the episode asks at
/// once; one that never does (a host stopping) must not leave a stale
/// snapshot for a later reader.
const PREFETCH_KEPT: Duration = Duration::from_secs(2);

/// An instance as the claim that leased it loaded it. Any reader of the
/// instance takes it (the `pending` view too, which then shows the claim's
/// snapshot, at most `PREFETCH_KEPT` old, and the episode reads afresh).
struct Prefetched {
    at: std::time::Instant,
    loaded: LoadedInstance,
    /// Its whole history came with it.
    whole: bool,
}

impl PgStore {
    /// The claim's load of `instance`, once, if fresh and (when `history`
    /// is wanted) whole.
    fn take_prefetched(&self, instance: &str, history: bool) -> Option<LoadedInstance> {
        let taken = (self.prefetched.lock().expect("prefetched poisoned")).remove(instance)?;
        (taken.at.elapsed() < PREFETCH_KEPT && (taken.whole || !history)).then_some(taken.loaded)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().expect("task list poisoned").drain(..) {
            task.abort();
        }
    }
}

/// Run `op` on a connection to `url` of its own (for tests and benchmarks).
async fn on_own_connection<T>(
    url: &str,
    op: impl AsyncFnOnce(&tokio_postgres::Client) -> StoreResult<T>,
) -> StoreResult<T> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| setup_error("the database URL", e))?;
    let (client, connection) = config.connect(NoTls).await.map_err(backend)?;
    let driver = tokio::spawn(connection);
    let result = op(&client).await;
    drop(client);
    let _ = driver.await;
    result
}

fn backend(e: tokio_postgres::Error) -> StoreError {
    // Errors without a SQL state are the connection's: the database went
    // away or is restarting, and trying again may help.
    let retriable = e.code().is_none_or(|code| {
        let code = code.code();
        code.starts_with("08") // connection exception
            || code.starts_with("57P") // operator intervention (shutdown)
            || code == "40001" // serialization failure
            || code == "40P01" // deadlock detected
            || code == "53300" // too many connections
    });
    let message = match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {}", db.message()),
        None => format!("PostgreSQL: {e}"),
    };
    StoreError::Backend { message, retriable }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => backend(e),
        other => StoreError::Backend {
            message: format!("PostgreSQL connection pool: {other}"),
            retriable: true,
        },
    }
}

fn setup_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        message: format!("{what}: {e}"),
        retriable: false,
    }
}

/// A name for this host that no other host shares.
fn host_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("host-{}-{:08x}", std::process::id(), nanos)
}

/// Whether `schema` is a plain identifier (it is spliced into SQL).
fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() < 64
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit())
}

impl PgStore {
    /// Connect to the database at `url` (`postgres://user:password@host/db`),
    /// migrate its schema and start renewing leases, on the current tokio
    /// runtime.
    pub async fn open(url: &str, options: PgOptions) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            // The URL is not repeated: it may hold a password.
            .map_err(|e| setup_error("the database URL (postgres://user:password@host/db)", e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if let Some(schema) = options.schema.as_deref().filter(|s| !valid_schema(s)) {
            return Err(setup_error(
                "schema",
                format!("{schema:?} is not a lowercase identifier"),
            ));
        }
        // Notices (`schema … already exists, skipping`) are not news.
        let mut session = String::from("-c client_min_messages=warning");
        if let Some(schema) = &options.schema {
            session.push_str(&format!(" -c search_path={schema}"));
        }
        // The grouped writes and reads have connections of their own,
        // whose sessions plan as `batch::GROUPED_SETTINGS` says.
        let mut grouped_config = config.clone();
        grouped_config.options(format!("{session}{}", batch::grouped_options()));
        config.options(session);
        let pool_of = |config: &tokio_postgres::Config, size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .build()
                .map_err(|e| setup_error("cannot build the connection pool", e))
        };
        let pool = pool_of(&config, options.max_connections.max(2))?;
        // The writer, two readers and the work loop's claims.
        let grouped = pool_of(&grouped_config, writer::LANES + 2 * reader::IN_FLIGHT + 1)?;
        let owner = host_name();
        let (notifier, notifying) = notifier::Notifier::start(pool.clone(), &owner);
        let writer = writer::Writer::start(&grouped, &owner, &notifier);
        let rows =
            reader::Reader::start(&grouped, sql::GET_INSTANCES, false, ops::instance_from_row);
        let loads = reader::Reader::start(&grouped, sql::LOAD_MANY, true, ops::loaded_from_row);
        let store = PgStore {
            writer,
            rows,
            loads,
            grouped,
            prefetched: Mutex::default(),
            leased: LeaseSet::default(),
            notifier,
            pool,
            config,
            owner,
            lease_ttl: options.lease_ttl,
            max_inbox: options.max_inbox,
            wake: Arc::default(),
            finish: Arc::default(),
            tasks: Mutex::new(notifying),
        };
        store.migrate(options.schema.as_deref()).await?;
        if options.renew_leases {
            store.spawn(renew_leases(
                store.pool.clone(),
                store.owner.clone(),
                store.lease_ttl,
            ));
        }
        Ok(store)
    }

    /// Drop `schema` and everything in it (tests give each store a schema
    /// of its own and drop it after).
    pub async fn drop_schema(url: &str, schema: &str) -> StoreResult<()> {
        if !valid_schema(schema) {
            return Err(setup_error("schema", format!("{schema:?} is not valid")));
        }
        let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        on_own_connection(url, async |client| {
            client.batch_execute(&sql).await.map_err(backend)
        })
        .await
    }

    /// The bytes the tables of `schema` take on disk, their indexes and
    /// TOAST included (for the benchmarks' bytes per instance).
    pub async fn schema_bytes(url: &str, schema: &str) -> StoreResult<u64> {
        on_own_connection(url, async |client| {
            let row = client
                .query_one(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind = 'r'",
                    &[&schema],
                )
                .await
                .map_err(backend)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    /// The plan PostgreSQL chooses for `sql` with `params` when a
    /// sequential scan is priced out (`enable_seqscan = off`): a table scan
    /// left in the plan means no index can serve the statement. One line
    /// per plan node (for the query-plan test).
    pub async fn explain(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<String>> {
        self.explain_with(sql, params, "SET LOCAL enable_seqscan = off")
            .await
    }

    /// The plan PostgreSQL chooses for `sql` with `params` as it would run
    /// now, on the table's statistics, after the session statements
    /// `setup` (for the query-plan test: a plan that does not depend on
    /// them).
    pub async fn explain_with(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        setup: &str,
    ) -> StoreResult<Vec<String>> {
        {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            tx.batch_execute(setup).await.map_err(backend)?;
            let plan = tx
                .query(&format!("EXPLAIN {sql}"), params)
                .await
                .map_err(backend)?;
            tx.rollback().await.map_err(backend)?;
            Ok(plan.iter().map(|r| r.get::<_, String>(0)).collect())
        }
    }

    /// The plan kept for `sql` as a prepared statement with parameters of
    /// `types`, run with the literal `values` under a generic plan, after
    /// the session statements `setup` (for the query-plan test: the plan
    /// a connection keeps, which `EXPLAIN` with parameters does not show).
    pub async fn explain_prepared(
        &self,
        sql: &str,
        types: &[&str],
        values: &[&str],
        setup: &str,
    ) -> StoreResult<Vec<String>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let script = format!(
            "{setup}; SET LOCAL plan_cache_mode = force_generic_plan; \
             PREPARE explained ({}) AS {sql}; EXPLAIN EXECUTE explained ({}); \
             DEALLOCATE explained",
            types.join(", "),
            values.join(", ")
        );
        let lines = tx
            .simple_query(&script)
            .await
            .map_err(backend)?
            .into_iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        tx.rollback().await.map_err(backend)?;
        Ok(lines)
    }

    /// For tests: the database URL in `DURO_TEST_POSTGRES_URL` and a schema
    /// named after `test` and this process, dropped first so that the test
    /// starts empty; `None` when the variable is not set, after saying that
    /// `test` is skipped, unless `DURO_REQUIRE_POSTGRES` is set (as in CI),
    /// which makes a missing server a failure.
    pub async fn test_schema(test: &str) -> Option<(String, String)> {
        let Ok(url) = std::env::var("DURO_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("DURO_REQUIRE_POSTGRES").is_none(),
                "DURO_REQUIRE_POSTGRES is set but DURO_TEST_POSTGRES_URL is not"
            );
            eprintln!("{test}: skipped on PostgreSQL (DURO_TEST_POSTGRES_URL is not set)");
            return None;
        };
        static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SWEPT.swap(true, std::sync::atomic::Ordering::Relaxed) {
            PgStore::drop_dead_test_schemas(&url)
                .await
                .expect("PostgreSQL reachable");
        }
        let schema = format!("t_{test}_{}", std::process::id()).to_lowercase();
        PgStore::drop_schema(&url, &schema)
            .await
            .expect("PostgreSQL reachable");
        Some((url, schema))
    }

    /// Drop the schemas earlier test processes on this machine left behind
    /// (`t_<test>_<pid>` whose process is gone), so that a database tests
    /// run against for months does not fill with them.
    async fn drop_dead_test_schemas(url: &str) -> StoreResult<()> {
        let schemas: Vec<String> = on_own_connection(url, async |client| {
            let rows = client
                .query(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'",
                    &[],
                )
                .await
                .map_err(backend)?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await?;
        for schema in schemas {
            let pid = schema.rsplit_once('_').map(|(_, pid)| pid);
            let dead = pid.is_some_and(|pid| {
                pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists()
            });
            if dead {
                PgStore::drop_schema(url, &schema).await?;
            }
        }
        Ok(())
    }

    /// Run `task` on the current runtime until the store is dropped.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(task).abort_handle();
        self.tasks.lock().expect("task list poisoned").push(task);
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn migrate(&self, schema: Option<&str>) -> StoreResult<()> {
        let mut client = self.client().await?;
        if let Some(schema) = schema {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(backend)?;
        }
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(backend)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS duro_migrations \
             (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(backend)?;
        let done: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM duro_migrations", &[])
            .await
            .map_err(backend)?
            .get(0);
        let done = done as usize;
        if done > MIGRATIONS.len() {
            return Err(setup_error(
                "schema",
                format!(
                    "the database is at schema version {done}, newer than this duro knows ({})",
                    MIGRATIONS.len()
                ),
            ));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(done) {
            tx.batch_execute(sql).await.map_err(backend)?;
            tx.execute(
                "INSERT INTO duro_migrations (version, applied_at) VALUES ($1, $2)",
                &[&(index as i32 + 1), &(now_millis() as i64)],
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    /// When a lease taken at `now` ends unless renewed.
    fn lease_deadline(&self, now: Millis) -> i64 {
        (now + self.lease_ttl.as_millis() as Millis) as i64
    }
}

/// Renew every lease this host holds, a third of the lease's life apart,
/// until the store is dropped (its runtime with it).
async fn renew_leases(pool: Pool, owner: String, ttl: Duration) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let until = (now_millis() + ttl.as_millis() as Millis) as i64;
        let renewed = async {
            let client = pool.get().await.map_err(pool_error)?;
            for sql in ops::sql::RENEW_LEASES {
                let stmt = client.prepare_cached(sql).await.map_err(backend)?;
                client
                    .execute(&stmt, &[&owner, &until])
                    .await
                    .map_err(backend)?;
            }
            StoreResult::Ok(())
        };
        if let Err(e) = renewed.await {
            tracing::warn!("cannot renew this host's leases: {e}");
        }
    }
}

/// Listen for other hosts' notifications and wake the runtime, reconnecting
/// (and waking everything, in case something was missed) when the
/// connection drops. This host's own (their payload is `owner`) wake
/// nothing: its runtime knows of its writes.
async fn listen(
    config: tokio_postgres::Config,
    owner: String,
    wake: WakeFn,
    finish: Arc<Mutex<Option<FinishFn>>>,
    notifier: Arc<notifier::Notifier>,
) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
                let (owner, heard_by, finish) = (owner.clone(), notifier.clone(), finish.clone());
                let driver = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n))
                                if n.channel() == FINISHED_CHANNEL =>
                            {
                                let mut lines = n.payload().lines();
                                let told = finish.lock().expect("finish slot poisoned").clone();
                                if let Some(told) = told
                                    && lines.next() != Some(owner.as_str())
                                {
                                    told(lines.map(str::to_string).collect());
                                }
                            }
                            Ok(tokio_postgres::AsyncMessage::Notification(n))
                                if n.channel() == WAITING_CHANNEL =>
                            {
                                let mut lines = n.payload().lines();
                                if lines.next() != Some(owner.as_str()) {
                                    heard_by.others_wait(lines.map(str::to_string).collect());
                                }
                            }
                            Ok(tokio_postgres::AsyncMessage::Notification(n))
                                if n.payload() != owner =>
                            {
                                let _ = heard_tx.send(n.channel().to_string());
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                let listening = CHANNELS
                    .iter()
                    .map(|(channel, _)| format!("LISTEN {channel};"))
                    .chain([
                        format!("LISTEN {FINISHED_CHANNEL};"),
                        format!("LISTEN {WAITING_CHANNEL};"),
                    ])
                    .collect::<String>();
                if client.batch_execute(&listening).await.is_ok() {
                    for (_, kind) in CHANNELS {
                        wake(kind);
                    }
                    while let Some(channel) = heard.recv().await {
                        if let Some((_, kind)) = CHANNELS.iter().find(|(c, _)| *c == channel) {
                            wake(*kind);
                        }
                    }
                }
                driver.abort();
                tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
            }
            Err(e) => tracing::warn!("cannot listen for PostgreSQL notifications: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait::async_trait]
impl RuntimeStore for PgStore {
    /// The lease lasts the store's `lease_ttl` from `now`, renewed while
    /// this host lives, whatever `lease_until` the runtime asks for.
    async fn claim_ready(
        &self,
        max: usize,
        now: Millis,
        _lease_until: Millis,
    ) -> StoreResult<Vec<String>> {
        let client = self.grouped.get().await.map_err(pool_error)?;
        let lease_until = self.lease_deadline(now);
        let claimed = ops::claim_ready(
            &client,
            &self.owner,
            now,
            lease_until,
            max,
            PREFETCH_HISTORY,
        )
        .await?;
        let mut ids = Vec::with_capacity(claimed.len());
        let mut busy = Vec::new();
        {
            let mut prefetched = self.prefetched.lock().expect("prefetched poisoned");
            let mut leased = self.leased.held();
            let at = std::time::Instant::now();
            // Left by claims whose episode never asked (a host stopping).
            prefetched.retain(|_, p| at.duration_since(p.at) < PREFETCH_KEPT);
            for (loaded, whole) in claimed {
                let id = loaded.instance.id.clone();
                // An episode of it that carries its input runs here: the
                // claim's episode would only conflict with it.
                if !leased.insert(id.clone()) {
                    busy.push(id);
                    continue;
                }
                ids.push(id.clone());
                prefetched.insert(id, Prefetched { at, loaded, whole });
            }
        }
        // Ready again; claimed after that episode's commit (which wakes
        // the work loop).
        if !busy.is_empty() {
            ops::release(&client, &self.owner, &busy).await?;
        }
        Ok(ids)
    }

    async fn release(&self, instance: &str) -> StoreResult<()> {
        self.release_local(instance);
        let client = self.client().await?;
        ops::release(&client, &self.owner, &[instance.to_string()]).await
    }

    fn lease_carried(&self, instance: &str) -> bool {
        self.leased.take(instance)
    }

    fn release_local(&self, instance: &str) {
        self.leased.give_back(instance);
    }

    fn leased_here(&self, instance: &str) -> bool {
        self.leased.holds(instance)
    }

    async fn load(&self, instance: &str) -> StoreResult<LoadedInstance> {
        if let Some(loaded) = self.take_prefetched(instance, true) {
            return Ok(loaded);
        }
        (self.loads.read(instance, true).await?)
            .ok_or_else(|| StoreError::NotFound(instance.to_string()))
    }

    async fn load_head(&self, instance: &str) -> StoreResult<LoadedInstance> {
        if let Some(mut loaded) = self.take_prefetched(instance, false) {
            loaded.history.clear();
            return Ok(loaded);
        }
        (self.loads.read(instance, false).await?)
            .ok_or_else(|| StoreError::NotFound(instance.to_string()))
    }

    async fn commit_episodes(&self, episodes: Vec<EpisodeCommit>) -> Vec<StoreResult<()>> {
        // Each episode is a write of its own: the writers fold them, and
        // any other waiting writes, into as few transactions as they can.
        let ids: Vec<String> = episodes.iter().map(|e| e.instance.id.clone()).collect();
        let pending: Vec<_> = episodes
            .into_iter()
            .map(|episode| {
                self.writer
                    .submit(writer::Write::Episode(Box::new(episode)))
            })
            .collect();
        let mut results = Vec::with_capacity(pending.len());
        for result in pending {
            results.push(result.await);
        }
        // A stored lease went with the commit; one held in memory goes now.
        self.leased.give_back_committed(&ids, &results);
        results
    }

    async fn fire_due_timers(&self, now: Millis) -> StoreResult<usize> {
        let fired = {
            let mut client = self.client().await?;
            ops::fire_due_timers(&mut client, now).await?
        };
        if fired > 0 {
            self.notifier.raise(WorkKind::Instances);
        }
        Ok(fired)
    }

    async fn next_timer_due(&self) -> StoreResult<Option<Millis>> {
        let client = self.client().await?;
        ops::min_of(&client, ops::sql::NEXT_TIMER_DUE).await
    }

    async fn has_pending_work(&self, instance: &str, now: Millis) -> StoreResult<bool> {
        let client = self.client().await?;
        ops::has_pending_work(&client, instance, now).await
    }

    async fn component(&self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
        let client = self.client().await?;
        ops::component(&client, digest).await
    }

    async fn claim_activities(
        &self,
        max: usize,
        now: Millis,
        _lease_until: Millis,
    ) -> StoreResult<Vec<ActivityWork>> {
        let client = self.client().await?;
        ops::claim_activities(&client, &self.owner, self.lease_deadline(now), max, now).await
    }

    async fn finish_activity(
        &self,
        id: i64,
        instance: &str,
        finish: ActivityFinish,
        now: Millis,
    ) -> StoreResult<()> {
        self.writer
            .submit(writer::Write::FinishActivity {
                id,
                instance: instance.to_string(),
                finish,
                at: now,
            })
            .await
    }

    async fn next_activity_due(&self) -> StoreResult<Option<Millis>> {
        let client = self.client().await?;
        ops::min_of(&client, ops::sql::NEXT_ACTIVITY_DUE).await
    }

    async fn due_schedules(&self, now: Millis, max: usize) -> StoreResult<Vec<ScheduleRow>> {
        let client = self.client().await?;
        let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&(now as i64), &(max as i64)];
        ops::schedules(&client, ops::sql::DUE_SCHEDULES, params).await
    }

    async fn next_schedule_due(&self) -> StoreResult<Option<Millis>> {
        let client = self.client().await?;
        ops::min_of(&client, ops::sql::NEXT_SCHEDULE_DUE).await
    }

    fn on_foreign_work(&self, wake: WakeFn) {
        let mut slot = self.wake.lock().expect("wake slot poisoned");
        if slot.is_none() {
            self.spawn(listen(
                self.config.clone(),
                self.owner.clone(),
                wake.clone(),
                self.finish.clone(),
                self.notifier.clone(),
            ));
        }
        *slot = Some(wake);
    }

    fn on_foreign_finish(&self, finished: FinishFn) {
        *self.finish.lock().expect("finish slot poisoned") = Some(finished);
    }

    fn waiting_for(&self, instance: &str) {
        self.notifier.waiting(instance);
    }
}

#[async_trait::async_trait]
impl ClientStore for PgStore {
    async fn put_component(&self, digest: &str, bytes: &[u8], now: Millis) -> StoreResult<()> {
        let client = self.client().await?;
        ops::put_component(&client, digest, bytes, now).await
    }

    async fn create_instance(&self, instance: &Instance) -> StoreResult<()> {
        self.writer
            .submit(writer::Write::Create(instance.clone()))
            .await
    }

    async fn set_component(
        &self,
        id: &str,
        digest: &str,
        expected: &Version,
        now: Millis,
    ) -> StoreResult<()> {
        let mut client = self.client().await?;
        ops::set_component(&mut client, id, digest, expected, now).await
    }

    async fn enqueue(&self, instance: &str, message: &Message, now: Millis) -> StoreResult<()> {
        let write = writer::Write::Enqueue {
            id: instance.to_string(),
            message: message.clone(),
            max_inbox: self.max_inbox,
            at: now,
        };
        self.writer.submit(write).await
    }

    async fn counts(&self, now: Millis) -> StoreResult<StoreCounts> {
        let client = self.client().await?;
        ops::counts(&client, now).await
    }

    async fn instance(&self, id: &str) -> StoreResult<Option<Instance>> {
        self.rows.read(id, false).await
    }

    async fn history(&self, id: &str) -> StoreResult<Vec<HistoryEntry>> {
        let client = self.client().await?;
        ops::get_history(&client, id).await
    }

    async fn history_page(
        &self,
        id: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<HistoryEntry>> {
        let client = self.client().await?;
        ops::get_history_page(&client, id, from, limit).await
    }

    async fn list(&self, query: &InstanceQuery) -> StoreResult<Vec<Instance>> {
        let client = self.client().await?;
        ops::list_instances(&client, query).await
    }

    async fn purge(&self, id: &str) -> StoreResult<bool> {
        let mut client = self.client().await?;
        ops::purge(&mut client, id).await
    }

    async fn purge_entity(&self, id: &str, version: u64) -> StoreResult<bool> {
        let mut client = self.client().await?;
        ops::purge_entity(&mut client, id, version).await
    }

    async fn schedules(&self) -> StoreResult<Vec<ScheduleRow>> {
        let client = self.client().await?;
        ops::schedules(&client, ops::sql::ALL_SCHEDULES, &[]).await
    }

    async fn schedule(&self, name: &str) -> StoreResult<Option<ScheduleRow>> {
        let client = self.client().await?;
        Ok(ops::schedules(&client, ops::sql::GET_SCHEDULE, &[&name])
            .await?
            .pop())
    }

    async fn commit_schedule(&self, commit: ScheduleCommit) -> StoreResult<()> {
        self.writer
            .submit(writer::Write::Schedule(Box::new(commit)))
            .await
    }

    async fn in_flight_versions(&self) -> StoreResult<Vec<(String, String, u64)>> {
        let client = self.client().await?;
        let sql = duro_store_sql::rows::in_flight_versions_sql();
        let stmt = client.prepare_cached(&sql).await.map_err(backend)?;
        let rows = client.query(&stmt, &[]).await.map_err(backend)?;
        Ok(duro_store_sql::rows::count_versions(
            rows.iter().map(|r| (r.get(0), r.get(1))),
        ))
    }

    async fn purge_batch(&self, query: &InstanceQuery) -> StoreResult<usize> {
        let mut client = self.client().await?;
        ops::purge_batch(&mut client, query).await
    }
}
