//! The guest half of the step protocol: keeps the orchestration's future alive
//! between `step` calls and hands each delivered completion to its task.
//!
//! A component instance runs one orchestration instance, single-threaded, so
//! the state lives in a thread-local. The host may keep an instance warm and
//! step it again, or replay the whole history into a fresh one: both look the
//! same from here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use serde::Serialize;

use crate::OrchestrationContext;
use crate::bindings::duro::workflow::orchestration_context as host;
use crate::bindings::duro::workflow::types::{Completion, StepResult, TaskOutcome};
use crate::error::{Error, Result};

/// An orchestration started and type-erased: it resolves to its JSON output.
pub type BoxedOrchestration = Pin<Box<dyn Future<Output = Result<String>>>>;

/// Erase an orchestration's output type by serializing it to JSON.
pub fn boxed<F, T>(orchestration: F) -> BoxedOrchestration
where
    F: Future<Output = Result<T>> + 'static,
    T: Serialize,
{
    Box::pin(async move {
        let output = orchestration.await?;
        serde_json::to_string(&output).map_err(Error::from)
    })
}

#[derive(Default)]
struct State {
    orchestration: Option<BoxedOrchestration>,
    outcomes: HashMap<u32, TaskOutcome>,
    /// The waker of each pending task's last poll: a delivery wakes it, so
    /// that combinators over many tasks poll only those that may be ready.
    wakers: HashMap<u32, Waker>,
    continue_as_new: Option<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

/// Take the outcome of `task` if it has been delivered.
pub(crate) fn take_outcome(task: u32) -> Option<TaskOutcome> {
    STATE.with(|s| s.borrow_mut().outcomes.remove(&task))
}

/// Remember who to wake when `task`'s completion is delivered.
pub(crate) fn register_waker(task: u32, waker: &Waker) {
    STATE.with(|s| {
        let mut state = s.borrow_mut();
        match state.wakers.get_mut(&task) {
            Some(known) if known.will_wake(waker) => {}
            Some(known) => known.clone_from(waker),
            None => {
                state.wakers.insert(task, waker.clone());
            }
        }
    });
}

/// Forget a task's waker (the task is finished or dropped).
pub(crate) fn forget_waker(task: u32) {
    STATE.with(|s| s.borrow_mut().wakers.remove(&task));
}

pub(crate) fn set_continue_as_new(input: String) {
    STATE.with(|s| s.borrow_mut().continue_as_new = Some(input));
}

/// The body of the `orchestrator.step` export.
///
/// `pick` maps the instance's orchestration name to a started orchestration;
/// it is only called on the first step.
pub fn step(
    delivery: Option<Completion>,
    pick: impl FnOnce(&str, OrchestrationContext) -> Option<BoxedOrchestration>,
) -> StepResult {
    if let Some(completion) = delivery {
        let waker = STATE.with(|s| {
            let mut state = s.borrow_mut();
            state.outcomes.insert(completion.task, completion.outcome);
            state.wakers.remove(&completion.task)
        });
        // Outside the borrow: waking runs combinators' bookkeeping.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
    // The future is taken out of the cell while it runs: it reads the cell
    // itself (task outcomes), and a borrow held across `poll` would panic.
    let taken = STATE.with(|s| s.borrow_mut().orchestration.take());
    let mut orchestration = match taken {
        Some(orchestration) => orchestration,
        None => {
            let name = host::orchestration_name();
            match pick(&name, OrchestrationContext::new()) {
                Some(orchestration) => orchestration,
                None => {
                    return StepResult::Failed(format!(
                        "this component has no orchestration named `{name}`"
                    ));
                }
            }
        }
    };
    let mut cx = Context::from_waker(Waker::noop());
    match orchestration.as_mut().poll(&mut cx) {
        Poll::Pending => {
            STATE.with(|s| s.borrow_mut().orchestration = Some(orchestration));
            StepResult::Pending
        }
        Poll::Ready(result) => {
            let continued = STATE.with(|s| s.borrow_mut().continue_as_new.take());
            match (result, continued) {
                (Ok(_), Some(input)) => StepResult::ContinuedAsNew(input),
                (Ok(output), None) => StepResult::Completed(output),
                (Err(error), _) => StepResult::Failed(error.to_string()),
            }
        }
    }
}
