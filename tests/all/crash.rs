//! Acknowledged requests survive `kill -9` of the host.

use crate::host::Host;

const API: &str = "/runtime/webhooks/durabletask";

#[test]
fn acknowledged_starts_and_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let database = dir.path().join("duro.db");

    // Kill right after each 202: the acknowledgement must already be durable.
    let host = Host::start_with(&manifest, &database, &[]);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let r = host.post(
                &format!("{API}/orchestrators/Workflow/crash-{i}"),
                &format!("\"c{i}\""),
            );
            assert_eq!(r.status, 202, "{}", r.body);
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    host.kill();

    let host = Host::start_with(&manifest, &database, &[]);
    for id in &ids {
        let running = host.poll(&format!("{API}/instances/{id}"), |r| {
            r.json()["runtimeStatus"] == "Running"
        });
        assert_eq!(
            running.json()["runtimeStatus"],
            "Running",
            "{id}: {}",
            running.body
        );
        let raised = host.post(&format!("{API}/instances/{id}/raiseEvent/Workflow"), "true");
        assert_eq!(raised.status, 202);
    }
    host.kill();

    let host = Host::start_with(&manifest, &database, &[]);
    for id in &ids {
        let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
        assert_eq!(
            done.json()["runtimeStatus"],
            "Completed",
            "{id}: {}",
            done.body
        );
    }
}
