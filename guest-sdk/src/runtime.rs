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
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use serde::Serialize;

use crate::OrchestrationContext;
use crate::bindings::duro::workflow::orchestration_context as host;
use crate::bindings::duro::workflow::types::{BatchResult, Completion, StepResult, TaskOutcome};
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
    outcomes: TaskMap<TaskOutcome>,
    /// The waker of each pending task's last poll: a delivery wakes it, so
    /// that combinators over many tasks poll only those that may be ready.
    wakers: TaskMap<Waker>,
    continue_as_new: Option<String>,
    /// Calls made so far that the host records in the history (scheduling
    /// calls, cancellations, continue-as-new): `step_many` stops after the
    /// completion whose run made one.
    recorded_calls: u64,
}

/// A map keyed by task id. Task ids are small sequential numbers chosen
/// by the host, never by an adversary, so SipHash's flood resistance buys
/// nothing; its cost was a third of a replayed completion's guest time.
type TaskMap<V> = HashMap<u32, V, BuildHasherDefault<TaskIdHasher>>;

/// Fibonacci hashing of a task id: one multiplication, which spreads
/// sequential ids over both the low bits (the bucket) and the high bits
/// (the control byte) of the hash.
#[derive(Default)]
struct TaskIdHasher(u64);

impl Hasher for TaskIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = (self.0 ^ u64::from(id)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
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

/// Count a call that the host records in the history.
pub(crate) fn note_recorded_call() {
    STATE.with(|s| s.borrow_mut().recorded_calls += 1);
}

fn recorded_calls() -> u64 {
    STATE.with(|s| s.borrow().recorded_calls)
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
        deliver(completion);
    }
    run(pick)
}

/// The body of the `orchestrator.step-many` export: each completion in
/// turn, as `step` would, stopping after one whose run made a recorded
/// call or ended the orchestration (the host checks those calls at that
/// point of the history).
pub fn step_many(
    deliveries: Vec<Completion>,
    pick: impl Fn(&str, OrchestrationContext) -> Option<BoxedOrchestration>,
) -> BatchResult {
    let mut consumed = 0;
    let mut state = StepResult::Pending;
    for completion in deliveries {
        let calls = recorded_calls();
        deliver(completion);
        consumed += 1;
        state = run(&pick);
        if !matches!(state, StepResult::Pending) || recorded_calls() != calls {
            break;
        }
    }
    BatchResult { consumed, state }
}

/// Hand a completion to its task and wake whoever polled it last.
fn deliver(completion: Completion) {
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

/// Run the orchestration (starting it with `pick` on the first step) until
/// it can go no further.
fn run(pick: impl FnOnce(&str, OrchestrationContext) -> Option<BoxedOrchestration>) -> StepResult {
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
