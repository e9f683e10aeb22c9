//! Telling other hosts about new work and finished instances: `NOTIFY`
//! sent after commits, not inside them. PostgreSQL serialises the commits
//! of transactions that notify, WAL flush included, which capped a host at
//! one commit per disk flush; a notification on its own writes no WAL.
//! Signals raised while one is being sent are folded into the next.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use duro_core::store::WorkKind;

use crate::{CHANNELS, FINISHED_CHANNEL, WAITING_CHANNEL};

/// Pending notifications, one bit per channel, and the instances this
/// host's commits finished, not told yet.
#[derive(Default)]
pub struct Notifier {
    pending: AtomicU8,
    wake: tokio::sync::Notify,
    finished: Mutex<Vec<String>>,
    finishing: tokio::sync::Notify,
    /// Until when (ms since the epoch) another host has said it has
    /// waiters: only then are finished instances told, so that hosts whose
    /// clients poll (or a host alone) pay nothing for it.
    others_wait_until: AtomicU64,
    /// When this host last said it has waiters.
    said_waiting_at: AtomicU64,
}

/// The bit of `pending` that says this host has waiters.
const WAITING: u8 = 8;

/// How often a host with waiters says so, at most, and how long the others
/// tell it of finished instances after hearing it (a waiter that stays
/// longer than that, with no other beginning, is answered by its re-reads).
const SAY_WAITING_EVERY_MS: u64 = 1_000;
const TELL_WAITERS_FOR_MS: u64 = 5_000;

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
    /// Start sending on the current runtime: the notifier, and the task
    /// that sends (to stop with the store).
    /// Each notification carries `owner` (this host's name), so that the
    /// host's own listener can pass over what it sent.
    pub fn start(pool: Pool, owner: &str) -> (Arc<Notifier>, Vec<tokio::task::AbortHandle>) {
        let notifier = Arc::new(Notifier::default());
        let sending = tokio::spawn(send(pool.clone(), owner.to_string(), notifier.clone()));
        let finishing = tokio::spawn(send_finished(pool, owner.to_string(), notifier.clone()));
        (
            notifier,
            vec![sending.abort_handle(), finishing.abort_handle()],
        )
    }

    /// Tell other hosts, at once, that this host's commit finished these
    /// instances: their waiters answer without waiting for a re-read.
    pub fn finished(&self, ids: impl IntoIterator<Item = String>) {
        if duro_core::model::now_millis() >= self.others_wait_until.load(Ordering::Relaxed) {
            return;
        }
        let mut finished = self.finished.lock().expect("finished ids poisoned");
        let before = finished.len();
        finished.extend(ids);
        if finished.len() > before {
            self.finishing.notify_one();
        }
    }

    /// Another host said it has waiters: finished instances are told for
    /// a while.
    pub fn others_wait(&self) {
        let until = duro_core::model::now_millis() + TELL_WAITERS_FOR_MS;
        self.others_wait_until.fetch_max(until, Ordering::Relaxed);
    }

    /// A waiter began on this host: say so to the others (at most once a
    /// second), so that they tell it of the instances they finish.
    pub fn waiting(&self) {
        let now = duro_core::model::now_millis();
        let said = self.said_waiting_at.load(Ordering::Relaxed);
        if now.saturating_sub(said) >= SAY_WAITING_EVERY_MS
            && (self.said_waiting_at)
                .compare_exchange(said, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.pending.fetch_or(WAITING, Ordering::SeqCst);
            self.wake.notify_one();
        }
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
            .map(|(channel, _)| channel)
            .chain((pending & WAITING != 0).then_some(&WAITING_CHANNEL))
            .map(|channel| format!("NOTIFY {channel}, '{owner}';"))
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

/// Send the finished ids as they come (those that come while one is being
/// sent go together in the next), each payload `owner` then ids, one a
/// line (an id has no control character), cut to fit.
async fn send_finished(pool: Pool, owner: String, notifier: Arc<Notifier>) {
    loop {
        notifier.finishing.notified().await;
        let ids = std::mem::take(&mut *notifier.finished.lock().expect("finished ids poisoned"));
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
                    .execute("SELECT pg_notify($1, $2)", &[&FINISHED_CHANNEL, payload])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        };
        if let Err(e) = sent.await {
            // Waiters elsewhere re-read as a fallback; nothing is lost.
            tracing::debug!("cannot tell other hosts of finished instances: {e}");
        }
    }
}

/// Least time between two notifications of a host: what bounds the
/// wake-ups it causes other hosts under load (each host steps the work its
/// own writes make; a notification only lets an idle one help).
const SPELL: std::time::Duration = std::time::Duration::from_millis(50);
