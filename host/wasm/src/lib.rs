//! duro's wasm side: compiling components (`engine`), replaying an
//! orchestration from its history (`replay`, `orchestrator`), the workers
//! that claim and commit episodes and run activities (`runtime`), and HTTP
//! triggers (`trigger`). It runs over any store implementing
//! `duro_core::store::Store`, handed to `Runtime::start`.
//!
//! Dependencies point one way: `model` (plain types) ← `store` (the
//! contract) ← `replay` (wasm replay, no I/O) ← `runtime` (workers, timers,
//! the public API).

pub use duro_core::{entity, model, schedule, store};

pub mod activity;
pub mod durable_http;
pub mod engine;
pub mod entity_host;
pub mod metrics;
pub mod orchestrator;
pub mod replay;
pub mod runtime;
pub mod stall;
pub mod tls;
pub mod trace;
pub mod trigger;
