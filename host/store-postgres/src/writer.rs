//! Group commit: a writer task per host (`LANES`), folding every write
//! waiting for it (new instances, messages, episodes, activity results)
//! into one transaction, waiting a moment for more when several were
//! waiting (`LINGER`). A group on distinct instances goes in one round
//! trip: `BEGIN`, the array statements of its new instances, plain
//! episodes and clients' messages (`batch`) and every statement of its
//! other writes are sent at once (the driver pipelines them), and `COMMIT`
//! once all answered well; one naming an instance twice goes in rounds. A
//! group in which one write fails is rolled back and run again one write
//! after another, each in a savepoint of its own, so that a refused write
//! undoes only itself. A write's caller hears back once the transaction is
//! durable.

use deadpool_postgres::{GenericClient, Pool};
use duro_core::model::{Instance, Message, Millis};
use duro_core::store::plan;
use duro_core::store::{ActivityFinish, EpisodeCommit, ScheduleCommit, StoreError, StoreResult};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;
use std::time::Duration;

use duro_core::store::WorkKind;

use crate::batch::Batch;
use crate::notifier::Notifier;
use crate::{backend, ops, pool_error};

/// Most writes folded into one transaction.
const MAX_GROUP: usize = 256;

/// When the last group took at least [`SLOW_GROUP`] and this many writes
/// are found waiting at once, the writer waits [`LINGER`] for more before
/// it commits them. A group's statements cost the server about as much for
/// three rows as for ten (BENCHMARKS.md), so when the server is busy (its
/// groups are slow) and writes queue up, a larger group saves it work.
/// Otherwise (one client, a quiet host, a server with time to spare) a
/// write goes at once: there, waiting only adds to every request's time.
const LINGER_AFTER: usize = 3;

/// See [`LINGER_AFTER`]. Groups took 1.3 ms at eight clients and 2.9 ms at
/// 64 on this machine's one host (BENCHMARKS.md).
const SLOW_GROUP: Duration = Duration::from_millis(2);

/// How long the writer waits for more writes (see [`LINGER_AFTER`]).
const LINGER: Duration = Duration::from_millis(1);

/// Writer tasks per host: transactions in flight at once. One: a group's
/// statements are said once for the whole group (`batch`), so its cost on
/// the server hardly grows with its size, and the writes that arrive while
/// one group commits make the next group larger. With four lanes the groups
/// were a quarter as large and a lifecycle cost the server about half as
/// much again (BENCHMARKS.md, "A group's writes in arrays").
pub const LANES: usize = 1;

/// A write the writers apply.
#[derive(Debug)]
pub enum Write {
    /// Create an instance (`ClientStore::create_instance`).
    Create(Instance),
    /// Put a message into an existing instance's inbox, stamped `at`, if
    /// fewer than `max_inbox` wait there.
    Enqueue {
        id: String,
        message: Message,
        max_inbox: usize,
        at: Millis,
    },
    /// Commit an episode (its lease given back with it; a refused one's
    /// lease is given back after the transaction).
    Episode(Box<EpisodeCommit>),
    /// Record what became of an activity attempt (row `id`, of
    /// `instance`; a result stamped `at`).
    FinishActivity {
        id: i64,
        instance: String,
        finish: ActivityFinish,
        at: Millis,
    },
    /// Change a schedule (a round's ticks, a client's change).
    Schedule(Box<ScheduleCommit>),
}

impl Write {
    /// The kinds of work it makes for some host once committed.
    fn work_made(&self) -> Vec<WorkKind> {
        match self {
            Write::Create(_) | Write::Enqueue { .. } => vec![WorkKind::Instances],
            Write::Episode(episode) => {
                let mut kinds = Vec::new();
                if episode.makes_instance_work() {
                    kinds.push(WorkKind::Instances);
                }
                // A scheduled run that ended may release a buffered tick.
                let run_ended = episode.instance.scheduled_by.is_some()
                    && episode.instance.status.is_terminal();
                if !episode.new_timers.is_empty() || run_ended {
                    kinds.push(WorkKind::Timers);
                }
                if !episode.new_activities.is_empty() {
                    kinds.push(WorkKind::Activities);
                }
                kinds
            }
            Write::FinishActivity {
                finish: ActivityFinish::Retry { .. },
                ..
            } => vec![WorkKind::Activities],
            Write::FinishActivity {
                finish: ActivityFinish::Done(_),
                ..
            } => vec![WorkKind::Instances],
            Write::Schedule(commit) => {
                let mut kinds = vec![WorkKind::Timers];
                if !commit.starts.is_empty() || commit.terminate.is_some() {
                    kinds.push(WorkKind::Instances);
                }
                kinds
            }
        }
    }

    /// The instance it writes to first: its lane, and its place in its
    /// group (a schedule's change, by the schedule's name).
    pub(crate) fn key(&self) -> &str {
        match self {
            Write::Create(instance) => &instance.id,
            Write::Enqueue { id, .. } => id,
            Write::Episode(episode) => &episode.instance.id,
            Write::FinishActivity { instance, .. } => instance,
            Write::Schedule(commit) => &commit.name,
        }
    }
}

type Job = (Write, oneshot::Sender<StoreResult<()>>);

/// The writer lanes of one host.
pub struct Writer {
    lanes: Vec<mpsc::UnboundedSender<Job>>,
}

impl Writer {
    /// Start the lanes on the current runtime; they tell other hosts of
    /// what they committed through `notifier`.
    pub fn start(pool: &Pool, owner: &str, notifier: &Arc<Notifier>) -> Writer {
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run(pool.clone(), owner.to_string(), notifier.clone(), rx));
                tx
            })
            .collect();
        Writer { lanes }
    }

    /// Hand `write` to its lane; resolves once its transaction is durable
    /// (or has failed).
    pub fn submit(&self, write: Write) -> impl Future<Output = StoreResult<()>> + Send + use<> {
        let lane = write
            .key()
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % self.lanes.len();
        let (reply, answer) = oneshot::channel();
        let sent = self.lanes[lane].send((write, reply));
        async move {
            let stopped = || StoreError::Backend {
                message: "the PostgreSQL writer has stopped".into(),
                retriable: true,
            };
            sent.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        }
    }
}

async fn run(
    pool: Pool,
    owner: String,
    notifier: Arc<Notifier>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut last_took = Duration::ZERO;
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        take_waiting(&mut jobs, &mut group);
        if last_took >= SLOW_GROUP && (LINGER_AFTER..MAX_GROUP).contains(&group.len()) {
            tokio::time::sleep(LINGER).await;
            take_waiting(&mut jobs, &mut group);
        }
        // In the order of the instances they write to (stable: a group's
        // writes to one instance keep their order), so that two groups
        // take their instances' row locks in one order and do not
        // deadlock (writes to other instances commute).
        group.sort_by(|(a, _), (b, _)| a.key().cmp(b.key()));
        let (writes, replies): (Vec<Write>, Vec<_>) = group.into_iter().unzip();
        let began = std::time::Instant::now();
        let committed = commit_with_retries(&pool, &owner, &writes).await;
        last_took = began.elapsed();
        match committed {
            Ok(results) => {
                for (write, result) in writes.iter().zip(&results) {
                    if result.is_ok() {
                        for kind in write.work_made() {
                            notifier.raise(kind);
                        }
                    }
                }
                // Waiters on other hosts for the instances this group
                // finished answer at once.
                let finished =
                    (writes.iter().zip(&results)).filter_map(|(write, result)| match write {
                        Write::Episode(commit)
                            if result.is_ok() && commit.instance.status.is_terminal() =>
                        {
                            Some(commit.instance.id.clone())
                        }
                        _ => None,
                    });
                notifier.finished(finished);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend {
                        message: message.clone(),
                        retriable: true,
                    }));
                }
            }
        }
    }
}

/// Add the jobs waiting in `jobs` to `group`, up to [`MAX_GROUP`].
fn take_waiting(jobs: &mut mpsc::UnboundedReceiver<Job>, group: &mut Vec<Job>) {
    while group.len() < MAX_GROUP {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

/// Transactions a group is tried in before its writes hear of a failure
/// that trying again may mend: a message marks its instance ready under
/// the instance's row lock, so two groups can, rarely, deadlock (one's
/// episode notifying a parent whose episode the other commits while a
/// message goes to the first's instance); PostgreSQL then aborts one.
const GROUP_ATTEMPTS: usize = 3;

async fn commit_with_retries(
    pool: &Pool,
    owner: &str,
    writes: &[Write],
) -> StoreResult<Vec<StoreResult<()>>> {
    let mut attempt = 1;
    loop {
        match commit_group(pool, owner, writes).await {
            Err(e) if e.is_retriable() && attempt < GROUP_ATTEMPTS => {
                tracing::debug!("group commit failed, trying again: {e}");
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// One transaction for the group; the outer error is the transaction's
/// (nothing was applied).
async fn commit_group(
    pool: &Pool,
    owner: &str,
    writes: &[Write],
) -> StoreResult<Vec<StoreResult<()>>> {
    let mut client = pool.get().await.map_err(pool_error)?;
    if let Some(rounds) = rounds(writes) {
        // Writes on distinct instances commute, so sending them all at
        // once has the outcome of running them in order. A group with
        // several writes to one instance runs in rounds, each on distinct
        // instances (the first write of each, then the second, ...), in
        // order. If any write fails (its other statements, and later
        // writes', may have run) the group is rolled back and runs again
        // below, in order and in savepoints.
        let session: &deadpool_postgres::Object = &client;
        let mut results = Vec::with_capacity(writes.len());
        let mut failed = false;
        for (n, round) in rounds.iter().enumerate() {
            let (begun, applied) = apply_round(session, owner, round, n == 0).await;
            begun.map_err(backend)?;
            failed |= applied.iter().any(Result::is_err);
            results.extend(round.iter().map(|(i, _)| *i).zip(applied));
            if failed {
                break;
            }
        }
        if !failed {
            session.batch_execute("COMMIT").await.map_err(backend)?;
            results.sort_by_key(|(i, _)| *i);
            return Ok(results.into_iter().map(|(_, result)| result).collect());
        }
        session.batch_execute("ROLLBACK").await.map_err(backend)?;
    }
    let tx = client.transaction().await.map_err(backend)?;
    let applied: Vec<ops::Op<'_, ()>> = writes
        .iter()
        .map(|write| Box::pin(apply(&tx, owner, write, false)) as ops::Op<'_, ()>)
        .collect();
    let results = ops::each_in_savepoint(&tx, applied).await?;
    // Refused episodes (another write changed the instance first) give
    // their leases back without changing anything, in the same transaction:
    // what the group reports is all or nothing. One that failed otherwise
    // keeps its lease until its runtime gives it back after a backoff.
    let refused: Vec<String> = writes
        .iter()
        .zip(&results)
        .filter_map(|(write, result)| match (write, result) {
            (
                Write::Episode(episode),
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)),
            ) => Some(episode.instance.id.clone()),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        ops::release(&tx, owner, &refused).await?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(results)
}

/// The group's writes (sorted by key) in rounds on distinct instances,
/// each write with its place in the group: the first write to each
/// instance, then the second, and so on. `None` if a write names no
/// instance.
fn rounds(writes: &[Write]) -> Option<Vec<Vec<(usize, &Write)>>> {
    let mut rounds: Vec<Vec<(usize, &Write)>> = Vec::new();
    let mut nth = 0;
    for (i, write) in writes.iter().enumerate() {
        if write.key().is_empty() {
            return None;
        }
        nth = match i.checked_sub(1).map(|p| &writes[p]) {
            Some(previous) if previous.key() == write.key() => nth + 1,
            _ => 0,
        };
        if rounds.len() <= nth {
            rounds.push(Vec::new());
        }
        rounds[nth].push((i, write));
    }
    Some(rounds)
}

/// One round of a group, its statements sent at once (after `BEGIN` if
/// `begin`): the writes every episode, new instance and client message
/// make in array statements for the round (`batch`), the rest after them,
/// each as its plan says. `BEGIN`'s result, and each write's.
async fn apply_round(
    session: &deadpool_postgres::Object,
    owner: &str,
    round: &[(usize, &Write)],
    begin: bool,
) -> (Result<(), tokio_postgres::Error>, Vec<StoreResult<()>>) {
    let batch = match Batch::of(round.iter().map(|(_, write)| *write)) {
        Ok(batch) => batch,
        Err(e) => return (Ok(()), vec![Err(e)]),
    };
    let (begun, batched, mut applied) = tokio::join!(
        biased;
        async {
            if begin {
                session.batch_execute("BEGIN").await
            } else {
                Ok(())
            }
        },
        batch.apply(session, owner),
        futures_util::future::join_all(round.iter().zip(&batch.covered).map(
            |((_, write), &covered)| {
                Box::pin(async move {
                    if covered {
                        Ok(())
                    } else {
                        apply(session, owner, write, true).await
                    }
                }) as ops::Op<'_, ()>
            }
        )),
    );
    match batched {
        // New instances whose id was taken: step by step, after the rest
        // (a finished instance there is replaced; a live one refuses).
        Ok(taken) => {
            for id in taken {
                let found = round.iter().position(
                    |(_, write)| matches!(write, Write::Create(instance) if instance.id == id),
                );
                if let Some(n) = found {
                    applied[n] = apply(session, owner, round[n].1, false).await;
                }
            }
        }
        // A refusal in the batch is the round's: the group runs again write
        // by write, which finds whose it was.
        Err(e) => {
            if let Some(first) = applied.first_mut() {
                *first = Err(e);
            }
        }
    }
    (begun, applied)
}

/// Apply one write: a commit's as its plan says, in one round trip
/// (`pipelined`) or step by step.
async fn apply(
    c: &impl GenericClient,
    owner: &str,
    write: &Write,
    pipelined: bool,
) -> StoreResult<()> {
    let planned = match write {
        Write::Create(instance) => plan::creation(instance),
        Write::Episode(episode) => plan::episode(episode),
        Write::Schedule(commit) => plan::schedule(commit),
        Write::Enqueue {
            id,
            message,
            max_inbox,
            at,
        } => return ops::enqueue(c, id, message, *max_inbox, *at).await,
        Write::FinishActivity { id, finish, at, .. } => {
            return ops::finish_activity(c, owner, *id, finish, *at).await;
        }
    };
    if pipelined {
        ops::apply_pipelined(c, owner, &planned).await
    } else {
        ops::apply_in_order(c, owner, &planned).await
    }
}
