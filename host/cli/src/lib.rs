//! duro: a WebAssembly function host with durable orchestrations. This
//! crate is the program: the command line, the server, the management API
//! and the manifest. The rest lives in crates of its own under `host/`:
//! `duro-core` (model and store contract), `duro-store-sqlite` (the
//! embedded store), `duro-wasm` (engine, replay, runtime, triggers).

pub use duro_core::{model, schedule};
pub use duro_wasm::{
    activity, durable_http, engine, orchestrator, replay, runtime, tls, trace, trigger,
};

/// The store contract, and its backends.
pub mod store {
    pub use duro_core::store::*;
    pub use duro_store_sqlite as sqlite;
}

pub mod api;
pub mod cli;
pub mod dashboard;
pub mod database;
pub mod deploy;
pub mod entities_api;
pub mod entity_cli;
pub mod fill;
pub mod listen;
pub mod manifest;
pub mod openapi;
pub mod plane;
pub mod scaffold;
pub mod schedule_cli;
pub mod schedules_api;
pub mod server;
pub mod telemetry;
pub mod variables;
