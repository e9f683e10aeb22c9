//! The orchestration runtime: its set-up, and the client operations (start,
//! raise, terminate, query, replay-check) on top of a store. The background
//! loops that claim instances, run episodes and fire timers are in `worker`.
//!
//! Architecture invariant: an instance is stepped by one worker at a time
//! (the store's lease), and everything an episode produces is committed in
//! one transaction, or not at all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::activity::{ActivityOptions, AllowedHost};
use crate::engine::{self, Engine};
use crate::model::{
    Clock, HistoryEntry, Instance, InstanceQuery, Message, Millis, RuntimeStatus, SystemClock,
    canonical_json, fresh_id,
};
use crate::replay::{Divergence, Replayer, Subject};
use worker::{Carry, Carrying};

mod activities;
mod deploy;
mod entities;
pub use entities::EntityView;
mod idle;
mod schedules;
pub use schedules::Triggered;
mod limits;
mod pool;
mod worker;
use crate::store::{Store, StoreError, StoreResult, Version, WAITER_HEARD_FOR, WorkKind};
pub use deploy::{
    DeployMode, DeployReport, InstanceCheck, OrchestrationChange, OrchestrationVersion,
};
pub use limits::Limits;

/// How long an instance whose episode the host failed to run or commit
/// waits before its first retry; each further failure doubles it, up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The longest wait between retries of an episode.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Instances deleted per write by a bulk purge.
pub const PURGE_BATCH: usize = 100;

/// Waiters ([`Runtime::wait_until`], `waitForCompletion`) at once; more are
/// answered at once with the status as it is.
pub const MAX_WAITERS: usize = 10_000;

/// How long a claim asks the store to lease an instance or an activity row
/// (a store shared by hosts uses its own time to live and renews it).
const CLAIM_LEASE_MS: crate::model::Millis = 60_000;

/// The longest a waiter goes without re-reading its instance when no
/// commit of this host woke it.
const MAX_WAIT_FALLBACK: Duration = Duration::from_millis(250);

/// The default of [`RuntimeConfig::carry_patience`].
const CARRY_PATIENCE: Duration = Duration::from_millis(50);

/// The most [`RuntimeConfig::carry_patience`] may be: a request that
/// carries holds its client that long at worst.
const MAX_CARRY_PATIENCE_MS: u64 = 10_000;

/// A start is carried into its first episode only if the orchestration's
/// last first episode took less than this: one much slower would outlast
/// [`RuntimeConfig::carry_patience`], be taken back and run twice.
const QUICK_FIRST_STEP: Duration = Duration::from_millis(5);

pub use crate::model::MAX_INSTANCE_ID_LEN;

/// How a runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; none disables the disk cache.
    pub compile_cache: Option<PathBuf>,
    /// How long a guest may run in one episode (replaying its history and
    /// taking new events) before it is stopped.
    pub step_budget: Duration,
    /// Most instances claimed per round.
    pub batch_size: usize,
    /// Episodes that may run at once, each on a thread of its own.
    pub episode_threads: usize,
    /// Guests (orchestrations, activities and HTTP functions) instantiated
    /// at once.
    pub guest_instances: u32,
    /// How long one activity attempt may run before it fails.
    pub activity_budget: Duration,
    /// Activity attempts that may run at once.
    pub activity_concurrency: usize,
    /// Fallback polling period for work and timers.
    pub poll_interval: Duration,
    /// How long a client's request waits for an episode to take what it
    /// carried (a message, a start) before it takes it
    /// back and stores it itself: a commit takes a few milliseconds, but
    /// the episode under way (or the one it was carried into) may be a
    /// guest computing for its whole step budget, and a raise or a start
    /// must not wait for that. It also bounds what nothing foresaw (every
    /// path that gives the lease back resumes or hands back what is
    /// parked). Default 50 ms, or `DURO_CARRY_PATIENCE_MS` (at most 10 s).
    pub carry_patience: Duration,
    /// Where episodes, timers and new instances read the time.
    pub clock: Arc<dyn Clock>,
    /// Orchestration instances kept alive between episodes, so that the
    /// next episode of a hot instance feeds it only the new events instead
    /// of replaying its history (0: always replay). Correctness never
    /// depends on it: an instance whose stored history is not exactly the
    /// one it saw is replayed. Default 128, or `DURO_WARM_INSTANCES`.
    pub warm_instances: usize,
    /// Most bytes of linear memory the warm instances may hold together,
    /// with the instance rows kept with them (least recently used evicted
    /// first). Default 64 MiB, or
    /// `DURO_WARM_MEMORY_MB`.
    pub warm_memory: usize,
    /// How episode, commit and activity spans join their instance's trace
    /// (OpenTelemetry export sets its own).
    pub trace_link: Arc<dyn crate::trace::TraceLink>,
    /// A warm instance unused for this long is dropped (its next episode
    /// replays), and a host that ran no episode for this long has its
    /// store give back its caches (SQLite: its page caches and idle read
    /// connections). So instances sleeping for days cost memory only while
    /// they are hot. Zero: never. Default 30 s, or `DURO_IDLE_RELEASE_MS`.
    pub idle_release: Duration,
    /// Sizes and counts callers and guests may not exceed.
    pub limits: Limits,
    /// The TLS client of outbound HTTPS (activities, `ctx.call_http`):
    /// the Mozilla roots, plus `--ca-file`'s.
    pub tls: crate::tls::TlsClient,
}

/// The number in the environment variable `name`, if it is set to one (a
/// tuning knob of [`RuntimeConfig::default`]).
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            compile_cache: None,
            step_budget: Duration::from_secs(5),
            batch_size: 64,
            episode_threads: std::thread::available_parallelism().map_or(2, usize::from) + 2,
            guest_instances: 1000,
            activity_budget: Duration::from_secs(60),
            activity_concurrency: 32,
            poll_interval: Duration::from_millis(250),
            carry_patience: env_number("DURO_CARRY_PATIENCE_MS")
                .map_or(CARRY_PATIENCE, |ms: u64| {
                    Duration::from_millis(ms.min(MAX_CARRY_PATIENCE_MS))
                }),
            clock: Arc::new(SystemClock),
            warm_instances: env_number("DURO_WARM_INSTANCES").unwrap_or(128),
            warm_memory: env_number::<usize>("DURO_WARM_MEMORY_MB").unwrap_or(64) << 20,
            trace_link: Arc::new(crate::trace::FieldsOnly),
            idle_release: Duration::from_millis(
                env_number("DURO_IDLE_RELEASE_MS").unwrap_or(30_000),
            ),
            limits: Limits::default(),
            tls: crate::tls::TlsClient::default(),
        }
    }
}

/// What an instance waits on ([`Runtime::pending`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Scheduled and not completed: timers, activities, sub-orchestrations.
    pub tasks: Vec<(u32, crate::model::Action)>,
    /// Messages waiting for its next episode.
    pub inbox: Vec<crate::model::Message>,
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
    /// The instance has as many messages waiting as the store allows.
    #[error("{0}")]
    InboxFull(String),
    /// A value is larger than a limit allows ([`Limits`]).
    #[error("{0}")]
    TooLarge(String),
    /// The operation needs a finished instance (purge).
    #[error("instance `{id}` is {status}; only a finished instance can be purged")]
    NotFinished {
        /// The instance.
        id: String,
        /// Its status.
        status: RuntimeStatus,
    },
    /// The instance changed while the operation ran; trying again may work.
    #[error("instance `{0}` changed while the operation ran; try again")]
    Busy(String),
    /// The schedule kept changing while the operation ran (its ticks, or
    /// another host's clients); trying again may work.
    #[error("schedule `{0}` changed while the operation ran; try again")]
    ScheduleBusy(String),
    /// A schedule's definition breaks a rule (the message names it).
    #[error("{0}")]
    InvalidSchedule(String),
    /// No schedule has this name.
    #[error("no schedule named `{0}`")]
    NoSchedule(String),
    /// A schedule with this name exists already.
    #[error("a schedule named `{0}` exists already")]
    ScheduleExists(String),
    /// The schedule is the manifest's: a deploy changes it.
    #[error(
        "schedule `{0}` is defined in the app's manifest; change or remove it there and deploy"
    )]
    ScheduleFromManifest(String),
    /// The id is an entity's: the orchestration operations do not apply.
    #[error("`{0}` is an entity's id: use the entity operations (signal, read) instead")]
    EntityInstance(String),
    /// No component defines this entity.
    #[error("no entity named `{0}` is registered")]
    UnknownEntity(String),
    /// An entity name or key breaks the rules (the message names it).
    #[error("{0}")]
    InvalidEntityId(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RuntimeError {
    /// Store errors a client can act on keep their meaning; the rest are
    /// store failures.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => RuntimeError::NotFound(id),
            StoreError::AlreadyExists(id) => RuntimeError::AlreadyExists(id),
            StoreError::Conflict { instance, .. } => RuntimeError::Busy(instance),
            StoreError::NotFinished { id, status } => RuntimeError::NotFinished { id, status },
            StoreError::Finished { id, status } => RuntimeError::Finished { id, status },
            e @ StoreError::InboxFull { .. } => RuntimeError::InboxFull(e.to_string()),
            StoreError::NoSchedule(name) => RuntimeError::NoSchedule(name),
            StoreError::ScheduleExists(name) => RuntimeError::ScheduleExists(name),
            StoreError::ScheduleChanged(name) => RuntimeError::ScheduleBusy(name),
            e => RuntimeError::Store(e),
        }
    }
}

/// An instance of a committed round, for waiters
/// ([`Runtime::wait_until`]).
#[derive(Debug)]
pub(crate) struct Committed {
    id: String,
    /// Its row as the commit stored it; `None` if the episode was refused
    /// (or nobody was waiting when it committed).
    stored: Option<Instance>,
}

impl Committed {
    pub(crate) fn new(id: String, stored: Option<Instance>) -> Committed {
        Committed { id, stored }
    }
}

/// The result of client operations.
pub type RuntimeResult<T> = Result<T, RuntimeError>;

struct Inner {
    store: Arc<dyn Store>,
    engine: Engine,
    replayer: Replayer,
    metrics: Arc<crate::metrics::Metrics>,
    config: RuntimeConfig,
    /// Orchestration name → digest of the component that new instances use.
    registry: RwLock<HashMap<String, String>>,
    /// Entity name (lowercase) → the component that runs its operations.
    entity_registry: RwLock<HashMap<String, String>>,
    entity_host: crate::entity_host::EntityHost,
    /// Activity name → the component that runs it and its options.
    activity_registry: RwLock<HashMap<String, RegisteredActivity>>,
    /// Orchestration name → where its `ctx.call_http` requests may go.
    http_allowed: RwLock<HashMap<String, Vec<AllowedHost>>>,
    activity_host: crate::activity::ActivityHost,
    /// Wakes the activity loop: new rows committed, an attempt ended.
    activities: Notify,
    /// True once every activity component is registered: the activity loop
    /// runs nothing before, so that after a restart no call fails for an
    /// activity whose component is not registered yet.
    activities_open: watch::Sender<bool>,
    /// Wakes the work loop ([`Inner::wake_work`]).
    work: Notify,
    /// How many times work was signalled ([`Inner::wake_work`]): an episode
    /// whose instance was leased before the last signal may have had a
    /// message stored meanwhile, which a claim then passed over.
    work_signals: std::sync::atomic::AtomicU64,
    /// The episode threads, once the work loop has started them: an
    /// instance given a message by this host goes to them directly when
    /// the store can lease it locally.
    episode_pool: std::sync::OnceLock<Arc<pool::EpisodePool<worker::Job>>>,
    timers: Notify,
    /// The instances of each committed round, so waiters answer promptly.
    committed: tokio::sync::broadcast::Sender<Arc<[Committed]>>,
    /// Rounds whose commit may be under way at once.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Failed attempts to run or commit an instance's episode, for backoff.
    retries: Mutex<HashMap<String, u32>>,
    /// A message (at most one an instance) for an orchestration whose
    /// episode this host is running: it goes into the next episode when
    /// that one commits ([`Inner::resume_parked`]), so that an event raised
    /// while the instance commits costs no write of its own.
    parked: Mutex<HashMap<String, worker::Carried>>,
    /// Orchestration name → how long its last first episode took here.
    first_steps: Mutex<HashMap<String, Duration>>,
    /// The runtime the background tasks run on (episode threads spawn onto it).
    handle: tokio::runtime::Handle,
    /// Episodes begun so far: the idle release waits for it to stand still.
    episodes_begun: std::sync::atomic::AtomicU64,
    /// Slots for waiters ([`MAX_WAITERS`]).
    waiters: tokio::sync::Semaphore,
    /// True once the runtime is stopping.
    stopped: watch::Receiver<bool>,
    /// Clients' schedule changes on this host, one at a time: they would
    /// otherwise refuse each other (each commits against the version it
    /// read), and a burst of triggers would answer 409s.
    schedule_changes: tokio::sync::Mutex<()>,
}

impl Inner {
    /// The delay before the next retry of `id`, counting this failure.
    fn backoff(&self, id: &str) -> Duration {
        let mut retries = self.retries.lock().expect("retry counts poisoned");
        let failures = retries.entry(id.to_string()).or_default();
        *failures = failures.saturating_add(1);
        FIRST_RETRY_DELAY
            .saturating_mul(1 << (*failures - 1).min(16))
            .min(MAX_RETRY_DELAY)
    }

    /// Run a write that must land until it does, or until the runtime
    /// stops: an activity's result, a lease given back. A row this host
    /// holds is renewed while it lives (a store shared by hosts), so a
    /// write given up on would leave it held, its instance stalled, until
    /// the host exits. `what` names it in the log; trouble backs off from
    /// 100 ms to [`MAX_RETRY_DELAY`].
    async fn until_stored<F, Fut>(&self, what: &str, mut write: F) -> StoreResult<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<()>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut stopped = self.stopped.clone();
        loop {
            match write().await {
                Ok(()) => return Ok(()),
                Err(e) if *stopped.borrow() => return Err(e),
                Err(e) => {
                    tracing::warn!("{what} failed, trying again in {delay:?}: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped.changed() => {}
                    }
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// How long a background loop sleeps before the next item it serves
    /// falls due (`next`, read from the store; `what` names the items for a
    /// failed read): until then by the runtime's clock, at most the poll
    /// interval.
    fn wait_for(&self, next: Result<Option<Millis>, StoreError>, what: &str) -> Duration {
        let poll = self.config.poll_interval;
        match next {
            Ok(Some(due)) => {
                Duration::from_millis(due.saturating_sub(self.config.clock.now())).min(poll)
            }
            Ok(None) => poll,
            Err(e) => {
                tracing::error!("reading due {what} failed: {e}");
                poll
            }
        }
    }

    /// `id` has a new message, durable: run its episode. When the store
    /// leases it on the spot and the episode threads have room, it goes
    /// straight to them (no claim query, no hand-off through the work
    /// loop); otherwise the work loop claims it.
    fn has_work(&self, id: &str) {
        let since = self.work_signalled();
        if let Some(pool) = self.episode_pool.get()
            && self.store.lease_local(id)
        {
            if pool
                .offer(
                    worker::Job::inbox(id.to_string(), since),
                    self.config.batch_size,
                )
                .is_ok()
            {
                return;
            }
            self.store.release_local(id);
        }
        self.wake_work();
    }

    /// Work for instances was stored (a message, a new instance, a lease
    /// given back): the work loop claims. Every stored message is followed
    /// by this, which is what lets a committed episode tell whether a
    /// message may have come for its instance while it was leased
    /// ([`work_signalled`](Self::work_signalled)).
    pub(super) fn wake_work(&self) {
        (self.work_signals).fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.work.notify_one();
    }

    /// The count of [`wake_work`](Self::wake_work) so far: read before an
    /// instance is leased, it goes with the lease's episode.
    pub(super) fn work_signalled(&self) -> u64 {
        (self.work_signals).load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Carry `message` straight into an episode of `id`, if this host can
    /// lease it on the spot, or park it for the episode after the one this
    /// host runs: what becomes of it (stored by an episode's commit, or
    /// handed back); else the message.
    fn carry(&self, id: &str, message: Message) -> Result<Carrying, Message> {
        let Some(pool) = self.episode_pool.get() else {
            return Err(message);
        };
        // Leased here, an episode of it is under way: its first one, at
        // low load, whose commit a raise right after the start meets. Not
        // for an entity: its signals come in streams, and stored at once
        // they all go into its next episode, where a parked one would hold
        // its sender for two commits.
        if crate::entity::is_entity(id) {
            if self.store.leased_here(id) || !self.replayer.holds(id) {
                return Err(message);
            }
        } else if self.store.leased_here(id) {
            return self.park(id, message);
        }
        // A cold instance is carried too: its episode reads it whole, where
        // storing the message would cost a write, a claim and the same read
        // (and on a shared store, most raises meet hosts their instance is
        // cold on). Its sender waits for the replay, `carry_patience` at
        // most.
        self.offer_carried(pool, id, Carry::Message(message))
            .map_err(Carry::into_message)
    }

    /// Carry a new instance's start into its first episode, whose commit
    /// creates it, if the orchestration's first episodes are quick here,
    /// this host can lease its id on the spot and the episode threads have
    /// room: what becomes of it; else the instance.
    fn carry_start(&self, instance: Instance) -> Result<Carrying, Box<Instance>> {
        let instance = Box::new(instance);
        let quick = (self.first_steps.lock().expect("first steps poisoned"))
            .get(&instance.name)
            .is_some_and(|took| *took < QUICK_FIRST_STEP);
        // An id warm here ran here lately: most likely a live instance,
        // whose start the commit would refuse after running a guest for
        // nothing.
        let fresh = !self.replayer.holds(&instance.id);
        let (Some(pool), true) = (self.episode_pool.get(), quick && fresh) else {
            return Err(instance);
        };
        let id = instance.id.clone();
        self.offer_carried(pool, &id, Carry::Start(instance))
            .map_err(Carry::into_start)
    }

    /// Lease `id` on the spot and give its episode threads an episode of
    /// it with `carry`: what becomes of it; `carry` back if either cannot
    /// be done.
    fn offer_carried(
        &self,
        pool: &pool::EpisodePool<worker::Job>,
        id: &str,
        carry: Carry,
    ) -> Result<Carrying, Carry> {
        let since = self.work_signalled();
        if !self.store.lease_carried(id) {
            return Err(carry);
        }
        let (carried, carrying) = worker::Carried::new(carry);
        // Its sender has not seen it yet: it cannot have been taken back.
        self.offer_job(pool, id, carried, since)
            .map_err(worker::Carried::hand_back)?;
        Ok(carrying)
    }

    /// Give the episode threads an episode of `id`, leased here, with
    /// `carried`; if they have no room, the lease goes back and `carried`
    /// comes back.
    fn offer_job(
        &self,
        pool: &pool::EpisodePool<worker::Job>,
        id: &str,
        carried: worker::Carried,
        since: u64,
    ) -> Result<(), worker::Carried> {
        let job = worker::Job {
            id: id.to_string(),
            carried: Some(carried),
            since,
        };
        pool.offer(job, self.config.batch_size).map_err(|job| {
            self.store.release_local(id);
            job.carried.expect("carried")
        })
    }

    /// Keep `message` for the next episode of `id`, whose lease this host
    /// holds (an episode runs or commits). One message an instance; others
    /// are stored.
    fn park(&self, id: &str, message: Message) -> Result<Carrying, Message> {
        let mut parked = self.parked.lock().expect("parked messages poisoned");
        // Checked under the lock that `resume_parked` takes after the lease
        // is given back: a message parked here is always seen there.
        if parked.contains_key(id) || !self.store.leased_here(id) {
            return Err(message);
        }
        let (carried, carrying) = worker::Carried::new(Carry::Message(message));
        parked.insert(id.to_string(), carried);
        Ok(carrying)
    }

    /// The episode of `id` this host ran has committed (`committed`) or
    /// given its lease back: a message parked for it goes into the next
    /// episode if the instance can be leased again at once, else back to
    /// its sender.
    fn resume_parked(&self, id: &str, committed: bool) {
        let parked = self
            .parked
            .lock()
            .expect("parked messages poisoned")
            .remove(id);
        // Not offered, it is dropped: handed back to its sender.
        if let Some(carried) = parked.filter(|_| committed) {
            self.carry_again(id, carried);
        }
    }

    /// Give `carried` (parked, or carried into an episode whose commit was
    /// refused) to a new episode of `id` if this host can lease it on the
    /// spot; else it goes back to its sender.
    fn carry_again(&self, id: &str, carried: worker::Carried) {
        // Taken back by its sender, it is stored already.
        if carried.taken_back() {
            return;
        }
        let since = self.work_signalled();
        if let Some(pool) = self.episode_pool.get()
            && self.store.lease_carried(id)
        {
            let _ = self.offer_job(pool, id, carried, since);
        }
    }

    /// An instance of the orchestration `name` took `took` for its first
    /// episode (`carry_start` reads it).
    fn first_step_took(&self, name: &str, took: Duration) {
        let mut first_steps = self.first_steps.lock().expect("first steps poisoned");
        match first_steps.get_mut(name) {
            Some(last) => *last = took,
            None => {
                first_steps.insert(name.to_string(), took);
            }
        }
    }

    /// Forget the failures of `id` once an episode of it committed.
    fn succeeded(&self, id: &str) {
        let mut retries = self.retries.lock().expect("retry counts poisoned");
        if !retries.is_empty() {
            retries.remove(id);
        }
    }
}

/// An activity as registered: its component and its options.
#[derive(Debug, Clone)]
struct RegisteredActivity {
    digest: String,
    options: ActivityOptions,
}

/// A running orchestration host: background workers plus client operations.
pub struct Runtime {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the tokio runtime is shutting down, and with it the
        // task that waits here.
        Err(_) => std::future::pending().await,
    }
}

/// Check an instance id against the rules of the HTTP API.
pub fn validate_instance_id(id: &str) -> RuntimeResult<()> {
    match instance_id_problem(id) {
        Some(reason) => Err(RuntimeError::InvalidInstanceId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

pub use crate::model::instance_id_problem;

impl Runtime {
    /// Start the workers, the timer loop and the activity loop over
    /// `store` (any backend: the runtime never opens one itself).
    pub async fn start(config: RuntimeConfig, store: Arc<dyn Store>) -> anyhow::Result<Runtime> {
        let engine = Engine::new(config.compile_cache.as_deref(), config.guest_instances)?;
        let metrics = engine.metrics().clone();
        let replayer = Replayer::new(
            engine.clone(),
            config.step_budget,
            // Warm instances hold slots of the guest pool, which HTTP
            // functions (800 at most), activities and episodes share:
            // never more than an eighth of it.
            config
                .warm_instances
                .min(config.guest_instances as usize / 8),
            config.warm_memory,
        )?;
        let activity_host = crate::activity::ActivityHost::new(engine.clone(), config.tls.clone())?;
        let entity_host = crate::entity_host::EntityHost::new(engine.clone(), config.step_budget)?;
        let (stop, stopped) = watch::channel(false);
        let inner = Arc::new(Inner {
            store,
            engine,
            replayer,
            metrics,
            config,
            registry: RwLock::default(),
            entity_registry: RwLock::default(),
            entity_host,
            activity_registry: RwLock::default(),
            http_allowed: RwLock::default(),
            activity_host,
            activities: Notify::new(),
            activities_open: watch::channel(false).0,
            work: Notify::new(),
            work_signals: Default::default(),
            episode_pool: std::sync::OnceLock::new(),
            timers: Notify::new(),
            committed: tokio::sync::broadcast::channel(1024).0,
            in_flight: Arc::new(tokio::sync::Semaphore::new(4)),
            retries: Mutex::default(),
            parked: Mutex::default(),
            first_steps: Mutex::default(),
            handle: tokio::runtime::Handle::current(),
            episodes_begun: Default::default(),
            waiters: tokio::sync::Semaphore::new(MAX_WAITERS),
            stopped: stopped.clone(),
            schedule_changes: tokio::sync::Mutex::new(()),
        });
        // Weak: the store holds the callback, and the runtime the store.
        let woken = Arc::downgrade(&inner);
        inner.store.on_foreign_work(Arc::new(move |kind| {
            if let Some(inner) = woken.upgrade() {
                match kind {
                    WorkKind::Instances => inner.wake_work(),
                    WorkKind::Timers => inner.timers.notify_one(),
                    WorkKind::Activities => inner.activities.notify_one(),
                }
            }
        }));
        // Instances another host finished: waiters here read them again at
        // once (they have no row to answer from).
        let told = Arc::downgrade(&inner);
        inner.store.on_foreign_finish(Arc::new(move |ids| {
            if let Some(inner) = told.upgrade()
                && inner.committed.receiver_count() > 0
            {
                inner.metrics.foreign_finishes.inc_by(ids.len() as u64);
                let round: Arc<[Committed]> =
                    ids.into_iter().map(|id| Committed::new(id, None)).collect();
                let _ = inner.committed.send(round);
            }
        }));
        let tasks = vec![
            tokio::spawn(worker::work_loop(inner.clone(), stopped.clone())),
            tokio::spawn(worker::timer_loop(inner.clone(), stopped.clone())),
            tokio::spawn(activities::activity_loop(inner.clone(), stopped.clone())),
            tokio::spawn(idle::release_loop(inner.clone(), stopped)),
        ];
        Ok(Runtime { inner, stop, tasks })
    }

    /// The engine guests run on.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compile a component, check it with `prepare` (which also keeps it
    /// ready to instantiate), and store its bytes by digest; returns the
    /// digest.
    async fn store_component(
        &self,
        bytes: Vec<u8>,
        prepare: impl FnOnce(&Inner, &str, &wasmtime::component::Component) -> anyhow::Result<()>
        + Send
        + 'static,
    ) -> RuntimeResult<String> {
        let (digest, bytes, _) = self.checked_component(bytes, prepare).await?;
        let now = self.inner.config.clock.now();
        self.inner.store.put_component(&digest, &bytes, now).await?;
        Ok(digest)
    }

    /// Compile `bytes` and `prepare` them (which checks their world),
    /// storing nothing: their digest, the bytes back, and the compiled
    /// component.
    async fn checked_component(
        &self,
        bytes: Vec<u8>,
        prepare: impl FnOnce(&Inner, &str, &wasmtime::component::Component) -> anyhow::Result<()>
        + Send
        + 'static,
    ) -> RuntimeResult<(String, Vec<u8>, wasmtime::component::Component)> {
        let inner = self.inner.clone();
        blocking(move || {
            let digest = engine::digest(&bytes);
            let component = inner
                .engine
                .component(&digest, &bytes)
                .map_err(|e| RuntimeError::Component(format!("{e:#}")))?;
            prepare(&inner, &digest, &component)
                .map_err(|e| RuntimeError::Component(format!("{e:#}")))?;
            Ok((digest, bytes, component))
        })
        .await
    }

    /// Store a component, check that it is an orchestration, and make it the
    /// version new instances of `orchestrations` start on. Returns its digest.
    pub async fn register(&self, bytes: Vec<u8>, orchestrations: &[&str]) -> RuntimeResult<String> {
        let digest = self
            .store_component(bytes, |inner, digest, component| {
                inner.replayer.prepare(digest, component)
            })
            .await?;
        let mut registry = self.inner.registry.write().expect("registry poisoned");
        for name in orchestrations {
            registry.insert(name.to_string(), digest.clone());
        }
        Ok(digest)
    }

    /// Store a component, check that it is an activity component, and make
    /// it the one that runs `activities`. Returns its digest.
    pub async fn register_activities(
        &self,
        bytes: Vec<u8>,
        activities: &[&str],
    ) -> RuntimeResult<String> {
        let digest = self
            .store_component(bytes, |inner, digest, component| {
                inner.activity_host.prepare(digest, component)
            })
            .await?;
        let mut registry = self
            .inner
            .activity_registry
            .write()
            .expect("registry poisoned");
        for name in activities {
            registry.insert(
                name.to_string(),
                RegisteredActivity {
                    digest: digest.clone(),
                    options: ActivityOptions::default(),
                },
            );
        }
        Ok(digest)
    }

    /// Run the attempts of the registered activity `name` with `options`.
    pub fn set_activity_options(&self, name: &str, options: ActivityOptions) {
        let mut registry = self
            .inner
            .activity_registry
            .write()
            .expect("registry poisoned");
        if let Some(entry) = registry.get_mut(name) {
            entry.options = options;
        }
    }

    /// Start running activities and schedules: call it once every
    /// component of the app is registered (calls of a name still unknown
    /// then fail, and a tick of an orchestration still unknown is skipped).
    pub fn open_activities(&self) {
        self.inner.activities_open.send_replace(true);
        self.inner.timers.notify_one();
    }

    /// Let instances of the orchestration `name` send `ctx.call_http`
    /// requests to these hosts (none by default).
    pub fn allow_http_hosts(&self, name: &str, hosts: Vec<AllowedHost>) {
        self.inner
            .http_allowed
            .write()
            .expect("allowlist poisoned")
            .insert(name.to_string(), hosts);
    }

    /// Start an instance of `name` with `input`; returns its id.
    pub async fn start_new(
        &self,
        name: &str,
        instance_id: Option<String>,
        input: &serde_json::Value,
    ) -> RuntimeResult<String> {
        self.start_new_traced(name, instance_id, input, None).await
    }

    /// [`start_new`](Self::start_new) within a trace: the instance's
    /// episodes and activities are traced as children of `trace` (the
    /// starting request's span), or of a new trace when none is given.
    pub async fn start_new_traced(
        &self,
        name: &str,
        instance_id: Option<String>,
        input: &serde_json::Value,
        trace: Option<crate::trace::TraceContext>,
    ) -> RuntimeResult<String> {
        let component = self.registered(name)?;
        let id = match instance_id {
            Some(id) => {
                validate_instance_id(&id)?;
                if crate::entity::is_entity(&id) {
                    return Err(RuntimeError::InvalidInstanceId {
                        id,
                        reason: "ids that begin with `@` name entities",
                    });
                }
                id
            }
            None => fresh_id(),
        };
        let input = canonical_json(input);
        (self.inner.config.limits)
            .check_payload("the input", &input)
            .map_err(RuntimeError::TooLarge)?;
        let now = self.inner.config.clock.now();
        let mut instance =
            Instance::pending(id.clone(), name.to_string(), input, component, now, None);
        let trace = trace.unwrap_or_else(crate::trace::TraceContext::root);
        instance.trace_parent = Some(trace.to_string());
        // Its first episode's commit creates it, when this host can run
        // that episode at once: one write instead of two.
        let instance = match self.inner.carry_start(instance) {
            Ok(carrying) => match carrying.outcome(self.inner.config.carry_patience).await {
                Ok(()) => {
                    self.inner.metrics.carried_starts.inc();
                    return Ok(id);
                }
                Err(carry) => carry.into_start(),
            },
            Err(instance) => instance,
        };
        self.inner.store.create_instance(&instance).await?;
        self.inner.has_work(&id);
        Ok(id)
    }

    /// The digest of the component new instances of `name` start on.
    fn registered(&self, name: &str) -> RuntimeResult<String> {
        self.inner
            .registry
            .read()
            .expect("registry poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownOrchestration(name.to_string()))
    }

    /// The instance with this id, or `NotFound`.
    async fn existing(&self, id: &str) -> RuntimeResult<Instance> {
        self.status(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    /// The instance with this id if it has not finished; else `NotFound` or
    /// `Finished`.
    async fn live(&self, id: &str) -> RuntimeResult<Instance> {
        if crate::entity::is_entity(id) {
            return Err(RuntimeError::EntityInstance(id.to_string()));
        }
        let instance = self.existing(id).await?;
        if instance.status.is_terminal() {
            return Err(RuntimeError::Finished {
                id: id.to_string(),
                status: instance.status,
            });
        }
        Ok(instance)
    }

    /// Deliver the event `name` with `payload` to an instance. Durable once
    /// this returns; the instance processes it asynchronously.
    pub async fn raise_event(
        &self,
        id: &str,
        name: &str,
        payload: &serde_json::Value,
    ) -> RuntimeResult<()> {
        let payload = payload.to_string();
        let limits = &self.inner.config.limits;
        limits
            .check_payload(&format!("the payload of event `{name}`"), &payload)
            .and_then(|()| limits.check_payload("the event name", name))
            .map_err(RuntimeError::TooLarge)?;
        let message = Message::EventRaised {
            name: name.to_string(),
            payload,
        };
        self.send(id, message).await
    }

    /// Terminate an instance; durable once this returns.
    pub async fn terminate(&self, id: &str, reason: Option<String>) -> RuntimeResult<()> {
        self.check_reason(&reason)?;
        self.send(id, Message::Terminate { reason }).await
    }

    /// Suspend an instance: events wait in its inbox until it is resumed.
    pub async fn suspend(&self, id: &str, reason: Option<String>) -> RuntimeResult<()> {
        self.check_reason(&reason)?;
        self.send(id, Message::Suspend { reason }).await
    }

    /// Resume a suspended instance.
    pub async fn resume(&self, id: &str, reason: Option<String>) -> RuntimeResult<()> {
        self.check_reason(&reason)?;
        self.send(id, Message::Resume { reason }).await
    }

    /// A reason is stored in the history: it is a payload like any other.
    fn check_reason(&self, reason: &Option<String>) -> RuntimeResult<()> {
        match reason {
            Some(reason) => (self.inner.config.limits)
                .check_payload("the reason", reason)
                .map_err(RuntimeError::TooLarge),
            None => Ok(()),
        }
    }

    /// Put a message into a live instance's inbox and wake the workers
    /// (the store checks that the instance is live in the same write); for
    /// a warm instance this host can lease at once, run its episode with
    /// the message first and let that episode's commit store it.
    async fn send(&self, id: &str, message: Message) -> RuntimeResult<()> {
        if crate::entity::is_entity(id) && !matches!(message, Message::EntityOperation { .. }) {
            return Err(RuntimeError::EntityInstance(id.to_string()));
        }
        let message = match self.inner.carry(id, message) {
            Ok(carrying) => match carrying.outcome(self.inner.config.carry_patience).await {
                Ok(()) => {
                    self.inner.metrics.carried_messages.inc();
                    return Ok(());
                }
                Err(carry) => carry.into_message(),
            },
            Err(message) => message,
        };
        let now = self.inner.config.clock.now();
        self.inner.store.enqueue(id, &message, now).await?;
        self.inner.has_work(id);
        Ok(())
    }

    /// An instance's current state.
    pub async fn status(&self, id: &str) -> RuntimeResult<Option<Instance>> {
        Ok(self.inner.store.instance(id).await?)
    }

    /// An instance's history.
    pub async fn history(&self, id: &str) -> RuntimeResult<Vec<HistoryEntry>> {
        Ok(self.inner.store.history(id).await?)
    }

    /// At most `limit` events of an instance's history from position
    /// `from` on.
    pub async fn history_page(
        &self,
        id: &str,
        from: u64,
        limit: usize,
    ) -> RuntimeResult<Vec<HistoryEntry>> {
        Ok(self.inner.store.history_page(id, from, limit).await?)
    }

    /// What an instance waits on: the scheduled tasks of its current
    /// execution that have not completed (timers, activities,
    /// sub-orchestrations; event waits are matched by name and not listed)
    /// and the messages in its inbox, oldest first.
    pub async fn pending(&self, id: &str) -> RuntimeResult<Pending> {
        use crate::model::{Action, HistoryEvent};
        let loaded = self.inner.store.load(id).await?;
        let mut open: Vec<(u32, Action)> = Vec::new();
        for entry in &loaded.history {
            match &entry.event {
                HistoryEvent::ExecutionStarted { .. } => open.clear(),
                HistoryEvent::TaskScheduled { task, action } => open.push((*task, action.clone())),
                HistoryEvent::TaskCancelled { task }
                | HistoryEvent::TimerFired { task, .. }
                | HistoryEvent::TaskCompleted { task, .. }
                | HistoryEvent::TaskFailed { task, .. }
                | HistoryEvent::SubOrchestrationCompleted { task, .. }
                | HistoryEvent::SubOrchestrationFailed { task, .. } => {
                    open.retain(|(t, _)| t != task)
                }
                _ => {}
            }
        }
        open.retain(|(_, action)| !matches!(action, Action::WaitForEvent { .. }));
        Ok(Pending {
            tasks: open,
            inbox: loaded.inbox.into_iter().map(|e| e.message).collect(),
        })
    }

    /// Instances matching a query.
    pub async fn list(&self, query: InstanceQuery) -> RuntimeResult<Vec<Instance>> {
        Ok(self.inner.store.list(&query).await?)
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

    /// Delete a finished instance and its history; false if there was
    /// none, `NotFinished` if it has not finished.
    pub async fn purge(&self, id: &str) -> RuntimeResult<bool> {
        Ok(self.inner.store.purge(id).await?)
    }

    /// Delete every finished instance matching `query` (its `limit` is
    /// ignored; live statuses in it are dropped, and a query naming no
    /// status means every finished one), in batches of [`PURGE_BATCH`] so
    /// other writes interleave; returns how many.
    pub async fn purge_matching(&self, mut query: InstanceQuery) -> RuntimeResult<usize> {
        // A live instance is never purged: its activities would be
        // orphaned and its parent would wait forever.
        if query.statuses.is_empty() {
            query.statuses = RuntimeStatus::ALL
                .into_iter()
                .filter(|s| s.is_terminal())
                .collect();
        }
        query.statuses.retain(|s| s.is_terminal());
        if query.statuses.is_empty() {
            return Ok(0);
        }
        query.limit = PURGE_BATCH;
        query.after = None;
        let mut deleted = 0;
        loop {
            let n = self.inner.store.purge_batch(&query).await?;
            deleted += n;
            if n < PURGE_BATCH {
                return Ok(deleted);
            }
        }
    }

    /// Start a finished or running instance again with its original input,
    /// under a new id or (when `new_id` is false) its own, which requires it
    /// to have finished. Returns the id of the new instance.
    pub async fn restart(&self, id: &str, new_id: bool) -> RuntimeResult<String> {
        if crate::entity::is_entity(id) {
            return Err(RuntimeError::EntityInstance(id.to_string()));
        }
        let instance = self.existing(id).await?;
        let input: serde_json::Value = serde_json::from_str(&instance.input).map_err(|e| {
            RuntimeError::Component(format!("the stored input of `{id}` is not JSON: {e}"))
        })?;
        let reuse = (!new_id).then(|| id.to_string());
        self.start_new(&instance.name, reuse, &input).await
    }

    /// Replay an instance's recorded history against `component` (the bytes
    /// of any orchestration component) and report the first divergence.
    pub async fn replay_check(
        &self,
        id: &str,
        component: Vec<u8>,
    ) -> RuntimeResult<Result<(), Divergence>> {
        let instance = self.existing(id).await?;
        self.check_replay(instance, component).await
    }

    async fn check_replay(
        &self,
        instance: Instance,
        component: Vec<u8>,
    ) -> RuntimeResult<Result<(), Divergence>> {
        let inner = self.inner.clone();
        let (digest, compiled) = blocking(move || {
            let digest = engine::digest(&component);
            let compiled = inner
                .engine
                .component(&digest, &component)
                .map_err(|e| RuntimeError::Component(format!("{e:#}")))?;
            RuntimeResult::Ok((digest, compiled))
        })
        .await?;
        self.replay_on(instance, digest, compiled).await
    }

    /// Replay an instance's recorded history on the compiled component
    /// `digest` and report the first divergence.
    async fn replay_on(
        &self,
        instance: Instance,
        digest: String,
        compiled: wasmtime::component::Component,
    ) -> RuntimeResult<Result<(), Divergence>> {
        let history = self.history(&instance.id).await?;
        let inner = self.inner.clone();
        blocking(move || {
            let events = history.into_iter().map(|e| e.event).collect();
            inner
                .replayer
                .check(&digest, &compiled, &Subject::from(&instance), events)
                .map_err(|e| RuntimeError::Component(format!("{e:#}")))
        })
        .await
    }

    /// Move a live instance to the component now registered for its
    /// orchestration, after checking that its whole history replays on it.
    /// Returns the digest it runs on from now on, or the first divergence
    /// (and then changes nothing).
    pub async fn upgrade(&self, id: &str) -> RuntimeResult<Result<String, Divergence>> {
        let instance = self.live(id).await?;
        let target = self.registered(&instance.name)?;
        if target == instance.component {
            return Ok(Ok(target));
        }
        let bytes = (self.inner.store.component(&target).await?)
            .ok_or_else(|| RuntimeError::Component(format!("component {target} is not stored")))?;
        let checked = Version::of(&instance);
        if let Err(divergence) = self.check_replay(instance, bytes).await? {
            return Ok(Err(divergence));
        }
        // Checked against this version: if an episode has added to its
        // history since, the caller gets `Busy` and may simply try again.
        let now = self.inner.config.clock.now();
        (self.inner.store)
            .set_component(id, &target, &checked, now)
            .await?;
        Ok(Ok(target))
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
        // The row an episode of ours stored, if this host committed one:
        // nothing to read. `None`: read again (our episode was refused, or
        // rounds were missed).
        let until_changed =
            async |committed: &mut tokio::sync::broadcast::Receiver<Arc<[Committed]>>| loop {
                match committed.recv().await {
                    Ok(round) => match round.iter().find(|c| c.id == id) {
                        Some(ours) => return ours.stored.clone(),
                        None => continue,
                    },
                    Err(_) => return None,
                }
            };
        // Past the cap a waiter is answered at once with the status as it
        // is: each one holds a task and a subscription.
        let Ok(_waiting) = self.inner.waiters.try_acquire() else {
            return self.existing(id).await;
        };
        // The fallback re-read covers writes this host does not commit (other
        // hosts on PostgreSQL); it backs off, as the commit wakes a waiter.
        let mut fallback = Duration::from_millis(50);
        let mut known = None;
        let mut said: Option<tokio::time::Instant> = None;
        loop {
            let instance = match known.take() {
                Some(stored) => stored,
                None => self.existing(id).await?,
            };
            if done(&instance) || tokio::time::Instant::now() >= deadline {
                return Ok(instance);
            }
            // Other hosts sharing the store tell this one if they finish
            // it, for as long as they remember: said again before then.
            if said.is_none_or(|at| at.elapsed() >= WAITER_HEARD_FOR * 4 / 5) {
                self.inner.store.waiting_for(id);
                said = Some(tokio::time::Instant::now());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Ok(stored) =
                tokio::time::timeout(fallback.min(left), until_changed(&mut committed)).await
            {
                known = stored;
            }
            fallback = (fallback * 2).min(MAX_WAIT_FALLBACK);
        }
    }

    /// The host's metrics (`/metrics`).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.metrics
    }

    /// Read the store's counts into the metrics' gauges (before a scrape).
    pub async fn refresh_gauges(&self) -> RuntimeResult<()> {
        let now = self.inner.config.clock.now();
        let counts = self.inner.store.counts(now).await?;
        self.inner.metrics.set_counts(&counts);
        self.inner
            .metrics
            .warm_instances_held
            .set(self.inner.replayer.warm_count() as i64);
        self.inner
            .metrics
            .compiled_components
            .set(self.inner.engine.component_count() as i64);
        Ok(())
    }

    /// Episodes that found their instance warm, and those that replayed
    /// (with the warm cache on).
    pub fn warm_stats(&self) -> (u64, u64) {
        self.inner.replayer.warm_stats()
    }

    /// True when nothing is left for the instance to process: no message in
    /// its inbox (so every episode for what it was sent has committed), no
    /// timer and no activity due by the runtime's clock.
    pub async fn is_idle(&self, id: &str) -> RuntimeResult<bool> {
        let now = self.inner.config.clock.now();
        Ok(!self.inner.store.has_pending_work(id, now).await?)
    }

    /// Tell the runtime that its clock moved (a [`ManualClock`](crate::model::ManualClock)
    /// was advanced): due timers fire now rather than at the next poll.
    pub fn clock_moved(&self) {
        self.inner.timers.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_round_trip_and_refuse_garbage() {
        let token = encode_continuation(1_700_000_000_123, "id:with:colons");
        assert_eq!(
            decode_continuation(&token),
            Some((1_700_000_000_123, "id:with:colons".into()))
        );
        assert_eq!(decode_continuation("not hex"), None);
        assert_eq!(decode_continuation(&hex::encode("no-colon")), None);
        assert_eq!(decode_continuation(&hex::encode("x:id")), None);
    }

    #[test]
    fn instance_ids_follow_the_http_rules() {
        assert!(validate_instance_id("a b%c").is_ok());
        for bad in ["", "a/b", "a?b", "a#b", "a\\b", "a\nb"] {
            assert!(validate_instance_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_instance_id(&"x".repeat(MAX_INSTANCE_ID_LEN + 1)).is_err());
    }
}
