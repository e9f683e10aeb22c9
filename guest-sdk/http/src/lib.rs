//! # duro-http: HTTP triggers for duro, in Rust
//!
//! An HTTP trigger is a function from a [`Request`] to a [`Response`] that
//! may start and steer orchestrations through the [`DurableClient`]. The
//! host serves it on the routes of the app manifest; route parameters such
//! as `{input}` in `/api/start/{input}` arrive as [`Request::param`].
//!
//! ```no_run
//! use duro_http::{DurableClient, Request, Response};
//!
//! fn start(req: &Request, client: &DurableClient) -> Response {
//!     let input = req.param("input").unwrap_or_default();
//!     match client.start_new("Workflow", None, &input) {
//!         Ok(id) => Response::json(200, &serde_json::json!({ "id": id })),
//!         Err(e) => Response::error(&e),
//!     }
//! }
//!
//! duro_http::export_http_functions! {
//!     "Start" => start,
//! }
//! # fn main() {}
//! ```
//!
//! Build the crate as a `cdylib` for `wasm32-wasip2`. This crate lives apart
//! from `duro-sdk` so that a trigger component never carries the
//! orchestration world, and an orchestration never the client.
#![deny(missing_docs)]

mod client;
mod handler;

pub use client::{
    ClientError, DurableClient, EntityPage, EntityStatus, InstancePage, InstanceQuery,
    InstanceStatus, RuntimeStatus, rfc3339,
};
pub use handler::{Request, Response};

/// The value of the variable `name` (the manifest's `[variables]`), inside
/// an HTTP function whose manifest entry lists it in `variables`; `None`
/// for a variable it may not read or that has no value.
///
/// ```no_run
/// # fn f(_req: &duro_http::Request, _client: &duro_http::DurableClient) -> duro_http::Response {
/// let base = duro_http::variable("public_base").unwrap_or_else(|| "http://localhost".into());
/// duro_http::Response::text(200, &base)
/// # }
/// ```
pub fn variable(name: &str) -> Option<String> {
    bindings::wasi::config::store::get(name).ok().flatten()
}

/// Items used by the macros of this crate; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::handle;
}

/// The bindings generated from the WIT contract (`guest-sdk/wit/`).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "trigger",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_trigger_world",
        default_bindings_module: "duro_http::bindings",
        generate_all,
    });
}

/// Declare the HTTP functions of this component, by the names the manifest
/// gives them. Each is a `fn(&Request, &DurableClient) -> Response`.
///
/// ```no_run
/// # use duro_http::{DurableClient, Request, Response};
/// fn hello(_req: &Request, _client: &DurableClient) -> Response {
///     Response::text(200, "hello")
/// }
/// duro_http::export_http_functions! {
///     "Hello" => hello,
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_http_functions {
    ($($name:literal => $func:path),+ $(,)?) => {
        struct __DuroHttpFunctions;

        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for __DuroHttpFunctions {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::__private::handle(request, out, |function, req, client| match function {
                    $($name => ::core::option::Option::Some($func(req, client)),)+
                    _ => ::core::option::Option::None,
                })
            }
        }

        $crate::bindings::export_trigger_world!(__DuroHttpFunctions with_types_in $crate::bindings);
    };
}
