//! duro: a WebAssembly function host with durable orchestrations.
//!
//! Dependencies point one way: `model` (plain types) ← `store` (persistence)
//! ← `replay` (wasm replay, no I/O) ← `runtime` (workers, timers, the public
//! API). `model` knows neither wasmtime nor SQLite.

pub mod engine;
pub mod model;
pub mod replay;
pub mod runtime;
pub mod store;
