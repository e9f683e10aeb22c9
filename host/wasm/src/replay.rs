//! Replay: rebuild an orchestration's state by feeding its history into a
//! fresh component instance, one event at a time, then run the new step.
//!
//! Architecture invariant: replay does no I/O. It sees the world only through
//! the history and the incoming messages it is handed, and returns what the
//! episode appended; the runtime persists it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use sha2::{Digest as _, Sha256};
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::engine::{CountedLimits, Engine, budget_ticks};
use crate::entity::{EntityId, LockHolder};
use crate::model::{Action, HistoryEvent, Instance, Message, Millis, ParentCall, RetryPolicy};

use crate::orchestrator::bindings::duro::workflow::orchestration_context as ctx;
use crate::orchestrator::bindings::duro::workflow::types::{
    BatchResult, Completion, LogLevel, RetryPolicy as WitRetryPolicy, StepResult, TaskOutcome,
};
use crate::orchestrator::bindings::{self, Orchestration};
use crate::orchestrator::{Guest, Pre};

thread_local! {
    /// Instances of episodes this thread ran that are not kept warm, not
    /// torn down yet (see [`drop_spent`]).
    static SPENT: std::cell::RefCell<Vec<(Store<EpisodeState>, Guest)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Tear down the instances of the episodes this thread ran with
/// [`Replayer::run_episode`] that were not kept warm (each gives its pool
/// slot back). Call it once what the episode produced has been handed on.
pub fn drop_spent() {
    let spent = SPENT.with(|spent| std::mem::take(&mut *spent.borrow_mut()));
    drop(spent);
}

/// The latest due time a durable timer may have: 9999-12-31T23:59:59.999Z.
/// A timer asked for later is due then (stores keep due times as signed
/// milliseconds, and the API prints them as RFC 3339).
pub const LATEST_TIMER_MS: u64 = 253_402_300_799_999;

/// Most recorded completions handed over in one `step-many`: bounds the
/// list the guest lifts into its memory at once.
const MAX_BATCH: usize = 512;

/// The first point where an orchestration's behaviour departs from its
/// recorded history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "non-determinism at history event {position}{task}: the history has {expected}, but the orchestration {actual}",
    task = task.map(|t| format!(" (task #{t})")).unwrap_or_default()
)]
pub struct Divergence {
    /// Index of the history event that did not match.
    pub position: usize,
    /// Sequence number of the scheduling call involved, if any.
    pub task: Option<u32>,
    /// What the history recorded.
    pub expected: String,
    /// What the orchestration did instead.
    pub actual: String,
}

/// How an episode left the orchestration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Waiting for more completions.
    Pending,
    /// Returned this JSON output.
    Completed(String),
    /// Returned an error, trapped, or ran out of time or memory.
    Failed(String),
    /// Diverged from its history.
    Diverged(Divergence),
    /// Asked to start over with this JSON input.
    ContinuedAsNew(String),
}

/// What one episode produced.
#[derive(Debug, Clone)]
pub struct Episode {
    /// History events appended by this episode, in order.
    pub appended: Vec<HistoryEvent>,
    /// Where the orchestration stands.
    pub outcome: Outcome,
    /// The custom status, if the orchestration set it during the episode.
    pub custom_status: Option<Option<String>>,
    /// Timers scheduled by this episode: (task, due time).
    pub new_timers: Vec<(u32, Millis)>,
    /// Timers this episode cancelled (their tasks).
    pub cancelled_timers: Vec<u32>,
    /// Activities this episode called: (task, name, input, retry).
    pub new_activities: Vec<(u32, String, String, Option<RetryPolicy>)>,
    /// Sub-orchestrations this episode called: (task, name, instance id,
    /// input).
    pub new_children: Vec<(u32, String, String, String)>,
    /// On continue-as-new: the events (name, payload) the execution received
    /// but never handed to a wait, oldest first, for the next execution.
    pub unprocessed_events: Vec<(String, String)>,
    /// Messages to entities this episode sent: calls, signals, lock
    /// requests and releases, as (entity instance id, message).
    pub sent: Vec<(String, Message)>,
    /// The entities the execution holds locks on (or asked to lock) after
    /// the episode: released when it ends.
    pub locks: Vec<String>,
}

/// The host, not the guest, kept an episode from running (an instantiation
/// refused under load, a time budget spent while the thread was starved):
/// the episode is retried later and its instance does not fail.
#[derive(Debug, thiserror::Error)]
#[error("host trouble: {0}")]
pub struct HostTrouble(pub String);

/// Who is being replayed.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Instance id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Input, as JSON.
    pub input: String,
    /// The execution: seeds GUIDs and randomness with the instance id.
    pub execution_id: String,
}

impl From<&Instance> for Subject {
    fn from(instance: &Instance) -> Self {
        Subject {
            instance_id: instance.id.clone(),
            name: instance.name.clone(),
            input: instance.input.clone(),
            execution_id: instance.execution_id.clone(),
        }
    }
}

/// Per-component pre-instantiated orchestrations, ready to replay, and the
/// instances kept warm between episodes.
pub struct Replayer {
    engine: Engine,
    linker: Linker<EpisodeState>,
    pres: crate::engine::Prepared<Pre<EpisodeState>>,
    step_budget: Duration,
    warm: Mutex<WarmCache>,
}

/// An orchestration instance kept alive after an episode in which it
/// started waiting: the next episode of its instance feeds it only the new
/// events, if the stored history is exactly the one it has seen.
struct Warm {
    digest: String,
    execution_id: String,
    store: Store<EpisodeState>,
    guest: Guest,
    /// When it was last put back, for eviction: the least recently used
    /// first, and any idle too long.
    last_used: Instant,
    /// Its episode has committed: the stored history is the one it saw.
    committed: bool,
    /// The instance row as that commit stored it: an episode that takes a
    /// message its sender has not stored starts from it without reading
    /// the store (`EpisodeCommit::unread_inbox`).
    row: Option<Instance>,
}

impl Warm {
    fn fits(&self, digest: &str, execution_id: &str, history_len: u64) -> bool {
        self.committed
            && self.digest == digest
            && self.execution_id == execution_id
            && self.store.data().replay.history.len() as u64 == history_len
    }
}

/// The warm instances, by instance id, at most `capacity` of them (each
/// holds a slot of the engine's instance pool); the least recently used
/// goes first.
#[derive(Default)]
struct WarmCache {
    capacity: usize,
    /// Most bytes the warm instances may hold: guest linear memory and
    /// the rows kept with them.
    max_memory: usize,
    entries: HashMap<String, Warm>,
    hits: u64,
    misses: u64,
}

impl WarmCache {
    fn take(&mut self, instance: &str) -> Option<Warm> {
        self.entries.remove(instance)
    }

    fn put(&mut self, instance: String, mut warm: Warm) {
        if self.capacity == 0 {
            return;
        }
        warm.last_used = Instant::now();
        self.entries.insert(instance, warm);
        self.evict_over_budget();
    }

    /// Drop the least recently used instances while more than `capacity`
    /// are kept or they hold more than `max_memory` bytes together (their
    /// linear memories and the rows kept with them), keeping at least one.
    fn evict_over_budget(&mut self) {
        let held = |entries: &HashMap<String, Warm>| -> usize {
            entries
                .values()
                .map(|w| w.store.data().limits.memory() + w.row.as_ref().map_or(0, row_bytes))
                .sum()
        };
        while self.entries.len() > self.capacity
            || (self.entries.len() > 1 && held(&self.entries) > self.max_memory)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(id, _)| id.clone())
                .expect("over capacity, so not empty");
            self.entries.remove(&oldest);
        }
    }
}

/// About the bytes a kept instance row holds: its payloads (input, output,
/// custom status), which the client chose and may make large.
fn row_bytes(row: &Instance) -> usize {
    row.input.len()
        + row.output.as_ref().map_or(0, String::len)
        + row.custom_status.as_ref().map_or(0, String::len)
}

impl Replayer {
    /// Forget the prepared components whose digest `keep` does not hold
    /// (warm instances of them stay until they are used or evicted).
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        self.pres.retain(keep);
    }

    /// A replayer whose guests may run `step_budget` per episode (replay
    /// and new steps together) before they are stopped, keeping up to
    /// `warm_instances` instances, holding at most `warm_memory` bytes of
    /// linear memory and kept rows together, alive between episodes (0 instances: every
    /// episode replays from history).
    pub fn new(
        engine: Engine,
        step_budget: Duration,
        warm_instances: usize,
        warm_memory: usize,
    ) -> anyhow::Result<Self> {
        let mut linker = Linker::new(engine.wasmtime());
        // Deterministic WASI only: clocks and randomness are replaced per
        // episode, and the context has no files, network, env or args.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        sleep_on_the_episode_clock(&mut linker)?;
        Orchestration::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(Replayer {
            engine,
            linker,
            pres: Default::default(),
            step_budget,
            warm: Mutex::new(WarmCache {
                capacity: warm_instances,
                max_memory: warm_memory,
                ..Default::default()
            }),
        })
    }

    /// Check that `component` is an orchestration this host can run.
    pub fn prepare(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        self.pre(digest, component).map(drop)
    }

    fn pre(&self, digest: &str, component: &Component) -> anyhow::Result<Pre<EpisodeState>> {
        self.pres.get_or_prepare(digest, || {
            self.linker
                .instantiate_pre(component)
                .and_then(|pre| Pre::new(pre, self.engine.wasmtime()))
                .map_err(|e| {
                    anyhow::anyhow!("component {digest} is not a duro orchestration: {e:?}")
                })
        })
    }

    /// Warm-cache hits and misses so far.
    pub fn warm_stats(&self) -> (u64, u64) {
        let warm = self.warm.lock().expect("warm cache poisoned");
        (warm.hits, warm.misses)
    }

    /// How many instances are kept warm now.
    pub fn warm_count(&self) -> usize {
        self.warm.lock().expect("warm cache poisoned").entries.len()
    }

    /// Drop the warm instances not used for `idle` or longer (an instance
    /// sleeping on a long timer or an event holds its pool slot and linear
    /// memory for nothing); returns how many were dropped. Their next
    /// episode replays.
    pub fn release_idle(&self, idle: Duration) -> usize {
        let expired: Vec<(String, Warm)> = self
            .warm
            .lock()
            .expect("warm cache poisoned")
            .entries
            .extract_if(|_, w| w.last_used.elapsed() >= idle)
            .collect();
        // Dropped outside the lock: tearing a store down resets its memory.
        expired.len()
    }

    /// Whether an instance of `instance_id` is kept warm at all (whether or
    /// not it fits the instance as stored now).
    pub fn holds(&self, instance_id: &str) -> bool {
        self.warm
            .lock()
            .expect("warm cache poisoned")
            .entries
            .contains_key(instance_id)
    }

    /// Whether an episode of `instance` can run warm: its instance is kept,
    /// at this execution, component and history length, and the episode
    /// that left it there has committed.
    pub fn is_warm(&self, instance: &Instance) -> bool {
        self.warm
            .lock()
            .expect("warm cache poisoned")
            .entries
            .get(&instance.id)
            .is_some_and(|w| {
                w.fits(
                    &instance.component,
                    &instance.execution_id,
                    instance.history_len,
                )
            })
    }

    /// The last episode of `instance_id` committed with `history_len`
    /// events, leaving `row` (if the caller kept it): its warm instance may
    /// take the next one.
    pub fn committed(&self, instance_id: &str, history_len: u64, row: Option<Instance>) {
        let mut warm = self.warm.lock().expect("warm cache poisoned");
        if let Some(entry) = warm.entries.get_mut(instance_id)
            && entry.store.data().replay.history.len() as u64 == history_len
        {
            entry.committed = true;
            entry.row = row;
            warm.evict_over_budget();
        }
    }

    /// Take the row the last committed episode of `instance_id` left, if
    /// its warm instance is kept and the row with it, for the episode about
    /// to run on it: taken, not copied, as that episode puts its instance
    /// back without it and its own commit keeps the next row (an episode
    /// that does not run leaves the next one to read the store).
    pub fn take_committed_row(&self, instance_id: &str) -> Option<Instance> {
        let mut warm = self.warm.lock().expect("warm cache poisoned");
        let entry = warm.entries.get_mut(instance_id).filter(|w| w.committed)?;
        entry.row.take()
    }

    /// Forget the warm instance of `instance_id`, if any (its episode did
    /// not commit).
    pub fn forget_warm(&self, instance_id: &str) {
        self.warm
            .lock()
            .expect("warm cache poisoned")
            .take(instance_id);
    }

    /// Run an episode of `subject`, whose stored history is `history_len`
    /// events long: on its warm instance if it has one that fits (see
    /// [`Replayer::is_warm`]), feeding it only `incoming`; else on a fresh
    /// instance, replaying the history `load_history` reads. Keeps the
    /// instance warm afterwards if it is waiting.
    pub fn run_episode(
        &self,
        digest: &str,
        component: &Component,
        subject: &Subject,
        history_len: u64,
        load_history: impl FnOnce() -> anyhow::Result<Vec<HistoryEvent>>,
        incoming: Vec<HistoryEvent>,
    ) -> anyhow::Result<Episode> {
        let (warm, cached) = {
            let mut cache = self.warm.lock().expect("warm cache poisoned");
            let warm = cache
                .take(&subject.instance_id)
                .filter(|w| w.fits(digest, &subject.execution_id, history_len));
            match warm {
                Some(_) => cache.hits += 1,
                None if cache.capacity > 0 => cache.misses += 1,
                None => {}
            }
            (warm, cache.capacity > 0)
        };
        let (mut store, guest) = match warm {
            Some(Warm {
                mut store, guest, ..
            }) => {
                store.data_mut().replay.start_episode();
                store.set_epoch_deadline(budget_ticks(self.step_budget));
                (store, guest)
            }
            None => match self.instantiate(digest, component, subject, load_history()?)? {
                Ok(fresh) => fresh,
                Err(failed) => return Ok(failed),
            },
        };
        let cpu_at_start = thread_cpu_time();
        let episode = self.step_through(&mut store, &guest, incoming, cpu_at_start)?;
        if cached && matches!(episode.outcome, Outcome::Pending) {
            self.warm.lock().expect("warm cache poisoned").put(
                subject.instance_id.clone(),
                Warm {
                    digest: digest.to_string(),
                    execution_id: subject.execution_id.clone(),
                    store,
                    guest,
                    last_used: Instant::now(),
                    committed: false,
                    row: None,
                },
            );
        } else {
            // Tearing the instance down resets the linear memory it
            // touched: kept for `drop_spent`, after the episode's commit is
            // on its way, instead of delaying it.
            SPENT.with(|spent| spent.borrow_mut().push((store, guest)));
        }
        Ok(episode)
    }

    /// Replay `history` into a fresh instance, deliver `incoming`, and drop
    /// the instance (never kept warm).
    fn run_cold(
        &self,
        digest: &str,
        component: &Component,
        subject: &Subject,
        history: Vec<HistoryEvent>,
        incoming: Vec<HistoryEvent>,
    ) -> anyhow::Result<Episode> {
        let (mut store, guest) = match self.instantiate(digest, component, subject, history)? {
            Ok(fresh) => fresh,
            Err(failed) => return Ok(failed),
        };
        let cpu_at_start = thread_cpu_time();
        self.step_through(&mut store, &guest, incoming, cpu_at_start)
    }

    /// A fresh instance with `history` to replay, its time budget set; or
    /// the episode of an instantiation the guest made fail.
    fn instantiate(
        &self,
        digest: &str,
        component: &Component,
        subject: &Subject,
        history: Vec<HistoryEvent>,
    ) -> anyhow::Result<Result<(Store<EpisodeState>, Guest), Episode>> {
        let pre = self.pre(digest, component)?;
        let state = EpisodeState::new(subject, history);
        let mut store = Store::new(self.engine.wasmtime(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        // One budget for the whole episode: a guest cannot stretch its time
        // by yielding often.
        store.set_epoch_deadline(budget_ticks(self.step_budget));
        let cpu_at_start = thread_cpu_time();
        // A full pool (or the OS refusing memory) is the host's trouble:
        // the episode is retried. Anything else (a trap in the guest's start,
        // a component that cannot link) fails the instance.
        match pre.instantiate(&mut store) {
            Ok(guest) => Ok(Ok((store, guest))),
            Err(e) if is_host_trouble(&e) || self.starved(&e, cpu_at_start) => {
                // Warm instances hold pool slots: give them back, so that
                // the retry finds room.
                if e.chain()
                    .any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>())
                {
                    self.warm
                        .lock()
                        .expect("warm cache poisoned")
                        .entries
                        .clear();
                }
                Err(HostTrouble(format!(
                    "the orchestration could not be instantiated: {e:#}"
                ))
                .into())
            }
            Err(e) => {
                let error = format!("the orchestration could not be instantiated: {e:#}");
                let replay = &mut store.data_mut().replay;
                replay.record_failure(error.clone());
                Ok(Err(Episode {
                    appended: replay.history[replay.recorded_len..].to_vec(),
                    outcome: Outcome::Failed(error),
                    custom_status: None,
                    new_timers: Vec::new(),
                    cancelled_timers: Vec::new(),
                    new_activities: Vec::new(),
                    new_children: Vec::new(),
                    unprocessed_events: Vec::new(),
                    sent: Vec::new(),
                    locks: crate::entity::locks_held(&replay.history),
                }))
            }
        }
    }

    /// Deliver the rest of the history, then `incoming`, until the
    /// orchestration waits or ends; what the episode produced.
    fn step_through(
        &self,
        store: &mut Store<EpisodeState>,
        guest: &Guest,
        incoming: Vec<HistoryEvent>,
        cpu_at_start: Duration,
    ) -> anyhow::Result<Episode> {
        let mut incoming: VecDeque<HistoryEvent> = incoming.into();
        let outcome = loop {
            let batch = match guest.steps_many() {
                true => store.data_mut().replay.begin_batch(MAX_BATCH),
                false => None,
            };
            let stepped = match batch {
                // Recorded completions in a row: one crossing into the guest.
                Some(completions) => match guest.step_many(&mut *store, &completions) {
                    Ok(BatchResult { consumed, state }) => {
                        let metrics = self.engine.metrics();
                        metrics.batched_completions.inc_by(u64::from(consumed));
                        match store.data_mut().replay.end_batch(consumed) {
                            Ok(()) => Ok(state),
                            Err(divergence) => break Outcome::Diverged(divergence),
                        }
                    }
                    Err(trap) => {
                        store.data_mut().replay.batch = None;
                        Err(trap)
                    }
                },
                None => {
                    let delivery = match store.data_mut().replay.next_delivery(&mut incoming) {
                        Ok(Some(delivery)) => delivery,
                        Ok(None) => break Outcome::Pending,
                        Err(divergence) => break Outcome::Diverged(divergence),
                    };
                    guest.step(&mut *store, delivery.as_ref())
                }
            };
            let terminal = match stepped {
                Err(trap) => match store.data_mut().replay.divergence.take() {
                    Some(divergence) => break Outcome::Diverged(divergence),
                    None => {
                        if self.starved(&trap, cpu_at_start) {
                            return Err(HostTrouble(format!(
                                "the episode's time budget of {:?} ran out after {:?} of CPU",
                                self.step_budget,
                                thread_cpu_time().saturating_sub(cpu_at_start)
                            ))
                            .into());
                        }
                        self.engine.count_trap(&trap, "orchestration");
                        let error = describe_trap(&trap, self.step_budget);
                        store.data_mut().replay.record_failure(error.clone());
                        break Outcome::Failed(error);
                    }
                },
                Ok(StepResult::Pending) => continue,
                Ok(StepResult::Completed(output)) => HistoryEvent::ExecutionCompleted { output },
                Ok(StepResult::Failed(error)) => HistoryEvent::ExecutionFailed { error },
                Ok(StepResult::ContinuedAsNew(input)) => HistoryEvent::ContinuedAsNew { input },
            };
            break match store.data_mut().replay.record_terminal(terminal) {
                Ok(event) => match event {
                    HistoryEvent::ExecutionCompleted { output } => Outcome::Completed(output),
                    HistoryEvent::ExecutionFailed { error } => Outcome::Failed(error),
                    HistoryEvent::ContinuedAsNew { input } => Outcome::ContinuedAsNew(input),
                    _ => unreachable!("record_terminal returns the terminal event"),
                },
                Err(divergence) => Outcome::Diverged(divergence),
            };
        };
        let replay = &mut store.data_mut().replay;
        let appended = replay
            .history
            .get(replay.recorded_len..)
            .unwrap_or_default()
            .to_vec();
        let unprocessed_events = match outcome {
            // Events buffered in the execution, then those not yet handed
            // over, in arrival order (`preserveUnprocessedEvents`).
            Outcome::ContinuedAsNew(_) => std::mem::take(&mut replay.buffered)
                .into_iter()
                .map(|(_, name, payload)| (name, payload))
                .chain(incoming.into_iter().filter_map(|event| match event {
                    HistoryEvent::EventRaised { name, payload } => Some((name, payload)),
                    _ => None,
                }))
                .collect(),
            _ => Vec::new(),
        };
        // A divergence stores nothing of what the episode did.
        let locks = crate::entity::locks_held(match outcome {
            Outcome::Diverged(_) => &replay.history[..replay.recorded_len],
            _ => &replay.history,
        });
        Ok(Episode {
            appended,
            outcome,
            custom_status: replay.custom_status.take(),
            new_timers: std::mem::take(&mut replay.new_timers),
            cancelled_timers: std::mem::take(&mut replay.cancelled_timers),
            new_activities: std::mem::take(&mut replay.new_activities),
            new_children: std::mem::take(&mut replay.new_children),
            unprocessed_events,
            sent: std::mem::take(&mut replay.sent),
            locks,
        })
    }

    /// Whether `trap` is the epoch deadline passing while the guest got
    /// less than half its budget of CPU since `cpu_at_start`: the deadline
    /// counts wall-clock ticks, so that guest was starved by the host, not
    /// slow by itself.
    fn starved(&self, trap: &wasmtime::Error, cpu_at_start: Duration) -> bool {
        is_interrupt(trap) && thread_cpu_time().saturating_sub(cpu_at_start) < self.step_budget / 2
    }

    /// Replay a whole recorded history against `component` and report the
    /// first divergence, if any.
    pub fn check(
        &self,
        digest: &str,
        component: &Component,
        subject: &Subject,
        history: Vec<HistoryEvent>,
    ) -> anyhow::Result<Result<(), Divergence>> {
        let recorded_len = history.len();
        let episode = self.run_cold(digest, component, subject, history, Vec::new())?;
        Ok(match episode.outcome {
            Outcome::Diverged(divergence) => Err(divergence),
            Outcome::Failed(error) if !episode.appended.is_empty() => Err(Divergence {
                position: recorded_len,
                task: None,
                expected: "no further event".into(),
                actual: format!("failed: {error}"),
            }),
            _ if !episode.appended.is_empty() => Err(Divergence {
                position: recorded_len,
                task: None,
                expected: "no further event".into(),
                actual: format!("went on to {}", describe_event(&episode.appended[0])),
            }),
            _ => Ok(()),
        })
    }
}

/// An already elapsed WASI sleep: orchestrations run on the episode's clock,
/// which does not move while they run, so a sleep or a poll on a clock
/// returns at once instead of holding a host thread. (A durable wait is
/// `ctx.sleep`.)
struct Elapsed;

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for Elapsed {
    async fn ready(&mut self) {}
}

/// Replace the monotonic clock's `subscribe-*` functions, which would wait
/// in real time, with ones that return an [`Elapsed`] pollable.
/// Entities' sandbox uses it too: a guest's sleep never holds an episode
/// thread (the epoch deadline cannot interrupt a host call).
pub(crate) fn sleep_on_the_episode_clock<T: WasiView + 'static>(
    linker: &mut Linker<T>,
) -> anyhow::Result<()> {
    fn elapsed<T: WasiView>(
        state: &mut T,
    ) -> wasmtime::Result<(Resource<wasmtime_wasi::p2::DynPollable>,)> {
        let table = state.ctx().table;
        let resource = table.push(Elapsed)?;
        Ok((wasmtime_wasi::p2::subscribe(table, resource)?,))
    }
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-duration", |mut store, (_,): (u64,)| {
        elapsed(store.data_mut())
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (_,): (u64,)| {
        elapsed(store.data_mut())
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Whether an instantiation failed for want of host resources (a full
/// instance pool, memory the OS refused) rather than because of the guest.
pub fn is_host_trouble(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<wasmtime::PoolConcurrencyLimitError>() || cause.is::<std::io::Error>()
    })
}

fn is_interrupt(trap: &wasmtime::Error) -> bool {
    matches!(
        trap.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    )
}

fn describe_trap(trap: &wasmtime::Error, budget: Duration) -> String {
    if is_interrupt(trap) {
        format!("the orchestration ran for more than {budget:?} in one episode and was stopped")
    } else {
        format!("the orchestration trapped: {trap:?}")
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn describe_event(event: &HistoryEvent) -> String {
    match event {
        HistoryEvent::TaskScheduled { action, .. } => action.to_string(),
        HistoryEvent::ExecutionCompleted { output } => format!("completed with {output}"),
        HistoryEvent::ExecutionFailed { error } => format!("failed with {error:?}"),
        HistoryEvent::ContinuedAsNew { input } => format!("continue-as-new({input})"),
        HistoryEvent::EventRaised { name, .. } => format!("event {name:?} raised"),
        HistoryEvent::TimerFired { task, .. } => format!("timer #{task} fired"),
        HistoryEvent::TaskCancelled { task } => format!("cancel-task(#{task})"),
        other => other.kind().to_string(),
    }
}

impl EpisodeState {
    /// Record (or match) a signal to an entity, run no earlier than `at`.
    fn signal(
        &mut self,
        call: &str,
        name: String,
        key: String,
        operation: String,
        input: String,
        at: Option<Millis>,
    ) -> wasmtime::Result<()> {
        let entity = entity_call(call, &name, &key, &operation, &input)?;
        let replay = &mut self.replay;
        replay
            .schedule(Action::SignalEntity {
                entity,
                operation,
                input,
                at,
            })
            .map(drop)
            .map_err(|d| replay.trap(d))
    }
}

/// The entity a `call` from an orchestration names, checked with its
/// operation's input: its instance id, or the trap that says what is wrong.
fn entity_call(
    call: &str,
    name: &str,
    key: &str,
    operation: &str,
    input: &str,
) -> wasmtime::Result<String> {
    let entity = EntityId::new(name, key)
        .map_err(|e| wasmtime::Error::msg(format!("{call}({name:?}, {key:?}): {e}")))?;
    if operation.is_empty() {
        return Err(wasmtime::Error::msg(format!(
            "{call}({name:?}, {key:?}): the operation name is empty"
        )));
    }
    if serde_json::from_str::<serde_json::Value>(input).is_err() {
        return Err(wasmtime::Error::msg(format!(
            "{call}({name:?}, {key:?}, {operation:?}): the input {input:?} is not JSON"
        )));
    }
    Ok(entity.instance_id())
}

/// The store data of an orchestration episode.
pub struct EpisodeState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CountedLimits,
    replay: ReplayState,
}

impl EpisodeState {
    fn new(subject: &Subject, history: Vec<HistoryEvent>) -> Self {
        let clock = Arc::new(AtomicU64::new(0));
        let seed: [u8; 32] =
            Sha256::digest(format!("{}\n{}", subject.instance_id, subject.execution_id).as_bytes())
                .into();
        let wasi = WasiCtx::builder()
            .wall_clock(EpisodeClock(clock.clone()))
            .monotonic_clock(EpisodeClock(clock.clone()))
            .secure_random(rand::rngs::StdRng::from_seed(seed))
            .insecure_random(rand::rngs::StdRng::from_seed(seed))
            .insecure_random_seed(u128::from_le_bytes(
                seed[..16].try_into().expect("16 bytes"),
            ))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        EpisodeState {
            wasi,
            table: ResourceTable::new(),
            limits: CountedLimits::default(),
            replay: ReplayState::new(subject, history, clock),
        }
    }
}

impl WasiView for EpisodeState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The orchestration's clock as WASI sees it: the episode time, so that even
/// `SystemTime::now()` in a guest is replay-safe.
struct EpisodeClock(Arc<AtomicU64>);

impl HostWallClock for EpisodeClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

impl HostMonotonicClock for EpisodeClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed).saturating_mul(1_000_000)
    }
}

/// What kind of task a live task number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    Timer,
    Activity,
    Child,
    Entity,
    Lock,
}

/// The replay cursor over the history and what the orchestration has asked
/// for so far.
struct ReplayState {
    subject: Subject,
    history: Vec<HistoryEvent>,
    /// Events before this index were recorded by earlier episodes.
    recorded_len: usize,
    /// The next history event to consume.
    cursor: usize,
    started: bool,
    replaying: bool,
    clock: Arc<AtomicU64>,
    next_task: u32,
    guids: u32,
    /// Event waits not yet satisfied, oldest first.
    open_waits: Vec<(u32, String)>,
    /// Timers, activities and sub-orchestrations scheduled and neither
    /// completed nor cancelled (event waits are in `open_waits`).
    live: BTreeMap<u32, Live>,
    /// Events that no live wait took, in arrival order: (history position,
    /// name, payload).
    buffered: VecDeque<(usize, String, String)>,
    /// Buffered events given to a new wait, to hand over before consuming
    /// more history (kept whole so a cancelled wait can give them back).
    pending: VecDeque<(u32, (usize, String, String))>,
    custom_status: Option<Option<String>>,
    new_timers: Vec<(u32, Millis)>,
    cancelled_timers: Vec<u32>,
    new_activities: Vec<(u32, String, String, Option<RetryPolicy>)>,
    new_children: Vec<(u32, String, String, String)>,
    /// Messages to entities recorded in this episode.
    sent: Vec<(String, Message)>,
    /// The entities this execution holds locked.
    held: Vec<String>,
    /// A lock request not granted yet: its task and entities.
    requested: Option<(u32, Vec<String>)>,
    divergence: Option<Divergence>,
    /// Set while the guest runs a `step-many`.
    batch: Option<Batch>,
    /// While a batch's run is consumed: what consuming it changed, with the
    /// position of the event that did.
    changes: Option<Vec<(usize, Undo)>>,
}

/// A `step-many` under way: where its run began and its completions were in
/// the history, what consuming the run changed (to take back), and the
/// recorded calls the guest made meanwhile, matched against the history
/// once the guest says after which completion it made them.
struct Batch {
    start: usize,
    positions: Vec<usize>,
    changes: Vec<(usize, Undo)>,
    /// `next_task` when the batch began: the calls' task numbers follow it.
    first_task: u32,
    calls: Vec<Call>,
}

/// A change consuming a history event made, and how to take it back.
enum Undo {
    /// It set the episode clock, which read this before.
    Clock(u64),
    /// It satisfied the open wait at this index.
    Wait(usize, (u32, String)),
    /// It was buffered (no wait took it).
    Buffered,
    /// It completed this live task.
    Live(u32, Live),
    /// It granted the lock request of this task, on these entities.
    Granted(u32, Vec<String>),
}

/// A recorded call made during a `step-many`.
enum Call {
    Schedule(Action),
    Cancel(u32),
}

/// Whether `event` completes a task (or completes nothing, a buffered event
/// or a cancelled task's result, or only suspends or resumes): what a
/// `step-many` may hand over, as opposed to what the orchestration must
/// answer itself or what moves the episode clock.
fn completes_a_task(event: &HistoryEvent) -> bool {
    matches!(
        event,
        HistoryEvent::EventRaised { .. }
            | HistoryEvent::TimerFired { .. }
            | HistoryEvent::TaskCompleted { .. }
            | HistoryEvent::TaskFailed { .. }
            | HistoryEvent::SubOrchestrationCompleted { .. }
            | HistoryEvent::SubOrchestrationFailed { .. }
            | HistoryEvent::EntityOperationCompleted { .. }
            | HistoryEvent::EntityOperationFailed { .. }
            | HistoryEvent::EntityLockGranted { .. }
            | HistoryEvent::ExecutionSuspended { .. }
            | HistoryEvent::ExecutionResumed { .. }
    )
}

impl ReplayState {
    fn new(subject: &Subject, history: Vec<HistoryEvent>, clock: Arc<AtomicU64>) -> Self {
        ReplayState {
            subject: subject.clone(),
            recorded_len: history.len(),
            history,
            cursor: 0,
            started: false,
            replaying: true,
            clock,
            next_task: 0,
            guids: 0,
            open_waits: Vec::new(),
            live: BTreeMap::new(),
            buffered: VecDeque::new(),
            pending: VecDeque::new(),
            custom_status: None,
            new_timers: Vec::new(),
            cancelled_timers: Vec::new(),
            new_activities: Vec::new(),
            new_children: Vec::new(),
            sent: Vec::new(),
            held: Vec::new(),
            requested: None,
            divergence: None,
            batch: None,
            changes: None,
        }
    }

    /// Take up to `max` recorded completions for one `step-many` and begin
    /// it: from the cursor, an episode's `OrchestratorStarted` (its clock is
    /// then one for the whole run) and every event that completes a task or
    /// completes nothing, up to the first the orchestration must answer
    /// itself, or the end of what was recorded. The completions, if the run
    /// had more than one (else nothing is consumed).
    fn begin_batch(&mut self, max: usize) -> Option<Vec<Completion>> {
        let start = self.cursor;
        let mut positions = Vec::new();
        let mut completions = Vec::new();
        self.changes = Some(Vec::new());
        while completions.len() < max
            && self.started
            && self.pending.is_empty()
            && self.cursor < self.recorded_len
            && (completes_a_task(&self.history[self.cursor])
                // A new episode's clock, before its first completion,
                // applies to them all.
                || (completions.is_empty()
                    && matches!(
                        self.history[self.cursor],
                        HistoryEvent::OrchestratorStarted { .. }
                    )))
        {
            let position = self.cursor;
            let event = self.history[position].clone();
            self.cursor += 1;
            self.replaying = true;
            match self.consume(position, event) {
                Ok(Some(Some(completion))) => {
                    positions.push(position);
                    completions.push(completion);
                }
                Ok(_) => {}
                Err(_) => unreachable!("a completion is never a divergence"),
            }
        }
        let changes = self.changes.take().expect("set above");
        if completions.len() < 2 {
            // Not worth a batch: taken back, and delivered one at a time.
            self.rewind(start, changes);
            return None;
        }
        self.batch = Some(Batch {
            start,
            positions,
            changes,
            first_task: self.next_task,
            calls: Vec::new(),
        });
        Some(completions)
    }

    /// Note a change that consuming the event at `position` made, while a
    /// batch's run is consumed (to take it back).
    fn note(&mut self, position: usize, undo: Undo) {
        if let Some(changes) = &mut self.changes {
            changes.push((position, undo));
        }
    }

    /// Take back `changes` (in the order made), and move the cursor back to
    /// `to`.
    fn rewind(&mut self, to: usize, changes: Vec<(usize, Undo)>) {
        for (_, undo) in changes.into_iter().rev() {
            match undo {
                Undo::Clock(time) => self.clock.store(time, Ordering::Relaxed),
                Undo::Wait(index, wait) => self.open_waits.insert(index, wait),
                Undo::Buffered => {
                    self.buffered.pop_back();
                }
                Undo::Live(task, kind) => {
                    self.live.insert(task, kind);
                }
                Undo::Granted(task, entities) => {
                    self.held.clear();
                    self.requested = Some((task, entities));
                    self.live.insert(task, Live::Lock);
                }
            }
        }
        self.cursor = to;
    }

    /// End the `step-many` begun last, whose guest took the first
    /// `consumed` completions: the events after the last of them are taken
    /// back (they are handed over again), and the calls the guest made are
    /// matched against the history there, exactly as if it had been stepped
    /// one completion at a time. (A deterministic orchestration takes all,
    /// or stops at the one after which the history has its calls.)
    fn end_batch(&mut self, consumed: u32) -> Result<(), Divergence> {
        let mut batch = self.batch.take().expect("a batch was begun");
        let last_taken = consumed
            .checked_sub(1)
            .and_then(|i| batch.positions.get(i as usize).copied());
        let Some(last_taken) = last_taken else {
            // Nothing taken, or more than was given: not the contract.
            self.rewind(batch.start, batch.changes);
            return Err(Divergence {
                position: self.cursor,
                task: None,
                expected: format!("{} completions taken", batch.positions.len()),
                actual: format!("reported taking {consumed}"),
            });
        };
        let kept = batch
            .changes
            .partition_point(|(position, _)| *position <= last_taken);
        let after = batch.changes.split_off(kept);
        self.rewind(last_taken + 1, after);
        self.next_task = batch.first_task;
        for call in batch.calls {
            match call {
                Call::Schedule(action) => self.schedule(action).map(drop)?,
                Call::Cancel(task) => self.cancel(task)?,
            }
        }
        Ok(())
    }

    /// Get a warm instance's state ready for its next episode: what it has
    /// seen is now the recorded history, and the episode's products start
    /// empty.
    fn start_episode(&mut self) {
        self.recorded_len = self.history.len();
        self.custom_status = None;
        self.new_timers.clear();
        self.cancelled_timers.clear();
        self.new_activities.clear();
        self.new_children.clear();
        self.sent.clear();
        self.divergence = None;
    }

    /// The next argument of `step`, consuming history (and then `incoming`)
    /// until one is due; `None` when the orchestration has nothing left to
    /// receive.
    fn next_delivery(
        &mut self,
        incoming: &mut VecDeque<HistoryEvent>,
    ) -> Result<Option<Option<Completion>>, Divergence> {
        loop {
            if let Some((task, (_, _, payload))) = self.pending.pop_front() {
                return Ok(Some(Some(Completion {
                    task,
                    outcome: TaskOutcome::EventRaised(payload),
                })));
            }
            if self.cursor == self.history.len() {
                match incoming.pop_front() {
                    Some(event) => self.history.push(event),
                    None => return Ok(None),
                }
            }
            let position = self.cursor;
            let event = self.history[position].clone();
            self.cursor += 1;
            self.replaying = position < self.recorded_len;
            if let Some(delivery) = self.consume(position, event)? {
                return Ok(Some(delivery));
            }
        }
    }

    /// Take in the history event at `position`: the delivery it makes, if
    /// any (`Some(None)`: the first step).
    fn consume(
        &mut self,
        position: usize,
        event: HistoryEvent,
    ) -> Result<Option<Option<Completion>>, Divergence> {
        match event {
            HistoryEvent::ExecutionStarted { .. } => {}
            HistoryEvent::OrchestratorStarted { timestamp } => {
                let before = self.clock.swap(timestamp, Ordering::Relaxed);
                self.note(position, Undo::Clock(before));
                if !self.started {
                    self.started = true;
                    return Ok(Some(None));
                }
            }
            HistoryEvent::TaskScheduled { task, action } => {
                return Err(Divergence {
                    position,
                    task: Some(task),
                    expected: action.to_string(),
                    actual: "made no such call".into(),
                });
            }
            HistoryEvent::TaskCancelled { task } => {
                return Err(Divergence {
                    position,
                    task: Some(task),
                    expected: format!("cancel-task(#{task})"),
                    actual: "kept the task".into(),
                });
            }
            HistoryEvent::EventRaised { name, payload } => {
                match self.open_waits.iter().position(|(_, n)| *n == name) {
                    Some(index) => {
                        let wait = self.open_waits.remove(index);
                        let task = wait.0;
                        self.note(position, Undo::Wait(index, wait));
                        return Ok(Some(Some(Completion {
                            task,
                            outcome: TaskOutcome::EventRaised(payload),
                        })));
                    }
                    None => {
                        self.buffered.push_back((position, name, payload));
                        self.note(position, Undo::Buffered);
                    }
                }
            }
            HistoryEvent::TimerFired { task, .. } => {
                if let Some(completion) =
                    self.complete(position, task, Live::Timer, TaskOutcome::TimerFired)
                {
                    return Ok(Some(Some(completion)));
                }
            }
            HistoryEvent::TaskCompleted { task, output, .. } => {
                let outcome = TaskOutcome::ActivityCompleted(output);
                if let Some(completion) = self.complete(position, task, Live::Activity, outcome) {
                    return Ok(Some(Some(completion)));
                }
            }
            HistoryEvent::TaskFailed { task, error, .. } => {
                let outcome = TaskOutcome::ActivityFailed(error);
                if let Some(completion) = self.complete(position, task, Live::Activity, outcome) {
                    return Ok(Some(Some(completion)));
                }
            }
            HistoryEvent::SubOrchestrationCompleted { task, output } => {
                let outcome = TaskOutcome::SubOrchestrationCompleted(output);
                if let Some(completion) = self.complete(position, task, Live::Child, outcome) {
                    return Ok(Some(Some(completion)));
                }
            }
            HistoryEvent::SubOrchestrationFailed { task, error } => {
                let outcome = TaskOutcome::SubOrchestrationFailed(error);
                if let Some(completion) = self.complete(position, task, Live::Child, outcome) {
                    return Ok(Some(Some(completion)));
                }
            }
            HistoryEvent::EntityOperationCompleted { task, output } => {
                let outcome = TaskOutcome::ActivityCompleted(output);
                if let Some(completion) = self.complete(position, task, Live::Entity, outcome) {
                    return Ok(Some(Some(completion)));
                }
            }
            HistoryEvent::EntityOperationFailed { task, error } => {
                let outcome = TaskOutcome::ActivityFailed(error);
                if let Some(completion) = self.complete(position, task, Live::Entity, outcome) {
                    return Ok(Some(Some(completion)));
                }
            }
            HistoryEvent::EntityLockGranted { task } => {
                if self.live.get(&task) == Some(&Live::Lock)
                    && let Some((_, entities)) = self.requested.take()
                {
                    self.live.remove(&task);
                    self.note(position, Undo::Granted(task, entities.clone()));
                    self.held = entities;
                    return Ok(Some(Some(Completion {
                        task,
                        outcome: TaskOutcome::ActivityCompleted("null".into()),
                    })));
                }
            }
            HistoryEvent::ExecutionSuspended { .. } | HistoryEvent::ExecutionResumed { .. } => {}
            terminal @ (HistoryEvent::ExecutionCompleted { .. }
            | HistoryEvent::ExecutionTerminated { .. }
            | HistoryEvent::ExecutionFailed { .. }
            | HistoryEvent::ContinuedAsNew { .. }) => {
                return Err(Divergence {
                    position,
                    task: None,
                    expected: describe_event(&terminal),
                    actual: "was still running".into(),
                });
            }
        }
        Ok(None)
    }

    /// Match a scheduling call against the history, or record it if the
    /// history has been consumed. Returns the task id.
    fn schedule(&mut self, action: Action) -> Result<u32, Divergence> {
        let task = self.next_task;
        if let Some(batch) = &mut self.batch {
            batch.calls.push(Call::Schedule(action));
            self.next_task += 1;
            return Ok(task);
        }
        let position = self.cursor;
        if position < self.history.len() {
            let recorded = &self.history[position];
            match recorded {
                HistoryEvent::TaskScheduled {
                    task: recorded_task,
                    action: recorded_action,
                } if *recorded_task == task && *recorded_action == action => {}
                HistoryEvent::TaskScheduled {
                    action: recorded_action,
                    ..
                } => {
                    return Err(Divergence {
                        position,
                        task: Some(task),
                        expected: recorded_action.to_string(),
                        actual: format!("called {action}"),
                    });
                }
                other => {
                    return Err(Divergence {
                        position,
                        task: Some(task),
                        expected: format!("no scheduling call (next: {})", describe_event(other)),
                        actual: format!("called {action}"),
                    });
                }
            }
        } else {
            self.history.push(HistoryEvent::TaskScheduled {
                task,
                action: action.clone(),
            });
            match &action {
                Action::CreateTimer { fire_at } => self.new_timers.push((task, *fire_at)),
                Action::CallActivity { name, input, retry } => {
                    self.new_activities
                        .push((task, name.clone(), input.clone(), retry.clone()));
                }
                Action::CallSubOrchestration {
                    name,
                    instance_id,
                    input,
                } => {
                    self.new_children.push((
                        task,
                        name.clone(),
                        instance_id.clone(),
                        input.clone(),
                    ));
                }
                Action::CallEntity {
                    entity,
                    operation,
                    input,
                } => {
                    let message = Message::EntityOperation {
                        operation: operation.clone(),
                        input: input.clone(),
                        caller: Some(Box::new(ParentCall {
                            instance: self.subject.instance_id.clone(),
                            execution: self.subject.execution_id.clone(),
                            task,
                        })),
                        holder: self.holder_for(entity),
                        due: None,
                    };
                    self.sent.push((entity.clone(), message));
                }
                Action::SignalEntity {
                    entity,
                    operation,
                    input,
                    at,
                } => {
                    let message = Message::EntityOperation {
                        operation: operation.clone(),
                        input: input.clone(),
                        caller: None,
                        holder: self.holder_for(entity),
                        due: *at,
                    };
                    self.sent.push((entity.clone(), message));
                }
                Action::LockEntities { entities } => {
                    if let Some(first) = entities.first() {
                        let message = Message::EntityLock {
                            holder: self.holder(),
                            entities: entities.clone(),
                            position: 0,
                            task,
                        };
                        self.sent.push((first.clone(), message));
                    }
                }
                Action::UnlockEntities { entities } => {
                    let unlocks = crate::entity::unlocks(entities, &self.holder());
                    self.sent.extend(unlocks);
                }
                Action::WaitForEvent { .. } => {}
            }
        }
        self.cursor += 1;
        self.next_task += 1;
        match action {
            Action::WaitForEvent { name } => {
                match self.buffered.iter().position(|(_, n, _)| *n == name) {
                    Some(index) => {
                        let event = self.buffered.remove(index).expect("index in range");
                        self.pending.push_back((task, event));
                    }
                    None => self.open_waits.push((task, name)),
                }
            }
            Action::CreateTimer { .. } => {
                self.live.insert(task, Live::Timer);
            }
            Action::CallActivity { .. } => {
                self.live.insert(task, Live::Activity);
            }
            Action::CallSubOrchestration { .. } => {
                self.live.insert(task, Live::Child);
            }
            Action::CallEntity { .. } => {
                self.live.insert(task, Live::Entity);
            }
            Action::SignalEntity { .. } => {}
            Action::LockEntities { entities } => {
                self.live.insert(task, Live::Lock);
                self.requested = Some((task, entities));
            }
            Action::UnlockEntities { .. } => {
                self.held.clear();
                if let Some((asked, _)) = self.requested.take() {
                    self.live.remove(&asked);
                }
            }
        }
        Ok(task)
    }

    /// The completion of `task` if it is a live task of `kind`: a cancelled
    /// task, or a number that is no such task of this execution, completes
    /// nothing.
    fn complete(
        &mut self,
        position: usize,
        task: u32,
        kind: Live,
        outcome: TaskOutcome,
    ) -> Option<Completion> {
        if self.live.get(&task) != Some(&kind) {
            return None;
        }
        self.live.remove(&task);
        self.note(position, Undo::Live(task, kind));
        Some(Completion { task, outcome })
    }

    /// Cancel a task the orchestration dropped before it completed: recorded
    /// (or, while replaying, matched) like a scheduling call.
    fn cancel(&mut self, task: u32) -> Result<(), Divergence> {
        if let Some(batch) = &mut self.batch {
            batch.calls.push(Call::Cancel(task));
            return Ok(());
        }
        let waiting = self.open_waits.iter().position(|(t, _)| *t == task);
        let handed = self.pending.iter().position(|(t, _)| *t == task);
        let live = self.live.get(&task).copied();
        if waiting.is_none() && handed.is_none() && live.is_none() {
            // Completed already (or never scheduled): nothing to give up.
            return Ok(());
        }
        let position = self.cursor;
        match self.history.get(position) {
            Some(HistoryEvent::TaskCancelled { task: recorded }) if *recorded == task => {
                self.cursor += 1;
            }
            Some(HistoryEvent::TaskCancelled { task: recorded }) => {
                return Err(Divergence {
                    position,
                    task: Some(task),
                    expected: format!("cancel-task(#{recorded})"),
                    actual: format!("cancelled task #{task}"),
                });
            }
            // A history recorded before cancellations were: the drop is
            // applied, with nothing to match.
            Some(_) if position < self.recorded_len => {}
            Some(other) => {
                return Err(Divergence {
                    position,
                    task: Some(task),
                    expected: describe_event(other),
                    actual: format!("cancelled task #{task}"),
                });
            }
            None => {
                self.history.push(HistoryEvent::TaskCancelled { task });
                self.cursor += 1;
                if live == Some(Live::Timer) {
                    self.cancelled_timers.push(task);
                }
            }
        }
        if let Some(index) = waiting {
            self.open_waits.remove(index);
        }
        if let Some(index) = handed {
            // Back into the buffer at its place in arrival order.
            let (_, event) = self.pending.remove(index).expect("index in range");
            let at = self.buffered.partition_point(|(p, _, _)| *p < event.0);
            self.buffered.insert(at, event);
        }
        // A running activity or child is not stopped; its result completes
        // nothing.
        self.live.remove(&task);
        Ok(())
    }

    /// Record a failure the host found (a trap, a limit) after whatever the
    /// episode replayed or received so far.
    fn record_failure(&mut self, error: String) {
        let end = self.cursor.max(self.recorded_len);
        self.history.truncate(end);
        self.history.push(HistoryEvent::ExecutionFailed { error });
        self.cursor = self.history.len();
    }

    /// Record (or, while replaying, check) the event that ends the execution.
    fn record_terminal(&mut self, event: HistoryEvent) -> Result<HistoryEvent, Divergence> {
        let position = self.cursor;
        if position < self.recorded_len {
            let recorded = &self.history[position];
            if *recorded != event {
                return Err(Divergence {
                    position,
                    task: None,
                    expected: describe_event(recorded),
                    actual: describe_event(&event),
                });
            }
            self.cursor += 1;
            return Ok(event);
        }
        // Messages that arrive after the end are dropped with the episode.
        self.history.truncate(position);
        self.history.push(event.clone());
        self.cursor = self.history.len();
        Ok(event)
    }

    /// This execution, as a lock holder.
    fn holder(&self) -> LockHolder {
        LockHolder {
            instance: self.subject.instance_id.clone(),
            execution: self.subject.execution_id.clone(),
        }
    }

    /// The holder a message to `entity` carries: this execution's, inside
    /// a critical section that holds the entity.
    fn holder_for(&self, entity: &str) -> Option<Box<LockHolder>> {
        self.held
            .iter()
            .any(|e| e == entity)
            .then(|| Box::new(self.holder()))
    }

    fn trap(&mut self, divergence: Divergence) -> wasmtime::Error {
        let error = wasmtime::Error::msg(divergence.to_string());
        self.divergence = Some(divergence);
        error
    }
}

impl bindings::duro::workflow::types::Host for EpisodeState {}

impl ctx::Host for EpisodeState {
    fn instance_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.replay.subject.instance_id.clone())
    }

    fn orchestration_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.replay.subject.name.clone())
    }

    fn get_input(&mut self) -> wasmtime::Result<String> {
        Ok(self.replay.subject.input.clone())
    }

    fn current_time(&mut self) -> wasmtime::Result<u64> {
        Ok(self.replay.clock.load(Ordering::Relaxed))
    }

    fn new_guid(&mut self) -> wasmtime::Result<String> {
        let replay = &mut self.replay;
        let seed = format!(
            "{}\n{}\n{}",
            replay.subject.instance_id, replay.subject.execution_id, replay.guids
        );
        replay.guids += 1;
        let mut b: [u8; 16] = Sha256::digest(seed.as_bytes())[..16]
            .try_into()
            .expect("16 bytes");
        // A name-based (version 5 style) UUID: version and variant bits set.
        b[6] = (b[6] & 0x0f) | 0x50;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    }

    fn is_replaying(&mut self) -> wasmtime::Result<bool> {
        Ok(self.replay.replaying)
    }

    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        if self.replay.replaying {
            return Ok(());
        }
        let instance = &self.replay.subject.instance_id;
        match level {
            LogLevel::Trace => tracing::trace!(target: "duro::guest", %instance, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "duro::guest", %instance, "{message}"),
            LogLevel::Info => tracing::info!(target: "duro::guest", %instance, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "duro::guest", %instance, "{message}"),
            LogLevel::Error => tracing::error!(target: "duro::guest", %instance, "{message}"),
        }
        Ok(())
    }

    fn set_custom_status(&mut self, status: Option<String>) -> wasmtime::Result<()> {
        if let Some(json) = &status
            && serde_json::from_str::<serde_json::Value>(json).is_err()
        {
            return Err(wasmtime::Error::msg(format!(
                "set-custom-status: {json:?} is not JSON"
            )));
        }
        self.replay.custom_status = Some(status);
        Ok(())
    }

    fn wait_for_external_event(&mut self, name: String) -> wasmtime::Result<u32> {
        let replay = &mut self.replay;
        replay
            .schedule(Action::WaitForEvent { name })
            .map_err(|d| replay.trap(d))
    }

    fn create_timer(&mut self, fire_at: u64) -> wasmtime::Result<u32> {
        // Stores keep due times as signed milliseconds: a later one would
        // wrap negative and fire at once. It waits until 9999 instead.
        let fire_at = fire_at.min(LATEST_TIMER_MS);
        let replay = &mut self.replay;
        replay
            .schedule(Action::CreateTimer { fire_at })
            .map_err(|d| replay.trap(d))
    }

    fn cancel_task(&mut self, task: u32) -> wasmtime::Result<()> {
        let replay = &mut self.replay;
        replay.cancel(task).map_err(|d| replay.trap(d))
    }

    fn call_activity(
        &mut self,
        name: String,
        input: String,
        retry: Option<WitRetryPolicy>,
    ) -> wasmtime::Result<u32> {
        if serde_json::from_str::<serde_json::Value>(&input).is_err() {
            return Err(wasmtime::Error::msg(format!(
                "call-activity({name:?}): the input {input:?} is not JSON"
            )));
        }
        let retry = retry.map(|r| RetryPolicy {
            max_attempts: r.max_attempts.max(1),
            first_retry_interval_ms: r.first_retry_interval_ms,
            backoff_coefficient: r.backoff_coefficient,
            max_retry_interval_ms: r.max_retry_interval_ms,
            retry_timeout_ms: r.retry_timeout_ms,
        });
        let replay = &mut self.replay;
        replay
            .schedule(Action::CallActivity { name, input, retry })
            .map_err(|d| replay.trap(d))
    }

    fn call_sub_orchestration(
        &mut self,
        name: String,
        instance_id: Option<String>,
        input: String,
    ) -> wasmtime::Result<u32> {
        if serde_json::from_str::<serde_json::Value>(&input).is_err() {
            return Err(wasmtime::Error::msg(format!(
                "call-sub-orchestration({name:?}): the input {input:?} is not JSON"
            )));
        }
        let replay = &mut self.replay;
        // Deterministic: the same on every replay. A parent whose id leaves
        // no room for `:<task>` names its children by its id's digest.
        let instance_id = instance_id.unwrap_or_else(|| {
            let parent = &replay.subject.instance_id;
            let derived = format!("{parent}:{}", replay.next_task);
            if derived.len() <= crate::runtime::MAX_INSTANCE_ID_LEN {
                derived
            } else {
                let digest = hex::encode(Sha256::digest(parent.as_bytes()));
                format!("{}:{}", &digest[..32], replay.next_task)
            }
        });
        // An id the API could not name would make a child no one can reach.
        let problem = crate::runtime::instance_id_problem(&instance_id).or_else(|| {
            crate::entity::is_entity(&instance_id)
                .then_some("ids that begin with `@` name entities")
        });
        if let Some(problem) = problem {
            return Err(wasmtime::Error::msg(format!(
                "call-sub-orchestration({name:?}): instance id {instance_id:?} is not valid: {problem}"
            )));
        }
        replay
            .schedule(Action::CallSubOrchestration {
                name,
                instance_id,
                input,
            })
            .map_err(|d| replay.trap(d))
    }

    fn signal_entity(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
    ) -> wasmtime::Result<()> {
        self.signal("signal-entity", name, key, operation, input, None)
    }

    fn signal_entity_at(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
        at: u64,
    ) -> wasmtime::Result<()> {
        let at = Some(at.min(LATEST_TIMER_MS));
        self.signal("signal-entity-at", name, key, operation, input, at)
    }

    fn call_entity(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
    ) -> wasmtime::Result<u32> {
        let entity = entity_call("call-entity", &name, &key, &operation, &input)?;
        let replay = &mut self.replay;
        replay
            .schedule(Action::CallEntity {
                entity,
                operation,
                input,
            })
            .map_err(|d| replay.trap(d))
    }

    fn lock_entities(&mut self, entities: Vec<(String, String)>) -> wasmtime::Result<u32> {
        let ids = entities
            .iter()
            .map(|(name, key)| EntityId::new(name, key).map(|id| id.instance_id()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| wasmtime::Error::msg(format!("lock-entities: {e}")))?;
        if ids.is_empty() {
            return Err(wasmtime::Error::msg("lock-entities: no entities given"));
        }
        let replay = &mut self.replay;
        if replay.requested.is_some() || !replay.held.is_empty() {
            return Err(wasmtime::Error::msg(
                "lock-entities: this execution holds (or is taking) locks already; release them first",
            ));
        }
        let entities = crate::entity::lock_order(ids);
        replay
            .schedule(Action::LockEntities { entities })
            .map_err(|d| replay.trap(d))
    }

    fn unlock_entities(&mut self) -> wasmtime::Result<()> {
        let replay = &mut self.replay;
        let entities = match &replay.requested {
            Some((_, asked)) => asked.clone(),
            None => replay.held.clone(),
        };
        if entities.is_empty() {
            return Ok(());
        }
        replay
            .schedule(Action::UnlockEntities { entities })
            .map(drop)
            .map_err(|d| replay.trap(d))
    }

    fn continue_as_new(&mut self, input: String) -> wasmtime::Result<()> {
        if serde_json::from_str::<serde_json::Value>(&input).is_err() {
            return Err(wasmtime::Error::msg(format!(
                "continue-as-new: {input:?} is not JSON"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(history: Vec<HistoryEvent>) -> ReplayState {
        let subject = Subject {
            instance_id: "i".into(),
            name: "N".into(),
            input: "null".into(),
            execution_id: "e".into(),
        };
        ReplayState::new(&subject, history, Arc::default())
    }

    fn raised(name: &str, payload: &str) -> HistoryEvent {
        HistoryEvent::EventRaised {
            name: name.into(),
            payload: payload.into(),
        }
    }

    fn wait(name: &str) -> Action {
        Action::WaitForEvent { name: name.into() }
    }

    /// Drain deliveries until the orchestration would have to run.
    fn deliveries(replay: &mut ReplayState, incoming: Vec<HistoryEvent>) -> Vec<Completion> {
        let mut incoming = incoming.into();
        let mut out = Vec::new();
        while let Some(delivery) = replay.next_delivery(&mut incoming).unwrap() {
            out.extend(delivery);
        }
        out
    }

    fn started() -> HistoryEvent {
        HistoryEvent::OrchestratorStarted { timestamp: 5 }
    }

    #[test]
    fn an_event_goes_to_the_oldest_live_wait_of_its_name() {
        let mut replay = state(Vec::new());
        assert!(deliveries(&mut replay, vec![started()]).is_empty());
        let first = replay.schedule(wait("E")).unwrap();
        let second = replay.schedule(wait("E")).unwrap();
        replay.cancel(first).unwrap();
        let got = deliveries(&mut replay, vec![raised("E", "1"), raised("E", "2")]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].task, second);
        assert!(matches!(&got[0].outcome, TaskOutcome::EventRaised(p) if p == "1"));
        // The second event found no live wait: buffered for the next one.
        assert_eq!(replay.buffered.len(), 1);
        assert_eq!(
            replay.history.last(),
            Some(&raised("E", "2")),
            "recorded in arrival order"
        );
        assert!(
            replay
                .history
                .contains(&HistoryEvent::TaskCancelled { task: first })
        );
    }

    #[test]
    fn a_cancelled_wait_gives_its_buffered_event_back_in_arrival_order() {
        let mut replay = state(Vec::new());
        deliveries(
            &mut replay,
            vec![
                started(),
                raised("A", "a1"),
                raised("B", "b"),
                raised("A", "a2"),
            ],
        );
        let task = replay.schedule(wait("A")).unwrap();
        assert_eq!(replay.pending.len(), 1, "a1 handed to the wait");
        replay.cancel(task).unwrap();
        let order: Vec<&str> = replay.buffered.iter().map(|(_, _, p)| p.as_str()).collect();
        assert_eq!(order, ["a1", "b", "a2"]);
        // Cancelling again, or a completed task, records nothing more.
        let len = replay.history.len();
        replay.cancel(task).unwrap();
        assert_eq!(replay.history.len(), len);
    }

    #[test]
    fn a_cancelled_timer_and_an_unknown_task_complete_nothing() {
        let mut replay = state(Vec::new());
        deliveries(&mut replay, vec![started()]);
        let timer = replay
            .schedule(Action::CreateTimer { fire_at: 10 })
            .unwrap();
        replay.cancel(timer).unwrap();
        assert_eq!(replay.cancelled_timers, [timer]);
        let fired = |task| HistoryEvent::TimerFired { task, fire_at: 10 };
        assert!(deliveries(&mut replay, vec![fired(timer), fired(42)]).is_empty());
        let live = replay
            .schedule(Action::CreateTimer { fire_at: 20 })
            .unwrap();
        let got = deliveries(&mut replay, vec![fired(live)]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].task, live);
    }

    #[test]
    fn a_recorded_cancellation_must_be_replayed() {
        let history = vec![
            HistoryEvent::ExecutionStarted {
                name: "N".into(),
                input: "null".into(),
            },
            started(),
            HistoryEvent::TaskScheduled {
                task: 0,
                action: wait("E"),
            },
            HistoryEvent::TaskCancelled { task: 0 },
        ];
        let first_step = |replay: &mut ReplayState| {
            let delivery = replay.next_delivery(&mut VecDeque::new()).unwrap();
            assert!(matches!(delivery, Some(None)), "the orchestration starts");
        };
        // Replayed with the same cancellation: matched, nothing appended.
        let mut replay = state(history.clone());
        first_step(&mut replay);
        replay.schedule(wait("E")).unwrap();
        replay.cancel(0).unwrap();
        assert_eq!(replay.history.len(), history.len());
        assert!(deliveries(&mut replay, Vec::new()).is_empty());
        // Replayed by code that keeps the task: a divergence.
        let mut replay = state(history);
        first_step(&mut replay);
        replay.schedule(wait("E")).unwrap();
        let divergence = replay.next_delivery(&mut VecDeque::new()).unwrap_err();
        assert_eq!(divergence.position, 3);
        assert_eq!(divergence.actual, "kept the task");
    }

    #[test]
    fn a_history_recorded_before_cancellations_replays_unchanged() {
        // A race the timer won, recorded by a host that did not record the
        // loser's cancellation.
        let history = vec![
            HistoryEvent::ExecutionStarted {
                name: "N".into(),
                input: "null".into(),
            },
            started(),
            HistoryEvent::TaskScheduled {
                task: 0,
                action: wait("E"),
            },
            HistoryEvent::TaskScheduled {
                task: 1,
                action: Action::CreateTimer { fire_at: 9 },
            },
            started(),
            HistoryEvent::TimerFired {
                task: 1,
                fire_at: 9,
            },
            HistoryEvent::ExecutionCompleted { output: "1".into() },
        ];
        let mut replay = state(history.clone());
        let mut none = VecDeque::new();
        assert!(matches!(replay.next_delivery(&mut none), Ok(Some(None))));
        replay.schedule(wait("E")).unwrap();
        replay.schedule(Action::CreateTimer { fire_at: 9 }).unwrap();
        let fired = replay.next_delivery(&mut none).unwrap().unwrap().unwrap();
        assert_eq!(fired.task, 1);
        // The loser is dropped now: applied, with nothing to match.
        replay.cancel(0).unwrap();
        let end = HistoryEvent::ExecutionCompleted { output: "1".into() };
        assert_eq!(replay.record_terminal(end), Ok(history[6].clone()));
        assert_eq!(replay.history, history, "nothing appended");
    }

    #[test]
    fn a_failure_is_recorded_after_what_was_replayed_and_received() {
        let history = vec![
            HistoryEvent::ExecutionStarted {
                name: "N".into(),
                input: "null".into(),
            },
            started(),
        ];
        let mut replay = state(history);
        deliveries(&mut replay, vec![started(), raised("E", "1")]);
        replay.record_failure("trapped".into());
        assert_eq!(replay.history.len(), 5);
        assert_eq!(
            replay.history[4],
            HistoryEvent::ExecutionFailed {
                error: "trapped".into()
            }
        );
    }
}
