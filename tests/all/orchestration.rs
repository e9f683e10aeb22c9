//! The orchestration runtime through its public Rust API: replay, buffering,
//! timers, restarts, divergence, and guests that misbehave.

use std::time::Duration;

use duro::model::{HistoryEvent, RuntimeStatus};
use duro::runtime::RuntimeError;
use duro_tests::{SCENARIO, TEST_GUESTS, guest_bytes};
use serde_json::json;

use crate::support::{json, runtime, wait_status};

fn kinds(history: &[duro::model::HistoryEntry]) -> Vec<&'static str> {
    history.iter().map(|e| e.event.kind()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_runs_until_its_event_and_records_history() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt
        .start_new("Workflow", None, &json!("alpha"))
        .await
        .unwrap();
    let running = wait_status(&rt, &id, RuntimeStatus::Running).await;
    assert_eq!(json(&running.input), json!("alpha"));
    assert_eq!(running.output, None);

    rt.raise_event(&id, "Workflow", &json!("alpha"))
        .await
        .unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(json(&done.input), json!("alpha"));
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!("Workflow for alpha stopped")
    );

    let history = rt.history(&id).await.unwrap();
    assert_eq!(
        kinds(&history),
        [
            "ExecutionStarted",
            "OrchestratorStarted",
            "TaskScheduled",
            "OrchestratorStarted",
            "EventRaised",
            "ExecutionCompleted"
        ]
    );
    assert_eq!(done.history_len, history.len() as u64);
    // A finished instance takes no more events.
    let late = rt.raise_event(&id, "Workflow", &json!(1)).await;
    assert!(
        matches!(late, Err(RuntimeError::Finished { .. })),
        "{late:?}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_raised_before_the_wait_are_buffered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;

    // Raised before the first episode has even run.
    let early = rt
        .start_new("Workflow", None, &json!("early"))
        .await
        .unwrap();
    rt.raise_event(&early, "Workflow", &json!(null))
        .await
        .unwrap();
    wait_status(&rt, &early, RuntimeStatus::Completed).await;

    // `Sequence` waits for A then B; B arrives first and must wait its turn.
    let id = rt.start_new("Sequence", None, &json!(null)).await.unwrap();
    wait_status(&rt, &id, RuntimeStatus::Running).await;
    rt.raise_event(&id, "B", &json!("b1")).await.unwrap();
    rt.raise_event(&id, "B", &json!("b2")).await.unwrap();
    // Both B events are recorded (in one episode or two) before A arrives.
    let buffered = rt
        .wait_until(&id, crate::support::PATIENCE, |i| i.history_len >= 6)
        .await
        .unwrap();
    assert_eq!(buffered.status, RuntimeStatus::Running);
    let raised = rt.history(&id).await.unwrap();
    assert_eq!(
        raised
            .iter()
            .filter(|e| e.event.kind() == "EventRaised")
            .count(),
        2,
        "{raised:?}"
    );
    rt.raise_event(&id, "A", &json!("a")).await.unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!(["a", "b1"]));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_workflow_completes_by_timer_or_by_event_and_replays_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let by_timer = rt
        .start_new(
            "WorkflowWithTimeout",
            None,
            &json!({ "name": "t", "timeout_ms": 200 }),
        )
        .await
        .unwrap();
    let by_event = rt
        .start_new(
            "WorkflowWithTimeout",
            None,
            &json!({ "name": "e", "timeout_ms": 600_000 }),
        )
        .await
        .unwrap();
    wait_status(&rt, &by_event, RuntimeStatus::Running).await;
    rt.raise_event(&by_event, "Workflow", &json!({ "ok": true }))
        .await
        .unwrap();

    let timed_out = wait_status(&rt, &by_timer, RuntimeStatus::Completed).await;
    assert_eq!(
        json(timed_out.output.as_deref().unwrap()),
        json!({ "name": "t", "outcome": "timeout", "payload": null })
    );
    assert_eq!(
        json(timed_out.custom_status.as_deref().unwrap()),
        json!("timeout")
    );
    let evented = wait_status(&rt, &by_event, RuntimeStatus::Completed).await;
    assert_eq!(
        json(evented.output.as_deref().unwrap()),
        json!({ "name": "e", "outcome": "event", "payload": { "ok": true } })
    );
    let history = rt.history(&by_timer).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::TimerFired { task: 1, .. }))
    );

    // Replaying either finished history against the same component matches,
    // including the recorded output.
    for id in [&by_timer, &by_event] {
        let check = rt.replay_check(id, guest_bytes(SCENARIO)).await.unwrap();
        assert_eq!(check, Ok(()), "replay of {id}");
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_survive_a_restart_and_due_timers_fire_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let waiting = rt
        .start_new("Workflow", None, &json!("persist"))
        .await
        .unwrap();
    let timed = rt
        .start_new(
            "WorkflowWithTimeout",
            None,
            &json!({ "name": "later", "timeout_ms": 300 }),
        )
        .await
        .unwrap();
    wait_status(&rt, &waiting, RuntimeStatus::Running).await;
    wait_status(&rt, &timed, RuntimeStatus::Running).await;
    drop(rt);
    // The timer falls due while no runtime is up.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rt = runtime(dir.path()).await;
    let fired = wait_status(&rt, &timed, RuntimeStatus::Completed).await;
    assert_eq!(json(fired.output.as_deref().unwrap())["outcome"], "timeout");
    rt.raise_event(&waiting, "Workflow", &json!("persist"))
        .await
        .unwrap();
    wait_status(&rt, &waiting, RuntimeStatus::Completed).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_check_reports_the_first_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt.start_new("Workflow", None, &json!("x")).await.unwrap();
    wait_status(&rt, &id, RuntimeStatus::Running).await;

    assert_eq!(
        rt.replay_check(&id, guest_bytes(SCENARIO)).await.unwrap(),
        Ok(())
    );
    let divergence = rt
        .replay_check(&id, guest_bytes(TEST_GUESTS))
        .await
        .unwrap()
        .expect_err("the test guest's Workflow starts with a timer");
    assert_eq!(divergence.position, 2);
    assert_eq!(divergence.task, Some(0));
    assert_eq!(divergence.expected, "wait-for-external-event(\"Workflow\")");
    assert!(
        divergence.actual.starts_with("called create-timer("),
        "{divergence}"
    );
    assert!(
        divergence
            .to_string()
            .starts_with("non-determinism at history event 2 (task #0)"),
        "{divergence}"
    );
    // Checking changed nothing.
    assert_eq!(
        rt.status(&id).await.unwrap().unwrap().status,
        RuntimeStatus::Running
    );
    rt.shutdown().await;
}

/// Start a `Trio` and wait until its three timers have fired (in one
/// episode); the history positions of the three `TimerFired`.
async fn trio_fired(rt: &duro::runtime::Runtime, input: serde_json::Value) -> (String, Vec<usize>) {
    let id = rt.start_new("Trio", None, &input).await.unwrap();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let history = rt.history(&id).await.unwrap();
        let fired: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].event.kind() == "TimerFired")
            .collect();
        if fired.len() == 3 && rt.is_idle(&id).await.unwrap() {
            assert_eq!(
                fired,
                [fired[0], fired[0] + 1, fired[0] + 2],
                "the timers fire in one run: {:?}",
                kinds(&history)
            );
            return (id, fired);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            kinds(&history)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A run of recorded completions is replayed in one `step-many` call, and
/// the orchestration ends up exactly where one completion per call would
/// have left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_completions_replays_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Every episode replays, so the `Go` episode replays the run.
    let rt = crate::support::cold_runtime(dir.path()).await;
    let (id, _) = trio_fired(&rt, json!({})).await;
    let batched = rt.metrics().batched_completions.get();
    assert_eq!(
        rt.replay_check(&id, guest_bytes(TEST_GUESTS))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        rt.metrics().batched_completions.get() - batched,
        3,
        "the check replayed the three timers in one batch"
    );
    rt.raise_event(&id, "Go", &json!("went")).await.unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!("went"));
    assert_eq!(rt.metrics().batched_completions.get() - batched, 6);
    rt.shutdown().await;
}

/// An orchestration that departs from its history inside a batched run is
/// caught at the very event where it departs, as if stepped one completion
/// at a time: after the first timer, where the history has the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergence_inside_a_batch_is_reported_where_it_happens() {
    let dir = tempfile::tempdir().unwrap();
    let rt = crate::support::cold_runtime(dir.path()).await;
    let (id, fired) = trio_fired(&rt, json!({ "drift": true })).await;
    let divergence = rt
        .replay_check(&id, guest_bytes(TEST_GUESTS))
        .await
        .unwrap()
        .expect_err("replayed, it schedules a fourth timer after the first fires");
    assert_eq!(divergence.position, fired[1], "{divergence}");
    assert_eq!(divergence.task, Some(3), "{divergence}");
    assert_eq!(
        divergence.expected, "no scheduling call (next: timer #1 fired)",
        "{divergence}"
    );
    assert!(
        divergence.actual.starts_with("called create-timer("),
        "{divergence}"
    );
    rt.terminate(&id, None).await.unwrap();
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_replay_fails_only_its_own_instance() {
    let dir = tempfile::tempdir().unwrap();
    // Divergence shows on replay; a warm instance is not replayed (as in
    // Temporal's sticky cache, a changed program is caught when its
    // instance next replays: after an eviction, a restart, an upgrade).
    let rt = crate::support::cold_runtime(dir.path()).await;
    let fickle = rt.start_new("Fickle", None, &json!(null)).await.unwrap();
    let bystander = rt.start_new("Workflow", None, &json!("ok")).await.unwrap();
    wait_status(&rt, &fickle, RuntimeStatus::Running).await;
    wait_status(&rt, &bystander, RuntimeStatus::Running).await;
    let before = rt.history(&fickle).await.unwrap();

    rt.raise_event(&fickle, "Go", &json!(1)).await.unwrap();
    let failed = wait_status(&rt, &fickle, RuntimeStatus::Failed).await;
    let error = json(failed.output.as_deref().unwrap());
    let error = error.as_str().unwrap();
    assert!(
        error.starts_with(
            "non-determinism at history event 2 (task #0): the history has \
             wait-for-external-event(\"Go\"), but the orchestration called create-timer("
        ),
        "{error}"
    );
    let after = rt.history(&fickle).await.unwrap();
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "recorded history is kept"
    );
    assert_eq!(after.last().unwrap().event.kind(), "ExecutionFailed");

    assert_eq!(
        rt.status(&bystander).await.unwrap().unwrap().status,
        RuntimeStatus::Running
    );
    rt.raise_event(&bystander, "Workflow", &json!("ok"))
        .await
        .unwrap();
    wait_status(&rt, &bystander, RuntimeStatus::Completed).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_loops_and_errors_fail_their_own_instance() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let panics = rt.start_new("Panics", None, &json!(null)).await.unwrap();
    let spins = rt.start_new("Spin", None, &json!(null)).await.unwrap();
    let refuses = rt.start_new("Refuses", None, &json!(null)).await.unwrap();
    let hog = rt.start_new("Hog", None, &json!(null)).await.unwrap();
    let bystander = rt
        .start_new("Workflow", None, &json!("fine"))
        .await
        .unwrap();

    let failed = wait_status(&rt, &panics, RuntimeStatus::Failed).await;
    assert!(failed.output.unwrap().contains("trapped"));
    let failed = wait_status(&rt, &spins, RuntimeStatus::Failed).await;
    assert!(
        failed
            .output
            .unwrap()
            .contains("ran for more than 1s in one episode"),
        "spin is stopped by the step budget"
    );
    let failed = wait_status(&rt, &hog, RuntimeStatus::Failed).await;
    assert!(
        failed.output.unwrap().contains("trapped"),
        "the memory limit stops it"
    );
    let failed = wait_status(&rt, &refuses, RuntimeStatus::Failed).await;
    assert_eq!(json(&failed.output.unwrap()), json!("refused on purpose"));

    wait_status(&rt, &bystander, RuntimeStatus::Running).await;
    rt.raise_event(&bystander, "Workflow", &json!(null))
        .await
        .unwrap();
    wait_status(&rt, &bystander, RuntimeStatus::Completed).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_deterministic_across_replays() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt.start_new("Probe", None, &json!(null)).await.unwrap();
    let running = wait_status(&rt, &id, RuntimeStatus::Running).await;
    let first = json(running.custom_status.as_deref().unwrap());
    assert_eq!(
        first["now"], first["ctxNow"],
        "SystemTime::now() is the episode time"
    );
    assert_eq!(first["env"], 0, "no environment variables");
    assert_eq!(first["file"], false, "no filesystem");

    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.raise_event(&id, "Go", &json!(null)).await.unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    let output = json(done.output.as_deref().unwrap());
    // The replayed first step saw the same clock and GUID as the original.
    assert_eq!(output["first"], first);
    assert_ne!(output["guid2"], first["guid"]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_restarts_with_a_fresh_history() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt.start_new("Counter", None, &json!(0)).await.unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!(3));
    assert_eq!(json(&done.input), json!(3));
    let history = rt.history(&id).await.unwrap();
    assert_eq!(
        kinds(&history),
        [
            "ExecutionStarted",
            "OrchestratorStarted",
            "ExecutionCompleted"
        ]
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let unknown = rt.start_new("NoSuch", None, &json!(null)).await;
    assert!(matches!(unknown, Err(RuntimeError::UnknownOrchestration(ref n)) if n == "NoSuch"));
    for bad in ["", "a/b", "a?b", "a#b", "a\\b", "a\nb", &"x".repeat(257)] {
        let result = rt
            .start_new("Workflow", Some(bad.to_string()), &json!(null))
            .await;
        assert!(
            matches!(result, Err(RuntimeError::InvalidInstanceId { .. })),
            "{bad:?}: {result:?}"
        );
    }
    let id = rt
        .start_new("Workflow", Some("fixed-id".into()), &json!("one"))
        .await
        .unwrap();
    assert_eq!(id, "fixed-id");
    let again = rt
        .start_new("Workflow", Some("fixed-id".into()), &json!("two"))
        .await;
    assert!(
        matches!(again, Err(RuntimeError::AlreadyExists(_))),
        "{again:?}"
    );
    assert_eq!(
        json(&rt.status("fixed-id").await.unwrap().unwrap().input),
        json!("one")
    );
    let missing = rt.raise_event("nobody", "Workflow", &json!(null)).await;
    assert!(
        matches!(missing, Err(RuntimeError::NotFound(_))),
        "{missing:?}"
    );
    let not_wasm = rt.register(b"not a component".to_vec(), &["Broken"]).await;
    assert!(
        matches!(not_wasm, Err(RuntimeError::Component(_))),
        "{not_wasm:?}"
    );
    assert!(matches!(
        rt.start_new("Broken", None, &json!(null)).await,
        Err(RuntimeError::UnknownOrchestration(_))
    ));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_of_completes_with_the_first_named_event() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt
        .start_new("FirstOf", None, &json!(["Approve", "Reject", "Escalate"]))
        .await
        .unwrap();
    wait_status(&rt, &id, RuntimeStatus::Running).await;
    // An event nobody waits for is buffered and changes nothing.
    rt.raise_event(&id, "Unrelated", &json!(0)).await.unwrap();
    rt.raise_event(&id, "Reject", &json!({ "why": "late" }))
        .await
        .unwrap();
    // With the instance warm, `Reject` was carried into the episode it
    // started and acknowledged once that episode, which completes the
    // instance, committed: a later event finds it finished. Stored first
    // (no warm cache), it may still be taken and dropped.
    let late = rt.raise_event(&id, "Approve", &json!(true)).await;
    assert!(
        matches!(late, Ok(()) | Err(RuntimeError::Finished { .. })),
        "{late:?}"
    );
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!({ "event": "Reject", "payload": { "why": "late" } })
    );
    assert_eq!(
        rt.replay_check(&id, guest_bytes(SCENARIO)).await.unwrap(),
        Ok(())
    );
    rt.shutdown().await;
}
