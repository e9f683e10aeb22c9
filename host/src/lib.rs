//! duro: a WebAssembly function host with durable orchestrations.
//!
//! Dependencies point one way: `model` (plain types) ← `store` (persistence)
//! ← `replay` (wasm replay, no I/O) ← `runtime` (workers, timers, the public
//! API). `model` knows neither wasmtime nor SQLite.

pub mod activity;
pub mod api;
pub mod cli;
pub mod durable_http;
pub mod engine;
pub mod fill;
pub mod manifest;
pub mod model;
pub mod orchestrator;
pub mod replay;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod trigger;
