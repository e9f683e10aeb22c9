//! The orchestration runtime: claims instances that have messages, runs one
//! episode each (replay + new step), group-commits the results, fires due
//! timers; and the client operations (start, raise, query) on top of a store.
//!
//! Architecture invariant: an instance is stepped by one worker at a time
//! (the store's lease), and everything an episode produces is committed in
//! one transaction, or not at all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::engine::{self, Engine};
use crate::model::{
    HistoryEntry, HistoryEvent, Instance, InstanceQuery, Message, Millis, RuntimeStatus, Timer,
    now_millis,
};
use crate::replay::{Divergence, Outcome, Replayer, Subject};
use crate::store::sqlite::SqliteStore;
use crate::store::{EpisodeCommit, Store, StoreError};

/// How long an instance whose episode failed to run waits before a retry.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Longest instance id accepted.
pub const MAX_INSTANCE_ID_LEN: usize = 256;

/// How a runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The SQLite database file (created if missing).
    pub database: PathBuf,
    /// Where compiled components are cached; none disables the disk cache.
    pub compile_cache: Option<PathBuf>,
    /// How long a guest may run in one step before it is stopped.
    pub step_budget: Duration,
    /// Most instances claimed (and committed together) per round.
    pub batch_size: usize,
    /// Fallback polling period for work and timers.
    pub poll_interval: Duration,
}

impl RuntimeConfig {
    /// Defaults around a database file.
    pub fn new(database: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            database: database.into(),
            compile_cache: None,
            step_budget: Duration::from_secs(5),
            batch_size: 64,
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// What a client operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// No registered component defines this orchestration.
    #[error("no orchestration named `{0}` is registered")]
    UnknownOrchestration(String),
    /// The instance id breaks the rules.
    #[error("invalid instance id {id:?}: {reason}")]
    InvalidInstanceId {
        /// The id.
        id: String,
        /// Which rule.
        reason: &'static str,
    },
    /// No instance has this id.
    #[error("no instance with id `{0}`")]
    NotFound(String),
    /// An instance with this id exists and is not finished.
    #[error("an instance with id `{0}` already exists and has not finished")]
    AlreadyExists(String),
    /// The instance has finished; it takes no more events.
    #[error("instance `{id}` is {status}; it accepts no more events")]
    Finished {
        /// The instance.
        id: String,
        /// Its final status.
        status: RuntimeStatus,
    },
    /// The component cannot be used.
    #[error("{0}")]
    Component(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of client operations.
pub type RuntimeResult<T> = Result<T, RuntimeError>;

struct Inner {
    store: Arc<dyn Store>,
    engine: Engine,
    replayer: Replayer,
    config: RuntimeConfig,
    /// Orchestration name → digest of the component that new instances use.
    registry: RwLock<HashMap<String, String>>,
    work: Notify,
    timers: Notify,
    /// The instances of each committed round, so waiters re-read promptly.
    committed: tokio::sync::broadcast::Sender<Arc<[String]>>,
    /// Rounds whose commit may be under way at once.
    in_flight: Arc<tokio::sync::Semaphore>,
    ids: AtomicU64,
}

/// A running orchestration host: background workers plus client operations.
pub struct Runtime {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking store task panicked")
}

/// Check an instance id against the rules of the HTTP API.
pub fn validate_instance_id(id: &str) -> RuntimeResult<()> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_INSTANCE_ID_LEN {
        Some("it is longer than 256 characters")
    } else if id.chars().any(|c| matches!(c, '/' | '\\' | '#' | '?')) {
        Some("it contains one of / \\ # ?")
    } else if id.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RuntimeError::InvalidInstanceId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl Runtime {
    /// Open the store and start the workers and the timer loop.
    pub async fn start(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let database = config.database.clone();
        let store = blocking(move || SqliteStore::open(database)).await?;
        let engine = Engine::new(config.compile_cache.as_deref())?;
        let replayer = Replayer::new(engine.clone(), config.step_budget)?;
        let inner = Arc::new(Inner {
            store: Arc::new(store),
            engine,
            replayer,
            config,
            registry: RwLock::default(),
            work: Notify::new(),
            timers: Notify::new(),
            committed: tokio::sync::broadcast::channel(1024).0,
            in_flight: Arc::new(tokio::sync::Semaphore::new(4)),
            ids: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(work_loop(inner.clone(), stopped.clone())),
            tokio::spawn(timer_loop(inner.clone(), stopped)),
        ];
        Ok(Runtime { inner, stop, tasks })
    }

    /// The engine guests run on.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Store a component, check that it is an orchestration, and make it the
    /// version new instances of `orchestrations` start on. Returns its digest.
    pub async fn register(&self, bytes: Vec<u8>, orchestrations: &[&str]) -> RuntimeResult<String> {
        let digest = engine::digest(&bytes);
        let inner = self.inner.clone();
        let d = digest.clone();
        blocking(move || -> RuntimeResult<()> {
            let component = inner
                .engine
                .component(&d, &bytes)
                .map_err(|e| RuntimeError::Component(format!("{e:#}")))?;
            inner
                .replayer
                .prepare(&d, &component)
                .map_err(|e| RuntimeError::Component(format!("{e:#}")))?;
            inner.store.put_component(&d, &bytes)?;
            Ok(())
        })
        .await?;
        let mut registry = self.inner.registry.write().expect("registry poisoned");
        for name in orchestrations {
            registry.insert(name.to_string(), digest.clone());
        }
        Ok(digest)
    }

    /// Start an instance of `name` with `input`; returns its id.
    pub async fn start_new(
        &self,
        name: &str,
        instance_id: Option<String>,
        input: &serde_json::Value,
    ) -> RuntimeResult<String> {
        let component = self
            .inner
            .registry
            .read()
            .expect("registry poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownOrchestration(name.to_string()))?;
        let id = match instance_id {
            Some(id) => {
                validate_instance_id(&id)?;
                id
            }
            None => self.new_instance_id(),
        };
        let now = now_millis();
        let instance = Instance {
            id: id.clone(),
            name: name.to_string(),
            status: RuntimeStatus::Pending,
            input: input.to_string(),
            output: None,
            custom_status: None,
            component,
            created_at: now,
            updated_at: now,
            history_len: 1,
        };
        let store = self.inner.store.clone();
        blocking(move || store.create_instance(&instance))
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists(id) => RuntimeError::AlreadyExists(id),
                e => e.into(),
            })?;
        self.inner.work.notify_one();
        Ok(id)
    }

    fn new_instance_id(&self) -> String {
        let n = self.inner.ids.fetch_add(1, Ordering::Relaxed);
        let seed = format!(
            "{:?}\n{}\n{n}",
            std::time::SystemTime::now(),
            std::process::id()
        );
        hex::encode(&Sha256::digest(seed.as_bytes())[..16])
    }

    /// Deliver the event `name` with `payload` to an instance. Durable once
    /// this returns; the instance processes it asynchronously.
    pub async fn raise_event(
        &self,
        id: &str,
        name: &str,
        payload: &serde_json::Value,
    ) -> RuntimeResult<()> {
        let message = Message::EventRaised {
            name: name.to_string(),
            payload: payload.to_string(),
        };
        self.send(id, message).await
    }

    /// Terminate an instance; durable once this returns.
    pub async fn terminate(&self, id: &str, reason: Option<String>) -> RuntimeResult<()> {
        self.send(id, Message::Terminate { reason }).await
    }

    /// Suspend an instance: events wait in its inbox until it is resumed.
    pub async fn suspend(&self, id: &str, reason: Option<String>) -> RuntimeResult<()> {
        self.send(id, Message::Suspend { reason }).await
    }

    /// Resume a suspended instance.
    pub async fn resume(&self, id: &str, reason: Option<String>) -> RuntimeResult<()> {
        self.send(id, Message::Resume { reason }).await
    }

    /// Put a message into a live instance's inbox and wake the workers.
    async fn send(&self, id: &str, message: Message) -> RuntimeResult<()> {
        let instance = self
            .status(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if instance.status.is_terminal() {
            return Err(RuntimeError::Finished {
                id: id.to_string(),
                status: instance.status,
            });
        }
        let store = self.inner.store.clone();
        let id = id.to_string();
        blocking(move || store.enqueue(&id, &message))
            .await
            .map_err(|e| match e {
                StoreError::NotFound(id) => RuntimeError::NotFound(id),
                e => e.into(),
            })?;
        self.inner.work.notify_one();
        Ok(())
    }

    /// An instance's current state.
    pub async fn status(&self, id: &str) -> RuntimeResult<Option<Instance>> {
        // A primary-key read from a pooled connection takes microseconds
        // (WAL readers never wait for the writer): cheaper inline than the
        // hand-off to a blocking thread, which the lifecycle bench showed.
        Ok(self.inner.store.instance(id)?)
    }

    /// An instance's history.
    pub async fn history(&self, id: &str) -> RuntimeResult<Vec<HistoryEntry>> {
        let store = self.inner.store.clone();
        let id = id.to_string();
        Ok(blocking(move || store.history(&id)).await?)
    }

    /// Instances matching a query.
    pub async fn list(&self, query: InstanceQuery) -> RuntimeResult<Vec<Instance>> {
        let store = self.inner.store.clone();
        Ok(blocking(move || store.list(&query)).await?)
    }

    /// One page of instances and the continuation token of the next page.
    pub async fn list_page(
        &self,
        query: InstanceQuery,
    ) -> RuntimeResult<(Vec<Instance>, Option<String>)> {
        let limit = query.limit.max(1);
        let mut probe = query;
        probe.limit = limit + 1;
        let mut instances = self.list(probe).await?;
        let continuation = if instances.len() > limit {
            instances.truncate(limit);
            instances
                .last()
                .map(|last| encode_continuation(last.created_at, &last.id))
        } else {
            None
        };
        Ok((instances, continuation))
    }

    /// Delete an instance and its history; false if there was none.
    pub async fn purge(&self, id: &str) -> RuntimeResult<bool> {
        let store = self.inner.store.clone();
        let id = id.to_string();
        Ok(blocking(move || store.purge(&id)).await?)
    }

    /// Replay an instance's recorded history against `component` (the bytes
    /// of any orchestration component) and report the first divergence.
    pub async fn replay_check(
        &self,
        id: &str,
        component: Vec<u8>,
    ) -> RuntimeResult<Result<(), Divergence>> {
        let instance = self
            .status(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let history = self.history(id).await?;
        let inner = self.inner.clone();
        blocking(move || {
            let digest = engine::digest(&component);
            let compiled = inner
                .engine
                .component(&digest, &component)
                .map_err(|e| RuntimeError::Component(format!("{e:#}")))?;
            let subject = Subject {
                instance_id: instance.id.clone(),
                name: instance.name.clone(),
                input: instance.input.clone(),
            };
            let events = history.into_iter().map(|e| e.event).collect();
            inner
                .replayer
                .check(&digest, &compiled, &subject, events)
                .map_err(|e| RuntimeError::Component(format!("{e:#}")))
        })
        .await
    }

    /// Wait until an instance satisfies `done` (or `timeout` passes),
    /// re-reading its status after each committed round of episodes.
    pub async fn wait_until(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Instance) -> bool,
    ) -> RuntimeResult<Instance> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut committed = self.inner.committed.subscribe();
        let until_changed =
            async |committed: &mut tokio::sync::broadcast::Receiver<Arc<[String]>>| loop {
                match committed.recv().await {
                    Ok(ids) if !ids.iter().any(|i| i == id) => continue,
                    // Ours, or missed rounds (lagged): read again.
                    _ => return,
                }
            };
        loop {
            let instance = self
                .status(id)
                .await?
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            if done(&instance) || tokio::time::Instant::now() >= deadline {
                return Ok(instance);
            }
            // The fallback timeout covers writes by other processes.
            let _ = tokio::time::timeout(Duration::from_millis(50), until_changed(&mut committed))
                .await;
        }
    }

    /// Stop the background tasks and wait for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The opaque continuation token for "after this instance".
pub fn encode_continuation(created_at: Millis, id: &str) -> String {
    hex::encode(format!("{created_at}:{id}"))
}

/// The position a continuation token stands for, if it is one.
pub fn decode_continuation(token: &str) -> Option<(Millis, String)> {
    let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let (created, id) = text.split_once(':')?;
    Some((created.parse().ok()?, id.to_string()))
}

async fn work_loop(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    loop {
        loop {
            if *stopped.borrow() {
                return;
            }
            match run_round(&inner).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("orchestration round failed: {e:#}");
                    break;
                }
            }
        }
        tokio::select! {
            _ = inner.work.notified() => {}
            _ = tokio::time::sleep(inner.config.poll_interval) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Claim a batch of instances with messages, run an episode for each in
/// parallel, and commit them all together. Returns how many were claimed.
async fn run_round(inner: &Arc<Inner>) -> anyhow::Result<usize> {
    let lease_until = now_millis() + 60_000;
    let batch = inner.config.batch_size;
    let store = inner.store.clone();
    let claimed = blocking(move || store.claim_ready(batch, lease_until)).await?;
    let count = claimed.len();
    if count == 0 {
        return Ok(0);
    }
    // One blocking task per round, not per episode: on few cores the thread
    // hand-offs cost more than the episodes themselves.
    let worker = inner.clone();
    let episodes = blocking(move || {
        claimed
            .into_iter()
            .map(|id| {
                let result = run_episode(&worker, &id);
                (id, result)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut commits = Vec::new();
    for (id, result) in episodes {
        match result {
            Ok(commit) => commits.push(commit),
            Err(e) => {
                // A store hiccup: keep the lease a moment so a persistent
                // failure is retried once a second, not in a hot loop.
                tracing::error!(instance = %id, "episode failed, retrying in 1s: {e:#}");
                let store = inner.store.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY_DELAY).await;
                    let _ = blocking(move || store.release(&id)).await;
                });
            }
        }
    }
    // Commit in the background and go on claiming: the leases keep these
    // instances out of the next rounds until their commit is done, and the
    // writer folds concurrent rounds into one transaction.
    let permit = inner
        .in_flight
        .clone()
        .acquire_owned()
        .await
        .expect("commit semaphore closed");
    let inner = inner.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let new_timers = commits.iter().any(|c| !c.new_timers.is_empty());
        let store = inner.store.clone();
        let ids: Arc<[String]> = commits.iter().map(|c| c.instance.id.clone()).collect();
        let committed = ids.clone();
        let results = blocking(move || {
            ids.iter()
                .cloned()
                .zip(store.commit_episodes(commits))
                .collect::<Vec<_>>()
        })
        .await;
        for (id, result) in results {
            if let Err(e) = result {
                tracing::warn!(instance = %id, "episode not committed, will retry: {e}");
                let store = inner.store.clone();
                let _ = blocking(move || store.release(&id)).await;
            }
        }
        if new_timers {
            inner.timers.notify_one();
        }
        let _ = inner.committed.send(committed);
        // Messages that arrived while these instances were leased.
        inner.work.notify_one();
    });
    Ok(count)
}

/// What the inbox asks of an episode.
struct MessagePlan {
    /// Inbox ids the episode consumes.
    consumed: Vec<i64>,
    /// Events for the orchestration, in arrival order.
    incoming: Vec<HistoryEvent>,
    /// Suspend/resume events to record.
    control_events: Vec<HistoryEvent>,
    /// Suspended once the messages are applied.
    suspended: bool,
    /// Terminated, with this reason.
    terminated: Option<Option<String>>,
}

/// Apply control messages in order; while the instance is suspended, other
/// messages stay in the inbox (and are delivered, in order, on resume).
fn plan_messages(status: RuntimeStatus, inbox: Vec<crate::model::InboxEntry>) -> MessagePlan {
    let mut plan = MessagePlan {
        consumed: Vec::new(),
        incoming: Vec::new(),
        control_events: Vec::new(),
        suspended: status == RuntimeStatus::Suspended,
        terminated: None,
    };
    let mut deferred: Vec<(i64, HistoryEvent)> = Vec::new();
    for entry in inbox {
        let event = match entry.message {
            Message::Terminate { reason } => {
                plan.consumed.push(entry.id);
                plan.terminated = Some(reason);
                return plan;
            }
            Message::Suspend { reason } => {
                plan.consumed.push(entry.id);
                if !plan.suspended {
                    plan.suspended = true;
                    plan.control_events
                        .push(HistoryEvent::ExecutionSuspended { reason });
                }
                continue;
            }
            Message::Resume { reason } => {
                plan.consumed.push(entry.id);
                if plan.suspended {
                    plan.suspended = false;
                    plan.control_events
                        .push(HistoryEvent::ExecutionResumed { reason });
                    for (id, event) in deferred.drain(..) {
                        plan.consumed.push(id);
                        plan.incoming.push(event);
                    }
                }
                continue;
            }
            Message::Start => {
                plan.consumed.push(entry.id);
                continue;
            }
            Message::EventRaised { name, payload } => HistoryEvent::EventRaised { name, payload },
            Message::TimerFired { task, fire_at } => HistoryEvent::TimerFired { task, fire_at },
        };
        if plan.suspended {
            deferred.push((entry.id, event));
        } else {
            plan.consumed.push(entry.id);
            plan.incoming.push(event);
        }
    }
    plan
}

/// One episode of one leased instance, as a commit.
fn run_episode(inner: &Inner, id: &str) -> anyhow::Result<EpisodeCommit> {
    let loaded = inner.store.load(id)?;
    let mut instance = loaded.instance;
    let expected_history_len = instance.history_len;
    let mut commit = EpisodeCommit {
        instance: instance.clone(),
        expected_history_len,
        reset_history: false,
        new_events: Vec::new(),
        consumed: Vec::new(),
        new_timers: Vec::new(),
        follow_up: Vec::new(),
    };
    if instance.status.is_terminal() {
        // Late messages for a finished instance are dropped.
        commit.consumed = loaded.inbox.iter().map(|m| m.id).collect();
        return Ok(commit);
    }
    let now = now_millis();
    let plan = plan_messages(instance.status, loaded.inbox);
    commit.consumed = plan.consumed;
    let mut control_events = plan.control_events;
    if let Some(reason) = plan.terminated {
        let mut new_events = vec![HistoryEvent::OrchestratorStarted { timestamp: now }];
        new_events.append(&mut control_events);
        new_events.push(HistoryEvent::ExecutionTerminated {
            reason: reason.clone(),
        });
        instance.status = RuntimeStatus::Terminated;
        instance.output = Some(serde_json::Value::from(reason.unwrap_or_default()).to_string());
        instance.updated_at = now;
        instance.history_len = expected_history_len + new_events.len() as u64;
        commit.new_events = new_events;
        commit.instance = instance;
        return Ok(commit);
    }
    let started = loaded
        .history
        .iter()
        .any(|e| matches!(e.event, HistoryEvent::OrchestratorStarted { .. }));
    let status_after = if plan.suspended {
        RuntimeStatus::Suspended
    } else {
        RuntimeStatus::Running
    };
    if started && plan.incoming.is_empty() {
        // Nothing for the orchestration itself: only its status may change.
        if !control_events.is_empty() {
            control_events.insert(0, HistoryEvent::OrchestratorStarted { timestamp: now });
            instance.status = status_after;
            instance.updated_at = now;
            instance.history_len = expected_history_len + control_events.len() as u64;
            commit.new_events = control_events;
            commit.instance = instance;
        }
        return Ok(commit);
    }
    let mut incoming = vec![HistoryEvent::OrchestratorStarted { timestamp: now }];
    incoming.append(&mut control_events);
    incoming.extend(plan.incoming);
    let component = match inner.engine.cached(&instance.component) {
        Some(component) => component,
        None => {
            let compiled = inner
                .store
                .component(&instance.component)?
                .ok_or_else(|| anyhow::anyhow!("it is missing from the store"))
                .and_then(|bytes| inner.engine.component(&instance.component, &bytes));
            match compiled {
                Ok(component) => component,
                Err(e) => {
                    // Permanent: the instance can never run on its component.
                    let error = format!("component {} cannot be loaded: {e:#}", instance.component);
                    tracing::error!(instance = %instance.id, "{error}");
                    let new_events = vec![
                        HistoryEvent::OrchestratorStarted { timestamp: now },
                        HistoryEvent::ExecutionFailed {
                            error: error.clone(),
                        },
                    ];
                    instance.status = RuntimeStatus::Failed;
                    instance.output = Some(serde_json::Value::String(error).to_string());
                    instance.updated_at = now;
                    instance.history_len = expected_history_len + new_events.len() as u64;
                    commit.new_events = new_events;
                    commit.instance = instance;
                    return Ok(commit);
                }
            }
        }
    };
    let subject = Subject {
        instance_id: instance.id.clone(),
        name: instance.name.clone(),
        input: instance.input.clone(),
    };
    let history: Vec<HistoryEvent> = loaded.history.into_iter().map(|e| e.event).collect();
    let episode =
        inner
            .replayer
            .run_episode(&instance.component, &component, &subject, history, incoming)?;
    if let Some(custom_status) = episode.custom_status {
        instance.custom_status = custom_status;
    }
    instance.updated_at = now;
    let mut new_events = episode.appended;
    match episode.outcome {
        Outcome::Pending => {
            instance.status = status_after;
            commit.new_timers = episode
                .new_timers
                .into_iter()
                .map(|(task, fire_at)| Timer {
                    instance: instance.id.clone(),
                    task,
                    fire_at,
                })
                .collect();
        }
        Outcome::Completed(output) => {
            instance.status = RuntimeStatus::Completed;
            instance.output = Some(output);
        }
        Outcome::Failed(error) => {
            tracing::warn!(instance = %instance.id, "orchestration failed: {error}");
            instance.status = RuntimeStatus::Failed;
            instance.output = Some(serde_json::Value::String(error).to_string());
        }
        Outcome::Diverged(divergence) => {
            // The recorded history stays as it was; only the failure is added.
            let error = divergence.to_string();
            tracing::warn!(instance = %instance.id, "{error}");
            new_events = vec![
                HistoryEvent::OrchestratorStarted { timestamp: now },
                HistoryEvent::ExecutionFailed {
                    error: error.clone(),
                },
            ];
            instance.status = RuntimeStatus::Failed;
            instance.output = Some(serde_json::Value::String(error).to_string());
        }
        Outcome::ContinuedAsNew(input) => {
            commit.reset_history = true;
            new_events = vec![HistoryEvent::ExecutionStarted {
                name: instance.name.clone(),
                input: input.clone(),
            }];
            instance.input = input;
            instance.status = RuntimeStatus::Running;
            instance.output = None;
            commit.follow_up.push(Message::Start);
        }
    }
    instance.history_len = if commit.reset_history {
        new_events.len() as u64
    } else {
        expected_history_len + new_events.len() as u64
    };
    commit.new_events = new_events;
    commit.instance = instance;
    Ok(commit)
}

async fn timer_loop(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    loop {
        let store = inner.store.clone();
        let fired = blocking(move || store.fire_due_timers(now_millis())).await;
        match fired {
            Ok(0) => {}
            Ok(_) => inner.work.notify_one(),
            Err(e) => tracing::error!("firing timers failed: {e}"),
        }
        let store = inner.store.clone();
        let next: Option<Millis> = blocking(move || store.next_timer_due())
            .await
            .unwrap_or_else(|e| {
                tracing::error!("reading timers failed: {e}");
                None
            });
        let poll = inner.config.poll_interval;
        let wait = match next {
            Some(due) => Duration::from_millis(due.saturating_sub(now_millis())).min(poll),
            None => poll,
        };
        tokio::select! {
            _ = inner.timers.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}
