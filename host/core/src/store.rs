//! Persistence of instances, histories, inboxes, timers and components,
//! behind traits so that a shared PostgreSQL backend can sit beside SQLite.
//!
//! Two consumers, two traits: [`RuntimeStore`] is what the orchestration
//! runtime needs (claim work, load an instance, commit an episode), and
//! [`ClientStore`] is what clients need (create, enqueue, query, purge).
//! Every write that a caller is told succeeded is durable.

pub mod plan;

use crate::model::{
    ActivityCall, HistoryEntry, HistoryEvent, InboxEntry, Instance, InstanceQuery, Message, Millis,
    RuntimeStatus, Timer,
};

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No instance has this id.
    #[error("no instance with id `{0}`")]
    NotFound(String),
    /// A live (unfinished) instance with this id exists already.
    #[error("an instance with id `{0}` already exists and has not finished")]
    AlreadyExists(String),
    /// The instance has finished: it takes no more messages.
    #[error("instance `{id}` is {status}; it accepts no more messages")]
    Finished {
        /// The instance.
        id: String,
        /// Its final status.
        status: RuntimeStatus,
    },
    /// Only finished instances may be purged.
    #[error("instance `{id}` is {status}; only a finished instance can be purged")]
    NotFinished {
        /// The instance.
        id: String,
        /// Its status.
        status: RuntimeStatus,
    },
    /// The instance has this many messages waiting already (the store's
    /// cap, which events count against and control messages pass): it takes
    /// more once its episodes have taken some.
    #[error(
        "instance `{id}` has {limit} messages waiting, the most it may have; try again once it has taken some"
    )]
    InboxFull {
        /// The instance.
        id: String,
        /// The cap.
        limit: usize,
    },
    /// The instance changed under the writer (optimistic concurrency):
    /// another episode, a restart or an upgrade committed first.
    #[error("instance `{instance}` changed under the write: {change}")]
    Conflict {
        /// The instance.
        instance: String,
        /// What differs from the version the writer read.
        change: String,
    },
    /// No schedule has this name.
    #[error("no schedule named `{0}`")]
    NoSchedule(String),
    /// A schedule with this name exists already.
    #[error("a schedule named `{0}` exists already")]
    ScheduleExists(String),
    /// The schedule changed since the writer read it (a tick fired, a
    /// client or another host changed it): read it again.
    #[error("schedule `{0}` changed under the write; read it again")]
    ScheduleChanged(String),
    /// The backend failed; `retriable` says whether trying again can help.
    #[error("store backend: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// True for transient failures (busy, I/O hiccup).
        retriable: bool,
    },
}

/// Messages one instance may have waiting by default (stores' cap on
/// `enqueue`): a client raising events faster than the instance takes them
/// is refused past it, instead of growing its inbox without bound.
pub const DEFAULT_MAX_INBOX: usize = 10_000;

impl StoreError {
    /// True when the same call may succeed if tried again.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                retriable: true,
                ..
            } | StoreError::Conflict { .. }
                | StoreError::ScheduleChanged(_)
        )
    }
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The state of an instance a write was computed from: the write applies
/// only if the instance is still exactly there (same execution, same
/// history length, same component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The execution.
    pub execution_id: String,
    /// Its history length.
    pub history_len: u64,
    /// The component it runs on.
    pub component: String,
}

impl Version {
    /// The version of this instance row.
    pub fn of(instance: &Instance) -> Self {
        Version {
            execution_id: instance.execution_id.clone(),
            history_len: instance.history_len,
            component: instance.component.clone(),
        }
    }

    /// What differs between `self` (expected) and `actual`, if anything.
    pub fn change_to(&self, actual: &Version) -> Option<String> {
        if self.execution_id != actual.execution_id {
            Some(format!(
                "execution {} replaced execution {}",
                actual.execution_id, self.execution_id
            ))
        } else if self.component != actual.component {
            Some(format!(
                "it moved from component {} to {}",
                self.component, actual.component
            ))
        } else if self.history_len != actual.history_len {
            Some(format!(
                "its history is {} events long, not {}",
                actual.history_len, self.history_len
            ))
        } else {
            None
        }
    }
}

/// Everything one episode of one instance writes, applied atomically.
#[derive(Debug, Clone)]
pub struct EpisodeCommit {
    /// The instance row after the episode (its `history_len` included).
    pub instance: Instance,
    /// The instance the episode was computed from.
    pub expected: Version,
    /// The episode did not read the instance's stored inbox: it ran on its
    /// warm instance, from the row this host's last commit of it left,
    /// taking only a message its sender had not stored. The commit is then
    /// refused (`Conflict`) if any message waits in that inbox, so that a
    /// stored message is never taken after one that came later; the
    /// refused episode's carried message goes back to its sender, who
    /// stores it behind the others.
    pub unread_inbox: bool,
    /// True when the history restarts (continue-as-new): old events go.
    pub reset_history: bool,
    /// Events to append, in order.
    pub new_events: Vec<HistoryEvent>,
    /// Inbox messages consumed by the episode (others stay, e.g. events
    /// that wait for a suspended instance to resume).
    pub consumed: Vec<i64>,
    /// Timers to create.
    pub new_timers: Vec<Timer>,
    /// Tasks of timers the orchestration cancelled: their rows go.
    pub cancelled_timers: Vec<u32>,
    /// Activities to run once this commits.
    pub new_activities: Vec<ActivityCall>,
    /// Sub-orchestrations to create once this commits (rows with their
    /// `parent` set); one whose id is taken by a live instance fails its
    /// call instead.
    pub new_children: Vec<Instance>,
    /// Messages to put back into this instance's own inbox (continue-as-new).
    pub follow_up: Vec<Message>,
    /// Messages to other instances, in order, as (instance id, message):
    /// an entity's answers, signals and passed-on lock requests; an
    /// orchestration's entity calls, signals, lock requests and releases.
    /// An entity a message is for is created if it has no row yet; any
    /// other instance that is gone drops it.
    pub sent: Vec<(String, Message)>,
    /// Orchestrations an entity's operations started; one whose id a live
    /// instance holds is not started.
    pub started: Vec<Instance>,
    /// The instance as its start creates it ([`Instance::pending`]), when
    /// the start was carried into this, its first episode, instead of
    /// being stored first: the commit creates it (as
    /// [`Store::create_instance`] would, refusing a live id) without the
    /// start message, which the episode took, then applies the episode.
    pub created: Option<Instance>,
}

impl EpisodeCommit {
    /// Whether its commit makes work for instances: messages to its own
    /// inbox (continue-as-new), a parent's, other instances' (entities), or
    /// new instances (children, orchestrations an entity starts).
    pub fn makes_instance_work(&self) -> bool {
        !self.follow_up.is_empty()
            || !self.new_children.is_empty()
            || !self.sent.is_empty()
            || !self.started.is_empty()
            || self.instance.parent.is_some() && self.instance.status.is_terminal()
    }
}

/// An activity row claimed by an activity worker.
#[derive(Debug, Clone)]
pub struct ActivityWork {
    /// The row.
    pub id: i64,
    /// The call.
    pub call: ActivityCall,
    /// The number of this attempt, from 1.
    pub attempt: u32,
    /// When the first attempt started, if one did.
    pub first_at: Option<Millis>,
}

/// One change of a schedule, applied atomically: its row created, changed
/// or deleted (if still at the version read), with the instances its
/// ticks start and the run it terminates.
#[derive(Debug, Clone)]
pub struct ScheduleCommit {
    /// The schedule.
    pub name: String,
    /// The version read; none to create it (`ScheduleExists` if taken).
    pub expected: Option<u64>,
    /// The row after; none to delete it.
    pub row: Option<crate::schedule::ScheduleRow>,
    /// Instances to create, each with its `scheduled_by` (a live instance
    /// with the same id fails the commit: `AlreadyExists`).
    pub starts: Vec<Instance>,
    /// The previous run, told to terminate (`terminate_previous`).
    pub terminate: Option<String>,
    /// The time of the change.
    pub now: Millis,
}

/// What became of an activity attempt.
#[derive(Debug, Clone)]
pub enum ActivityFinish {
    /// Try again: attempt `attempt` at `run_at`.
    Retry {
        /// The next attempt's number.
        attempt: u32,
        /// When it may start.
        run_at: Millis,
        /// When the first attempt started.
        first_at: Millis,
    },
    /// Done: this message goes into the instance's inbox, the row goes.
    Done(Message),
}

/// An instance with its whole history and its unconsumed inbox.
#[derive(Debug, Clone)]
pub struct LoadedInstance {
    /// The instance row.
    pub instance: Instance,
    /// Its history, in order.
    pub history: Vec<HistoryEntry>,
    /// Messages waiting for it, in order.
    pub inbox: Vec<InboxEntry>,
}

impl LoadedInstance {
    /// What a store loads for `instance` right after creating it
    /// ([`plan::Write::Create`]): its `ExecutionStarted` event and its start
    /// message, which has the inbox id `start_id`.
    pub fn created(instance: Instance, start_id: i64) -> LoadedInstance {
        let started = HistoryEntry {
            seq: 0,
            timestamp: instance.created_at,
            event: HistoryEvent::ExecutionStarted {
                name: instance.name.clone(),
                input: instance.input.clone(),
            },
        };
        LoadedInstance {
            instance,
            history: vec![started],
            inbox: vec![InboxEntry {
                id: start_id,
                message: Message::Start,
            }],
        }
    }
}

/// What the orchestration runtime needs from a store.
///
/// Asynchronous, as the runtime is: a backend over a network driver awaits
/// it on the caller's runtime, and one over a file decides for itself how
/// to wait (SQLite hands writes to its writer thread and answers reads from
/// its reader pool).
#[async_trait::async_trait]
pub trait RuntimeStore: Send + Sync + 'static {
    /// Lease up to `max` instances that have inbox messages and no live lease,
    /// until `lease_until` (a backend shared by several hosts must honour the
    /// expiry; a single-host one may keep leases in memory), as of `now`
    /// (the caller's clock); returns their ids.
    async fn claim_ready(
        &self,
        max: usize,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<Vec<String>>;
    /// Give a lease back without changing anything.
    async fn release(&self, instance: &str) -> StoreResult<()>;
    /// Lease `instance`, which a write of this host just gave a message,
    /// if this store can do so without a round trip (a single-host store
    /// keeping its leases in memory): true if it is now leased to the
    /// caller, false if it is leased already or the store cannot (the work
    /// loop then claims it as usual).
    fn lease_local(&self, _instance: &str) -> bool {
        false
    }
    /// Lease `instance` for an episode that carries what it runs on (a
    /// start or a message its sender has not stored, so that no other host
    /// sees work for it), if this store can do so without a round trip:
    /// true if it is now leased to the caller. A store shared by several
    /// hosts may keep such a lease in memory only, for the episode's
    /// commit is fenced by the instance's version and stored lease holder
    /// (a host that claimed the instance meanwhile wins, and the carried
    /// item goes back to its sender). By default as
    /// [`lease_local`](Self::lease_local).
    fn lease_carried(&self, instance: &str) -> bool {
        self.lease_local(instance)
    }
    /// Give back a lease [`lease_local`](Self::lease_local) or
    /// [`lease_carried`](Self::lease_carried) took, at once.
    fn release_local(&self, _instance: &str) {}
    /// True if `instance` is leased to this host in memory (by
    /// [`lease_local`](Self::lease_local),
    /// [`lease_carried`](Self::lease_carried) or a claim): its episode
    /// will commit or give the lease back here. A lease held only as a
    /// stored row says false.
    fn leased_here(&self, _instance: &str) -> bool {
        false
    }
    /// Give back memory held only to go faster (page caches, idle
    /// connections), because the host has been idle: the runtime calls it
    /// after a quiet spell. Nothing stored changes; the next operations may
    /// be slower while the caches refill.
    fn release_memory(&self) {}
    /// Load an instance, its history and its inbox.
    async fn load(&self, instance: &str) -> StoreResult<LoadedInstance>;
    /// Load an instance and its inbox; the history may be left out (it is
    /// when the backend can skip it): for an episode of a warm instance,
    /// which has seen it.
    async fn load_head(&self, instance: &str) -> StoreResult<LoadedInstance> {
        self.load(instance).await
    }
    /// Apply the episodes, each atomically and all in as few durable commits
    /// as the backend can (group commit); releases the leases of those
    /// committed (a failed one's stays held until [`release`](Self::release):
    /// its caller retries it after a backoff, and no claim may run it again
    /// meanwhile). One result per episode, in order. Stored rows take their times from the
    /// episodes (the caller's clock).
    async fn commit_episodes(&self, episodes: Vec<EpisodeCommit>) -> Vec<StoreResult<()>>;
    /// Move every timer due at `now` into its instance's inbox; returns how many.
    async fn fire_due_timers(&self, now: Millis) -> StoreResult<usize>;
    /// When the earliest timer falls due.
    async fn next_timer_due(&self) -> StoreResult<Option<Millis>>;
    /// True if the instance has a message in its inbox, or a timer or an
    /// activity due at `now`: work a runtime has yet to do for it.
    async fn has_pending_work(&self, instance: &str, now: Millis) -> StoreResult<bool>;
    /// The bytes of a stored component.
    async fn component(&self, digest: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Lease up to `max` activity rows due at `now`, until `lease_until`.
    async fn claim_activities(
        &self,
        max: usize,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<Vec<ActivityWork>>;
    /// Record what became of a claimed activity attempt (row `id`, of
    /// `instance`) and give its lease back, in one durable write; a result
    /// goes into the inbox stamped `now`.
    async fn finish_activity(
        &self,
        id: i64,
        instance: &str,
        finish: ActivityFinish,
        now: Millis,
    ) -> StoreResult<()>;
    /// When the earliest activity row is due.
    async fn next_activity_due(&self) -> StoreResult<Option<Millis>>;
    /// Up to `max` schedules due by `now` (a round to run for each).
    async fn due_schedules(
        &self,
        now: Millis,
        max: usize,
    ) -> StoreResult<Vec<crate::schedule::ScheduleRow>>;
    /// When the earliest schedule is due.
    async fn next_schedule_due(&self) -> StoreResult<Option<Millis>>;
    /// Call `wake` whenever another host may have made work for this one
    /// (a shared backend hears of other hosts' writes); a backend that one
    /// host owns never calls it, its runtime knows of every write.
    fn on_foreign_work(&self, wake: WakeFn) {
        let _ = wake;
    }
    /// Call `finished` with the ids of instances that another host's
    /// commits finished (a shared backend hears of them), so that this
    /// host's waiters answer at once instead of on their next re-read; a
    /// backend that one host owns never calls it.
    fn on_foreign_finish(&self, finished: FinishFn) {
        let _ = finished;
    }
    /// A waiter on this host (a long poll) waits for `instance`, which was
    /// not finished when it looked: a shared backend lets the other hosts
    /// know, so that the one that finishes it tells this one
    /// ([`on_foreign_finish`](Self::on_foreign_finish)), if it does so
    /// within [`WAITER_HEARD_FOR`]; a waiter that goes on says so again.
    fn waiting_for(&self, instance: &str) {
        let _ = instance;
    }
}

/// How long the hosts sharing a backend remember that a waiter on another
/// host waits for an instance ([`RuntimeStore::waiting_for`]).
pub const WAITER_HEARD_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// What kind of work another host made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// Inbox messages: instances to step.
    Instances,
    /// Timers (one may now be due sooner than this host thought).
    Timers,
    /// Activity rows to run.
    Activities,
}

/// A callback that wakes a runtime's loops.
pub type WakeFn = std::sync::Arc<dyn Fn(WorkKind) + Send + Sync>;

/// A callback told the ids of instances another host finished.
pub type FinishFn = std::sync::Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// How much the store holds, for the host's gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Orchestration instances by status (statuses with none left out;
    /// entities are not among them).
    pub instances: Vec<(RuntimeStatus, u64)>,
    /// Entities stored.
    pub entities: u64,
    /// Messages waiting in inboxes.
    pub inbox_messages: u64,
    /// Durable timers not fired yet.
    pub timers: u64,
    /// Of those, the ones already due.
    pub timers_due: u64,
    /// Activity calls not finished yet.
    pub activities: u64,
}

/// What clients (the management API, triggers) need from a store. Every
/// write takes its time from the caller (`now`, the runtime's clock), so
/// that a history, its inbox rows and its leases agree with its episodes.
#[async_trait::async_trait]
pub trait ClientStore: Send + Sync + 'static {
    /// Count instances by status, inbox messages, timers (all and due at
    /// `now`) and activity calls. Index scans, no table read: about 50 ms
    /// per million instances on SQLite.
    async fn counts(&self, now: Millis) -> StoreResult<StoreCounts>;
    /// Store a component's bytes under their digest (idempotent).
    async fn put_component(&self, digest: &str, bytes: &[u8], now: Millis) -> StoreResult<()>;
    /// Create an instance with its `ExecutionStarted` event and a start
    /// message (stamped with its `created_at`), replacing a finished
    /// instance with the same id.
    async fn create_instance(&self, instance: &Instance) -> StoreResult<()>;
    /// Move an instance to another stored component, if it is still at
    /// `expected` (what the caller checked it against).
    async fn set_component(
        &self,
        id: &str,
        digest: &str,
        expected: &Version,
        now: Millis,
    ) -> StoreResult<()>;
    /// Put a message into the inbox of a live instance, stamped `now`:
    /// `NotFound` if there is no such instance, `Finished` if it has
    /// finished (checked in the same write, so a message never lands
    /// beside an instance that ended meanwhile).
    async fn enqueue(&self, instance: &str, message: &Message, now: Millis) -> StoreResult<()>;
    /// One instance.
    async fn instance(&self, id: &str) -> StoreResult<Option<Instance>>;
    /// One instance's history.
    async fn history(&self, id: &str) -> StoreResult<Vec<HistoryEntry>>;
    /// At most `limit` events of an instance's history from position
    /// `from` on, in order: a page of [`history`](Self::history), so that a
    /// long history is read without holding all of it.
    async fn history_page(
        &self,
        id: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<HistoryEntry>>;
    /// At most `query.limit` instances matching the query, in the order of
    /// the listing (creation time then id; id alone with an id prefix;
    /// reversed when `newest_first`), each page from an index.
    async fn list(&self, query: &InstanceQuery) -> StoreResult<Vec<Instance>>;
    /// Delete a finished instance and everything it owns; false if there
    /// was none, `NotFinished` if it has not finished.
    async fn purge(&self, id: &str) -> StoreResult<bool>;
    /// Delete the entity `id` if it is still at `version` (its row's
    /// history length) and nothing waits in its inbox; true if it was.
    async fn purge_entity(&self, id: &str, version: u64) -> StoreResult<bool>;
    /// Delete the first `query.limit` instances matching the query, and
    /// everything they own, in one write of a few statements; returns how
    /// many. Callers loop until it returns less than the limit, so other
    /// writes get their turn between batches.
    async fn purge_batch(&self, query: &InstanceQuery) -> StoreResult<usize>;
    /// How many instances that have not finished run on each orchestration
    /// and component: (name, component digest, count), in no set order.
    /// Read from the status index and the two columns, not whole rows.
    async fn in_flight_versions(&self) -> StoreResult<Vec<(String, String, u64)>>;
    /// Every schedule, by name.
    async fn schedules(&self) -> StoreResult<Vec<crate::schedule::ScheduleRow>>;
    /// One schedule.
    async fn schedule(&self, name: &str) -> StoreResult<Option<crate::schedule::ScheduleRow>>;
    /// Apply one change of a schedule in one durable transaction
    /// ([`plan::schedule`]).
    async fn commit_schedule(&self, commit: ScheduleCommit) -> StoreResult<()>;
}

/// A store for both consumers.
pub trait Store: RuntimeStore + ClientStore {}
impl<T: RuntimeStore + ClientStore> Store for T {}

/// The instances leased to this host in memory (claimed, or taken for an
/// episode on the spot): what a store's `lease_local`, `lease_carried`,
/// `release_local` and `leased_here` keep, and its claims consult.
#[derive(Debug, Default)]
pub struct LeaseSet(std::sync::Mutex<std::collections::HashSet<String>>);

impl LeaseSet {
    /// Lease `id`: false if it is leased already.
    pub fn take(&self, id: &str) -> bool {
        self.held().insert(id.to_string())
    }

    /// Give the lease of `id` back.
    pub fn give_back(&self, id: &str) {
        self.held().remove(id);
    }

    /// Give back the leases of the episodes of `ids` that committed
    /// (`results`, one per id, in order, from `commit_episodes`). A failed
    /// episode's lease stays held until its caller gives it back
    /// (`release`, once its backoff has passed): no claim runs it again
    /// meanwhile.
    pub fn give_back_committed(&self, ids: &[String], results: &[StoreResult<()>]) {
        let mut held = self.held();
        for (id, _) in ids.iter().zip(results).filter(|(_, r)| r.is_ok()) {
            held.remove(id);
        }
    }

    /// True if `id` is leased.
    pub fn holds(&self, id: &str) -> bool {
        self.held().contains(id)
    }

    /// The set itself, locked (a claim filters what it read through it).
    pub fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.0.lock().expect("lease set poisoned")
    }
}
