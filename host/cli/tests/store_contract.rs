//! The store contract, one set of tests run against every backend: grouped
//! writes that fail alone, the commit guard (history length, execution,
//! component), durability across reopening, leases, timers that fire once
//! and activity rows claimed once when two hosts race, and, on PostgreSQL,
//! leases that expire and move to another host, whose commit then wins.
//!
//! PostgreSQL tests run against `DURO_TEST_POSTGRES_URL`, each in a schema
//! of its own that it drops; without the variable they are skipped (and
//! say so), unless `DURO_REQUIRE_POSTGRES` is set, as in CI.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use duro::database::{Database, OpenOptions, open_database};
use duro::model::{
    ActivityCall, HistoryEvent, Instance, InstanceQuery, Message, RuntimeStatus, Timer, now_millis,
};
use duro::model::{HistoryEntry, Millis};
use duro::schedule::{self, Origin, ScheduleRow, ScheduleSpec};
use duro::store::{
    ActivityFinish, ActivityWork, EpisodeCommit, LoadedInstance, ScheduleCommit, Store,
    StoreCounts, StoreError, StoreResult, Version,
};
use duro_store_postgres::{PgOptions, PgStore};

/// A store driven from plain threads, as the contract's tests are: each
/// call is run to its end on the test's runtime (which also runs a
/// PostgreSQL store's background tasks). Writes that take a time are
/// stamped with the wall clock; `at` gives them another.
#[derive(Clone)]
struct Blocking {
    store: Arc<dyn Store>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Blocking {
    fn on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }
    fn put_component(&self, digest: &str, bytes: &[u8]) -> StoreResult<()> {
        self.on(self.store.put_component(digest, bytes, now_millis()))
    }
    fn create_instance(&self, instance: &Instance) -> StoreResult<()> {
        self.on(self.store.create_instance(instance))
    }
    fn enqueue(&self, id: &str, message: &Message) -> StoreResult<()> {
        self.enqueue_at(id, message, now_millis())
    }
    fn enqueue_at(&self, id: &str, message: &Message, at: Millis) -> StoreResult<()> {
        self.on(self.store.enqueue(id, message, at))
    }
    fn claim_ready(&self, max: usize, lease_until: Millis) -> StoreResult<Vec<String>> {
        self.on(self.store.claim_ready(max, now_millis(), lease_until))
    }
    fn release(&self, id: &str) -> StoreResult<()> {
        self.on(self.store.release(id))
    }
    fn load(&self, id: &str) -> StoreResult<LoadedInstance> {
        self.on(self.store.load(id))
    }
    fn commit_episodes(&self, episodes: Vec<EpisodeCommit>) -> Vec<StoreResult<()>> {
        self.on(self.store.commit_episodes(episodes))
    }
    fn fire_due_timers(&self, now: Millis) -> StoreResult<usize> {
        self.on(self.store.fire_due_timers(now))
    }
    fn next_timer_due(&self) -> StoreResult<Option<Millis>> {
        self.on(self.store.next_timer_due())
    }
    fn has_pending_work(&self, id: &str, now: Millis) -> StoreResult<bool> {
        self.on(self.store.has_pending_work(id, now))
    }
    fn component(&self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
        self.on(self.store.component(digest))
    }
    fn claim_activities(&self, max: usize, now: Millis) -> StoreResult<Vec<ActivityWork>> {
        self.on(self.store.claim_activities(max, now, now + 60_000))
    }
    fn finish_activity(&self, id: i64, instance: &str, finish: ActivityFinish) -> StoreResult<()> {
        self.on(self
            .store
            .finish_activity(id, instance, finish, now_millis()))
    }
    fn next_activity_due(&self) -> StoreResult<Option<Millis>> {
        self.on(self.store.next_activity_due())
    }
    fn counts(&self, now: Millis) -> StoreResult<StoreCounts> {
        self.on(self.store.counts(now))
    }
    fn instance(&self, id: &str) -> StoreResult<Option<Instance>> {
        self.on(self.store.instance(id))
    }
    fn history(&self, id: &str) -> StoreResult<Vec<HistoryEntry>> {
        self.on(self.store.history(id))
    }
    fn history_page(&self, id: &str, from: u64, limit: usize) -> StoreResult<Vec<HistoryEntry>> {
        self.on(self.store.history_page(id, from, limit))
    }
    fn list(&self, query: &InstanceQuery) -> StoreResult<Vec<Instance>> {
        self.on(self.store.list(query))
    }
    fn purge(&self, id: &str) -> StoreResult<bool> {
        self.on(self.store.purge(id))
    }
    fn set_component(&self, id: &str, digest: &str, expected: &Version) -> StoreResult<()> {
        self.on(self.store.set_component(id, digest, expected, now_millis()))
    }
    fn in_flight_versions(&self) -> StoreResult<Vec<(String, String, u64)>> {
        self.on(self.store.in_flight_versions())
    }
    fn schedule(&self, name: &str) -> StoreResult<Option<ScheduleRow>> {
        self.on(self.store.schedule(name))
    }
    fn commit_schedule(&self, commit: ScheduleCommit) -> StoreResult<()> {
        self.on(self.store.commit_schedule(commit))
    }
    fn due_schedules(&self, now: Millis) -> StoreResult<Vec<ScheduleRow>> {
        self.on(self.store.due_schedules(now, 10))
    }
}

/// A store under test, and how to open another host's handle on the same
/// data.
struct TestStore {
    store: Blocking,
    backend: Backend,
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

impl TestStore {
    /// The SQLite store in a fresh folder.
    fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contract.db");
        let backend = Backend::Sqlite(path);
        let store = open_backend(&new_runtime(), &backend, true);
        TestStore::ready(store, backend, dir)
    }

    /// A PostgreSQL store in a schema of its own, or `None` (skipped) when no
    /// server is configured.
    fn postgres(test: &str) -> Option<TestStore> {
        let runtime = new_runtime();
        let (url, schema) = runtime.block_on(PgStore::test_schema(test))?;
        let backend = Backend::Postgres { url, schema };
        let store = open_backend(&runtime, &backend, true);
        Some(TestStore::ready(
            store,
            backend,
            tempfile::tempdir().unwrap(),
        ))
    }

    fn ready(store: Blocking, backend: Backend, dir: tempfile::TempDir) -> TestStore {
        store.put_component("sha256:test", b"bytes").unwrap();
        store.put_component("sha256:other", b"other").unwrap();
        TestStore {
            store,
            backend,
            _dir: dir,
        }
    }

    /// Another host's handle on the same data: a second connection pool on
    /// PostgreSQL; on SQLite, which one host owns, the same store.
    fn another_host(&self) -> Blocking {
        match &self.backend {
            Backend::Sqlite(_) => self.store.clone(),
            Backend::Postgres { .. } => open_backend(&self.store.runtime, &self.backend, true),
        }
    }

    /// The data opened afresh, as after a restart.
    fn reopen(&self) -> Blocking {
        open_backend(&self.store.runtime, &self.backend, true)
    }

    /// Run `sql` on the data directly, below the store (to read what no
    /// API shows, or to break a row as a bug or a hand would); the first
    /// column of each row it returns, as an integer (NULL as `None`).
    fn raw(&self, sql: &str) -> Vec<Option<i64>> {
        match &self.backend {
            Backend::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                stmt.query_map([], |r| r.get::<_, Option<i64>>(0))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
            }
            Backend::Postgres { url, schema } => self.store.on(async {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let driver = tokio::spawn(connection);
                client
                    .batch_execute(&format!("SET search_path = {schema}"))
                    .await
                    .unwrap();
                let rows = client.query(sql, &[]).await.unwrap();
                drop(client);
                let _ = driver.await;
                rows.iter()
                    .map(|r| {
                        if r.is_empty() {
                            None
                        } else {
                            r.get::<_, Option<i64>>(0)
                        }
                    })
                    .collect()
            }),
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Backend::Postgres { url, schema } = &self.backend {
            let _ = self.store.on(PgStore::drop_schema(url, schema));
        }
    }
}

/// The runtime a test's stores run on.
fn new_runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    )
}

fn open_backend(
    runtime: &Arc<tokio::runtime::Runtime>,
    backend: &Backend,
    renew_leases: bool,
) -> Blocking {
    open_capped(
        runtime,
        backend,
        renew_leases,
        duro::store::DEFAULT_MAX_INBOX,
    )
}

/// [`open_backend`] with at most `max_inbox` messages waiting per instance.
fn open_capped(
    runtime: &Arc<tokio::runtime::Runtime>,
    backend: &Backend,
    renew_leases: bool,
    max_inbox: usize,
) -> Blocking {
    let store: Arc<dyn Store> = match backend {
        Backend::Sqlite(path) => runtime
            .block_on(open_database(
                &Database::Sqlite(path.clone()),
                &OpenOptions {
                    max_inbox,
                    ..Default::default()
                },
            ))
            .unwrap(),
        Backend::Postgres { url, schema } => Arc::new(
            runtime
                .block_on(PgStore::open(
                    url,
                    PgOptions {
                        schema: Some(schema.clone()),
                        lease_ttl: Duration::from_millis(400),
                        renew_leases,
                        max_inbox,
                        ..Default::default()
                    },
                ))
                .expect("PostgreSQL store opens"),
        ),
    };
    Blocking {
        store,
        runtime: runtime.clone(),
    }
}

/// Each test, once per backend.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $test() { super::$test(&super::TestStore::sqlite()); } )*
        }
        mod postgres {
            $(
                #[test]
                fn $test() {
                    if let Some(store) = super::TestStore::postgres(stringify!($test)) {
                        super::$test(&store);
                    }
                }
            )*
        }
    };
}

contract!(
    concurrent_writes_fail_alone,
    a_stale_episode_is_refused_whole,
    an_unread_inbox_refuses_while_messages_wait,
    an_episode_of_an_old_execution_or_component_is_refused,
    written_state_survives_reopening,
    a_claim_leases_until_release_or_commit,
    due_timers_fire_once_when_hosts_race,
    activity_rows_are_claimed_once_when_hosts_race,
    children_and_purges,
    counts_for_the_gauges,
    the_trace_parent_is_kept,
    a_listing_by_status_is_one_snapshot,
    a_message_reaches_only_a_live_instance,
    an_inbox_holds_at_most_its_cap,
    a_listing_without_inputs_reads_none,
    a_history_reads_in_pages,
    a_write_refused_beside_others_undoes_only_itself,
    grouped_refusals_undo_only_themselves,
    a_finished_id_is_created_again_beside_new_ones,
    a_first_episode_creates_its_instance,
    in_flight_versions_count_what_has_not_finished,
    a_half_stored_parent_is_a_corrupt_row,
    more_than_a_thousand_due_timers_fire_at_once,
    every_stored_time_is_the_callers,
    a_message_for_a_purged_instance_is_dropped,
    suspended_instances_take_only_control_messages,
    a_schedule_changes_only_from_the_version_read,
    a_tick_starts_its_instance_with_the_schedule_and_once,
    a_buffered_tick_falls_due_when_the_last_run_ends,
    a_message_creates_its_entity_once,
    an_episode_sends_to_entities_and_starts_orchestrations,
    entities_list_apart_and_purge_only_when_empty,
);

fn operation(name: &str) -> Message {
    Message::EntityOperation {
        operation: name.into(),
        input: "1".into(),
        caller: None,
        holder: None,
        due: None,
    }
}

/// Messages to an entity that has no row create it, once, whoever sends
/// them (a client, or two at once), and it is ready to run them.
fn a_message_creates_its_entity_once(t: &TestStore) {
    let store = &t.store;
    let other = t.another_host();
    std::thread::scope(|scope| {
        for host in [store, &other] {
            scope.spawn(move || {
                for _ in 0..20 {
                    host.enqueue("@counter@a", &operation("add")).unwrap();
                }
            });
        }
    });
    let row = store.instance("@counter@a").unwrap().expect("created");
    assert_eq!(
        (row.name.as_str(), row.status, row.history_len),
        ("counter", RuntimeStatus::Running, 0)
    );
    assert_eq!(store.load("@counter@a").unwrap().inbox.len(), 40);
    assert_eq!(
        store.claim_ready(10, now_millis() + 60_000).unwrap(),
        ["@counter@a"]
    );
    // Not an entity's id, not created.
    assert!(matches!(
        store.enqueue("@broken", &operation("add")),
        Err(StoreError::NotFound(_))
    ));
}

/// An episode's messages to entities create them in its commit; its
/// starts create orchestrations, and one whose id is taken is skipped
/// without failing the commit.
fn an_episode_sends_to_entities_and_starts_orchestrations(t: &TestStore) {
    let store = &t.store;
    store.create_instance(&instance("taken")).unwrap();
    store.enqueue("@relay@r", &operation("go")).unwrap();
    let loaded = store.load("@relay@r").unwrap();
    let mut commit = episode(&loaded, RuntimeStatus::Running);
    commit.new_events.clear();
    commit.instance.history_len = 1;
    commit.sent = vec![
        ("@counter@x".into(), operation("add")),
        ("@counter@x".into(), operation("add")),
        ("gone".into(), operation("add")),
    ];
    commit.started = vec![instance("taken"), instance("fresh")];
    assert!(store.commit_episodes(vec![commit])[0].is_ok());
    assert_eq!(store.load("@counter@x").unwrap().inbox.len(), 2);
    assert!(store.instance("gone").unwrap().is_none());
    assert_eq!(store.load("fresh").unwrap().inbox.len(), 1, "started");
    assert_eq!(store.instance("@relay@r").unwrap().unwrap().history_len, 1);
}

/// Entities list apart from orchestration instances, by name in key order
/// from the id index; one is purged only at the version read and with
/// nothing waiting.
fn entities_list_apart_and_purge_only_when_empty(t: &TestStore) {
    let store = &t.store;
    store.create_instance(&instance("orchestration")).unwrap();
    for key in ["b", "a", "c"] {
        store
            .enqueue(&format!("@counter@{key}"), &operation("add"))
            .unwrap();
    }
    store.enqueue("@other@a", &operation("add")).unwrap();
    let ids = |query: InstanceQuery| -> Vec<String> {
        store
            .list(&query)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect()
    };
    let all = InstanceQuery {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(all.clone()), ["orchestration"]);
    let counters = InstanceQuery {
        id_prefix: Some("@counter@".into()),
        entities: true,
        ..all.clone()
    };
    assert_eq!(
        ids(counters.clone()),
        ["@counter@a", "@counter@b", "@counter@c"]
    );
    let every = InstanceQuery {
        id_prefix: Some("@".into()),
        entities: true,
        ..all
    };
    assert_eq!(ids(every).len(), 4);
    // Something waits: not purged.
    assert!(
        !t.store
            .on(t.store.store.purge_entity("@counter@a", 0))
            .unwrap()
    );
    let loaded = store.load("@counter@a").unwrap();
    let mut commit = episode(&loaded, RuntimeStatus::Running);
    commit.new_events.clear();
    commit.instance.history_len = 1;
    assert!(store.commit_episodes(vec![commit])[0].is_ok());
    // An older version: not purged; the one read: purged.
    assert!(
        !t.store
            .on(t.store.store.purge_entity("@counter@a", 0))
            .unwrap()
    );
    assert!(
        t.store
            .on(t.store.store.purge_entity("@counter@a", 1))
            .unwrap()
    );
    assert_eq!(ids(counters), ["@counter@b", "@counter@c"]);
}

/// A per-minute schedule's row, its next tick at `first`.
fn schedule_row(name: &str, overlap: schedule::Overlap, first: Millis) -> ScheduleRow {
    let spec: ScheduleSpec = serde_json::from_value(serde_json::json!({
        "name": name, "cron": "* * * * *", "orchestration": "Workflow",
        "input": {"n": 1}, "overlap": overlap,
    }))
    .unwrap();
    let compiled = spec.compile().unwrap();
    schedule::new_row(spec, &compiled, Origin::Api, first - 1)
}

fn put(
    name: &str,
    expected: Option<u64>,
    row: Option<ScheduleRow>,
    starts: Vec<Instance>,
) -> ScheduleCommit {
    ScheduleCommit {
        name: name.into(),
        expected,
        row,
        starts,
        terminate: None,
        now: 1_000,
    }
}

fn a_schedule_changes_only_from_the_version_read(t: &TestStore) {
    let row = schedule_row("s", schedule::Overlap::Skip, 60_000);
    t.store
        .commit_schedule(put("s", None, Some(row.clone()), vec![]))
        .unwrap();
    let stored = t.store.schedule("s").unwrap().unwrap();
    assert_eq!(
        (stored.spec.clone(), stored.state.clone(), stored.due_at),
        (row.spec.clone(), row.state.clone(), Some(60_000))
    );
    // The name is taken.
    assert!(matches!(
        t.store.commit_schedule(put("s", None, Some(row.clone()), vec![])),
        Err(StoreError::ScheduleExists(name)) if name == "s"
    ));
    // A change from the version read, then one from a stale version.
    let mut paused = stored.clone();
    paused.state.paused = true;
    paused.due_at = None;
    t.store
        .commit_schedule(put("s", Some(stored.version), Some(paused.clone()), vec![]))
        .unwrap();
    let after = t.store.schedule("s").unwrap().unwrap();
    assert_eq!(after.version, stored.version + 1);
    assert!(after.state.paused);
    assert!(matches!(
        t.store
            .commit_schedule(put("s", Some(stored.version), Some(row.clone()), vec![])),
        Err(StoreError::ScheduleChanged(_))
    ));
    assert!(
        t.store.due_schedules(u64::MAX / 2).unwrap().is_empty(),
        "a paused schedule is never due"
    );
    // Delete, from the version read only.
    assert!(matches!(
        t.store
            .commit_schedule(put("s", Some(stored.version), None, vec![])),
        Err(StoreError::ScheduleChanged(_))
    ));
    t.store
        .commit_schedule(put("s", Some(after.version), None, vec![]))
        .unwrap();
    assert!(t.store.schedule("s").unwrap().is_none());
}

fn a_tick_starts_its_instance_with_the_schedule_and_once(t: &TestStore) {
    let row = schedule_row("s", schedule::Overlap::Skip, 60_000);
    t.store
        .commit_schedule(put("s", None, Some(row), vec![]))
        .unwrap();
    let due = t.store.due_schedules(60_000).unwrap();
    assert_eq!(due.len(), 1);
    assert!(t.store.due_schedules(59_999).unwrap().is_empty());
    let compiled = due[0].spec.compile().unwrap();
    let round = schedule::round(&due[0], &compiled, schedule::Previous::Idle, 60_000);
    let id = schedule::instance_id("s", 60_000);
    let start = Instance {
        scheduled_by: Some(schedule::ScheduledBy {
            schedule: "s".into(),
            tick: 60_000,
        }),
        ..instance(&id)
    };
    let commit = put(
        "s",
        Some(due[0].version),
        Some(round.row.clone()),
        vec![start],
    );
    t.store.commit_schedule(commit.clone()).unwrap();
    let started = t.store.instance(&id).unwrap().unwrap();
    assert_eq!(started.scheduled_by.as_ref().unwrap().tick, 60_000);
    assert_eq!(t.store.load(&id).unwrap().inbox.len(), 1, "started");
    // The same round again (another host that read the same version)
    // changes nothing: no second instance, no second start message.
    assert!(matches!(
        t.store.commit_schedule(commit),
        Err(StoreError::ScheduleChanged(_))
    ));
    assert_eq!(t.store.load(&id).unwrap().inbox.len(), 1);
    assert_eq!(
        t.store.schedule("s").unwrap().unwrap().due_at,
        Some(120_000)
    );
}

fn a_buffered_tick_falls_due_when_the_last_run_ends(t: &TestStore) {
    let row = schedule_row("b", schedule::Overlap::BufferOne, 60_000);
    let compiled = row.spec.compile().unwrap();
    t.store
        .commit_schedule(put("b", None, Some(row.clone()), vec![]))
        .unwrap();
    let row = t.store.schedule("b").unwrap().unwrap();
    let first = schedule::round(&row, &compiled, schedule::Previous::Idle, 60_000);
    let id = schedule::instance_id("b", 60_000);
    let run = Instance {
        scheduled_by: Some(schedule::ScheduledBy {
            schedule: "b".into(),
            tick: 60_000,
        }),
        ..instance(&id)
    };
    t.store
        .commit_schedule(put("b", Some(row.version), Some(first.row), vec![run]))
        .unwrap();
    let row = t.store.schedule("b").unwrap().unwrap();
    let second = schedule::round(&row, &compiled, schedule::Previous::Running, 120_000);
    assert!(second.row.waiting());
    t.store
        .commit_schedule(put("b", Some(row.version), Some(second.row), vec![]))
        .unwrap();
    let waiting = t.store.schedule("b").unwrap().unwrap();
    assert_eq!(waiting.due_at, Some(180_000));
    // The run ends: its commit makes the schedule due at once (and bumps it).
    let loaded = t.store.load(&id).unwrap();
    let mut ended = episode(&loaded, RuntimeStatus::Completed);
    ended.instance.updated_at = 130_000;
    assert!(
        t.store
            .commit_episodes(vec![ended])
            .into_iter()
            .all(|r| r.is_ok())
    );
    let due = t.store.schedule("b").unwrap().unwrap();
    assert_eq!(
        (due.due_at, due.version),
        (Some(130_000), waiting.version + 1)
    );
}

fn instance(id: &str) -> Instance {
    Instance::pending(
        id.into(),
        "Workflow".into(),
        "\"x\"".into(),
        "sha256:test".into(),
        now_millis(),
        None,
    )
}

/// The episode that takes every inbox message and ends the instance with
/// `status` (or keeps it running), writing one event.
fn episode(loaded: &LoadedInstance, status: RuntimeStatus) -> EpisodeCommit {
    EpisodeCommit {
        instance: Instance {
            status,
            output: status.is_terminal().then(|| "\"done\"".to_string()),
            history_len: loaded.instance.history_len + 1,
            ..loaded.instance.clone()
        },
        expected: Version::of(&loaded.instance),
        unread_inbox: false,
        reset_history: false,
        new_events: vec![HistoryEvent::OrchestratorStarted { timestamp: 1 }],
        consumed: loaded.inbox.iter().map(|m| m.id).collect(),
        new_timers: Vec::new(),
        cancelled_timers: Vec::new(),
        new_activities: Vec::new(),
        new_children: Vec::new(),
        follow_up: Vec::new(),
        sent: Vec::new(),
        started: Vec::new(),
        created: None,
    }
}

fn event(payload: &str) -> Message {
    Message::EventRaised {
        name: "E".into(),
        payload: payload.into(),
    }
}

fn concurrent_writes_fail_alone(t: &TestStore) {
    // 64 threads, each creating one instance; every fourth id is taken twice.
    let results: Vec<_> = (0..64)
        .map(|i| {
            let store = t.store.clone();
            std::thread::spawn(move || {
                let id = if i % 4 == 3 {
                    format!("i{}", i - 1)
                } else {
                    format!("i{i}")
                };
                (id.clone(), store.create_instance(&instance(&id)))
            })
        })
        .map(|thread| thread.join().unwrap())
        .collect();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(failed.len(), 16, "one of each pair of duplicates fails");
    for (id, result) in &failed {
        assert!(
            matches!(result, Err(StoreError::AlreadyExists(d)) if d == id),
            "{result:?}"
        );
    }
    for i in (0..64).filter(|i| i % 4 != 3) {
        let id = format!("i{i}");
        assert_eq!(
            t.store.instance(&id).unwrap().unwrap().status,
            RuntimeStatus::Pending
        );
        assert_eq!(
            t.store.history(&id).unwrap().len(),
            1,
            "{id}: ExecutionStarted"
        );
    }
}

fn a_write_refused_beside_others_undoes_only_itself(t: &TestStore) {
    // Unlike the duplicates above, every write names another instance, so
    // they may share a group (PostgreSQL sends such a group all at once and
    // runs it again in order when one write fails).
    for k in 0..16 {
        t.store
            .create_instance(&instance(&format!("taken{k}")))
            .unwrap();
    }
    // Submitted all before any is awaited, so that they queue up together.
    let ids: Vec<String> = (0..64)
        .map(|i| match i % 4 {
            3 => format!("taken{}", i / 4),
            _ => format!("fresh{i}"),
        })
        .collect();
    // All handed to the store before any is awaited: the writer groups them.
    let creating: Vec<_> = ids
        .iter()
        .map(|id| {
            let (store, instance) = (t.store.store.clone(), instance(id));
            t.store
                .runtime
                .spawn(async move { store.create_instance(&instance).await })
        })
        .collect();
    let results: Vec<_> = ids
        .iter()
        .zip(creating)
        .map(|(id, creating)| (id.clone(), t.store.on(creating).unwrap()))
        .collect();
    for (id, result) in &results {
        if id.starts_with("taken") {
            assert!(
                matches!(result, Err(StoreError::AlreadyExists(d)) if d == id),
                "{id}: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "{id}: {result:?}");
        }
        // Written once, whether created now or before.
        assert_eq!(t.store.history(id).unwrap().len(), 1, "{id}");
        assert_eq!(t.store.load(id).unwrap().inbox.len(), 1, "{id}: its start");
    }
}

fn grouped_refusals_undo_only_themselves(t: &TestStore) {
    // Messages and episodes for distinct instances, handed to the store
    // together so that they share groups (on PostgreSQL, array statements
    // for the whole group, run again write by write when one is refused).
    let store = &t.store;
    for k in 0..24 {
        store.create_instance(&instance(&format!("m{k}"))).unwrap();
    }
    // Every fourth instance ends before the messages come.
    for k in (0..24).step_by(4) {
        let loaded = store.load(&format!("m{k}")).unwrap();
        assert!(store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Completed)])[0].is_ok());
    }
    // Episodes for others, two of them computed from a version that is
    // gone (another episode committed first).
    let mut episodes = Vec::new();
    for k in 24..32 {
        let id = format!("e{k}");
        store.create_instance(&instance(&id)).unwrap();
        let loaded = store.load(&id).unwrap();
        if k % 4 == 0 {
            assert!(
                store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Running)])[0].is_ok()
            );
        }
        episodes.push((id, episode(&loaded, RuntimeStatus::Completed)));
    }
    let messages: Vec<_> = (0..24)
        .map(|k| format!("m{k}"))
        .chain(["nobody1".to_string(), "nobody2".to_string()])
        .map(|id| {
            let inner = store.store.clone();
            let runtime_id = id.clone();
            let sending = store.runtime.spawn(async move {
                inner
                    .enqueue(&runtime_id, &event("late"), now_millis())
                    .await
            });
            (id, sending)
        })
        .collect();
    let committing: Vec<_> = episodes
        .into_iter()
        .map(|(id, commit)| {
            let inner = store.store.clone();
            let committing = store
                .runtime
                .spawn(async move { inner.commit_episodes(vec![commit]).await.remove(0) });
            (id, committing)
        })
        .collect();
    for (id, sending) in messages {
        let result = store.on(sending).unwrap();
        let k: Option<usize> = id.strip_prefix('m').and_then(|k| k.parse().ok());
        match k {
            Some(k) if k % 4 == 0 => {
                assert!(
                    matches!(result, Err(StoreError::Finished { .. })),
                    "{id}: {result:?}"
                );
                assert!(store.load(&id).unwrap().inbox.is_empty(), "{id}");
            }
            Some(_) => {
                assert!(result.is_ok(), "{id}: {result:?}");
                // Its start and the message, once.
                assert_eq!(store.load(&id).unwrap().inbox.len(), 2, "{id}");
            }
            None => assert!(
                matches!(result, Err(StoreError::NotFound(_))),
                "{id}: {result:?}"
            ),
        }
    }
    for (id, committing) in committing {
        let result = store.on(committing).unwrap();
        let k: usize = id[1..].parse().unwrap();
        let status = store.instance(&id).unwrap().unwrap().status;
        if k.is_multiple_of(4) {
            assert!(
                matches!(result, Err(StoreError::Conflict { .. })),
                "{id}: {result:?}"
            );
            assert_eq!(status, RuntimeStatus::Running, "{id}");
            assert_eq!(store.history(&id).unwrap().len(), 2, "{id}");
        } else {
            assert!(result.is_ok(), "{id}: {result:?}");
            assert_eq!(status, RuntimeStatus::Completed, "{id}");
            assert!(
                store.load(&id).unwrap().inbox.is_empty(),
                "{id}: its start consumed"
            );
        }
    }
}

fn a_finished_id_is_created_again_beside_new_ones(t: &TestStore) {
    // Ids of finished instances, of live ones and fresh ids, created
    // together (on PostgreSQL in one group: the taken ones step by step
    // after the array statement): a finished instance is replaced, a live
    // one refuses, and nothing of the old one is left.
    let store = &t.store;
    for k in 0..8 {
        let id = format!("old{k}");
        store.create_instance(&instance(&id)).unwrap();
        store.enqueue(&id, &event("before")).unwrap();
        if k % 2 == 0 {
            let loaded = store.load(&id).unwrap();
            assert!(
                store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Completed)])[0].is_ok()
            );
        }
    }
    let ids: Vec<String> = (0..8)
        .map(|k| format!("old{k}"))
        .chain((0..24).map(|k| format!("new{k}")))
        .collect();
    let creating: Vec<_> = ids
        .iter()
        .map(|id| {
            let (inner, instance) = (store.store.clone(), instance(id));
            store
                .runtime
                .spawn(async move { inner.create_instance(&instance).await })
        })
        .collect();
    for (id, creating) in ids.iter().zip(creating) {
        let result = store.on(creating).unwrap();
        let live_before = id
            .strip_prefix("old")
            .and_then(|k| k.parse::<u32>().ok())
            .is_some_and(|k| k % 2 == 1);
        let loaded = store.load(id).unwrap();
        if live_before {
            assert!(
                matches!(result, Err(StoreError::AlreadyExists(_))),
                "{id}: {result:?}"
            );
            // Untouched: its start and the event.
            assert_eq!(loaded.inbox.len(), 2, "{id}");
        } else {
            assert!(result.is_ok(), "{id}: {result:?}");
            assert_eq!(loaded.instance.status, RuntimeStatus::Pending, "{id}");
            assert_eq!(loaded.history.len(), 1, "{id}: ExecutionStarted only");
            assert_eq!(loaded.inbox.len(), 1, "{id}: its start only");
        }
    }
}

/// The first episode of `instance`, run before it was stored (its start
/// carried into it): its commit creates it.
fn first_episode(instance: &Instance, status: RuntimeStatus) -> EpisodeCommit {
    let loaded = LoadedInstance::created(instance.clone(), -1);
    EpisodeCommit {
        consumed: Vec::new(),
        created: Some(instance.clone()),
        ..episode(&loaded, status)
    }
}

fn a_first_episode_creates_its_instance(t: &TestStore) {
    // Committed together: a fresh id, a fresh id that finishes at once, a
    // live id (refused alone, untouched) and a finished id (replaced).
    let store = &t.store;
    for id in ["live", "done"] {
        store.create_instance(&instance(id)).unwrap();
        store.enqueue(id, &event("before")).unwrap();
    }
    let done = store.load("done").unwrap();
    assert!(store.commit_episodes(vec![episode(&done, RuntimeStatus::Completed)])[0].is_ok());
    let commits = vec![
        first_episode(&instance("fresh"), RuntimeStatus::Running),
        first_episode(&instance("quick"), RuntimeStatus::Completed),
        first_episode(&instance("live"), RuntimeStatus::Running),
        first_episode(&instance("done"), RuntimeStatus::Running),
    ];
    let results = store.commit_episodes(commits);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert!(
        matches!(results[2], Err(StoreError::AlreadyExists(_))),
        "{:?}",
        results[2]
    );
    assert!(results[3].is_ok(), "{:?}", results[3]);
    for (id, status) in [
        ("fresh", RuntimeStatus::Running),
        ("quick", RuntimeStatus::Completed),
        ("done", RuntimeStatus::Running),
    ] {
        let loaded = store.load(id).unwrap();
        assert_eq!(loaded.instance.status, status, "{id}");
        let events: Vec<_> = loaded.history.iter().map(|e| e.event.kind()).collect();
        assert_eq!(events, ["ExecutionStarted", "OrchestratorStarted"], "{id}");
        // The episode took the start: none is stored, nothing is ready.
        assert!(loaded.inbox.is_empty(), "{id}: {:?}", loaded.inbox);
    }
    let live = store.load("live").unwrap();
    assert_eq!(live.instance.status, RuntimeStatus::Pending);
    assert_eq!((live.history.len(), live.inbox.len()), (1, 2), "untouched");
    // Only the live one, untouched, still waits to run.
    assert_eq!(
        store.claim_ready(10, now_millis() + 60_000).unwrap(),
        ["live"]
    );
}

fn a_stale_episode_is_refused_whole(t: &TestStore) {
    let store = &t.store;
    store.create_instance(&instance("a")).unwrap();
    store.enqueue("a", &event("1")).unwrap();
    let loaded = store.load("a").unwrap();
    let mut stale = episode(&loaded, RuntimeStatus::Running);
    stale.expected.history_len = 5;
    match &store.commit_episodes(vec![stale])[0] {
        Err(StoreError::Conflict { change, .. }) => {
            assert!(change.contains("1 events long, not 5"), "{change}")
        }
        other => panic!("{other:?}"),
    }
    let after = store.load("a").unwrap();
    assert_eq!(
        after.instance.status,
        RuntimeStatus::Pending,
        "row untouched"
    );
    assert_eq!(after.history.len(), 1, "history untouched");
    assert_eq!(after.inbox.len(), 2, "inbox untouched (start + event)");
    // The same episode from the right version commits.
    assert!(store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Running)])[0].is_ok());
    let after = store.load("a").unwrap();
    assert_eq!((after.history.len(), after.inbox.len()), (2, 0));
}

fn an_unread_inbox_refuses_while_messages_wait(t: &TestStore) {
    let store = &t.store;
    for id in ["quiet", "busy"] {
        store.create_instance(&instance(id)).unwrap();
        let loaded = store.load(id).unwrap();
        assert!(store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Running)])[0].is_ok());
    }
    store.enqueue("busy", &event("waiting")).unwrap();
    // Computed from the row alone (as a warm instance taking a carried
    // message is), committed together: one group on PostgreSQL, whose
    // refusal runs it again write by write.
    let unread = |id: &str| {
        let mut row = store.load(id).unwrap();
        row.inbox.clear();
        EpisodeCommit {
            unread_inbox: true,
            ..episode(&row, RuntimeStatus::Running)
        }
    };
    let results = store.commit_episodes(vec![unread("busy"), unread("quiet")]);
    match &results[0] {
        Err(StoreError::Conflict { change, .. }) => {
            assert!(change.contains("did not read"), "{change}")
        }
        other => panic!("{other:?}"),
    }
    assert!(results[1].is_ok(), "{:?}", results[1]);
    let busy = store.load("busy").unwrap();
    assert_eq!(
        (busy.history.len(), busy.inbox.len()),
        (2, 1),
        "refused whole"
    );
    assert_eq!(store.load("quiet").unwrap().history.len(), 3);
    // Once the message is taken, the next such episode commits.
    assert!(store.commit_episodes(vec![episode(&busy, RuntimeStatus::Running)])[0].is_ok());
    assert!(store.commit_episodes(vec![unread("busy")])[0].is_ok());
}

fn an_episode_of_an_old_execution_or_component_is_refused(t: &TestStore) {
    let store = &t.store;
    // Computed for the first execution; meanwhile the id finished and was
    // started again (same history length).
    store.create_instance(&instance("a")).unwrap();
    let old = store.load("a").unwrap();
    let stale = episode(&old, RuntimeStatus::Completed);
    assert!(store.commit_episodes(vec![episode(&old, RuntimeStatus::Terminated)])[0].is_ok());
    store.create_instance(&instance("a")).unwrap();
    assert_eq!(
        store.load("a").unwrap().instance.history_len,
        old.instance.history_len
    );
    match &store.commit_episodes(vec![stale])[0] {
        Err(StoreError::Conflict { change, .. }) => {
            assert!(change.contains("replaced execution"), "{change}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.load("a").unwrap().instance.status,
        RuntimeStatus::Pending
    );
    // Computed on one component; meanwhile the instance was upgraded.
    let before = store.load("a").unwrap();
    let stale = episode(&before, RuntimeStatus::Completed);
    store
        .set_component("a", "sha256:other", &Version::of(&before.instance))
        .unwrap();
    match &store.commit_episodes(vec![stale])[0] {
        Err(StoreError::Conflict { change, .. }) => {
            assert!(change.contains("moved from component"), "{change}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.load("a").unwrap().instance.history_len, 1);
}

fn counts_for_the_gauges(t: &TestStore) {
    let store = &t.store;
    schedule(store, "busy", 2, 3);
    store.create_instance(&instance("waiting")).unwrap();
    store
        .enqueue("@counter@counted", &operation("add"))
        .unwrap();
    let counts = store.counts(now_millis() + 1).unwrap();
    assert_eq!(counts.entities, 1, "an entity counts apart");
    let mut by_status = counts.instances.clone();
    by_status.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        by_status,
        [(RuntimeStatus::Pending, 1), (RuntimeStatus::Running, 1)]
    );
    // The start message of `waiting` and the entity's signal; both timers,
    // due; three activities.
    assert_eq!(
        (
            counts.inbox_messages,
            counts.timers,
            counts.timers_due,
            counts.activities
        ),
        (2, 2, 2, 3)
    );
    assert_eq!(store.counts(0).unwrap().timers_due, 0);
}

/// A listing over several statuses (one index range per status) while
/// instances move from one to the other finds each exactly once.
fn a_listing_by_status_is_one_snapshot(t: &TestStore) {
    const N: usize = 60;
    let ids: Vec<String> = (0..N).map(|i| format!("s{i:02}")).collect();
    for id in &ids {
        t.store.create_instance(&instance(id)).unwrap();
    }
    // Both sides start together; how much they overlap is the scheduler's.
    let start = Arc::new(std::sync::Barrier::new(2));
    let mover = {
        let (store, ids, start) = (t.store.clone(), ids.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            for id in &ids {
                let loaded = store.load(id).unwrap();
                let commit = episode(&loaded, RuntimeStatus::Running);
                assert!(store.commit_episodes(vec![commit])[0].is_ok());
            }
        })
    };
    let query = InstanceQuery {
        statuses: vec![RuntimeStatus::Pending, RuntimeStatus::Running],
        limit: 1000,
        ..Default::default()
    };
    let mut listings = 0;
    start.wait();
    loop {
        let moving = !mover.is_finished();
        let found: Vec<String> = t
            .store
            .list(&query)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(found, ids, "listing {listings} (each id once, in order)");
        listings += 1;
        if !moving {
            break;
        }
    }
    mover.join().unwrap();
}

fn a_history_reads_in_pages(t: &TestStore) {
    let store = &t.store;
    store.create_instance(&instance("paged")).unwrap();
    // Ten episodes of one event each after the start.
    for _ in 0..10 {
        let loaded = store.load("paged").unwrap();
        let commit = episode(&loaded, RuntimeStatus::Running);
        assert!(store.commit_episodes(vec![commit])[0].is_ok());
    }
    let whole = store.history("paged").unwrap();
    assert!(whole.len() >= 11, "{}", whole.len());
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = store.history_page("paged", from, 4).unwrap();
        assert!(page.len() <= 4);
        let done = page.len() < 4;
        from = page.last().map_or(from, |e| e.seq + 1);
        paged.extend(page);
        if done {
            break;
        }
    }
    let seqs = |h: &[duro::model::HistoryEntry]| h.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&paged), seqs(&whole));
    assert!(store.history_page("paged", 1_000, 4).unwrap().is_empty());
    assert!(store.history_page("nobody", 0, 4).unwrap().is_empty());
}

fn a_listing_without_inputs_reads_none(t: &TestStore) {
    let store = &t.store;
    let mut big = instance("big-input");
    big.input = format!("\"{}\"", "i".repeat(10_000));
    store.create_instance(&big).unwrap();
    let query = InstanceQuery {
        limit: 10,
        ..Default::default()
    };
    let with = store.list(&query).unwrap();
    assert_eq!(with[0].input, big.input);
    let without = store
        .list(&InstanceQuery {
            skip_input: true,
            ..query
        })
        .unwrap();
    assert_eq!(without[0].id, "big-input");
    assert_eq!(without[0].input, "null");
    assert_eq!(without[0].name, with[0].name);
}

fn an_inbox_holds_at_most_its_cap(t: &TestStore) {
    let store = open_capped(&t.store.runtime, &t.backend, true, 3);
    store.create_instance(&instance("busy")).unwrap();
    // Its start, then two events: three waiting.
    store.enqueue("busy", &event("1")).unwrap();
    store.enqueue("busy", &event("2")).unwrap();
    match store.enqueue("busy", &event("3")) {
        Err(StoreError::InboxFull { id, limit }) => assert_eq!((id.as_str(), limit), ("busy", 3)),
        other => panic!("a fourth message: {other:?}"),
    }
    assert!(
        !store
            .enqueue("busy", &event("4"))
            .unwrap_err()
            .is_retriable()
    );
    assert_eq!(store.load("busy").unwrap().inbox.len(), 3);
    // A full inbox never keeps an instance from being stopped.
    let stop = Message::Terminate {
        reason: Some("flooded".into()),
    };
    store.enqueue("busy", &stop).unwrap();
    assert_eq!(store.load("busy").unwrap().inbox.len(), 4);
    // Another instance has an inbox of its own; unknown and finished ones
    // are told apart from full ones.
    store.create_instance(&instance("calm")).unwrap();
    store.enqueue("calm", &event("1")).unwrap();
    assert!(matches!(
        store.enqueue("nobody", &event("1")),
        Err(StoreError::NotFound(_))
    ));
}

fn a_message_reaches_only_a_live_instance(t: &TestStore) {
    let store = &t.store;
    store.create_instance(&instance("live")).unwrap();
    store.enqueue("live", &event("1")).unwrap();
    store.create_instance(&instance("ended")).unwrap();
    let loaded = store.load("ended").unwrap();
    assert!(store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Completed)])[0].is_ok());
    match store.enqueue("ended", &event("2")) {
        Err(StoreError::Finished { id, status }) => {
            assert_eq!((id.as_str(), status), ("ended", RuntimeStatus::Completed));
        }
        other => panic!("a message to a finished instance: {other:?}"),
    }
    assert!(store.load("ended").unwrap().inbox.is_empty());
    assert!(matches!(
        store.enqueue("nobody", &event("3")),
        Err(StoreError::NotFound(id)) if id == "nobody"
    ));
    // The live one has its start and the event.
    assert_eq!(store.load("live").unwrap().inbox.len(), 2);
}

fn in_flight_versions_count_what_has_not_finished(t: &TestStore) {
    let store = &t.store;
    let on = |id: &str, name: &str, component: &str| Instance {
        name: name.into(),
        component: component.into(),
        ..instance(id)
    };
    for digest in ["sha256:1", "sha256:2", "sha256:3"] {
        store.put_component(digest, digest.as_bytes()).unwrap();
    }
    for (id, name, component) in [
        ("a1", "A", "sha256:1"),
        ("a2", "A", "sha256:1"),
        ("a3", "A", "sha256:2"),
        ("b1", "B", "sha256:1"),
        ("done", "B", "sha256:1"),
        ("suspended", "C", "sha256:3"),
    ] {
        store.create_instance(&on(id, name, component)).unwrap();
    }
    for (id, status) in [
        ("a1", RuntimeStatus::Running),
        ("done", RuntimeStatus::Completed),
        ("suspended", RuntimeStatus::Suspended),
    ] {
        let loaded = store.load(id).unwrap();
        assert!(store.commit_episodes(vec![episode(&loaded, status)])[0].is_ok());
    }
    let mut versions = store.in_flight_versions().unwrap();
    versions.sort();
    let expected = [
        ("A", "sha256:1", 2),
        ("A", "sha256:2", 1),
        ("B", "sha256:1", 1),
        ("C", "sha256:3", 1),
    ]
    .map(|(n, c, k)| (n.to_string(), c.to_string(), k));
    assert_eq!(versions, expected);
}

fn the_trace_parent_is_kept(t: &TestStore) {
    let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = Instance {
        trace_parent: Some(header.into()),
        ..instance("traced")
    };
    t.store.create_instance(&traced).unwrap();
    let stored = t.store.instance("traced").unwrap().unwrap();
    assert_eq!(stored.trace_parent.as_deref(), Some(header));
    let loaded = t.store.load("traced").unwrap();
    assert_eq!(loaded.instance.trace_parent.as_deref(), Some(header));
}

fn written_state_survives_reopening(t: &TestStore) {
    t.store.create_instance(&instance("kept")).unwrap();
    t.store.enqueue("kept", &event("{}")).unwrap();
    let store = t.reopen();
    let loaded = store.load("kept").unwrap();
    assert_eq!((loaded.history.len(), loaded.inbox.len()), (1, 2));
    assert_eq!(
        store.component("sha256:test").unwrap().as_deref(),
        Some(&b"bytes"[..])
    );
    assert!(matches!(
        store.enqueue("ghost", &Message::Start),
        Err(StoreError::NotFound(_))
    ));
}

fn a_claim_leases_until_release_or_commit(t: &TestStore) {
    let store = &t.store;
    store.create_instance(&instance("a")).unwrap();
    let far = now_millis() + 60_000;
    assert_eq!(store.claim_ready(10, far).unwrap(), ["a"]);
    assert!(store.claim_ready(10, far).unwrap().is_empty(), "leased");
    assert!(
        t.another_host().claim_ready(10, far).unwrap().is_empty(),
        "leased"
    );
    store.release("a").unwrap();
    assert_eq!(store.claim_ready(10, far).unwrap(), ["a"]);
    // A commit gives the lease back; a new message makes it claimable.
    let loaded = store.load("a").unwrap();
    assert!(store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Running)])[0].is_ok());
    assert!(
        store.claim_ready(10, far).unwrap().is_empty(),
        "nothing to do"
    );
    store.enqueue("a", &event("2")).unwrap();
    assert_eq!(t.another_host().claim_ready(10, far).unwrap(), ["a"]);
    // A suspended instance is claimed for control messages only.
    assert!(store.has_pending_work("a", now_millis()).unwrap());
}

/// Commit one episode of a fresh instance `id` that schedules `timers`
/// timers, all due now, and `activities` activity calls.
fn schedule(store: &Blocking, id: &str, timers: u32, activities: u32) {
    store.create_instance(&instance(id)).unwrap();
    let far = now_millis() + 60_000;
    assert_eq!(store.claim_ready(10, far).unwrap(), [id]);
    let loaded = store.load(id).unwrap();
    let mut commit = episode(&loaded, RuntimeStatus::Running);
    let execution = loaded.instance.execution_id.clone();
    commit.new_timers = (0..timers)
        .map(|task| Timer {
            instance: id.into(),
            task,
            fire_at: now_millis(),
            execution: execution.clone(),
        })
        .collect();
    commit.new_activities = (0..activities)
        .map(|task| ActivityCall {
            instance: id.into(),
            execution: execution.clone(),
            task: timers + task,
            name: "Add".into(),
            input: "[1, 2]".into(),
            retry: None,
        })
        .collect();
    assert!(store.commit_episodes(vec![commit])[0].is_ok());
}

fn due_timers_fire_once_when_hosts_race(t: &TestStore) {
    schedule(&t.store, "timed", 60, 0);
    assert!(t.store.next_timer_due().unwrap().is_some());
    let hosts = [t.store.clone(), t.another_host(), t.another_host()];
    let now = now_millis() + 1;
    let fired: usize = hosts
        .iter()
        .map(|host| {
            let host = host.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| host.fire_due_timers(now).unwrap())
                    .sum::<usize>()
            })
        })
        .map(|thread| thread.join().unwrap())
        .sum();
    assert_eq!(fired, 60);
    let tasks: Vec<u32> = t
        .store
        .load("timed")
        .unwrap()
        .inbox
        .iter()
        .filter_map(|m| match m.message {
            Message::TimerFired { task, .. } => Some(task),
            _ => None,
        })
        .collect();
    assert_eq!(tasks.len(), 60, "{tasks:?}");
    assert_eq!(tasks.iter().collect::<HashSet<_>>().len(), 60, "each once");
    assert_eq!(t.store.next_timer_due().unwrap(), None);
}

fn activity_rows_are_claimed_once_when_hosts_race(t: &TestStore) {
    schedule(&t.store, "busy", 0, 40);
    let hosts = [t.store.clone(), t.another_host()];
    let now = now_millis() + 1;
    let claimed: Vec<i64> = hosts
        .iter()
        .map(|host| {
            let host = host.clone();
            std::thread::spawn(move || {
                (0..10)
                    .flat_map(|_| host.claim_activities(3, now).unwrap())
                    .map(|work| work.id)
                    .collect::<Vec<_>>()
            })
        })
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    assert_eq!(claimed.len(), 40, "{claimed:?}");
    assert_eq!(
        claimed.iter().collect::<HashSet<_>>().len(),
        40,
        "each once"
    );
    // Results go into the inbox once, even if a second host finishes too.
    for id in &claimed {
        let done = Message::ActivityDone {
            task: 0,
            execution: String::new(),
            result: Ok("3".into()),
            attempts: 1,
        };
        t.store
            .finish_activity(*id, "busy", duro::store::ActivityFinish::Done(done.clone()))
            .unwrap();
        t.another_host()
            .finish_activity(*id, "busy", duro::store::ActivityFinish::Done(done))
            .unwrap();
    }
    let results = t.store.load("busy").unwrap().inbox.len();
    assert_eq!(results, 40);
    assert_eq!(t.store.next_activity_due().unwrap(), None);
}

fn children_and_purges(t: &TestStore) {
    let store = &t.store;
    store.create_instance(&instance("parent")).unwrap();
    store.create_instance(&instance("taken")).unwrap();
    let loaded = store.load("parent").unwrap();
    let mut commit = episode(&loaded, RuntimeStatus::Running);
    let parent = duro::model::ParentCall {
        instance: "parent".into(),
        execution: loaded.instance.execution_id.clone(),
        task: 0,
    };
    let child = |id: &str, task: u32| Instance {
        parent: Some(duro::model::ParentCall {
            task,
            ..parent.clone()
        }),
        trace_parent: None,
        scheduled_by: None,
        ..instance(id)
    };
    commit.new_children = vec![child("child", 0), child("taken", 1)];
    assert!(store.commit_episodes(vec![commit])[0].is_ok());
    // The free id became a child; the taken one failed its call only.
    let created = store.instance("child").unwrap().expect("child created");
    assert_eq!(created.parent.unwrap().instance, "parent");
    let inbox = store.load("parent").unwrap().inbox;
    assert!(
        matches!(&inbox[..], [entry] if matches!(&entry.message,
            Message::ChildDone { task: 1, result: Err(e), .. } if e.contains("not started"))),
        "{inbox:?}"
    );
    // The child's end reaches the parent.
    let loaded = store.load("child").unwrap();
    assert!(store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Completed)])[0].is_ok());
    let inbox = store.load("parent").unwrap().inbox;
    assert!(
        inbox.iter().any(|entry| matches!(&entry.message,
            Message::ChildDone { task: 0, result: Ok(output), .. } if output == "\"done\"")),
        "{inbox:?}"
    );
    // Purges: a live instance is refused, a finished one goes with its rows.
    assert!(matches!(
        store.purge("parent"),
        Err(StoreError::NotFinished { .. })
    ));
    assert!(store.purge("child").unwrap());
    assert!(store.instance("child").unwrap().is_none());
    assert!(store.history("child").unwrap().is_empty());
    assert!(!store.purge("child").unwrap());
    // Found by input through the index, on every backend.
    let found = store
        .list(&duro::model::InstanceQuery {
            input: Some("\"x\"".into()),
            name: Some("Workflow".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let ids: HashSet<_> = found.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, HashSet::from(["parent", "taken"]));
}

/// PostgreSQL only: a host that stops renewing loses its leases when they
/// expire; another host claims the instance, and the first host's late
/// commit is refused while the new owner's goes through.
#[test]
fn an_expired_lease_moves_to_another_host_and_the_old_commit_is_refused() {
    let Some(t) = TestStore::postgres("expired_lease") else {
        return;
    };
    let hung = open_backend(&t.store.runtime, &t.backend, false);
    hung.create_instance(&instance("a")).unwrap();
    let far = now_millis() + 60_000;
    assert_eq!(hung.claim_ready(10, far).unwrap(), ["a"]);
    let computed = hung.load("a").unwrap();
    let other = t.another_host();
    assert!(
        other.claim_ready(10, far).unwrap().is_empty(),
        "still leased"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        other.claim_ready(10, far).unwrap(),
        ["a"],
        "expired: taken over"
    );
    match &hung.commit_episodes(vec![episode(&computed, RuntimeStatus::Completed)])[0] {
        Err(StoreError::Conflict { change, .. }) => {
            assert!(change.contains("lease passed"), "{change}")
        }
        other => panic!("{other:?}"),
    }
    let loaded = other.load("a").unwrap();
    assert!(other.commit_episodes(vec![episode(&loaded, RuntimeStatus::Completed)])[0].is_ok());
    assert_eq!(
        other.instance("a").unwrap().unwrap().status,
        RuntimeStatus::Completed
    );
    // A live host's leases outlast their time to live: it renews them.
    other.create_instance(&instance("b")).unwrap();
    assert_eq!(other.claim_ready(10, far).unwrap(), ["b"]);
    std::thread::sleep(Duration::from_millis(900));
    assert!(hung.claim_ready(10, far).unwrap().is_empty(), "renewed");
}

/// The same broken row reads the same on every backend: a parent with a
/// NULL task is corrupt (PostgreSQL once read it as task 0).
fn a_half_stored_parent_is_a_corrupt_row(t: &TestStore) {
    let store = &t.store;
    let mut child = instance("child");
    child.parent = Some(duro::model::ParentCall {
        instance: "parent".into(),
        execution: "e".into(),
        task: 3,
    });
    store.create_instance(&child).unwrap();
    assert_eq!(
        store.instance("child").unwrap().unwrap().parent,
        child.parent
    );
    t.raw("UPDATE instances SET parent_task = NULL WHERE id = 'child'");
    match store.instance("child") {
        Err(StoreError::Backend { message, retriable }) => {
            assert!(message.contains("parent of instance `child`"), "{message}");
            assert!(!retriable);
        }
        other => panic!("a half-stored parent was read as {other:?}"),
    }
    // Negative times are refused alike.
    t.raw("UPDATE instances SET parent_task = 3, created_at = -5 WHERE id = 'child'");
    let error = store.instance("child").unwrap_err().to_string();
    assert!(error.contains("created_at of instance `child`"), "{error}");
}

/// Every due timer fires in one call, however many (PostgreSQL once moved
/// at most 1,000 per call).
fn more_than_a_thousand_due_timers_fire_at_once(t: &TestStore) {
    schedule(&t.store, "many", 1_500, 0);
    let fired = t.store.fire_due_timers(now_millis() + 1).unwrap();
    assert_eq!(fired, 1_500);
    assert_eq!(t.store.next_timer_due().unwrap(), None);
    let inbox = t.store.load("many").unwrap().inbox;
    let timers = inbox
        .iter()
        .filter(|m| matches!(m.message, Message::TimerFired { .. }))
        .count();
    assert_eq!(timers, 1_500);
}

/// Histories, inbox rows and components are stamped with the time their
/// caller gives (the runtime's clock), never the store's own: here a clock
/// set years back.
fn every_stored_time_is_the_callers(t: &TestStore) {
    let store = &t.store;
    let (created, sent, stepped, finished) = (1_000_000, 2_000_000, 3_000_000, 4_000_000);
    let mut timed = instance("timed");
    timed.created_at = created;
    timed.updated_at = created;
    store.create_instance(&timed).unwrap();
    let event_time = |store: &Blocking| -> Vec<u64> {
        store
            .history("timed")
            .unwrap()
            .iter()
            .map(|e| e.timestamp)
            .collect()
    };
    assert_eq!(event_time(store), [created]);
    assert_eq!(
        t.raw("SELECT created_at FROM inbox WHERE instance_id = 'timed'"),
        [Some(created as i64)],
        "the start message"
    );
    store.enqueue_at("timed", &event("1"), sent).unwrap();
    assert_eq!(
        t.raw("SELECT created_at FROM inbox WHERE instance_id = 'timed' ORDER BY id"),
        [Some(created as i64), Some(sent as i64)]
    );
    let loaded = store.load("timed").unwrap();
    let mut step = episode(&loaded, RuntimeStatus::Running);
    step.instance.updated_at = stepped;
    step.new_activities = vec![ActivityCall {
        instance: "timed".into(),
        execution: loaded.instance.execution_id.clone(),
        task: 0,
        name: "A".into(),
        input: "null".into(),
        retry: None,
    }];
    assert!(store.commit_episodes(vec![step])[0].is_ok());
    assert_eq!(event_time(store), [created, stepped]);
    assert_eq!(
        t.raw("SELECT run_at FROM activities WHERE instance_id = 'timed'"),
        [Some(stepped as i64)],
        "an activity is due when its episode ran"
    );
    let work = store.on(store.store.claim_activities(1, stepped, stepped + 1_000));
    let work = work
        .unwrap()
        .pop()
        .expect("the activity is due at the episode's time");
    let done = Message::ActivityDone {
        task: 0,
        execution: loaded.instance.execution_id.clone(),
        result: Ok("1".into()),
        attempts: 1,
    };
    store
        .on(store.store.finish_activity(
            work.id,
            &work.call.instance,
            ActivityFinish::Done(done),
            finished,
        ))
        .unwrap();
    assert_eq!(
        t.raw("SELECT created_at FROM inbox WHERE instance_id = 'timed'"),
        [Some(finished as i64)],
        "the result"
    );
    store
        .on(store.store.put_component("sha256:dated", b"x", sent))
        .unwrap();
    assert_eq!(
        t.raw("SELECT created_at FROM components WHERE digest = 'sha256:dated'"),
        [Some(sent as i64)]
    );
}

/// A child's report to a parent that was purged meanwhile goes nowhere,
/// on every backend (no inbox row without its instance).
fn a_message_for_a_purged_instance_is_dropped(t: &TestStore) {
    let store = &t.store;
    let mut child = instance("orphan");
    child.parent = Some(duro::model::ParentCall {
        instance: "gone".into(),
        execution: "e".into(),
        task: 1,
    });
    store.create_instance(&child).unwrap();
    let loaded = store.load("orphan").unwrap();
    assert!(store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Completed)])[0].is_ok());
    assert_eq!(
        t.raw("SELECT count(*) FROM inbox WHERE instance_id = 'gone'"),
        [Some(0)]
    );
}

/// A suspended instance is ready only for control messages; once resumed,
/// the events that waited make it ready again (on PostgreSQL, its ready
/// mark is kept by every message, commit and release).
fn suspended_instances_take_only_control_messages(t: &TestStore) {
    let store = &t.store;
    let far = now_millis() + 60_000;
    store.create_instance(&instance("s")).unwrap();
    assert_eq!(store.claim_ready(10, far).unwrap(), ["s"]);
    let loaded = store.load("s").unwrap();
    assert!(store.commit_episodes(vec![episode(&loaded, RuntimeStatus::Suspended)])[0].is_ok());
    assert!(
        store.claim_ready(10, far).unwrap().is_empty(),
        "nothing waits"
    );
    store.enqueue("s", &event("1")).unwrap();
    assert!(
        store.claim_ready(10, far).unwrap().is_empty(),
        "an event waits for the resume"
    );
    store
        .enqueue("s", &Message::Resume { reason: None })
        .unwrap();
    assert_eq!(
        store.claim_ready(10, far).unwrap(),
        ["s"],
        "a resume is taken"
    );
    // An episode that takes only the resume and leaves it suspended: the
    // event still waits, and the instance is not ready.
    let loaded = store.load("s").unwrap();
    assert_eq!(loaded.inbox.len(), 2);
    let resume = loaded.inbox[1].id;
    let mut kept = episode(&loaded, RuntimeStatus::Suspended);
    kept.consumed = vec![resume];
    assert!(store.commit_episodes(vec![kept])[0].is_ok());
    assert!(store.claim_ready(10, far).unwrap().is_empty());
    // Resumed, with the event left: ready again.
    store
        .enqueue("s", &Message::Resume { reason: None })
        .unwrap();
    assert_eq!(store.claim_ready(10, far).unwrap(), ["s"]);
    let loaded = store.load("s").unwrap();
    let resume = loaded.inbox.last().unwrap().id;
    let mut resumed = episode(&loaded, RuntimeStatus::Running);
    resumed.consumed = vec![resume];
    assert!(store.commit_episodes(vec![resumed])[0].is_ok());
    assert_eq!(
        store.claim_ready(10, far).unwrap(),
        ["s"],
        "the event that waited"
    );
    // A lease given back without a commit leaves it ready.
    store.release("s").unwrap();
    assert_eq!(store.claim_ready(10, far).unwrap(), ["s"]);
}
