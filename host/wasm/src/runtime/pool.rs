//! The episode threads: a fixed set of OS threads taking claimed instances
//! from one queue, so a slow guest holds one thread and every other claimed
//! instance goes to the others.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::Notify;

/// What the threads share.
pub(super) struct EpisodePool {
    state: Mutex<State>,
    /// Signalled when instances are queued, or on stop.
    ready: Condvar,
    /// Signalled when a thread finishes an instance: room to claim more.
    pub(super) room: Notify,
}

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    /// Instances a thread is running.
    running: usize,
    stopped: bool,
}

impl EpisodePool {
    /// Start `threads` threads, each running `episode` on the instances it
    /// takes from the queue until the pool stops.
    pub(super) fn start(
        threads: usize,
        episode: impl Fn(String) + Send + Sync + 'static,
    ) -> std::io::Result<Arc<EpisodePool>> {
        let pool = Arc::new(EpisodePool {
            state: Mutex::default(),
            ready: Condvar::new(),
            room: Notify::new(),
        });
        let episode = Arc::new(episode);
        for n in 0..threads.max(1) {
            let (pool, episode) = (pool.clone(), episode.clone());
            std::thread::Builder::new()
                .name(format!("duro-episode-{n}"))
                .spawn(move || {
                    while let Some(id) = pool.take() {
                        episode(id);
                        pool.state.lock().expect("episode pool poisoned").running -= 1;
                        pool.room.notify_one();
                    }
                })?;
        }
        Ok(pool)
    }

    /// The next queued instance, waiting for one; none once stopped.
    fn take(&self) -> Option<String> {
        let mut state = self.state.lock().expect("episode pool poisoned");
        loop {
            if state.stopped {
                return None;
            }
            if let Some(id) = state.queue.pop_front() {
                state.running += 1;
                return Some(id);
            }
            state = self.ready.wait(state).expect("episode pool poisoned");
        }
    }

    /// Queue one leased instance if the queue has room below `limit`
    /// (instances queued or running) and the pool has not stopped; false
    /// if it was not queued.
    pub(super) fn offer(&self, id: String, limit: usize) -> bool {
        let mut state = self.state.lock().expect("episode pool poisoned");
        if state.stopped || state.queue.len() + state.running >= limit {
            return false;
        }
        state.queue.push_back(id);
        self.ready.notify_one();
        true
    }

    /// Queue claimed instances for the threads.
    pub(super) fn push(&self, ids: Vec<String>) {
        let mut state = self.state.lock().expect("episode pool poisoned");
        for id in ids {
            state.queue.push_back(id);
            self.ready.notify_one();
        }
    }

    /// Instances queued or running.
    pub(super) fn backlog(&self) -> usize {
        let state = self.state.lock().expect("episode pool poisoned");
        state.queue.len() + state.running
    }

    /// Let the threads end once they finish what they run; queued instances
    /// are left (their leases die with the runtime).
    pub(super) fn stop(&self) {
        self.state.lock().expect("episode pool poisoned").stopped = true;
        self.ready.notify_all();
    }
}

/// Stops the pool when dropped: the work loop holds it, and a runtime that
/// is dropped aborts its work loop rather than letting it return.
pub(super) struct StopOnDrop(pub(super) Arc<EpisodePool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}
