//! The `orchestration` world as the host binds it: the current WIT, the
//! shape of 0.1.2 (no `step-many`) and that of 0.1.0/0.1.1 (whose
//! `task-outcome` had two cases), behind one `step` call, so that
//! components built against an older contract keep running.

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

/// The contract as 0.1.2 had it (`host/wasm/wit/legacy-0.1.2`): the same
/// types and `step`, without `step-many`.
mod v0_1_2 {
    wasmtime::component::bindgen!({
        world: "orchestration",
        path: "wit/legacy-0.1.2",
        imports: { default: trappable },
        with: { "duro:workflow/types": super::bindings::duro::workflow::types },
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

use bindings::duro::workflow::types::{BatchResult, Completion, StepResult, TaskOutcome};

/// An orchestration component, ready to instantiate.
pub enum Pre<T: 'static> {
    /// Built against the current WIT.
    Current(bindings::OrchestrationPre<T>),
    /// Built against 0.1.2.
    V0_1_2(v0_1_2::OrchestrationPre<T>),
    /// Built against 0.1.0 or 0.1.1.
    Legacy(legacy::OrchestrationPre<T>),
}

impl<T: 'static> Clone for Pre<T> {
    fn clone(&self) -> Self {
        match self {
            Pre::Current(pre) => Pre::Current(pre.clone()),
            Pre::V0_1_2(pre) => Pre::V0_1_2(pre.clone()),
            Pre::Legacy(pre) => Pre::Legacy(pre.clone()),
        }
    }
}

impl<T: Send + 'static> Pre<T> {
    /// Whichever contract the component exports. (Binding finds the export
    /// by a semver-compatible name and a missing function fails it; the
    /// types of `step` are only compared when it is called, so 0.1.1 is told
    /// by the number of cases of `task-outcome` in its signature.)
    pub fn new(instance_pre: InstancePre<T>, engine: &wasmtime::Engine) -> wasmtime::Result<Self> {
        let component = instance_pre.component();
        if outcome_cases(component, engine) == Some(2) {
            legacy::OrchestrationPre::new(instance_pre).map(Pre::Legacy)
        } else if orchestrator_export(component, engine, "step-many").is_none() {
            v0_1_2::OrchestrationPre::new(instance_pre).map(Pre::V0_1_2)
        } else {
            bindings::OrchestrationPre::new(instance_pre).map(Pre::Current)
        }
    }

    /// A fresh instance.
    pub fn instantiate(&self, store: impl AsContextMut<Data = T>) -> wasmtime::Result<Guest> {
        Ok(match self {
            Pre::Current(pre) => Guest::Current(pre.instantiate(store)?),
            Pre::V0_1_2(pre) => Guest::V0_1_2(pre.instantiate(store)?),
            Pre::Legacy(pre) => Guest::Legacy(pre.instantiate(store)?),
        })
    }
}

/// The type of the function `name` in the component's `orchestrator`
/// export, if it has one.
fn orchestrator_export(
    component: &Component,
    engine: &wasmtime::Engine,
    name: &str,
) -> Option<ComponentItem> {
    let ty = component.component_type();
    let (_, orchestrator) = ty
        .exports(engine)
        .find(|(export, _)| export.starts_with("duro:workflow/orchestrator@"))?;
    let ComponentItem::ComponentInstance(orchestrator) = orchestrator.ty else {
        return None;
    };
    orchestrator
        .get_export(engine, name)
        .map(|export| export.ty)
}

/// How many cases `task-outcome` has in the component's `orchestrator.step`
/// (its `delivery: option<completion>` parameter), if it exports one.
fn outcome_cases(component: &Component, engine: &wasmtime::Engine) -> Option<usize> {
    let step = orchestrator_export(component, engine, "step")?;
    let ComponentItem::ComponentFunc(step) = step else {
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
    /// Built against 0.1.2.
    V0_1_2(v0_1_2::Orchestration),
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
            Guest::V0_1_2(guest) => guest
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

    /// Call `orchestrator.step-many`; only for a component that has it
    /// (see [`Guest::steps_many`]).
    pub fn step_many<T: Send + 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
        deliveries: &[Completion],
    ) -> wasmtime::Result<BatchResult> {
        match self {
            Guest::Current(guest) => guest
                .duro_workflow_orchestrator()
                .call_step_many(store, deliveries),
            Guest::V0_1_2(_) | Guest::Legacy(_) => Err(wasmtime::Error::msg(
                "the component was built before step-many",
            )),
        }
    }

    /// Whether the component has `orchestrator.step-many` (built against
    /// 0.1.3 or later); else it is stepped one completion at a time.
    pub fn steps_many(&self) -> bool {
        matches!(self, Guest::Current(_))
    }
}
