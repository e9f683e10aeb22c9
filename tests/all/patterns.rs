//! The Durable Functions application patterns of `workflows/patterns`, each
//! driven over HTTP against a real `duro serve` running that app's manifest
//! (its component paths pointed at the components the build made).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::host::{Host, Reply};

/// `workflows/patterns/duro.toml`, with its components where the build put them.
fn serve_patterns(dir: &std::path::Path) -> Host {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("workflows/patterns/duro.toml")).unwrap();
    let text = text
        .replace(
            "\"components/patterns_orchestrations.wasm\"",
            &format!("{:?}", duro_tests::PATTERNS_ORCHESTRATIONS),
        )
        .replace(
            "\"components/patterns_activities.wasm\"",
            &format!("{:?}", duro_tests::PATTERNS_ACTIVITIES),
        )
        .replace(
            "\"components/patterns_http.wasm\"",
            &format!("{:?}", duro_tests::PATTERNS_HTTP),
        );
    let manifest = dir.join("duro.toml");
    std::fs::write(&manifest, text).unwrap();
    Host::start_with(&manifest, &dir.join("duro.db"), &[])
}

/// Start `orchestration` through the app's `Start` function and follow its
/// `Location` until the instance has finished, as an async HTTP API client
/// would; returns the final status reply.
fn run_async(host: &Host, orchestration: &str, input: Value) -> Reply {
    let started = host.post(&format!("/api/start/{orchestration}"), &input.to_string());
    assert_eq!(started.status, 202, "{}", started.body);
    let location = started.header("location").unwrap().to_string();
    host.poll(&location, |r| r.status == 200)
}

#[test]
fn function_chaining_fan_out_and_the_async_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let host = serve_patterns(dir.path());
    let chained = run_async(&host, "Chaining", Value::Null);
    assert_eq!(
        chained.json()["output"],
        json!(["Hello Tokyo!", "Hello Seattle!", "Hello London!"])
    );
    let fanned = run_async(&host, "FanOutFanIn", json!(100));
    // 1² + 2² + ... + 100²
    assert_eq!(fanned.json()["output"], json!(338_350));
    let job = run_async(&host, "Job", json!("order 7"));
    assert_eq!(job.json()["output"], json!("processed order 7"));
    assert_eq!(job.json()["runtimeStatus"], "Completed");
}

#[test]
fn human_interaction_is_approved_or_escalated() {
    let dir = tempfile::tempdir().unwrap();
    let host = serve_patterns(dir.path());
    let started = host.post("/api/start/Approval", "600000");
    let id = started.json()["id"].as_str().unwrap().to_string();
    host.poll(
        &format!("/runtime/webhooks/durabletask/instances/{id}"),
        |r| r.json()["runtimeStatus"] == "Running",
    );
    let raised = host.post(
        &format!("/runtime/webhooks/durabletask/instances/{id}/raiseEvent/Approve"),
        "true",
    );
    assert_eq!(raised.status, 202);
    let done = host.poll(
        &format!("/runtime/webhooks/durabletask/instances/{id}"),
        |r| r.status == 200,
    );
    assert_eq!(done.json()["output"], "approved");
    // Nobody answers within 300 ms: escalated.
    let escalated = run_async(&host, "Approval", json!(300));
    let output = escalated.json()["output"].as_str().unwrap().to_string();
    assert!(output.starts_with("escalated"), "{output}");
}

#[test]
fn the_monitor_polls_until_done_with_a_bounded_history() {
    // An endpoint that answers `pending` four times, then `done`.
    let (address, hits) = crate::host::local_server(|n| {
        crate::host::ok_response(if n < 5 { "pending" } else { "done" })
    });
    let dir = tempfile::tempdir().unwrap();
    let host = serve_patterns(dir.path());
    let started = host.post(
        "/api/start/Monitor",
        &json!({ "url": format!("http://{address}/job"), "interval_ms": 50 }).to_string(),
    );
    let id = started.json()["id"].as_str().unwrap().to_string();
    let path = format!("/runtime/webhooks/durabletask/instances/{id}?showHistory=true");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut longest = 0;
    let done = loop {
        let reply = host.get(&path);
        longest = longest.max(reply.json()["historyEvents"].as_array().map_or(0, Vec::len));
        if reply.status == 200 {
            break reply;
        }
        assert!(Instant::now() < deadline, "{}", reply.body);
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        done.json()["output"],
        json!({ "polls": 5 }),
        "{}",
        done.body
    );
    // Exactly once without a crash. (A first run counted six: a claim that
    // read an activity row just before its attempt's end was recorded took
    // the row again once its lease was given back; claims now hold the
    // lease set across their read.)
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    assert!(longest <= 12, "the history grew to {longest} events");
}
