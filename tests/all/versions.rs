//! Deploying new code never breaks an instance in flight: it replays on the
//! component it started with, while new instances get the new one.

use crate::host::Host;

const API: &str = "/runtime/webhooks/durabletask";

#[test]
fn running_instances_keep_their_component_across_a_redeploy() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("duro.db");
    let v1 = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with(&v1, &database, &[]);
    let old = host.post(&format!("{API}/orchestrators/Workflow/old"), "\"old\"");
    assert_eq!(old.status, 202);
    host.poll(&format!("{API}/instances/old"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    let timed = host.post(
        &format!("{API}/orchestrators/WorkflowWithTimeout/timed"),
        r#"{"name": "t", "timeout_ms": 600000}"#,
    );
    assert_eq!(timed.status, 202);
    host.poll(&format!("{API}/instances/timed"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    drop(host);

    // Version 2: `Workflow` now lives in the test guests, where it starts
    // with a timer instead of waiting for the event.
    let v2_dir = dir.path().join("v2");
    std::fs::create_dir_all(&v2_dir).unwrap();
    let v2 = v2_dir.join("duro.toml");
    std::fs::write(
        &v2,
        format!(
            "[[orchestration]]\nname = \"Workflow\"\ncomponent = {0:?}\n\
             [[orchestration]]\nname = \"WorkflowWithTimeout\"\ncomponent = {0:?}\n",
            duro_tests::TEST_GUESTS
        ),
    )
    .unwrap();
    let host = Host::start_with(&v2, &database, &[]);
    let new = host.post(&format!("{API}/orchestrators/Workflow/new"), "\"new\"");
    assert_eq!(new.status, 202);

    // Moving `old` to version 2 is refused: its history does not replay there.
    let refused = host.post(&format!("{API}/instances/old/upgrade"), "");
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused
            .error()
            .contains("non-determinism at history event 2 (task #0)"),
        "{}",
        refused.body
    );
    // `timed` replays on version 2, so it moves, and finishes there.
    let moved = host.post(&format!("{API}/instances/timed/upgrade"), "");
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert!(
        moved.json()["component"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let again = host.post(&format!("{API}/instances/timed/upgrade"), "");
    assert_eq!(
        again.json()["component"],
        moved.json()["component"],
        "idempotent"
    );
    host.post(&format!("{API}/instances/timed/raiseEvent/Workflow"), "7");
    let finished = host.poll(&format!("{API}/instances/timed"), |r| r.status == 200);
    assert_eq!(
        finished.json()["output"],
        serde_json::json!({ "version": 2, "result": { "outcome": "event", "payload": 7 } }),
        "{}",
        finished.body
    );
    assert_eq!(
        host.post(&format!("{API}/instances/timed/upgrade"), "")
            .status,
        410
    );
    assert_eq!(
        host.post(&format!("{API}/instances/ghost/upgrade"), "")
            .status,
        404
    );

    // The old instance still replays on version 1 and finishes its way.
    let raised = host.post(
        &format!("{API}/instances/old/raiseEvent/Workflow"),
        "\"old\"",
    );
    assert_eq!(raised.status, 202);
    let done = host.poll(&format!("{API}/instances/old"), |r| r.status == 200);
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    assert_eq!(done.json()["output"], "Workflow for old stopped");

    // The new instance runs version 2: its first call is a timer.
    let history = host.poll(&format!("{API}/instances/new?showHistory=true"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    let events = history.json()["historyEvents"].as_array().unwrap().clone();
    let scheduled = events
        .iter()
        .find(|e| e["eventType"] == "TaskScheduled")
        .expect("a scheduled task");
    assert_eq!(scheduled["action"]["kind"], "createTimer", "{scheduled}");
}

/// A component built against duro:workflow@0.1.1, whose `task-outcome` had
/// two cases, runs on this host (through its legacy binding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_against_0_1_1_still_runs() {
    use duro::model::RuntimeStatus;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let rt = crate::support::runtime(dir.path()).await;
    rt.register(
        duro_tests::guest_bytes(duro_tests::TEST_LEGACY),
        &["Legacy"],
    )
    .await
    .unwrap();
    let id = rt.start_new("Legacy", None, &json!(null)).await.unwrap();
    crate::support::wait_status(&rt, &id, RuntimeStatus::Running).await;
    rt.raise_event(&id, "Go", &json!({ "from": "0.1.1" }))
        .await
        .unwrap();
    let done = crate::support::wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        crate::support::json(done.output.as_deref().unwrap()),
        json!({ "from": "0.1.1" })
    );
    rt.shutdown().await;
}
