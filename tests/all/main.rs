//! End-to-end tests, one binary: real guests built from Rust, real SQLite
//! files, the real runtime.

mod orchestration;
mod support;
