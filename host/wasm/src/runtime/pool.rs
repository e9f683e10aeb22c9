//! The episode threads: a fixed set of OS threads taking jobs (claimed
//! instances) from one queue, so a slow guest holds one thread and every
//! other claimed instance goes to the others.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::Notify;

/// What the threads share; `J` is a job (an instance to run an episode of).
pub(super) struct EpisodePool<J> {
    state: Mutex<State<J>>,
    /// Signalled when instances are queued, or on stop.
    ready: Condvar,
    /// Signalled when a thread finishes an instance: room to claim more.
    pub(super) room: Notify,
}

struct State<J> {
    queue: VecDeque<J>,
    /// Instances a thread is running.
    running: usize,
    stopped: bool,
}

impl<J: Send + 'static> EpisodePool<J> {
    /// Start `threads` threads, each running `episode` on the jobs it takes
    /// from the queue until the pool stops.
    pub(super) fn start(
        threads: usize,
        episode: impl Fn(J) + Send + Sync + 'static,
    ) -> std::io::Result<Arc<EpisodePool<J>>> {
        let pool = Arc::new(EpisodePool {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: 0,
                stopped: false,
            }),
            ready: Condvar::new(),
            room: Notify::new(),
        });
        let episode = Arc::new(episode);
        for n in 0..threads.max(1) {
            let (pool, episode) = (pool.clone(), episode.clone());
            std::thread::Builder::new()
                .name(format!("duro-episode-{n}"))
                .spawn(move || {
                    while let Some(job) = pool.take() {
                        // `episode` handles its own panics (giving the
                        // lease back); this one keeps the thread and the
                        // count right should anything else unwind.
                        let ran =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| episode(job)));
                        if let Err(panic) = ran {
                            tracing::error!(
                                "an episode thread caught a panic: {}",
                                super::worker::panic_message(&*panic)
                            );
                        }
                        pool.state.lock().expect("episode pool poisoned").running -= 1;
                        pool.room.notify_one();
                    }
                })?;
        }
        Ok(pool)
    }

    /// The next queued job, waiting for one; none once stopped.
    fn take(&self) -> Option<J> {
        let mut state = self.state.lock().expect("episode pool poisoned");
        loop {
            if state.stopped {
                return None;
            }
            if let Some(job) = state.queue.pop_front() {
                state.running += 1;
                return Some(job);
            }
            state = self.ready.wait(state).expect("episode pool poisoned");
        }
    }

    /// Queue one job if the queue has room below `limit` (jobs queued or
    /// running) and the pool has not stopped; the job back if it was not
    /// queued.
    pub(super) fn offer(&self, job: J, limit: usize) -> Result<(), J> {
        let mut state = self.state.lock().expect("episode pool poisoned");
        if state.stopped || state.queue.len() + state.running >= limit {
            return Err(job);
        }
        state.queue.push_back(job);
        self.ready.notify_one();
        Ok(())
    }

    /// Queue jobs for the threads.
    pub(super) fn push(&self, jobs: impl IntoIterator<Item = J>) {
        let mut state = self.state.lock().expect("episode pool poisoned");
        for job in jobs {
            state.queue.push_back(job);
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
        let mut state = self.state.lock().expect("episode pool poisoned");
        state.stopped = true;
        // Dropped, outside the lock: a job may carry a message, which it
        // hands back to its sender when dropped.
        let left: Vec<J> = state.queue.drain(..).collect();
        drop(state);
        self.ready.notify_all();
        drop(left);
    }
}

/// Stops the pool when dropped: the work loop holds it, and a runtime that
/// is dropped aborts its work loop rather than letting it return.
pub(super) struct StopOnDrop<J: Send + 'static>(pub(super) Arc<EpisodePool<J>>);

impl<J: Send + 'static> Drop for StopOnDrop<J> {
    fn drop(&mut self) {
        self.0.stop();
    }
}
