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

/// A component built against duro:workflow@0.1.2, which has no
/// `step-many`, is replayed one completion per `step` (through its 0.1.2
/// binding): its run of two timers replays, and it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_against_0_1_2_replays_one_step_at_a_time() {
    use duro::model::RuntimeStatus;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    // Every episode replays: the `Go` episode replays the two timers.
    let rt = crate::support::cold_runtime(dir.path()).await;
    rt.register(
        duro_tests::guest_bytes(duro_tests::TEST_LEGACY_0_1_2),
        &["Legacy012"],
    )
    .await
    .unwrap();
    let id = rt.start_new("Legacy012", None, &json!(null)).await.unwrap();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while rt
        .history(&id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event.kind() == "TimerFired")
        .count()
        < 2
        || !rt.is_idle(&id).await.unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the timers never fired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    rt.raise_event(&id, "Go", &json!({ "from": "0.1.2" }))
        .await
        .unwrap();
    let done = crate::support::wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        crate::support::json(done.output.as_deref().unwrap()),
        json!({ "from": "0.1.2" })
    );
    assert_eq!(rt.metrics().batched_completions.get(), 0);
    rt.shutdown().await;
}

/// `duro deploy` on a running host: a dry run names exactly the instances
/// whose history does not replay on the new code (and where), changes
/// nothing; the deploy then serves the new version to new instances,
/// moves the compatible ones, and every instance finishes on its version.
#[test]
fn a_hot_deploy_replays_in_flight_instances_before_moving_them() {
    let dir = tempfile::tempdir().unwrap();
    hot_deploy(dir.path(), &dir.path().join("duro.db"));
}

/// The same on PostgreSQL (skipped without `DURO_TEST_POSTGRES_URL`).
#[test]
fn a_hot_deploy_on_postgres() {
    let Some(database) = crate::support::postgres_database("deploy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    hot_deploy(dir.path(), std::path::Path::new(&database));
}

fn hot_deploy(dir: &std::path::Path, database: &std::path::Path) {
    use crate::cli::duro;
    let v1 = crate::host::scenario_manifest(dir, "");
    let host = Host::start_with(&v1, database, &[]);
    for id in ["w1", "w2", "w3"] {
        let started = host.post(
            &format!("{API}/orchestrators/Workflow/{id}"),
            &format!("{id:?}"),
        );
        assert_eq!(started.status, 202);
    }
    for id in ["t1", "t2"] {
        let started = host.post(
            &format!("{API}/orchestrators/WorkflowWithTimeout/{id}"),
            r#"{"name": "t", "timeout_ms": 600000}"#,
        );
        assert_eq!(started.status, 202);
    }
    for id in ["w1", "w2", "w3", "t1", "t2"] {
        host.poll(&format!("{API}/instances/{id}"), |r| {
            r.json()["runtimeStatus"] == "Running"
        });
    }
    let (ok, versions_before, err) = duro(&host, &["versions", "--json"]);
    assert!(ok, "{err}");

    // Version 2: both orchestrations from the test guests (`Workflow`
    // diverges, `WorkflowWithTimeout` replays); the `Stop` route is gone.
    let v2 = dir.join("v2.toml");
    std::fs::write(
        &v2,
        format!(
            "[[orchestration]]\nname = \"Workflow\"\ncomponent = {0:?}\n\
             [[orchestration]]\nname = \"WorkflowWithTimeout\"\ncomponent = {0:?}\n\
             [[http]]\nname = \"Start\"\nroute = \"/api/start/{{input}}\"\ncomponent = {1:?}\n",
            duro_tests::TEST_GUESTS,
            duro_tests::SCENARIO_HTTP,
        ),
    )
    .unwrap();
    let v2 = v2.to_str().unwrap();

    let (ok, out, err) = duro(&host, &["deploy", v2, "--dry-run"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    for id in ["w1", "w2", "w3"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in {out}"));
        assert!(line.contains("diverges at event 2"), "{out}");
    }
    for id in ["t1", "t2"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in {out}"));
        assert!(line.ends_with("compatible"), "{out}");
    }
    assert!(out.contains("dry run: nothing was deployed"), "{out}");
    let (ok, json_out, _) = duro(&host, &["--json", "deploy", v2, "--dry-run"]);
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    let mut diverging: Vec<(String, u64)> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["compatible"] == false)
        .map(|c| {
            (
                c["instanceId"].as_str().unwrap().to_string(),
                c["divergence"]["event"].as_u64().unwrap(),
            )
        })
        .collect();
    diverging.sort();
    assert_eq!(
        diverging,
        [("w1".into(), 2), ("w2".into(), 2), ("w3".into(), 2)]
    );
    assert_eq!(report["instances"].as_array().unwrap().len(), 5);
    // The dry run changed nothing: same versions, the Stop route still here.
    assert_eq!(duro(&host, &["versions", "--json"]).1, versions_before);
    let stop = host.get("/api/stop/nobody");
    assert!(!stop.body.contains("no route matches"), "{}", stop.body);

    let (ok, out, err) = duro(&host, &["deploy", v2, "--upgrade-compatible"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .filter(|l| l.ends_with("compatible, moved"))
            .count()
            == 2,
        "{out}"
    );
    // The route the new manifest dropped is gone; the one it kept serves.
    let gone = host.get("/api/stop/w1");
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error(), "no route matches this path");
    assert_eq!(host.get("/api/start/fresh").status, 200);

    let versions: serde_json::Value =
        serde_json::from_str(&duro(&host, &["versions", "--json"]).1).unwrap();
    let rows: Vec<(String, bool, u64)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["orchestration"].as_str().unwrap().to_string(),
                v["current"].as_bool().unwrap(),
                v["inFlight"].as_u64().unwrap(),
            )
        })
        .collect();
    // `Workflow`: version 2 deployed (with `fresh`), version 1 kept for
    // w1-w3; `WorkflowWithTimeout`: only version 2, both moved there.
    let mut rows = rows;
    rows.sort();
    assert_eq!(
        rows,
        [
            ("Workflow".into(), false, 3),
            ("Workflow".into(), true, 1),
            ("WorkflowWithTimeout".into(), true, 2),
        ],
        "{versions}"
    );
    let (ok, table, _) = duro(&host, &["versions"]);
    assert!(ok && table.starts_with("ORCHESTRATION"), "{table}");

    // Every instance finishes on its own version.
    for id in ["w1", "w2", "w3", "t1", "t2"] {
        host.post(&format!("{API}/instances/{id}/raiseEvent/Workflow"), "7");
    }
    for id in ["w1", "w2", "w3"] {
        let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
        assert_eq!(done.json()["output"], format!("Workflow for {id} stopped"));
    }
    for id in ["t1", "t2"] {
        let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
        assert_eq!(done.json()["output"]["version"], 2, "{}", done.body);
    }
    let fresh = host.poll(
        &format!("{API}/instances?name=Workflow&input=%22fresh%22"),
        |r| r.json().as_array().is_some_and(|a| !a.is_empty()),
    );
    let fresh_id = fresh.json()[0]["instanceId"].as_str().unwrap().to_string();
    let history = host.poll(
        &format!("{API}/instances/{fresh_id}?showHistory=true"),
        |r| {
            r.json()["historyEvents"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["eventType"] == "TaskScheduled"))
        },
    );
    let events = history.json()["historyEvents"].clone();
    let scheduled = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["eventType"] == "TaskScheduled")
        .unwrap()
        .clone();
    assert_eq!(scheduled["action"]["kind"], "createTimer", "{scheduled}");
}

/// A deploy that cannot be served is refused whole with a 400 naming the
/// problem, and the host goes on serving what it served.
#[test]
fn a_bad_deploy_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with(&v1, &dir.path().join("duro.db"), &[]);
    let before = host.get(&format!("{API}/versions")).body;

    let not_json = host.post(&format!("{API}/deploy"), "manifest");
    assert_eq!(not_json.status, 400);
    assert!(
        not_json.error().contains("not an app upload"),
        "{}",
        not_json.body
    );

    let missing = host.post(
        &format!("{API}/deploy"),
        r#"{"manifest": "[[orchestration]]\nname = \"Workflow\"\ncomponent = \"w.wasm\"\n", "components": {}}"#,
    );
    assert_eq!(missing.status, 400);
    assert!(
        missing
            .error()
            .contains("component w.wasm was not uploaded with the manifest"),
        "{}",
        missing.body
    );

    // An HTTP trigger component deployed as an orchestration.
    use base64::Engine as _;
    let trigger = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(duro_tests::SCENARIO_HTTP).unwrap());
    let upload = serde_json::json!({
        "manifest": "[[orchestration]]\nname = \"Workflow\"\ncomponent = \"t.wasm\"\n",
        "components": { "t.wasm": trigger },
    });
    let wrong_world = host.post(&format!("{API}/deploy"), &upload.to_string());
    assert_eq!(wrong_world.status, 400, "{}", wrong_world.body);
    assert_eq!(host.get(&format!("{API}/versions")).body, before);
    assert_eq!(host.get("/api/start/still").status, 200);
}

/// A deploy can add orchestrations and the activities they call to a host
/// serving an app that had neither; they run at once, no restart.
#[test]
fn a_deploy_adds_orchestrations_and_activities() {
    use crate::cli::duro;
    let dir = tempfile::tempdir().unwrap();
    let v1 = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with(&v1, &dir.path().join("duro.db"), &[]);
    let refused = host.post(&format!("{API}/orchestrators/Chain/before"), "10");
    assert_eq!(refused.status, 400, "{}", refused.body);

    let v2_dir = dir.path().join("v2");
    std::fs::create_dir_all(&v2_dir).unwrap();
    let v2 = crate::activities::activity_manifest(&v2_dir);
    let (ok, out, err) = duro(&host, &["deploy", v2.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("orchestration Chain: none -> "), "{out}");
    assert!(out.contains("orchestration Workflow: unchanged"), "{out}");

    let started = host.post(&format!("{API}/orchestrators/Chain/after"), "10");
    assert_eq!(started.status, 202, "{}", started.body);
    let done = host.poll(&format!("{API}/instances/after"), |r| r.status == 200);
    assert_eq!(done.json()["output"], 16, "{}", done.body);
}
