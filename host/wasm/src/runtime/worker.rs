//! The background side of the runtime: the work loop that claims instances
//! with messages, runs their episodes and group-commits them, and the timer
//! loop that moves due timers into inboxes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use super::Inner;
use super::pool::{EpisodePool, StopOnDrop};
use crate::model::{
    ActivityCall, HistoryEvent, InboxEntry, Instance, Message, Millis, ParentCall, RuntimeStatus,
    Timer, fresh_id,
};
use crate::replay::{Outcome, Subject};
use crate::store::{EpisodeCommit, LoadedInstance, StoreError, Version};

/// An instance to run an episode of, on an episode thread.
pub(super) struct Job {
    pub(super) id: String,
    /// A message for it that is not stored yet.
    pub(super) carried: Option<Carried>,
    /// [`Inner::work_signalled`] before its instance was leased.
    pub(super) since: u64,
}

impl Job {
    /// An episode of `id` for what its inbox holds, leased after `since`.
    pub(super) fn inbox(id: String, since: u64) -> Self {
        Job {
            id,
            carried: None,
            since,
        }
    }
}

/// What a client hands an episode instead of the store.
#[derive(Debug, Clone)]
pub(super) enum Carry {
    /// A message for the instance.
    Message(Message),
    /// A new instance's start ([`Instance::pending`]): the episode is its
    /// first, and its commit creates it.
    Start(Box<Instance>),
}

impl Carry {
    /// The message carried, handed back.
    pub(super) fn into_message(self) -> Message {
        match self {
            Carry::Message(message) => message,
            Carry::Start(_) => unreachable!("a message was carried"),
        }
    }

    /// The instance whose start was carried, handed back.
    pub(super) fn into_start(self) -> Box<Instance> {
        match self {
            Carry::Start(instance) => instance,
            Carry::Message(_) => unreachable!("a start was carried"),
        }
    }
}

/// Something a client sent, carried into an episode of the instance this
/// host leased on the spot instead of being stored first: the episode's
/// commit stores it (a message as the history it adds, a start as the
/// instance it creates), in one fsync'd write instead of two. The sender
/// waits a little for that ([`Carrying::outcome`]), then takes it back,
/// unless the episode has sealed it into its commit, and stores it itself;
/// an episode that finds it taken back is not committed, and the instance
/// runs again on what is stored. Whatever else keeps the commit from
/// storing it (the episode left it in the inbox, did not run or did not
/// commit, the job was dropped) hands it back to its sender.
pub(super) struct Carried {
    /// Until the episode seals it or the sender takes it back (shared, so
    /// that the episode looks at it without copying its payload).
    slot: Arc<Mutex<Option<Arc<Carry>>>>,
    /// Once sealed, until its commit stores it.
    sealed: Option<Arc<Carry>>,
    done: Option<oneshot::Sender<Result<(), Carry>>>,
}

/// The sender's side of a [`Carried`].
pub(super) struct Carrying {
    slot: Arc<Mutex<Option<Arc<Carry>>>>,
    outcome: oneshot::Receiver<Result<(), Carry>>,
}

impl Carried {
    /// `carry`, and where its sender learns what became of it.
    pub(super) fn new(carry: Carry) -> (Self, Carrying) {
        let (done, outcome) = oneshot::channel();
        let slot = Arc::new(Mutex::new(Some(Arc::new(carry))));
        let carried = Carried {
            slot: slot.clone(),
            sealed: None,
            done: Some(done),
        };
        (carried, Carrying { slot, outcome })
    }

    /// What is carried, for the episode to look at; none if its sender
    /// has taken it back.
    pub(super) fn look(&self) -> Option<Arc<Carry>> {
        self.slot.lock().expect("carried slot poisoned").clone()
    }

    /// What is carried, handed back before its sender could take it back.
    pub(super) fn hand_back(self) -> Carry {
        let carry = self.slot.lock().expect("carried slot poisoned").take();
        Arc::unwrap_or_clone(carry.expect("carried until it is resolved"))
    }

    /// True if its sender has taken it back (to store it itself).
    pub(super) fn taken_back(&self) -> bool {
        self.sealed.is_none() && self.slot.lock().expect("carried slot poisoned").is_none()
    }

    /// True if it is a start (sealed into its commit).
    fn is_start(&self) -> bool {
        matches!(self.sealed.as_deref(), Some(Carry::Start(_)))
    }

    /// The episode took it and is about to be committed: from now on its
    /// sender waits for the commit. False if the sender took it back first.
    fn seal(&mut self) -> bool {
        self.sealed = self.slot.lock().expect("carried slot poisoned").take();
        self.sealed.is_some()
    }

    /// The commit it was sealed into was refused: it may go into another
    /// episode (or be taken back by its sender, who may have stopped
    /// looking: it then waits for that episode's commit).
    fn unseal(&mut self) {
        *self.slot.lock().expect("carried slot poisoned") = self.sealed.take();
    }

    /// The episode that took it committed: it is stored.
    fn stored(mut self) {
        self.sealed = None;
        if let Some(done) = self.done.take() {
            let _ = done.send(Ok(()));
        }
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        let carry = (self.sealed.take())
            .or_else(|| self.slot.lock().expect("carried slot poisoned").take());
        if let (Some(carry), Some(done)) = (carry, self.done.take()) {
            let _ = done.send(Err(Arc::unwrap_or_clone(carry)));
        }
    }
}

impl Carrying {
    /// Ok once an episode's commit stored it; else it, back, for the
    /// sender to store: handed back, or taken back after `patience` if no
    /// episode sealed it by then (the episode under way may be a guest
    /// computing for its whole step budget, and a client must not wait for
    /// that).
    pub(super) async fn outcome(mut self, patience: std::time::Duration) -> Result<(), Carry> {
        let outcome = match tokio::time::timeout(patience, &mut self.outcome).await {
            Ok(outcome) => outcome,
            Err(_) => {
                if let Some(carry) = self.slot.lock().expect("carried slot poisoned").take() {
                    return Err(Arc::unwrap_or_clone(carry));
                }
                // Sealed: its commit answers.
                self.outcome.await
            }
        };
        outcome.expect("a carried item is handed back when dropped")
    }
}

/// The id a carried message has among the inbox entries of its episode:
/// none stored has it.
const CARRIED: i64 = -1;

pub(super) async fn work_loop(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    let (commits, committer) = mpsc::unbounded_channel();
    let committing = tokio::spawn(commit_loop(inner.clone(), committer));
    let worker = inner.clone();
    let started = EpisodePool::start(inner.config.episode_threads, move |job: Job| {
        run_job(&worker, &commits, job);
        crate::replay::drop_spent();
    });
    let pool = match started {
        Ok(pool) => {
            let _ = inner.episode_pool.set(pool.clone());
            StopOnDrop(pool)
        }
        Err(e) => {
            tracing::error!("cannot start the episode threads: {e}");
            return;
        }
    };
    'work: loop {
        loop {
            if *stopped.borrow() {
                break 'work;
            }
            // Claim only what the threads will soon take: claimed instances
            // wait in the queue under their leases.
            let room = inner.config.batch_size.saturating_sub(pool.0.backlog());
            if room == 0 {
                tokio::select! {
                    _ = pool.0.room.notified() => continue,
                    _ = stopped.changed() => break 'work,
                }
            }
            let since = inner.work_signalled();
            match claim(&inner, room).await {
                Ok(claimed) if claimed.is_empty() => break,
                Ok(claimed) => pool
                    .0
                    .push(claimed.into_iter().map(|id| Job::inbox(id, since))),
                Err(e) => {
                    tracing::error!("claiming work failed: {e:#}");
                    break;
                }
            }
        }
        tokio::select! {
            _ = inner.work.notified() => {}
            _ = tokio::time::sleep(inner.config.poll_interval) => {}
            _ = stopped.changed() => break 'work,
        }
    }
    // The committer ends once the threads (which hold the other senders of
    // its channel) have stopped and handed over what they ran.
    drop(pool);
    let _ = committing.await;
}

/// Run the episode of `job` on this episode thread and hand it to the
/// committer.
fn run_job(inner: &Arc<Inner>, commits: &mpsc::UnboundedSender<Committing>, job: Job) {
    let Job { id, carried, since } = job;
    let carry = match &carried {
        Some(carried) => match carried.look() {
            Some(carry) => Some(carry),
            // Its sender took it back before the episode began.
            None => return abandon(inner, &id),
        },
        None => None,
    };
    let start = matches!(carry.as_deref(), Some(Carry::Start(_)));
    // A panic in the host's own code (a bug, not the guest's trap) is
    // caught here, as tokio's task harness catches a task's: the
    // instance's lease is given back after a backoff and the episode
    // retried as host trouble, instead of the thread dying with the
    // lease held and the instance stalled until a restart.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_episode(inner, &id, carry.as_deref())
    }));
    let ran = match ran {
        Ok(ran) => ran,
        Err(panic) => {
            inner
                .metrics
                .episodes
                .get_or_create(&vec![("outcome", "host_panic".to_string())])
                .inc();
            Err(anyhow::anyhow!(
                "the host panicked: {}",
                panic_message(&*panic)
            ))
        }
    };
    // Done with: what is handed back is then moved, not copied.
    drop(carry);
    match ran {
        Ok((commit, span, took_carried)) => {
            let carried = match carried {
                Some(mut carried) if took_carried => {
                    if !carried.seal() {
                        // Its sender took it back while the guest ran: it
                        // stores it, and the warm instance saw what will
                        // be stored again.
                        inner.replayer.forget_warm(&id);
                        return abandon(inner, &id);
                    }
                    Some(carried)
                }
                // A message left in the inbox (a suspended instance) goes
                // back to be stored by its sender (dropping it does); a
                // start left there would create an instance that never
                // runs. One for a finished instance, with nothing stored
                // to drop, leaves nothing to commit (its sender's write is
                // refused: the instance has finished).
                Some(_)
                    if start
                        || commit.instance.status.is_terminal()
                            && commit.consumed.is_empty()
                            && commit.new_events.is_empty() =>
                {
                    inner.replayer.forget_warm(&id);
                    return abandon(inner, &id);
                }
                Some(_) | None => None,
            };
            let _ = commits.send((commit, span, carried, since));
        }
        // Nothing carried is stored: its sender creates the instance, or
        // stores the message, and hears why not (no such instance, say);
        // what it stores runs as any stored work, retried if it fails.
        // Retried here, a raise for every id that does not exist would
        // keep a retry count and a timer.
        Err(e) if carried.is_some() => {
            tracing::debug!(instance = %id, "an episode of something carried not run: {e:#}");
            drop(carried);
            abandon(inner, &id);
        }
        Err(e) => {
            drop(carried);
            retry_later(inner, id, format!("episode not run: {e:#}"))
        }
    }
}

/// An episode of `id` is not committed because what was carried into it
/// is not (its sender stores that instead): the lease goes back at once
/// (a carried item's lease is held in memory,
/// [`Store::lease_carried`](crate::store::Store::lease_carried)), a message
/// parked behind it goes back to its sender, and the work loop looks for
/// the instance again (the sender's write makes it ready).
fn abandon(inner: &Inner, id: &str) {
    inner.store.release_local(id);
    inner.resume_parked(id, false);
    inner.wake_work();
}

/// An episode on its way to the committer, with what was carried into it
/// and the [`Inner::work_signalled`] read before its instance was leased.
type Committing = (EpisodeCommit, tracing::Span, Option<Carried>, u64);

/// Lease up to `max` instances with messages.
async fn claim(inner: &Arc<Inner>, max: usize) -> anyhow::Result<Vec<String>> {
    let now = inner.config.clock.now();
    let lease_until = now + super::CLAIM_LEASE_MS;
    Ok(inner.store.claim_ready(max, now, lease_until).await?)
}

/// Most episodes committed by one write of the committer.
const MAX_COMMIT: usize = 256;

/// Group-commit finished episodes in the background: whatever has finished
/// while the previous write was under way goes into the next one, and up to
/// four writes may be under way (the writer folds them into one transaction).
async fn commit_loop(inner: Arc<Inner>, mut finished: mpsc::UnboundedReceiver<Committing>) {
    while let Some(first) = finished.recv().await {
        let mut commits = vec![first];
        while commits.len() < MAX_COMMIT {
            match finished.try_recv() {
                Ok(commit) => commits.push(commit),
                Err(_) => break,
            }
        }
        let permit = inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("commit semaphore closed");
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let batch = commits.len();
            let mut spans = Vec::with_capacity(batch);
            let mut carried = Vec::with_capacity(batch);
            let mut leased_since = u64::MAX;
            let commits: Vec<EpisodeCommit> = commits
                .into_iter()
                .map(|(commit, span, message, since)| {
                    spans.push(span);
                    carried.push(message);
                    leased_since = leased_since.min(since);
                    commit
                })
                .collect();
            // One span per episode, in its episode's trace, for as long as
            // the group commit it is part of takes.
            let commit_spans: Vec<tracing::Span> = (spans.iter().zip(&commits))
                .map(|(episode, commit)| {
                    tracing::debug_span!(parent: episode, "commit", instance = %commit.instance.id, batch)
                })
                .collect();
            // New timers, or a scheduled run that ended (its schedule may
            // have a tick waiting for it): the timer loop looks again.
            let new_timers = commits.iter().any(|c| {
                !c.new_timers.is_empty()
                    || c.instance.scheduled_by.is_some() && c.instance.status.is_terminal()
            });
            let new_activities = commits.iter().any(|c| !c.new_activities.is_empty());
            let made_work = commits.iter().any(EpisodeCommit::makes_instance_work);
            let ids: Vec<String> = commits.iter().map(|c| c.instance.id.clone()).collect();
            let history_lens: Vec<u64> = commits.iter().map(|c| c.instance.history_len).collect();
            let unread: Vec<bool> = commits.iter().map(|c| c.unread_inbox).collect();
            // The rows as stored, for waiters (a long poll then reads
            // nothing): copied only if someone waits.
            let mut rows: Vec<Option<Instance>> = if inner.committed.receiver_count() > 0 {
                commits.iter().map(|c| Some(c.instance.clone())).collect()
            } else {
                vec![None; commits.len()]
            };
            // The rows warm instances go on from (their next carried
            // message then reads nothing).
            let kept: Vec<Option<Instance>> = (commits.iter())
                .map(|c| {
                    (!c.instance.status.is_terminal() && inner.replayer.holds(&c.instance.id))
                        .then(|| c.instance.clone())
                })
                .collect();
            inner.metrics.commit_batch.observe(commits.len() as f64);
            let commit_started = std::time::Instant::now();
            let outcomes = inner.store.commit_episodes(commits).await;
            let failed = outcomes.iter().any(Result::is_err);
            inner
                .metrics
                .commit_seconds
                .observe(commit_started.elapsed().as_secs_f64());
            drop(commit_spans);
            drop(spans);
            let mut round = Vec::with_capacity(ids.len());
            for ((((((id, result), history_len), carried), row), kept), unread) in ids
                .into_iter()
                .zip(outcomes)
                .zip(history_lens)
                .zip(carried)
                .zip(&mut rows)
                .zip(kept)
                .zip(unread)
            {
                let stored = if result.is_ok() { row.take() } else { None };
                round.push(super::Committed::new(id.clone(), stored));
                let start = carried.as_ref().is_some_and(Carried::is_start);
                let refused = matches!(
                    result,
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_))
                );
                // A message carried into a warm instance's episode, refused
                // because the instance moved on since this host ran it
                // (another host ran it): carried once more, into an episode
                // that reads it whole, instead of stored and claimed.
                let mut again = None;
                if result.is_ok() {
                    inner.replayer.committed(&id, history_len, kept);
                    if let Some(carried) = carried {
                        carried.stored();
                    }
                } else {
                    inner.replayer.forget_warm(&id);
                    match carried {
                        Some(mut carried)
                            if unread && matches!(result, Err(StoreError::Conflict { .. })) =>
                        {
                            carried.unseal();
                            again = Some(carried);
                        }
                        // Not stored: dropped, it goes back to its sender.
                        carried => drop(carried),
                    }
                }
                match result {
                    Ok(()) => {
                        inner.succeeded(&id);
                        inner.resume_parked(&id, true);
                    }
                    // Another write changed the instance first (a restart, an
                    // upgrade, a purge): run the episode again on what is
                    // there now. A carried start refused (its id is a live
                    // instance's, or the store failed) is not retried: its
                    // sender, handed it back, creates it and hears why not.
                    Err(_) if refused || start => {
                        let _ = inner
                            .until_stored("giving a lease back", || inner.store.release(&id))
                            .await;
                        inner.resume_parked(&id, false);
                        if let Some(carried) = again {
                            inner.carry_again(&id, carried);
                        }
                    }
                    Err(e) => retry_later(&inner, id, format!("episode not committed: {e}")),
                }
            }
            if new_timers {
                inner.timers.notify_one();
            }
            if new_activities {
                inner.activities.notify_one();
            }
            let _ = inner.committed.send(round.into());
            if made_work {
                // Messages to other instances (a parent, children, entities,
                // its own continue-as-new): they may be leased here now.
                inner.wake_work();
            } else if failed || inner.work_signalled() != leased_since {
                // Work may have come for these instances while they were
                // leased, and a claim passed over it; or one given back may
                // be ready. (Otherwise no claim would find anything.)
                inner.work.notify_one();
            }
        });
    }
}

/// What a caught panic said.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

/// Fault injection for tests (`DURO_FAULT_EPISODE_PANICS=ID:N`): the first
/// N episodes of instance ID panic in the host, as a bug would.
fn injected_panic(id: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU32;
    static FAULT: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static PANICKED: AtomicU32 = AtomicU32::new(0);
    let fault = FAULT.get_or_init(|| {
        let value = std::env::var("DURO_FAULT_EPISODE_PANICS").ok()?;
        let (instance, times) = value.rsplit_once(':')?;
        Some((instance.to_string(), times.parse().ok()?))
    });
    if let Some((instance, times)) = fault
        && instance == id
        && PANICKED.fetch_add(1, Ordering::Relaxed) < *times
    {
        panic!("injected fault: an episode of `{id}` panics (DURO_FAULT_EPISODE_PANICS)");
    }
}

/// Keep an instance's lease for a growing delay after the host failed to run
/// or commit its episode (a store hiccup, a starved thread), then give it
/// back: trouble that persists is retried with backoff, not in a hot loop,
/// and its instance does not fail.
fn retry_later(inner: &Arc<Inner>, id: String, why: String) {
    let delay = inner.backoff(&id);
    tracing::warn!(instance = %id, "{why}; retrying in {delay:?}");
    let inner = inner.clone();
    // Called from episode threads as well as from the runtime's tasks.
    let handle = inner.handle.clone();
    handle.spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = inner
            .until_stored("giving a lease back", || inner.store.release(&id))
            .await;
        inner.resume_parked(&id, false);
        inner.wake_work();
    });
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
///
/// A completion for another execution (a timer, an activity or a child of
/// the execution before a continue-as-new or a restart) is consumed and
/// dropped.
fn plan_messages(status: RuntimeStatus, execution: &str, inbox: Vec<InboxEntry>) -> MessagePlan {
    let mut plan = MessagePlan {
        consumed: Vec::new(),
        incoming: Vec::new(),
        control_events: Vec::new(),
        suspended: status == RuntimeStatus::Suspended,
        terminated: None,
    };
    let mut deferred: Vec<(i64, HistoryEvent)> = Vec::new();
    for entry in inbox {
        if entry
            .message
            .execution()
            .is_some_and(|other| other != execution)
        {
            plan.consumed.push(entry.id);
            continue;
        }
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
            // Start, and what only an entity takes.
            Message::Start
            | Message::EntityOperation { .. }
            | Message::EntityLock { .. }
            | Message::EntityUnlock { .. } => {
                plan.consumed.push(entry.id);
                continue;
            }
            Message::EntityDone { task, result, .. } => match result {
                Ok(output) => HistoryEvent::EntityOperationCompleted { task, output },
                Err(error) => HistoryEvent::EntityOperationFailed { task, error },
            },
            Message::EntityLockGranted { task, .. } => HistoryEvent::EntityLockGranted { task },
            Message::EventRaised { name, payload } => HistoryEvent::EventRaised { name, payload },
            Message::TimerFired { task, fire_at, .. } => HistoryEvent::TimerFired { task, fire_at },
            Message::ChildDone { task, result, .. } => match result {
                Ok(output) => HistoryEvent::SubOrchestrationCompleted { task, output },
                Err(error) => HistoryEvent::SubOrchestrationFailed { task, error },
            },
            Message::ActivityDone {
                task,
                result,
                attempts,
                ..
            } => match result {
                Ok(output) => HistoryEvent::TaskCompleted {
                    task,
                    output,
                    attempts,
                },
                Err(error) => HistoryEvent::TaskFailed {
                    task,
                    error,
                    attempts,
                },
            },
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

/// Run one episode of `id`: what to commit, and the episode's span (in the
/// instance's trace), which the commit's span is a child of.
/// With `carried`, a message not stored yet, after what the inbox holds;
/// also whether the episode took it (else it must still be stored).
fn run_episode(
    inner: &Inner,
    id: &str,
    carried: Option<&Carry>,
) -> anyhow::Result<(EpisodeCommit, tracing::Span, bool)> {
    inner.episodes_begun.fetch_add(1, Ordering::Relaxed);
    injected_panic(id);
    let mut span = tracing::Span::none();
    let mut commit = episode(inner, id, carried, &mut span)?;
    let took_carried = match commit.consumed.iter().position(|&m| m == CARRIED) {
        Some(index) => {
            commit.consumed.remove(index);
            true
        }
        None => false,
    };
    Ok((commit, span, took_carried))
}

fn episode(
    inner: &Inner,
    id: &str,
    carried: Option<&Carry>,
    span: &mut tracing::Span,
) -> anyhow::Result<EpisodeCommit> {
    // A warm instance has seen the history: only the row and the inbox are
    // read (a store that cannot leave the history out reads it anyway). An
    // instance the cache does not hold is read whole, in one snapshot.
    // Episode threads are the runtime's own, not async workers: they wait
    // for the store here.
    let store = &inner.store;
    // A message its sender has not stored, for a warm instance: the
    // episode goes on from the row this host's last commit left, and its
    // commit makes sure no stored message waits (which it would take
    // first).
    let warm_row = match carried {
        Some(Carry::Message(_)) if !crate::entity::is_entity(id) => {
            inner.replayer.take_committed_row(id)
        }
        _ => None,
    };
    let unread_inbox = warm_row.is_some();
    let mut loaded = match (carried, warm_row) {
        // Not stored yet: its first episode sees what a load would.
        (Some(Carry::Start(instance)), _) => LoadedInstance::created((**instance).clone(), CARRIED),
        (_, Some(instance)) => LoadedInstance {
            instance,
            history: Vec::new(),
            inbox: Vec::new(),
        },
        _ if inner.replayer.holds(id) => inner.handle.block_on(store.load_head(id))?,
        _ => inner.handle.block_on(store.load(id))?,
    };
    if let Some(Carry::Message(message)) = carried {
        loaded.inbox.push(InboxEntry {
            id: CARRIED,
            message: message.clone(),
        });
    }
    // Linked to its trace before it is entered (OpenTelemetry starts the
    // span on entry, and its parent is fixed from then on).
    *span = tracing::debug_span!("episode", instance = %id, trace_id = tracing::field::Empty);
    crate::trace::join(span, &*inner.config.trace_link, || {
        crate::trace::instance_trace(&loaded.instance)
    });
    let _entered = span.clone().entered();
    let warm = inner.replayer.is_warm(&loaded.instance);
    let recorded = if warm {
        None
    } else if loaded.history.len() as u64 == loaded.instance.history_len {
        Some(loaded.history)
    } else {
        Some(inner.handle.block_on(store.history(id))?)
    };
    let mut instance = loaded.instance;
    let mut commit = EpisodeCommit {
        instance: instance.clone(),
        expected: Version::of(&instance),
        unread_inbox,
        reset_history: false,
        new_events: Vec::new(),
        consumed: Vec::new(),
        new_timers: Vec::new(),
        cancelled_timers: Vec::new(),
        new_activities: Vec::new(),
        new_children: Vec::new(),
        follow_up: Vec::new(),
        sent: Vec::new(),
        started: Vec::new(),
        created: match carried {
            Some(Carry::Start(instance)) => Some((**instance).clone()),
            _ => None,
        },
    };
    if crate::entity::is_entity(id) {
        return super::entities::episode(inner, instance, loaded.inbox, commit);
    }
    if instance.status.is_terminal() {
        // A warm instance of a finished one is of no more use (and would
        // draw messages to be carried here for nothing).
        inner.replayer.forget_warm(id);
        // Late messages for a finished instance are dropped (a carried one
        // goes back to its sender, who is told the instance has finished).
        commit.consumed = (loaded.inbox.iter().map(|m| m.id))
            .filter(|&m| m != CARRIED)
            .collect();
        return Ok(commit);
    }
    let now = inner.config.clock.now();
    let plan = plan_messages(instance.status, &instance.execution_id, loaded.inbox);
    commit.consumed = plan.consumed;
    let mut control_events = plan.control_events;
    if let Some(reason) = plan.terminated {
        inner.replayer.forget_warm(id);
        let mut new_events = vec![HistoryEvent::OrchestratorStarted { timestamp: now }];
        new_events.append(&mut control_events);
        new_events.push(HistoryEvent::ExecutionTerminated {
            reason: reason.clone(),
        });
        instance.status = RuntimeStatus::Terminated;
        instance.output = Some(json_string(reason.unwrap_or_default()));
        commit.sent = release_locks(inner, &instance)?;
        return Ok(finish(commit, instance, new_events, now));
    }
    let started = warm
        || recorded.as_ref().is_some_and(|history| {
            history
                .iter()
                .any(|e| matches!(e.event, HistoryEvent::OrchestratorStarted { .. }))
        });
    let status_after = if plan.suspended {
        RuntimeStatus::Suspended
    } else {
        RuntimeStatus::Running
    };
    if !started && plan.suspended {
        // Suspended before its first episode: only the suspension is
        // recorded (no `OrchestratorStarted`, so replay starts the
        // orchestration where it really started), and the first step runs
        // on resume.
        instance.status = RuntimeStatus::Suspended;
        return Ok(finish(commit, instance, control_events, now));
    }
    if started && plan.incoming.is_empty() {
        // Nothing for the orchestration itself: only its status may change.
        if control_events.is_empty() {
            return Ok(commit);
        }
        control_events.insert(0, HistoryEvent::OrchestratorStarted { timestamp: now });
        instance.status = status_after;
        // The history grows without the guest: its warm instance no longer
        // fits (the next episode replays).
        inner.replayer.forget_warm(id);
        return Ok(finish(commit, instance, control_events, now));
    }
    let mut incoming = vec![HistoryEvent::OrchestratorStarted { timestamp: now }];
    incoming.append(&mut control_events);
    incoming.extend(plan.incoming);
    let component = match inner.engine.cached(&instance.component) {
        Some(component) => component,
        None => {
            let compiled = (inner.handle)
                .block_on(store.component(&instance.component))?
                .ok_or_else(|| anyhow::anyhow!("it is missing from the store"))
                .and_then(|bytes| inner.engine.component(&instance.component, &bytes));
            match compiled {
                Ok(component) => component,
                Err(e) => {
                    // Permanent: the instance can never run on its component.
                    let error = format!("component {} cannot be loaded: {e:#}", instance.component);
                    tracing::error!(instance = %instance.id, "{error}");
                    commit.sent = release_locks(inner, &instance)?;
                    let new_events = fail(&mut instance, error, now);
                    return Ok(finish(commit, instance, new_events, now));
                }
            }
        }
    };
    let subject = Subject::from(&instance);
    // Read only if the warm instance is gone after all (evicted meanwhile).
    let load_history = || -> anyhow::Result<Vec<HistoryEvent>> {
        let history = match recorded {
            Some(history) => history,
            None => inner.handle.block_on(store.history(id))?,
        };
        Ok(history.into_iter().map(|e| e.event).collect())
    };
    let metrics = &inner.metrics;
    let warm_label = if warm { "hit" } else { "miss" };
    let started_at = std::time::Instant::now();
    if !warm {
        metrics.replayed_events.observe(instance.history_len as f64);
    }
    let episode = inner.replayer.run_episode(
        &instance.component,
        &component,
        &subject,
        instance.history_len,
        load_history,
        incoming,
    );
    let took = started_at.elapsed();
    if !started {
        inner.first_step_took(&instance.name, took);
    }
    let episode = episode?;
    metrics.episode_seconds.observe(took.as_secs_f64());
    metrics
        .warm_instances
        .get_or_create(&vec![("warm", warm_label.to_string())])
        .inc();
    let outcome = match &episode.outcome {
        Outcome::Pending => "waiting",
        Outcome::Completed(_) => "completed",
        Outcome::Failed(_) => "failed",
        Outcome::ContinuedAsNew(_) => "continued_as_new",
        Outcome::Diverged(_) => "diverged",
    };
    metrics
        .episodes
        .get_or_create(&vec![("outcome", outcome.to_string())])
        .inc();
    if let Some(broken) = inner
        .config
        .limits
        .broken_by(&episode, instance.history_len)
    {
        // Nothing the episode made is stored: only the failure, as for a
        // divergence. The warm instance saw what is not stored.
        inner.replayer.forget_warm(id);
        tracing::warn!(instance = %instance.id, "orchestration failed: {broken}");
        commit.sent = release_locks(inner, &instance)?;
        let new_events = fail(&mut instance, broken, now);
        return Ok(finish(commit, instance, new_events, now));
    }
    if let Some(custom_status) = episode.custom_status {
        instance.custom_status = custom_status;
    }
    let mut new_events = episode.appended;
    let holder = crate::entity::LockHolder {
        instance: instance.id.clone(),
        execution: instance.execution_id.clone(),
    };
    // What it sent to entities, and on any end the release of its locks
    // (a divergence stores nothing of the episode: only the release).
    commit.sent = match episode.outcome {
        Outcome::Pending => episode.sent,
        Outcome::Diverged(_) => crate::entity::unlocks(&episode.locks, &holder),
        _ => {
            let mut sent = episode.sent;
            sent.extend(crate::entity::unlocks(&episode.locks, &holder));
            sent
        }
    };
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
                    execution: instance.execution_id.clone(),
                })
                .collect();
            commit.cancelled_timers = episode.cancelled_timers;
            commit.new_activities = episode
                .new_activities
                .into_iter()
                .map(|(task, name, input, retry)| ActivityCall {
                    instance: instance.id.clone(),
                    execution: instance.execution_id.clone(),
                    task,
                    name,
                    input,
                    retry,
                })
                .collect();
            for (task, name, id, input) in episode.new_children {
                let parent = ParentCall {
                    instance: instance.id.clone(),
                    execution: instance.execution_id.clone(),
                    task,
                };
                let component = inner
                    .registry
                    .read()
                    .expect("registry poisoned")
                    .get(&name)
                    .cloned();
                match component {
                    Some(component) => {
                        let mut child = Instance::pending(
                            id,
                            name,
                            crate::model::canonical_json_text(input),
                            component,
                            now,
                            Some(parent),
                        );
                        // A child's work belongs to its parent's trace.
                        child.trace_parent = instance.trace_parent.clone();
                        commit.new_children.push(child);
                    }
                    None => commit.follow_up.push(Message::ChildDone {
                        task,
                        execution: parent.execution,
                        result: Err(format!("no orchestration named `{name}` is registered")),
                    }),
                }
            }
        }
        Outcome::Completed(output) => {
            instance.status = RuntimeStatus::Completed;
            instance.output = Some(output);
        }
        Outcome::Failed(error) => {
            tracing::warn!(instance = %instance.id, "orchestration failed: {error}");
            instance.status = RuntimeStatus::Failed;
            instance.output = Some(json_string(error));
        }
        Outcome::Diverged(divergence) => {
            // The recorded history stays as it was; only the failure is added.
            let error = divergence.to_string();
            tracing::warn!(instance = %instance.id, "{error}");
            new_events = fail(&mut instance, error, now);
        }
        Outcome::ContinuedAsNew(input) => {
            // Stored canonical, like every input, so that queries by input find it.
            let input = crate::model::canonical_json_text(input);
            commit.reset_history = true;
            new_events = vec![HistoryEvent::ExecutionStarted {
                name: instance.name.clone(),
                input: input.clone(),
            }];
            // Events the old execution received and never took go first
            // into the new one, in order; those still in the inbox follow.
            new_events.extend(
                episode
                    .unprocessed_events
                    .into_iter()
                    .map(|(name, payload)| HistoryEvent::EventRaised { name, payload }),
            );
            instance.execution_id = fresh_id();
            instance.input = input;
            instance.status = RuntimeStatus::Running;
            instance.output = None;
            commit.follow_up.push(Message::Start);
        }
    }
    Ok(finish(commit, instance, new_events, now))
}

/// The messages that release the entity locks of `instance`'s execution,
/// read from its stored history: for an end the replay did not see (a
/// termination, a failure the host found).
fn release_locks(inner: &Inner, instance: &Instance) -> anyhow::Result<Vec<(String, Message)>> {
    let stored = inner.handle.block_on(inner.store.history(&instance.id))?;
    let events: Vec<HistoryEvent> = stored.into_iter().map(|e| e.event).collect();
    let locks = crate::entity::locks_held(&events);
    let holder = crate::entity::LockHolder {
        instance: instance.id.clone(),
        execution: instance.execution_id.clone(),
    };
    Ok(crate::entity::unlocks(&locks, &holder))
}

/// Complete `commit` with the instance row after the episode and the events
/// the episode appends (or starts the history with, on continue-as-new).
fn finish(
    mut commit: EpisodeCommit,
    mut instance: Instance,
    new_events: Vec<HistoryEvent>,
    now: Millis,
) -> EpisodeCommit {
    let appended = new_events.len() as u64;
    instance.updated_at = now;
    instance.history_len = if commit.reset_history {
        appended
    } else {
        commit.expected.history_len + appended
    };
    commit.new_events = new_events;
    commit.instance = instance;
    commit
}

/// Fail an instance for a reason the host found (not the orchestration's
/// own error): its recorded history stays as it was, and only the failure
/// is appended. Returns the events to append.
fn fail(instance: &mut Instance, error: String, now: Millis) -> Vec<HistoryEvent> {
    instance.status = RuntimeStatus::Failed;
    instance.output = Some(json_string(error.clone()));
    vec![
        HistoryEvent::OrchestratorStarted { timestamp: now },
        HistoryEvent::ExecutionFailed { error },
    ]
}

/// A message as the JSON string stored in an instance's `output`.
fn json_string(text: String) -> String {
    serde_json::Value::String(text).to_string()
}

pub(super) async fn timer_loop(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    loop {
        let now = inner.config.clock.now();
        let fired = inner.store.fire_due_timers(now).await;
        match fired {
            Ok(0) => {}
            Ok(fired) => {
                inner.metrics.timers_fired.inc_by(fired as u64);
                inner.wake_work();
            }
            Err(e) => tracing::error!("firing timers failed: {e}"),
        }
        // Schedules fall due through the same loop, on the same clock.
        if let Err(e) = super::schedules::fire_due(&inner).await {
            tracing::error!("running due schedules failed: {e}");
        }
        let next = match (
            inner.store.next_timer_due().await,
            inner.store.next_schedule_due().await,
        ) {
            (Ok(timer), Ok(schedule)) => Ok(timer.into_iter().chain(schedule).min()),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let wait = inner.wait_for(next, "timers and schedules");
        tokio::select! {
            _ = inner.timers.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64, message: Message) -> InboxEntry {
        InboxEntry { id, message }
    }

    fn event(name: &str) -> Message {
        Message::EventRaised {
            name: name.into(),
            payload: "1".into(),
        }
    }

    fn timer(task: u32, execution: Option<&str>) -> Message {
        Message::TimerFired {
            task,
            fire_at: 1,
            execution: execution.map(String::from),
        }
    }

    #[test]
    fn events_wait_while_suspended_and_follow_the_resume_in_order() {
        let inbox = vec![
            entry(1, event("A")),
            entry(2, Message::Suspend { reason: None }),
            entry(3, event("B")),
            entry(4, event("C")),
            entry(5, Message::Resume { reason: None }),
            entry(6, event("D")),
        ];
        let plan = plan_messages(RuntimeStatus::Running, "e", inbox);
        assert!(!plan.suspended);
        assert_eq!(plan.consumed, [1, 2, 5, 3, 4, 6]);
        let names: Vec<&str> = plan
            .incoming
            .iter()
            .map(|e| match e {
                HistoryEvent::EventRaised { name, .. } => name.as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(names, ["A", "B", "C", "D"]);
        assert_eq!(plan.control_events.len(), 2);
    }

    #[test]
    fn a_suspended_instance_keeps_its_events_in_the_inbox() {
        let inbox = vec![
            entry(1, event("A")),
            entry(2, Message::Suspend { reason: None }),
        ];
        let plan = plan_messages(RuntimeStatus::Suspended, "e", inbox);
        assert!(plan.suspended);
        assert_eq!(plan.consumed, [2], "the event stays for the resume");
        assert!(plan.incoming.is_empty());
        assert!(plan.control_events.is_empty(), "already suspended");
    }

    #[test]
    fn timers_of_other_executions_are_dropped() {
        let inbox = vec![
            entry(1, timer(0, Some("old"))),
            entry(2, timer(1, Some("e"))),
            entry(3, timer(2, None)),
        ];
        let plan = plan_messages(RuntimeStatus::Running, "e", inbox);
        assert_eq!(plan.consumed, [1, 2, 3]);
        let tasks: Vec<u32> = plan
            .incoming
            .iter()
            .map(|e| match e {
                HistoryEvent::TimerFired { task, .. } => *task,
                _ => u32::MAX,
            })
            .collect();
        assert_eq!(
            tasks,
            [1, 2],
            "a timer stored before executions had ids counts"
        );
    }

    #[test]
    fn terminate_ends_the_plan() {
        let inbox = vec![
            entry(1, event("A")),
            entry(
                2,
                Message::Terminate {
                    reason: Some("r".into()),
                },
            ),
            entry(3, event("B")),
        ];
        let plan = plan_messages(RuntimeStatus::Running, "e", inbox);
        assert_eq!(plan.terminated, Some(Some("r".into())));
        assert_eq!(plan.consumed, [1, 2]);
    }
}
