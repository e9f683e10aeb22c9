//! An orchestration written directly against the 0.1.1 contract
//! (`host/wasm/wit/legacy-0.1.1`), as components built before 0.1.2 are: the host
//! must keep running it. `Legacy` waits for the event `Go` and completes with
//! its payload.

wit_bindgen::generate!({
    world: "orchestration",
    path: "../../host/wasm/wit/legacy-0.1.1",
});

use duro::workflow::orchestration_context as host;
use duro::workflow::types::{Completion, StepResult, TaskOutcome};

struct Legacy;

impl exports::duro::workflow::orchestrator::Guest for Legacy {
    fn step(delivery: Option<Completion>) -> StepResult {
        match delivery {
            None => {
                host::wait_for_external_event("Go");
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
