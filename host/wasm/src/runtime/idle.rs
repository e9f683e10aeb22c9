//! Giving memory back while nothing happens: warm instances unused for the
//! idle period are dropped, and after a whole idle period without an
//! episode the store frees its caches ([`RuntimeConfig::idle_release`]).
//!
//! [`RuntimeConfig::idle_release`]: super::RuntimeConfig::idle_release

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Inner, blocking};

pub(super) async fn release_loop(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    let idle = inner.config.idle_release;
    if idle.is_zero() {
        return;
    }
    // A quarter of the period: an instance is dropped at most 25 % late.
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut episodes = inner.episodes_begun.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    let mut released = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stopped.changed() => return,
        }
        // Off the async threads: tearing a store down resets its memory,
        // and closing a connection is a system call or two.
        let held = inner.clone();
        let dropped = blocking(move || held.replayer.release_idle(idle)).await;
        if dropped > 0 {
            tracing::debug!("dropped {dropped} warm instances idle for {idle:?}");
        }
        let now = inner.episodes_begun.load(Ordering::Relaxed);
        if now != episodes {
            (episodes, quiet_since, released) = (now, Instant::now(), false);
        } else if !released && quiet_since.elapsed() >= idle {
            // Once per quiet spell: under a trickle of reads the caches
            // refill and stay until the next one.
            released = true;
            let store = inner.store.clone();
            blocking(move || store.release_memory()).await;
            inner.metrics.memory_releases.inc();
            tracing::debug!("no episode for {idle:?}: the store's caches were freed");
        }
    }
}
