//! An orchestration written directly against the 0.1.2 contract
//! (`host/wasm/wit/legacy-0.1.2`), as components built before 0.1.3 are:
//! they have no `step-many`, so the host must replay them one completion
//! per `step`. `Legacy012` joins two timers due at once (a run a newer
//! guest would take in one batch), then completes with the payload of `Go`.

use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({
    world: "orchestration",
    path: "../../host/wasm/wit/legacy-0.1.2",
});

use duro::workflow::orchestration_context as host;
use duro::workflow::types::{Completion, StepResult, TaskOutcome};

struct Legacy;

/// Timers fired so far in this instance.
static FIRED: AtomicU32 = AtomicU32::new(0);

impl exports::duro::workflow::orchestrator::Guest for Legacy {
    fn step(delivery: Option<Completion>) -> StepResult {
        match delivery {
            None => {
                let now = host::current_time();
                host::create_timer(now);
                host::create_timer(now);
                StepResult::Pending
            }
            Some(Completion {
                outcome: TaskOutcome::TimerFired,
                ..
            }) => {
                if FIRED.fetch_add(1, Ordering::Relaxed) + 1 == 2 {
                    host::wait_for_external_event("Go");
                }
                StepResult::Pending
            }
            Some(Completion {
                outcome: TaskOutcome::EventRaised(payload),
                ..
            }) => StepResult::Completed(payload),
            Some(_) => StepResult::Failed("unexpected completion".into()),
        }
    }
}

export!(Legacy);
