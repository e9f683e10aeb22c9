//! The `orchestration` world as the host binds it: the current WIT, and the
//! shape of 0.1.0/0.1.1 (whose `task-outcome` had two cases), behind one
//! `step` call, so that components built before 0.1.2 keep running.

use wasmtime::AsContextMut;
use wasmtime::component::InstancePre;

/// The current contract (`guest-sdk/wit`).
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "orchestration",
        path: "../guest-sdk/wit",
        imports: { default: trappable },
    });
}

/// The contract as 0.1.1 had it (`host/wit/legacy-0.1.1`): only its
/// `orchestrator` export is used; its imports are a subset of the current
/// ones, which wasmtime links semver-compatibly.
mod legacy {
    wasmtime::component::bindgen!({
        world: "orchestration",
        path: "wit/legacy-0.1.1",
        imports: { default: trappable },
    });
}

use bindings::duro::workflow::types::{Completion, StepResult, TaskOutcome};

/// An orchestration component, ready to instantiate.
pub enum Pre<T: 'static> {
    /// Built against the current WIT.
    Current(bindings::OrchestrationPre<T>),
    /// Built against 0.1.0 or 0.1.1.
    Legacy(legacy::OrchestrationPre<T>),
}

impl<T: 'static> Clone for Pre<T> {
    fn clone(&self) -> Self {
        match self {
            Pre::Current(pre) => Pre::Current(pre.clone()),
            Pre::Legacy(pre) => Pre::Legacy(pre.clone()),
        }
    }
}

impl<T: Send + 'static> Pre<T> {
    /// Whichever contract the component exports; the current one's error if
    /// neither fits.
    pub fn new(instance_pre: InstancePre<T>) -> wasmtime::Result<Self> {
        match bindings::OrchestrationPre::new(instance_pre.clone()) {
            Ok(pre) => Ok(Pre::Current(pre)),
            Err(current) => legacy::OrchestrationPre::new(instance_pre)
                .map(Pre::Legacy)
                .map_err(|_| current),
        }
    }

    /// A fresh instance.
    pub fn instantiate(&self, store: impl AsContextMut<Data = T>) -> wasmtime::Result<Guest> {
        Ok(match self {
            Pre::Current(pre) => Guest::Current(pre.instantiate(store)?),
            Pre::Legacy(pre) => Guest::Legacy(pre.instantiate(store)?),
        })
    }
}

/// An instantiated orchestration component.
pub enum Guest {
    /// Built against the current WIT.
    Current(bindings::Orchestration),
    /// Built against 0.1.0 or 0.1.1.
    Legacy(legacy::Orchestration),
}

impl Guest {
    /// Call `orchestrator.step`.
    pub fn step<T: Send + 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
        delivery: Option<&Completion>,
    ) -> wasmtime::Result<StepResult> {
        match self {
            Guest::Current(guest) => guest
                .duro_workflow_orchestrator()
                .call_step(store, delivery),
            Guest::Legacy(guest) => {
                use legacy::duro::workflow::types as old;
                let delivery = match delivery {
                    None => None,
                    Some(completion) => Some(old::Completion {
                        task: completion.task,
                        outcome: match &completion.outcome {
                            TaskOutcome::EventRaised(payload) => {
                                old::TaskOutcome::EventRaised(payload.clone())
                            }
                            TaskOutcome::TimerFired => old::TaskOutcome::TimerFired,
                            // Such a guest cannot have called an activity.
                            TaskOutcome::ActivityCompleted(_) | TaskOutcome::ActivityFailed(_) => {
                                return Err(wasmtime::Error::msg(
                                    "an activity result for a component built before activities",
                                ));
                            }
                        },
                    }),
                };
                Ok(
                    match guest
                        .duro_workflow_orchestrator()
                        .call_step(store, delivery.as_ref())?
                    {
                        old::StepResult::Pending => StepResult::Pending,
                        old::StepResult::Completed(output) => StepResult::Completed(output),
                        old::StepResult::Failed(error) => StepResult::Failed(error),
                        old::StepResult::ContinuedAsNew(input) => StepResult::ContinuedAsNew(input),
                    },
                )
            }
        }
    }
}
