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
    drop(host);

    // Version 2: `Workflow` now lives in the test guests, where it starts
    // with a timer instead of waiting for the event.
    let v2_dir = dir.path().join("v2");
    std::fs::create_dir_all(&v2_dir).unwrap();
    let v2 = v2_dir.join("duro.toml");
    std::fs::write(
        &v2,
        format!(
            "[[orchestration]]\nname = \"Workflow\"\ncomponent = {:?}\n",
            duro_tests::TEST_GUESTS
        ),
    )
    .unwrap();
    let host = Host::start_with(&v2, &database, &[]);
    let new = host.post(&format!("{API}/orchestrators/Workflow/new"), "\"new\"");
    assert_eq!(new.status, 202);

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
