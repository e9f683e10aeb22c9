//! The `orchestration` world as the host binds it: the current WIT, and the
//! shape of 0.1.0/0.1.1 (whose `task-outcome` had two cases), behind one
//! `step` call, so that components built before 0.1.2 keep running.

use wasmtime::AsContextMut;
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, InstancePre};

/// The current contract (`guest-sdk/wit`).
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "orchestration",
        path: "../../guest-sdk/wit",
        imports: { default: trappable },
    });
}

/// The contract as 0.1.1 had it (`host/wasm/wit/legacy-0.1.1`): only its
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
    /// Whichever contract the component exports. (Binding finds the export
    /// by a semver-compatible name; the types of `step` are only compared
    /// when it is called, so the contract is told by the number of cases of
    /// `task-outcome` in its signature.)
    pub fn new(instance_pre: InstancePre<T>, engine: &wasmtime::Engine) -> wasmtime::Result<Self> {
        if outcome_cases(instance_pre.component(), engine) == Some(2) {
            legacy::OrchestrationPre::new(instance_pre).map(Pre::Legacy)
        } else {
            bindings::OrchestrationPre::new(instance_pre).map(Pre::Current)
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

/// How many cases `task-outcome` has in the component's `orchestrator.step`
/// (its `delivery: option<completion>` parameter), if it exports one.
fn outcome_cases(component: &Component, engine: &wasmtime::Engine) -> Option<usize> {
    let ty = component.component_type();
    let (_, orchestrator) = ty
        .exports(engine)
        .find(|(name, _)| name.starts_with("duro:workflow/orchestrator@"))?;
    let ComponentItem::ComponentInstance(orchestrator) = orchestrator.ty else {
        return None;
    };
    let step = orchestrator.get_export(engine, "step")?;
    let ComponentItem::ComponentFunc(step) = step.ty else {
        return None;
    };
    let (_, delivery) = step.params().next()?;
    let Type::Option(completion) = delivery else {
        return None;
    };
    let Type::Record(completion) = completion.ty() else {
        return None;
    };
    let outcome = completion.fields().find(|f| f.name == "outcome")?;
    match outcome.ty {
        Type::Variant(variant) => Some(variant.cases().len()),
        _ => None,
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
                            // Such a guest cannot have called an activity
                            // or a sub-orchestration.
                            _ => {
                                return Err(wasmtime::Error::msg(
                                    "a completion of a kind the component was built before",
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
