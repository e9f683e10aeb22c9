//! # duro-sdk: write durable orchestrations in Rust
//!
//! An orchestration is an `async fn` that takes an [`OrchestrationContext`]
//! and returns a `Result` of something serializable. It waits on durable
//! tasks (external events, timers) that the duro host records in the
//! instance's history; the host replays that history to rebuild the
//! orchestration's state, so the function must be deterministic: it sees
//! time, randomness and input only through the context.
//!
//! ```no_run
//! use duro_sdk::{OrchestrationContext, Result};
//!
//! async fn greet(ctx: OrchestrationContext) -> Result<String> {
//!     let name: String = ctx.input()?;
//!     ctx.log(&format!("waiting for approval of {name}"));
//!     let approved: bool = ctx.wait_for_external_event("Approve").await?;
//!     Ok(if approved { format!("hello {name}") } else { "denied".into() })
//! }
//!
//! duro_sdk::export_orchestrations! {
//!     "Greet" => greet,
//! }
//! # fn main() {}
//! ```
//!
//! Build the crate as a `cdylib` for `wasm32-wasip2` and name the resulting
//! `.wasm` in the app manifest.
//!
//! This crate depends only on `wit-bindgen` and serde: it runs inside the
//! guest and must not pull in anything that reaches for the outside world.
#![deny(missing_docs)]

mod activity;
mod combinators;
mod context;
mod durable_http;
mod entity;
mod error;
mod runtime;

pub use activity::{ActivityInfo, activity_info, variable};
pub use combinators::{Either, join, select, when_all, when_any};
pub use context::{OrchestrationContext, RetryPolicy, Task};
pub use durable_http::{HttpRequest, HttpResponse};
pub use entity::{CriticalSection, EntityContext, EntityId};
pub use error::{Error, Result};

/// Items used by the macros of this crate; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::activity::run_activity;
    pub use crate::entity::{delete_operation, run_operation};
    pub use crate::runtime::{BoxedOrchestration, boxed, step, step_many};
    pub use serde_json;
}

/// The bindings generated from the WIT contract (`guest-sdk/wit/`).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "orchestration",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_orchestration_world",
        default_bindings_module: "duro_sdk::bindings",
    });
}

/// The bindings of the `activity` world (`guest-sdk/wit/activity.wit`).
#[doc(hidden)]
pub mod activity_bindings {
    wit_bindgen::generate!({
        world: "activity",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_activity_world",
        default_bindings_module: "duro_sdk::activity_bindings",
        with: { "wasi:config/store@0.2.0-rc.1": generate },
    });
}

/// The bindings of the `entity` world (`guest-sdk/wit/entity.wit`).
#[doc(hidden)]
pub mod entity_bindings {
    wit_bindgen::generate!({
        world: "entity",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_entity_world",
        default_bindings_module: "duro_sdk::entity_bindings",
    });
}

/// Declare the entities of this component: for each entity name, the type
/// of its state (`Serialize + DeserializeOwned + Default`) and its
/// operations, each a `fn(&mut EntityContext<S>, I) -> Result<O>`, `I`
/// deserialized from the operation's input and `O` serialized as its
/// output. An `Err` fails the operation: its state change and signals are
/// dropped, and a caller gets the error. An entity that defines no
/// `delete` operation gets one that deletes its state.
///
/// Operations on one entity run one at a time. Like orchestrations,
/// entities run sandboxed: their clock reads the episode's time and they
/// reach nothing outside; they act through signals and orchestration
/// starts. Build them into a component of their own.
///
/// ```ignore
/// use duro_sdk::{EntityContext, Result};
///
/// fn add(ctx: &mut EntityContext<i64>, amount: i64) -> Result<i64> {
///     *ctx.state_mut() += amount;
///     Ok(*ctx.state())
/// }
///
/// fn get(ctx: &mut EntityContext<i64>, _: ()) -> Result<i64> {
///     Ok(*ctx.state())
/// }
///
/// duro_sdk::export_entities! {
///     "Counter": i64 => { "add" => add, "get" => get },
/// }
/// ```
#[macro_export]
macro_rules! export_entities {
    ($($entity:literal : $state:ty => { $($op:literal => $func:path),+ $(,)? }),+ $(,)?) => {
        struct __DuroEntities;

        impl $crate::entity_bindings::exports::duro::workflow::operations::Guest for __DuroEntities {
            fn run(
                name: ::std::string::String,
                key: ::std::string::String,
                operation: ::std::string::String,
                input: ::std::string::String,
                state: ::core::option::Option<::std::string::String>,
            ) -> ::core::result::Result<
                $crate::entity_bindings::exports::duro::workflow::operations::OperationResult,
                ::std::string::String,
            > {
                let id = $crate::EntityId::new(&name, &key);
                $(
                    if id.name == $entity.to_lowercase() {
                        return match operation.as_str() {
                            $($op => $crate::__private::run_operation::<$state, _, _>(id, state, &input, $func),)+
                            "delete" => ::core::result::Result::Ok($crate::__private::delete_operation()),
                            other => ::core::result::Result::Err(::std::format!(
                                "entity `{}` has no operation `{other}`", id.name
                            )),
                        };
                    }
                )+
                ::core::result::Result::Err(::std::format!(
                    "this component has no entity named `{}`", id.name
                ))
            }
        }

        $crate::entity_bindings::export_entity_world!(__DuroEntities with_types_in $crate::entity_bindings);
    };
}

/// Declare the activities of this component, by the names orchestrations
/// call them with. Each is a `fn(I) -> Result<O>`, `I` deserialized from the
/// call's input and `O` serialized as its output; an `Err` fails the attempt
/// with its message (retried if the call asked for it).
///
/// Activities are ordinary code: they may read clocks, use randomness and
/// take their time (within the host's activity budget). They run at least
/// once per call, so make them idempotent. Build them into a component of
/// their own: an activity component is not an orchestration component.
///
/// ```ignore
/// fn add(numbers: Vec<i64>) -> duro_sdk::Result<i64> {
///     Ok(numbers.iter().sum())
/// }
///
/// duro_sdk::export_activities! {
///     "Add" => add,
/// }
/// ```
#[macro_export]
macro_rules! export_activities {
    ($($name:literal => $func:path),+ $(,)?) => {
        struct __DuroActivities;

        impl $crate::activity_bindings::exports::duro::workflow::activities::Guest for __DuroActivities {
            fn run(
                name: ::std::string::String,
                input: ::std::string::String,
                info: $crate::activity_bindings::exports::duro::workflow::activities::ActivityInfo,
            ) -> ::core::result::Result<::std::string::String, ::std::string::String> {
                let info = $crate::ActivityInfo {
                    instance_id: info.instance_id,
                    task: info.task,
                    attempt: info.attempt,
                };
                match name.as_str() {
                    $($name => $crate::__private::run_activity(info, &input, $func),)+
                    other => ::core::result::Result::Err(::std::format!(
                        "this component has no activity named `{other}`"
                    )),
                }
            }
        }

        $crate::activity_bindings::export_activity_world!(__DuroActivities with_types_in $crate::activity_bindings);
    };
}

/// Declare the orchestrations of this component, by name.
///
/// Each entry maps the name clients start it with to an
/// `async fn(OrchestrationContext) -> Result<T>` where `T: Serialize`.
///
/// ```no_run
/// # use duro_sdk::{OrchestrationContext, Result};
/// async fn one(_ctx: OrchestrationContext) -> Result<u32> { Ok(1) }
/// async fn two(_ctx: OrchestrationContext) -> Result<u32> { Ok(2) }
/// duro_sdk::export_orchestrations! {
///     "One" => one,
///     "Two" => two,
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_orchestrations {
    ($($name:literal => $func:path),+ $(,)?) => {
        struct __DuroOrchestrations;

        impl $crate::bindings::exports::duro::workflow::orchestrator::Guest for __DuroOrchestrations {
            fn step(
                delivery: ::core::option::Option<$crate::bindings::duro::workflow::types::Completion>,
            ) -> $crate::bindings::duro::workflow::types::StepResult {
                $crate::__private::step(delivery, __duro_pick)
            }

            fn step_many(
                deliveries: ::std::vec::Vec<$crate::bindings::duro::workflow::types::Completion>,
            ) -> $crate::bindings::duro::workflow::types::BatchResult {
                $crate::__private::step_many(deliveries, __duro_pick)
            }
        }

        fn __duro_pick(
            name: &str,
            ctx: $crate::OrchestrationContext,
        ) -> ::core::option::Option<$crate::__private::BoxedOrchestration> {
            match name {
                $($name => ::core::option::Option::Some($crate::__private::boxed($func(ctx))),)+
                _ => ::core::option::Option::None,
            }
        }

        $crate::bindings::export_orchestration_world!(__DuroOrchestrations with_types_in $crate::bindings);
    };
}
