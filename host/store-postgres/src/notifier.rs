//! Telling other hosts about new work, finished instances and waiters:
//! `NOTIFY` sent after commits, not inside them. PostgreSQL serialises the
//! commits of transactions that notify, WAL flush included, which capped a
//! host at one commit per disk flush; a notification on its own writes no
//! WAL. Signals raised while one is being sent are folded into the next.
//! A host's waiters name the instances they wait for, and a finish is told
//! only to hosts that wait for it: where each instance's clients talk to one
//! host, or come after it finished, hosts tell each other nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use duro_core::store::{WAITER_HEARD_FOR, WorkKind};

use crate::{CHANNELS, FINISHED_CHANNEL, WAITING_CHANNEL};

/// Pending notifications, one bit per channel; what is told of instances.
#[derive(Default)]
pub struct Notifier {
    pending: AtomicU8,
    wake: tokio::sync::Notify,
    /// Instances this host's commits finished that other hosts wait for.
    finished: Outbox,
    /// Instances this host's waiters wait for.
    waiting: Outbox,
    /// The instances other hosts' waiters wait for, each until when (ms
    /// since the epoch) a finish of it is told.
    waited_elsewhere: Mutex<HashMap<String, u64>>,
    /// Until when a host of an earlier version, whose waiters named no
    /// instance, said it has waiters: every finish is told until then.
    others_wait_until: AtomicU64,
}

/// Ids to tell the other hosts on one channel; those that come while one
/// notification is being sent go together in the next.
#[derive(Default)]
struct Outbox {
    ids: Mutex<Vec<String>>,
    ready: tokio::sync::Notify,
}

impl Outbox {
    fn push(&self, ids: impl IntoIterator<Item = String>) {
        let mut queued = self.ids.lock().expect("outbox poisoned");
        let before = queued.len();
        queued.extend(ids);
        if queued.len() > before {
            self.ready.notify_one();
        }
    }
}

/// Most instances other hosts are known to wait for; past it, expired ones
/// are dropped, then new ones are not kept (their waiters re-read).
const MAX_WAITED_ELSEWHERE: usize = 100_000;

/// Most bytes of one notification's payload (PostgreSQL takes 8,000).
const MAX_PAYLOAD: usize = 7_900;

fn bit(kind: WorkKind) -> u8 {
    match kind {
        WorkKind::Instances => 1,
        WorkKind::Timers => 2,
        WorkKind::Activities => 4,
    }
}

impl Notifier {
    /// Start sending on the current runtime: the notifier, and the tasks
    /// that send (to stop with the store).
    /// Each notification carries `owner` (this host's name), so that the
    /// host's own listener can pass over what it sent.
    pub fn start(pool: Pool, owner: &str) -> (Arc<Notifier>, Vec<tokio::task::AbortHandle>) {
        let notifier = Arc::new(Notifier::default());
        let sending = tokio::spawn(send(pool.clone(), owner.to_string(), notifier.clone()));
        // A finish is told at once: a waiter elsewhere answers on it. What
        // waiters wait for, at most once a spell: a host alone (which
        // hears nobody) pays one notification a spell under load, and a
        // waiter's first re-read comes no sooner anyway.
        let finishing = tokio::spawn(send_ids(
            pool.clone(),
            owner.to_string(),
            FINISHED_CHANNEL,
            notifier.clone(),
            |n| &n.finished,
            None,
        ));
        let waiting = tokio::spawn(send_ids(
            pool,
            owner.to_string(),
            WAITING_CHANNEL,
            notifier.clone(),
            |n| &n.waiting,
            Some(SPELL),
        ));
        let tasks = [sending, finishing, waiting];
        (notifier, tasks.iter().map(|t| t.abort_handle()).collect())
    }

    /// Tell the hosts that wait for them, at once, that this host's commit
    /// finished these instances: their waiters answer without waiting for
    /// a re-read.
    pub fn finished(&self, ids: impl IntoIterator<Item = String>) {
        let now = duro_core::model::now_millis();
        let all = now < self.others_wait_until.load(Ordering::Relaxed);
        let mut waited = self.waited_elsewhere.lock().expect("waited ids poisoned");
        if waited.is_empty() && !all {
            return;
        }
        let told: Vec<String> = (ids.into_iter())
            .filter(|id| waited.remove(id).is_some_and(|until| until > now) || all)
            .collect();
        drop(waited);
        self.finished.push(told);
    }

    /// Another host's waiters wait for `ids` (none: a host of an earlier
    /// version has waiters, and every finish is told for a while).
    pub fn others_wait(&self, ids: Vec<String>) {
        let now = duro_core::model::now_millis();
        let until = now + WAITER_HEARD_FOR.as_millis() as u64;
        if ids.is_empty() {
            self.others_wait_until.fetch_max(until, Ordering::Relaxed);
            return;
        }
        let mut waited = self.waited_elsewhere.lock().expect("waited ids poisoned");
        if waited.len() + ids.len() > MAX_WAITED_ELSEWHERE {
            waited.retain(|_, kept| *kept > now);
        }
        for id in ids {
            if waited.len() >= MAX_WAITED_ELSEWHERE {
                break;
            }
            waited.insert(id, until);
        }
    }

    /// A waiter here waits for `instance`, not finished when it looked:
    /// tell the others, so that the one whose commit finishes it says so.
    pub fn waiting(&self, instance: &str) {
        self.waiting.push([instance.to_string()]);
    }

    /// Tell other hosts, soon, that there is work of this kind.
    pub fn raise(&self, kind: WorkKind) {
        self.pending.fetch_or(bit(kind), Ordering::SeqCst);
        self.wake.notify_one();
    }
}

async fn send(pool: Pool, owner: String, notifier: Arc<Notifier>) {
    loop {
        notifier.wake.notified().await;
        let pending = notifier.pending.swap(0, Ordering::SeqCst);
        let statement: String = CHANNELS
            .iter()
            .filter(|(_, kind)| pending & bit(*kind) != 0)
            .map(|(channel, _)| format!("NOTIFY {channel}, '{owner}';"))
            .collect();
        if statement.is_empty() {
            continue;
        }
        let sent = match pool.get().await {
            Ok(client) => client
                .batch_execute(&statement)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            // Other hosts poll as a fallback; nothing is lost.
            tracing::debug!("cannot notify other hosts: {e}");
        }
        // Under load every commit raises a signal: one notification per
        // spell folds them, so that each other host wakes (and claims) at
        // most that often because of this one, not once per commit. The
        // first signal after a quiet spell goes at once.
        tokio::time::sleep(SPELL).await;
    }
}

/// Send the ids of `outbox` on `channel` as they come (after `spell`, if
/// any, since the last notification), each payload `owner` then ids, one
/// a line (an id has no control character), cut to fit.
async fn send_ids(
    pool: Pool,
    owner: String,
    channel: &'static str,
    notifier: Arc<Notifier>,
    outbox: fn(&Notifier) -> &Outbox,
    spell: Option<std::time::Duration>,
) {
    let outbox = outbox(&notifier);
    loop {
        outbox.ready.notified().await;
        let ids = std::mem::take(&mut *outbox.ids.lock().expect("outbox poisoned"));
        if ids.is_empty() {
            continue;
        }
        let mut payloads = Vec::new();
        let mut payload = owner.clone();
        for id in ids {
            if payload.len() + 1 + id.len() > MAX_PAYLOAD {
                payloads.push(std::mem::replace(&mut payload, owner.clone()));
            }
            payload.push('\n');
            payload.push_str(&id);
        }
        payloads.push(payload);
        let sent = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            for payload in &payloads {
                client
                    .execute("SELECT pg_notify($1, $2)", &[&channel, payload])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        };
        if let Err(e) = sent.await {
            // Waiters re-read as a fallback; nothing is lost.
            tracing::debug!("cannot tell other hosts on {channel}: {e}");
        }
        if let Some(spell) = spell {
            tokio::time::sleep(spell).await;
        }
    }
}

/// Least time between two notifications of a host: what bounds the
/// wake-ups it causes other hosts under load (each host steps the work its
/// own writes make; a notification only lets an idle one help).
const SPELL: std::time::Duration = std::time::Duration::from_millis(50);
