//! Paths of the guest components built by `build.rs`, and helpers shared by
//! the end-to-end tests in `all/`.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The bytes of a built guest.
pub fn guest_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Write the scenario manifest (pointing at the guests the build made, plus
/// `extra` TOML) into `dir`; returns its path.
pub fn scenario_manifest(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[[orchestration]]
name = "Workflow"
component = {SCENARIO:?}

[[orchestration]]
name = "WorkflowWithTimeout"
component = {SCENARIO:?}

[[http]]
name = "Start"
route = "/api/start/{{input}}"
component = {SCENARIO_HTTP:?}

[[http]]
name = "Check"
route = "/api/check/{{input}}"
component = {SCENARIO_HTTP:?}

[[http]]
name = "Stop"
route = "/api/stop/{{input}}"
component = {SCENARIO_HTTP:?}
{extra}
"#
    );
    let path = dir.join("duro.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The value after `--name` on a benchmark's command line, or `default`.
pub fn bench_arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
