//! Builds the guest components the tests run (the example workflows and the
//! test-only guests) for wasm32-wasip2, once, into a target dir of their own,
//! and writes their paths to `$OUT_DIR/guests.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[(&str, &str)] = &[
    ("SCENARIO", "scenario"),
    ("SCENARIO_HTTP", "scenario-http"),
    ("TEST_GUESTS", "test-guests"),
    ("TEST_GUESTS_HTTP", "test-guests-http"),
    ("TEST_ACTIVITIES", "test-activities"),
    ("TEST_ENTITIES", "test-entities"),
    ("TEST_LEGACY", "test-legacy"),
    ("TEST_LEGACY_0_1_2", "test-legacy-0-1-2"),
    ("CHAINING_ORCHESTRATION", "chaining-orchestration"),
    ("CHAINING_ACTIVITIES", "chaining-activities"),
    ("CHAINING_HTTP", "chaining-http"),
    (
        "FAN_OUT_FAN_IN_ORCHESTRATION",
        "fan-out-fan-in-orchestration",
    ),
    ("FAN_OUT_FAN_IN_ACTIVITIES", "fan-out-fan-in-activities"),
    ("FAN_OUT_FAN_IN_HTTP", "fan-out-fan-in-http"),
    (
        "ASYNC_HTTP_API_ORCHESTRATION",
        "async-http-api-orchestration",
    ),
    ("ASYNC_HTTP_API_ACTIVITIES", "async-http-api-activities"),
    ("ASYNC_HTTP_API_HTTP", "async-http-api-http"),
    ("MONITOR_ORCHESTRATION", "monitor-orchestration"),
    ("MONITOR_ACTIVITIES", "monitor-activities"),
    ("MONITOR_HTTP", "monitor-http"),
    (
        "HUMAN_INTERACTION_ORCHESTRATION",
        "human-interaction-orchestration",
    ),
    (
        "HUMAN_INTERACTION_ACTIVITIES",
        "human-interaction-activities",
    ),
    ("HUMAN_INTERACTION_HTTP", "human-interaction-http"),
    ("ORDER_ORCHESTRATION", "order-orchestration"),
    ("ORDER_ACTIVITIES", "order-activities"),
    ("ORDER_HTTP", "order-http"),
];

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    for dir in [
        ".cargo",
        "guest-sdk",
        "workflows",
        "tests/guests",
        "tests/guests-http",
        "tests/guests-activities",
        "tests/guests-entities",
        "tests/guests-legacy",
        "tests/guests-legacy-0.1.2",
        "host/wasm/wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // A target dir apart from the outer build's, which cargo keeps locked.
    let target_dir = out.join("guest-target");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS");
    for (_, package) in GUESTS {
        cmd.args(["-p", package]);
    }
    let status = cmd.status().expect("running cargo to build the guests");
    assert!(
        status.success(),
        "building the guests failed; is the wasm32-wasip2 target installed? \
         (rustup target add wasm32-wasip2)"
    );
    let mut code = String::new();
    for (constant, package) in GUESTS {
        let file = wasm_path(&target_dir, package);
        assert!(file.exists(), "{} was not built", file.display());
        code.push_str(&format!(
            "/// The `{package}` guest component.\npub const {constant}: &str = {:?};\n",
            file.display().to_string()
        ));
    }
    code.push_str(&format!(
        "/// Where the build put every guest component (`<crate>.wasm`).\npub const GUEST_DIR: &str = {:?};\n",
        wasm_path(&target_dir, "any").parent().unwrap().display().to_string()
    ));
    code.push_str(&format!(
        "/// Compiled-code cache shared by the tests.\npub const COMPILE_CACHE: &str = {:?};\n",
        out.join("compile-cache").display().to_string()
    ));
    std::fs::write(out.join("guests.rs"), code).unwrap();
}

fn wasm_path(target_dir: &Path, package: &str) -> PathBuf {
    target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")))
}
