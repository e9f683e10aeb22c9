//! Activities through the runtime: results recorded once and never run
//! again on replay, retries with their delays and attempt counts, failures
//! and traps handed to the orchestration as errors, fan-out.

use duro::model::{Action, HistoryEvent, RuntimeStatus};
use duro_tests::{TEST_GUESTS, guest_bytes};
use serde_json::{Value, json};

use crate::support::{json, runtime, wait_status};

async fn call_one(
    rt: &duro::runtime::Runtime,
    call: Value,
) -> (Value, Vec<duro::model::HistoryEntry>) {
    let id = rt.start_new("CallOne", None, &call).await.unwrap();
    let done = wait_status(rt, &id, RuntimeStatus::Completed).await;
    (
        json(done.output.as_deref().unwrap()),
        rt.history(&id).await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_in_sequence_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt.start_new("Chain", None, &json!(10)).await.unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!(16));
    let history = rt.history(&id).await.unwrap();
    let scheduled = history
        .iter()
        .filter(|e| {
            matches!(
                &e.event,
                HistoryEvent::TaskScheduled {
                    action: Action::CallActivity { name, .. },
                    ..
                } if name == "Add"
            )
        })
        .count();
    let completed: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::TaskCompleted {
                output, attempts, ..
            } => Some((output.clone(), *attempts)),
            _ => None,
        })
        .collect();
    assert_eq!(scheduled, 3);
    assert_eq!(
        completed,
        [
            ("3".to_string(), 1),
            ("6".to_string(), 1),
            ("16".to_string(), 1)
        ]
    );
    // Replay answers from the history: it runs no activity.
    assert_eq!(
        rt.replay_check(&id, guest_bytes(TEST_GUESTS))
            .await
            .unwrap(),
        Ok(())
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_activities_fan_out_and_in() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt.start_new("FanOut", None, &json!(100)).await.unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!(5050));
    let history = rt.history(&id).await.unwrap();
    let completed = history
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::TaskCompleted { .. }))
        .count();
    assert_eq!(completed, 100);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_their_delays() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // Fails twice; retries 100 ms, then 200 ms later.
    let (output, history) =
        call_one(&rt, json!({ "name": "Flaky", "input": 2, "retries": 4 })).await;
    assert_eq!(output, json!({ "ok": 3 }));
    let scheduled_at = history
        .iter()
        .find(|e| matches!(e.event, HistoryEvent::TaskScheduled { .. }))
        .unwrap()
        .timestamp;
    let completed = history
        .iter()
        .find(|e| matches!(e.event, HistoryEvent::TaskCompleted { .. }))
        .unwrap();
    assert!(
        matches!(
            completed.event,
            HistoryEvent::TaskCompleted { attempts: 3, .. }
        ),
        "{completed:?}"
    );
    assert!(
        completed.timestamp - scheduled_at >= 300,
        "the retry delays were not waited: {} ms",
        completed.timestamp - scheduled_at
    );

    // Always failing: the last attempt's error reaches the orchestration.
    let (output, history) =
        call_one(&rt, json!({ "name": "Fail", "input": "no", "retries": 1 })).await;
    assert_eq!(output, json!({ "error": "refused: no" }));
    assert!(history.iter().any(|e| matches!(
        &e.event,
        HistoryEvent::TaskFailed { attempts: 2, error, .. } if error == "refused: no"
    )));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_and_unknown_activities_are_failures_the_orchestration_handles() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let (output, _) = call_one(&rt, json!({ "name": "Trap", "input": null })).await;
    let error = output["error"].as_str().unwrap();
    assert!(error.contains("the activity trapped"), "{error}");
    let (output, _) = call_one(&rt, json!({ "name": "Nope", "input": null })).await;
    assert_eq!(
        output,
        json!({ "error": "no activity named `Nope` is registered" })
    );
    // The activity knows its call.
    let id = rt
        .start_new(
            "CallOne",
            Some("who".into()),
            &json!({ "name": "Attempt", "input": null }),
        )
        .await
        .unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!({ "ok": { "instance": "who", "task": 0, "attempt": 1 } })
    );
    rt.shutdown().await;
}

/// A manifest with the test orchestrations and activities beside the scenario.
pub fn activity_manifest(dir: &std::path::Path) -> std::path::PathBuf {
    let (guests, activities) = (duro_tests::TEST_GUESTS, duro_tests::TEST_ACTIVITIES);
    let mut extra = String::new();
    for name in ["Chain", "CallOne"] {
        extra.push_str(&format!(
            "[[orchestration]]\nname = \"{name}\"\ncomponent = {guests:?}\n"
        ));
    }
    for name in ["Add", "Fail"] {
        extra.push_str(&format!(
            "[[activity]]\nname = \"{name}\"\ncomponent = {activities:?}\n"
        ));
    }
    extra.push_str(&format!(
        "[[activity]]\nname = \"Sleep\"\ncomponent = {activities:?}\ntimeout_ms = 3000\n"
    ));
    duro_tests::scenario_manifest(dir, &extra)
}

const API: &str = "/runtime/webhooks/durabletask";

#[test]
fn activities_declared_in_the_manifest_run_behind_http() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = activity_manifest(dir.path());
    let host = crate::host::Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    let started = host.post(&format!("{API}/orchestrators/Chain/chain-1"), "10");
    assert_eq!(started.status, 202, "{}", started.body);
    let done = host.poll(&format!("{API}/instances/chain-1?showHistory=true"), |r| {
        r.status == 200
    });
    let body = done.json();
    assert_eq!(body["runtimeStatus"], "Completed", "{}", done.body);
    assert_eq!(body["output"], json!(16));
    let kinds: Vec<&str> = body["historyEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["eventType"].as_str())
        .filter(|k| k.starts_with("Task"))
        .collect();
    assert_eq!(
        kinds,
        [
            "TaskScheduled",
            "TaskCompleted",
            "TaskScheduled",
            "TaskCompleted",
            "TaskScheduled",
            "TaskCompleted"
        ]
    );

    // An attempt past the activity's own timeout fails it.
    let started = host.post(
        &format!("{API}/orchestrators/CallOne/slow"),
        r#"{"name": "Sleep", "input": 20000}"#,
    );
    assert_eq!(started.status, 202);
    let done = host.poll(&format!("{API}/instances/slow"), |r| r.status == 200);
    let error = done.json()["output"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("did not finish within 4.5s"),
        "{}",
        done.body
    );
}

#[test]
fn an_activity_in_flight_at_kill_9_runs_again_and_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = activity_manifest(dir.path());
    let database = dir.path().join("duro.db");
    let host = crate::host::Host::start_with(&manifest, &database, &[]);
    let started = host.post(
        &format!("{API}/orchestrators/CallOne/inflight"),
        r#"{"name": "Sleep", "input": 1500}"#,
    );
    assert_eq!(started.status, 202);
    // The activity is running (its call is committed) when the host dies.
    host.poll(&format!("{API}/instances/inflight?showHistory=true"), |r| {
        r.body.contains("CallActivity") || r.body.contains("callActivity")
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    host.kill();

    let host = crate::host::Host::start_with(&manifest, &database, &[]);
    let done = host.poll(&format!("{API}/instances/inflight?showHistory=true"), |r| {
        r.status == 200
    });
    let body = done.json();
    assert_eq!(body["output"], json!({ "ok": 1500 }), "{}", done.body);
    assert_eq!(
        crate::host::history_count(&body, "TaskCompleted"),
        1,
        "{}",
        done.body
    );
}

/// A local server answering each request with how many it has had.
fn counting_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    crate::host::local_server(|n| crate::host::ok_response(&n.to_string()))
}

#[test]
fn activities_reach_allowed_hosts_only_and_replay_never_calls_again() {
    let (allowed, allowed_count) = counting_server();
    let (other, other_count) = counting_server();
    let dir = tempfile::tempdir().unwrap();
    let (guests, activities) = (duro_tests::TEST_GUESTS, duro_tests::TEST_ACTIVITIES);
    let manifest = duro_tests::scenario_manifest(
        dir.path(),
        &format!(
            "[[orchestration]]\nname = \"FetchThenWait\"\ncomponent = {guests:?}\n\
             [[activity]]\nname = \"Fetch\"\ncomponent = {activities:?}\n\
             allowed_hosts = [\"http://{allowed}\"]\n"
        ),
    );
    let database = dir.path().join("duro.db");
    let host = crate::host::Host::start_with(&manifest, &database, &[]);
    let start = |host: &crate::host::Host, id: &str, url: String| {
        let started = host.post(
            &format!("{API}/orchestrators/FetchThenWait/{id}"),
            &json!(url).to_string(),
        );
        assert_eq!(started.status, 202, "{}", started.body);
    };
    start(&host, "allowed", format!("http://{allowed}/count"));
    start(&host, "denied", format!("http://{other}/count"));
    host.poll(&format!("{API}/instances/allowed?showHistory=true"), |r| {
        r.body.contains("TaskCompleted")
    });
    let denied = host.poll(&format!("{API}/instances/denied"), |r| r.status == 200);
    assert_eq!(denied.json()["runtimeStatus"], "Failed", "{}", denied.body);
    assert!(denied.body.contains("HttpRequestDenied"), "{}", denied.body);
    assert_eq!(other_count.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(allowed_count.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A new host replays the instance for its next event: the recorded
    // result is used, the server is not called again.
    host.kill();
    let host = crate::host::Host::start_with(&manifest, &database, &[]);
    let raised = host.post(&format!("{API}/instances/allowed/raiseEvent/Go"), "null");
    assert_eq!(raised.status, 202);
    let done = host.poll(&format!("{API}/instances/allowed"), |r| r.status == 200);
    assert_eq!(
        done.json()["output"],
        json!({ "status": 200, "body": "1" }),
        "{}",
        done.body
    );
    assert_eq!(allowed_count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn an_activity_past_its_memory_limit_fails_its_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (guests, activities) = (duro_tests::TEST_GUESTS, duro_tests::TEST_ACTIVITIES);
    let manifest = duro_tests::scenario_manifest(
        dir.path(),
        &format!(
            "[[orchestration]]\nname = \"CallOne\"\ncomponent = {guests:?}\n\
             [[activity]]\nname = \"Allocate\"\ncomponent = {activities:?}\n\
             max_memory_mb = 16\n"
        ),
    );
    let host = crate::host::Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    let call = |id: &str, mib: usize| {
        let input = json!({ "name": "Allocate", "input": mib });
        let started = host.post(
            &format!("{API}/orchestrators/CallOne/{id}"),
            &input.to_string(),
        );
        assert_eq!(started.status, 202, "{}", started.body);
        let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
        done.json()["output"].clone()
    };
    assert_eq!(call("small", 4), json!({ "ok": 4 << 20 }));
    let refused = call("large", 64);
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains("trapped"), "{refused}");
    // The host is unharmed: the next attempt within the limit runs.
    assert_eq!(call("small-again", 8), json!({ "ok": 8 << 20 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestrations_report_their_end_to_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // A child that calls activities: its output reaches the parent.
    let id = rt
        .start_new(
            "Parent",
            Some("p1".into()),
            &json!({ "name": "Chain", "input": 5 }),
        )
        .await
        .unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!({ "ok": 11 }));
    let child = rt
        .status("p1:0")
        .await
        .unwrap()
        .expect("the child is an instance");
    assert_eq!(child.status, RuntimeStatus::Completed);
    assert_eq!(child.parent.as_ref().unwrap().instance, "p1");
    let history = rt.history(&id).await.unwrap();
    assert!(history.iter().any(|e| matches!(
        e.event,
        HistoryEvent::SubOrchestrationCompleted { task: 0, .. }
    )));

    // A failing child, a name nobody registered, an id taken by a live
    // instance: errors the parent handles.
    let id = rt
        .start_new(
            "Parent",
            Some("p2".into()),
            &json!({ "name": "Refuses", "input": null }),
        )
        .await
        .unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!({ "error": "sub-orchestration `p2:0` failed: refused on purpose" })
    );
    let id = rt
        .start_new("Parent", None, &json!({ "name": "Nobody", "input": null }))
        .await
        .unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!({ "error": "no orchestration named `Nobody` is registered" })
    );
    rt.start_new("Sequence", Some("taken".into()), &json!(null))
        .await
        .unwrap();
    let id = rt
        .start_new(
            "Parent",
            None,
            &json!({ "name": "Sequence", "id": "taken", "input": null }),
        )
        .await
        .unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    let error = json(done.output.as_deref().unwrap())["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("not started") && error.contains("already exists"),
        "{error}"
    );

    // Terminating the parent leaves its child to its own lifetime.
    let id = rt
        .start_new(
            "Parent",
            Some("p3".into()),
            &json!({ "name": "Sequence", "input": null }),
        )
        .await
        .unwrap();
    // The child is created with the parent's episode that called it.
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while rt.status("p3:0").await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no child p3:0");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    wait_status(&rt, "p3:0", RuntimeStatus::Running).await;
    rt.terminate(&id, Some("stop".into())).await.unwrap();
    wait_status(&rt, &id, RuntimeStatus::Terminated).await;
    rt.raise_event("p3:0", "A", &json!(1)).await.unwrap();
    rt.raise_event("p3:0", "B", &json!(2)).await.unwrap();
    let child = wait_status(&rt, "p3:0", RuntimeStatus::Completed).await;
    assert_eq!(json(child.output.as_deref().unwrap()), json!([1, 2]));
    assert_eq!(
        rt.status(&id).await.unwrap().unwrap().status,
        RuntimeStatus::Terminated
    );
    rt.shutdown().await;
}

/// Raises `Verdict` on child `id` once its attempt `attempt` is live (the
/// one before ended as Failed; a retry replaces it under the same id), and
/// waits for the attempt to end.
async fn judge(rt: &duro::runtime::Runtime, id: &str, attempt: u64, accepted: bool) {
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while rt
        .status(id)
        .await
        .unwrap()
        .is_none_or(|child| child.status.is_terminal())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "attempt {attempt} of child {id} never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    rt.raise_event(id, "Verdict", &json!(accepted))
        .await
        .unwrap();
    let end = if accepted {
        RuntimeStatus::Completed
    } else {
        RuntimeStatus::Failed
    };
    wait_status(rt, id, end).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestrations_retry_under_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // Fails twice, then succeeds on the third of three attempts.
    let id = rt
        .start_new(
            "RetryingParent",
            Some("rp1".into()),
            &json!({ "id": "verdict-1", "attempts": 3 }),
        )
        .await
        .unwrap();
    for (attempt, accepted) in [(1, false), (2, false), (3, true)] {
        judge(&rt, "verdict-1", attempt, accepted).await;
    }
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!({ "ok": "accepted" })
    );
    let history = rt.history(&id).await.unwrap();
    // Each failure is followed, in the same episode, by a wait of the
    // policy's interval from that episode's time.
    let mut episode_time = 0;
    let mut failed_in_episode = false;
    let (mut failures, mut waits) = (0, 0);
    for entry in &history {
        match &entry.event {
            HistoryEvent::OrchestratorStarted { timestamp } => {
                episode_time = *timestamp;
                failed_in_episode = false;
            }
            HistoryEvent::SubOrchestrationFailed { .. } => {
                failures += 1;
                failed_in_episode = true;
            }
            HistoryEvent::TaskScheduled {
                action: Action::CreateTimer { fire_at },
                ..
            } => {
                waits += 1;
                assert!(failed_in_episode, "{history:#?}");
                assert_eq!(*fire_at, episode_time + 200, "{history:#?}");
            }
            _ => {}
        }
    }
    assert_eq!((failures, waits), (2, 2), "{history:#?}");

    // Out of attempts: the last attempt's error reaches the parent.
    let id = rt
        .start_new(
            "RetryingParent",
            Some("rp2".into()),
            &json!({ "id": "verdict-2", "attempts": 2 }),
        )
        .await
        .unwrap();
    for (attempt, accepted) in [(1, false), (2, false)] {
        judge(&rt, "verdict-2", attempt, accepted).await;
    }
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!({ "error": "sub-orchestration `verdict-2` failed: rejected" })
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eternal_monitor_keeps_its_history_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // Fifty cycles of poll (activity), sleep (timer), continue-as-new.
    let id = rt
        .start_new("Monitor", None, &json!([0, 50]))
        .await
        .unwrap();
    let mut longest = 0;
    let done = loop {
        let instance = rt.status(&id).await.unwrap().unwrap();
        longest = longest.max(instance.history_len);
        if instance.status == RuntimeStatus::Completed {
            break instance;
        }
        assert_ne!(instance.status, RuntimeStatus::Failed, "{instance:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(json(done.output.as_deref().unwrap()), json!(50));
    // One cycle's events at most, however many cycles ran.
    assert!(longest <= 12, "history grew to {longest} events");
    assert!(rt.history(&id).await.unwrap().len() <= 12);
    rt.shutdown().await;
}

/// A server with one long-running job: `GET /start` answers 202 with
/// `Location: /status`; `/status` answers 202 twice more, then 200 `done`.
fn async_job_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    crate::host::local_server(|n| {
        if n < 4 {
            "HTTP/1.1 202 Accepted\r\nlocation: /status\r\nretry-after: 0\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
                .to_string()
        } else {
            crate::host::ok_response("done")
        }
    })
}

#[test]
fn call_http_polls_an_async_api_and_honours_the_allowlist() {
    let (allowed, allowed_count) = async_job_server();
    let (other, other_count) = async_job_server();
    let dir = tempfile::tempdir().unwrap();
    let guests = duro_tests::TEST_GUESTS;
    let manifest = duro_tests::scenario_manifest(
        dir.path(),
        &format!(
            "[[orchestration]]\nname = \"HttpCaller\"\ncomponent = {guests:?}\n\
             allowed_hosts = [\"http://{allowed}\"]\n"
        ),
    );
    let host = crate::host::Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    for (id, address) in [("ok", &allowed), ("denied", &other)] {
        let started = host.post(
            &format!("{API}/orchestrators/HttpCaller/{id}"),
            &json!(format!("http://{address}/start")).to_string(),
        );
        assert_eq!(started.status, 202, "{}", started.body);
    }
    let done = host.poll(&format!("{API}/instances/ok?showHistory=true"), |r| {
        r.status == 200
    });
    let body = done.json();
    assert_eq!(
        body["output"],
        json!({ "status": 200, "body": "done" }),
        "{}",
        done.body
    );
    assert_eq!(allowed_count.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert!(
        done.body.contains("duro:http"),
        "recorded as an activity call"
    );
    let denied = host.poll(&format!("{API}/instances/denied"), |r| r.status == 200);
    let error = denied.json()["output"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("not among the orchestration's allowed_hosts"),
        "{}",
        denied.body
    );
    assert_eq!(other_count.load(std::sync::atomic::Ordering::SeqCst), 0);
}
