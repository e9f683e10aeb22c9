//! Telling other hosts about new work: `NOTIFY` sent after commits, not
//! inside them. PostgreSQL serialises the commits of transactions that
//! notify, WAL flush included, which capped a host at one commit per disk
//! flush; a notification on its own writes no WAL. Signals raised while one
//! is being sent are folded into the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use deadpool_postgres::Pool;
use duro_core::store::WorkKind;

use crate::CHANNELS;

/// Pending notifications, one bit per channel.
#[derive(Default)]
pub struct Notifier {
    pending: AtomicU8,
    wake: tokio::sync::Notify,
}

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
    pub fn start(pool: Pool, owner: &str) -> (Arc<Notifier>, tokio::task::AbortHandle) {
        let notifier = Arc::new(Notifier::default());
        let sending = tokio::spawn(send(pool, owner.to_string(), notifier.clone())).abort_handle();
        (notifier, sending)
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

/// Least time between two notifications of a host: what bounds the
/// wake-ups it causes other hosts under load (each host steps the work its
/// own writes make; a notification only lets an idle one help).
const SPELL: std::time::Duration = std::time::Duration::from_millis(50);
