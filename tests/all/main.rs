//! End-to-end tests, one binary: real guests built from Rust, real SQLite
//! files, the real runtime, and a real `duro` process over real HTTP.

mod activities;
mod cli;
mod crash;
mod dashboard;
mod dfclient;
mod entities;
mod host;
mod http;
mod https;
mod openapi;
mod orchestration;
mod order;
mod patterns;
mod queries;
mod scaleout;
mod schedules;
mod security;
mod semantics;
mod simulation;
mod support;
mod telemetry;
mod torture;
mod variables;
mod versions;
