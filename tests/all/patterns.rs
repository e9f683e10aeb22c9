//! The example apps of `workflows/` (one per Durable Functions application
//! pattern), each driven over HTTP against a real `duro serve` running that
//! app's own `duro.toml`, its components where the build put them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::host::{Host, Reply};

const API: &str = "/runtime/webhooks/durabletask";

/// `workflows/<app>/duro.toml`, served with its components from the build.
fn serve_app(dir: &std::path::Path, app: &str) -> Host {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("workflows").join(app).join("duro.toml")).unwrap();
    let text = text.replace("\"components/", &format!("\"{}/", duro_tests::GUEST_DIR));
    let manifest = dir.join("duro.toml");
    std::fs::write(&manifest, text).unwrap();
    Host::start_with(&manifest, &dir.join("duro.db"), &[])
}

/// POST `body` to `path`, expect `202` with a `Location`, and follow it
/// until it answers something else, as an async HTTP API client would.
fn follow(host: &Host, path: &str, body: &str) -> (Reply, Reply) {
    let started = host.post(path, body);
    assert_eq!(started.status, 202, "{}", started.body);
    let location = started.header("location").expect("a Location").to_string();
    // The check-status answer names this host; the test client wants a path.
    let location = location
        .strip_prefix(&format!("http://{}", host.address))
        .unwrap_or(&location)
        .to_string();
    let done = host.poll(&location, |r| r.status != 202);
    (started, done)
}

#[test]
fn function_chaining_runs_three_activities_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let host = serve_app(dir.path(), "chaining");
    let (started, done) = follow(&host, "/api/chaining", "");
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(
        done.json()["output"],
        json!(["Hello Tokyo!", "Hello Seattle!", "Hello London!"])
    );
    // The check-status answer carries the instance's management URLs.
    let urls = started.json();
    let id = urls["id"].as_str().unwrap();
    assert!(
        urls["sendEventPostUri"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{id}/raiseEvent/{{eventName}}"))
    );
    // Three activities, one after the other, each recorded once.
    let history = host
        .get(&format!("{API}/instances/{id}?showHistory=true"))
        .json();
    assert_eq!(
        crate::host::history_count(&history, "TaskCompleted"),
        3,
        "{history}"
    );
    let (_, done) = follow(&host, "/api/chaining", r#"["Oslo"]"#);
    assert_eq!(done.json()["output"], json!(["Hello Oslo!"]));
}

#[test]
fn fan_out_fan_in_sums_a_hundred_parallel_activities() {
    let dir = tempfile::tempdir().unwrap();
    let host = serve_app(dir.path(), "fan-out-fan-in");
    let (_, done) = follow(&host, "/api/fan-out/100", "");
    assert_eq!(done.status, 200, "{}", done.body);
    // 1² + 2² + ... + 100²
    assert_eq!(done.json()["output"], json!(338_350));
    let refused = host.post("/api/fan-out/0", "");
    assert_eq!(refused.status, 400);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("from 1 to 1000")
    );
}

#[test]
fn the_async_http_api_answers_202_then_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let host = serve_app(dir.path(), "async-http-api");
    let started = host.post("/api/jobs", "quarterly report");
    assert_eq!(started.status, 202, "{}", started.body);
    let location = started.header("location").unwrap().to_string();
    assert!(location.starts_with("/api/jobs/"), "{location}");
    // The job takes a while: the status endpoint says so first.
    let first = host.get(&location);
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.header("retry-after"), Some("1"));
    let done = host.poll(&location, |r| r.status != 202);
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["result"], "processed quarterly report");
    // A failing job: its error on the status endpoint.
    let (_, failed) = follow(&host, "/api/jobs", "  ");
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert!(
        failed.body.contains("the document is empty"),
        "{}",
        failed.body
    );
    assert_eq!(host.get("/api/jobs/nobody").status, 404);
}

#[test]
fn the_monitor_polls_until_done_with_a_bounded_history() {
    // An endpoint that answers `pending` four times, then `done`.
    let (address, hits) = crate::host::local_server(|n| {
        crate::host::ok_response(if n < 5 { "pending" } else { "done" })
    });
    let dir = tempfile::tempdir().unwrap();
    let host = serve_app(dir.path(), "monitor");
    let spec = json!({ "url": format!("http://{address}/job"), "interval_ms": 50 });
    let started = host.post("/api/monitors", &spec.to_string());
    assert_eq!(started.status, 202, "{}", started.body);
    let id = started.json()["id"].as_str().unwrap().to_string();
    let path = format!("{API}/instances/{id}?showHistory=true");
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
    let refused = host.post("/api/monitors", r#"{"url": "ftp://x"}"#);
    assert_eq!(refused.status, 400);
}

#[test]
fn human_interaction_is_approved_rejected_or_escalated() {
    let dir = tempfile::tempdir().unwrap();
    let host = serve_app(dir.path(), "human-interaction");
    let mut decided = Vec::new();
    for decision in ["approve", "reject"] {
        let started = host.post("/api/approvals", r#"{"timeout_ms": 600000}"#);
        assert_eq!(started.status, 202, "{}", started.body);
        let id = started.json()["id"].as_str().unwrap().to_string();
        let status = format!("{API}/instances/{id}");
        host.poll(&status, |r| {
            r.json()["customStatus"] == "waiting for approval"
        });
        let answered = host.post(&format!("/api/approvals/{id}/{decision}"), "");
        assert_eq!(answered.status, 202, "{}", answered.body);
        decided.push(host.poll(&status, |r| r.status == 200).json()["output"].clone());
    }
    assert_eq!(decided, [json!("approved"), json!("rejected")]);
    // Nobody answers within 300 ms: escalated.
    let (_, escalated) = follow(&host, "/api/approvals", r#"{"timeout_ms": 300}"#);
    let output = escalated.json()["output"].as_str().unwrap().to_string();
    assert!(output.starts_with("escalated"), "{output}");
    let refused = host.post("/api/approvals/x/maybe", "");
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.contains("approve or reject"),
        "{}",
        refused.body
    );
    let _: Value = refused.json();
}
