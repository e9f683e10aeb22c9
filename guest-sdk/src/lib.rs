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

mod combinators;
mod context;
mod error;
mod runtime;

pub use combinators::{Either, join, select, when_all, when_any};
pub use context::{OrchestrationContext, Task};
pub use error::{Error, Result};

/// Items used by the macros of this crate; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::{BoxedOrchestration, boxed, step};
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
                $crate::__private::step(delivery, |name, ctx| match name {
                    $($name => ::core::option::Option::Some($crate::__private::boxed($func(ctx))),)+
                    _ => ::core::option::Option::None,
                })
            }
        }

        $crate::bindings::export_orchestration_world!(__DuroOrchestrations with_types_in $crate::bindings);
    };
}
