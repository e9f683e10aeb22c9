//! duro's core: the plain types of orchestration state (`model`) and the
//! contract every store backend implements (`store`). It knows neither
//! wasmtime nor any database, so the backends and the wasm runtime depend
//! on it and not on each other.

pub mod entity;
pub mod model;
pub mod schedule;
pub mod store;
pub mod tagged;
pub mod trace;
