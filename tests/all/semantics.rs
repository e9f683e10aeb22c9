//! The promises a durable host must keep, each driven with real guests:
//! events survive continue-as-new, dropped tasks give up their waits,
//! timers and commits belong to one execution, GUIDs differ per execution,
//! traps are recorded, a suspension before the first episode holds, and no
//! guest (or starved host) stalls or fails the others.

use std::time::Duration;

use duro::model::{Action, HistoryEvent, Instance, Message, RuntimeStatus, now_millis};
use duro::runtime::{Runtime, RuntimeConfig};
use duro::store::sqlite::SqliteStore;
use duro::store::{ClientStore, RuntimeStore};
use duro_tests::{TEST_GUESTS, guest_bytes};
use serde_json::json;

use crate::support::{PATIENCE, json, runtime, wait_status};

/// A runtime on a database in `dir`, set up as `config` says with the
/// test's compile cache and a 50 ms poll, running the test guests `names`.
async fn runtime_of(dir: &std::path::Path, config: RuntimeConfig, names: &[&str]) -> Runtime {
    let config = RuntimeConfig {
        compile_cache: Some(duro_tests::COMPILE_CACHE.into()),
        poll_interval: Duration::from_millis(50),
        ..config
    };
    let store = duro::database::open(&dir.join("duro.db")).await.unwrap();
    let rt = Runtime::start(config, store).await.unwrap();
    rt.register(guest_bytes(TEST_GUESTS), names).await.unwrap();
    rt
}

fn custom_status(instance: &Instance) -> serde_json::Value {
    instance
        .custom_status
        .as_deref()
        .map(json)
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_keeps_every_event_it_did_not_process() {
    let dir = tempfile::tempdir().unwrap();
    let rt = std::sync::Arc::new(runtime(dir.path()).await);
    let id = rt
        .start_new("EternalCounter", None, &json!(0))
        .await
        .unwrap();
    wait_status(&rt, &id, RuntimeStatus::Running).await;
    // Forty events at once: most arrive while an execution is ending.
    let raises: Vec<_> = (0..40)
        .map(|_| {
            let (rt, id) = (rt.clone(), id.clone());
            tokio::spawn(async move { rt.raise_event(&id, "Add", &json!(1)).await })
        })
        .collect();
    for raise in raises {
        raise.await.unwrap().unwrap();
    }
    let counted = rt
        .wait_until(&id, PATIENCE, |i| custom_status(i) == json!(40))
        .await
        .unwrap();
    assert_eq!(custom_status(&counted), json!(40), "{counted:?}");
    assert_eq!(counted.status, RuntimeStatus::Running);
    // Nothing more is pending: one more event makes exactly 41.
    rt.raise_event(&id, "Add", &json!(1)).await.unwrap();
    let more = rt
        .wait_until(&id, PATIENCE, |i| custom_status(i) == json!(41))
        .await
        .unwrap();
    assert_eq!(custom_status(&more), json!(41));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_wait_takes_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;

    // A fresh wait per round, the old one dropped by `select`.
    let fresh = rt.start_new("Reminders", None, &json!(50)).await.unwrap();
    rt.wait_until(&fresh, PATIENCE, |i| custom_status(i).as_u64() >= Some(2))
        .await
        .unwrap();
    rt.raise_event(&fresh, "Approve", &json!("yes"))
        .await
        .unwrap();
    let done = wait_status(&rt, &fresh, RuntimeStatus::Completed).await;
    let output = json(done.output.as_deref().unwrap());
    assert_eq!(output["approved"], "yes", "{output}");
    assert!(output["reminders"].as_u64().unwrap() >= 2, "{output}");
    let history = rt.history(&fresh).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::TaskCancelled { .. })),
        "dropped tasks are recorded: {history:?}"
    );
    // The recorded cancellations replay identically.
    assert_eq!(
        rt.replay_check(&fresh, guest_bytes(TEST_GUESTS))
            .await
            .unwrap(),
        Ok(())
    );

    // One wait kept alive across the rounds by racing a reference to it.
    let kept = rt.start_new("KeptWait", None, &json!(50)).await.unwrap();
    rt.wait_until(&kept, PATIENCE, |i| custom_status(i).as_u64() >= Some(2))
        .await
        .unwrap();
    rt.raise_event(&kept, "Approve", &json!("sure"))
        .await
        .unwrap();
    let done = wait_status(&rt, &kept, RuntimeStatus::Completed).await;
    let output = json(done.output.as_deref().unwrap());
    assert_eq!(output["approved"], "sure");
    assert_eq!(output["task"], 0, "the first wait was the one kept");

    // Of two waits for one name, the dropped one takes nothing.
    let second = rt
        .start_new("SecondWait", None, &json!(null))
        .await
        .unwrap();
    wait_status(&rt, &second, RuntimeStatus::Running).await;
    rt.raise_event(&second, "E", &json!(7)).await.unwrap();
    let done = wait_status(&rt, &second, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!(7));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_with_a_timeout_gives_none_and_keeps_later_events() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt.start_new("Approval", None, &json!(100)).await.unwrap();
    // The first wait times out; the event raised after it goes to the second.
    rt.wait_until(&id, PATIENCE, |i| {
        custom_status(i) == json!({ "first": null })
    })
    .await
    .unwrap();
    rt.raise_event(&id, "Approve", &json!("late"))
        .await
        .unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!({ "first": null, "second": "late" })
    );
    // In time: the payload.
    let id = rt
        .start_new("Approval", None, &json!(600_000))
        .await
        .unwrap();
    wait_status(&rt, &id, RuntimeStatus::Running).await;
    rt.raise_event(&id, "Approve", &json!(1)).await.unwrap();
    rt.raise_event(&id, "Approve", &json!(2)).await.unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!({ "first": 1, "second": 2 })
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_of_an_earlier_execution_completes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt
        .start_new("TimerAfterContinue", None, &json!(0))
        .await
        .unwrap();
    let first = wait_status(&rt, &id, RuntimeStatus::Running).await;
    rt.raise_event(&id, "Go", &json!(null)).await.unwrap();
    // Generation 1 has scheduled its timer (task #0).
    rt.wait_until(&id, PATIENCE, |i| {
        i.execution_id != first.execution_id && i.history_len >= 4
    })
    .await
    .unwrap();

    // What a timer of generation 0 firing late leaves in the inbox: the
    // same task number as generation 1's timer.
    let store = SqliteStore::open(dir.path().join("duro.db")).unwrap();
    let stale = Message::TimerFired {
        task: 0,
        fire_at: now_millis(),
        execution: Some(first.execution_id.clone()),
    };
    store.enqueue(&id, &stale, now_millis()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = rt.status(&id).await.unwrap().unwrap();
    assert_eq!(still.status, RuntimeStatus::Running, "{still:?}");

    rt.raise_event(&id, "Go", &json!(null)).await.unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!("event"));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guids_differ_per_execution_and_per_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    let id = rt
        .start_new("Guids", Some("guids".into()), &json!([]))
        .await
        .unwrap();
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    let first: Vec<String> = serde_json::from_str(done.output.as_deref().unwrap()).unwrap();
    assert_eq!(first.len(), 3);
    assert!(
        first[0] != first[1] && first[1] != first[2] && first[0] != first[2],
        "one GUID per execution: {first:?}"
    );
    // The same id started again (with its latest input, the first two
    // GUIDs) is a new execution: its GUID is none of those seen before.
    rt.restart(&id, false).await.unwrap();
    let again = rt
        .wait_until(&id, PATIENCE, |i| {
            i.status == RuntimeStatus::Completed && i.output != done.output
        })
        .await
        .unwrap();
    let second: Vec<String> = serde_json::from_str(again.output.as_deref().unwrap()).unwrap();
    assert_eq!(second.len(), 3);
    assert_eq!(second[..2], first[..2]);
    assert!(!first.contains(&second[2]), "{first:?} / {second:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_recorded_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    for name in ["Panics", "Spin"] {
        let id = rt.start_new(name, None, &json!(null)).await.unwrap();
        let failed = wait_status(&rt, &id, RuntimeStatus::Failed).await;
        let history = rt.history(&id).await.unwrap();
        let last = &history.last().unwrap().event;
        let HistoryEvent::ExecutionFailed { error } = last else {
            panic!("{name}: the history ends with {last:?}");
        };
        assert_eq!(
            json(failed.output.as_deref().unwrap()),
            json!(error),
            "{name}: status and history agree"
        );
        assert_eq!(failed.history_len, history.len() as u64);
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_before_the_first_episode_holds() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("duro.db");
    // Created and suspended while no host runs: its first episode sees both.
    let bytes = guest_bytes(TEST_GUESTS);
    let digest = duro::engine::digest(&bytes);
    {
        let store = SqliteStore::open(&database).unwrap();
        let now = now_millis();
        store.put_component(&digest, &bytes, now).await.unwrap();
        store
            .create_instance(&Instance::pending(
                "held".into(),
                "Sequence".into(),
                "null".into(),
                digest.clone(),
                now,
                None,
            ))
            .await
            .unwrap();
        store
            .enqueue("held", &Message::Suspend { reason: None }, now)
            .await
            .unwrap();
        store.release("held").await.unwrap();
    }
    let rt = runtime(dir.path()).await;
    wait_status(&rt, "held", RuntimeStatus::Suspended).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let history = rt.history("held").await.unwrap();
    assert!(
        !history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::TaskScheduled { .. })),
        "the orchestration ran while suspended: {history:?}"
    );
    rt.resume("held", None).await.unwrap();
    wait_status(&rt, "held", RuntimeStatus::Running).await;
    rt.raise_event("held", "A", &json!(1)).await.unwrap();
    rt.raise_event("held", "B", &json!(2)).await.unwrap();
    let done = wait_status(&rt, "held", RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!([1, 2]));
    assert_eq!(
        rt.replay_check("held", bytes).await.unwrap(),
        Ok(()),
        "the history replays"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_guest_does_not_stall_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // Spins until its one-second budget stops it; the quick ones are
    // started right after it, most likely claimed in the same batch.
    let slow = rt.start_new("Spin", None, &json!(null)).await.unwrap();
    let quick = start_sequences(&rt, 6).await;
    for id in &quick {
        rt.raise_event(id, "A", &json!("a")).await.unwrap();
        rt.raise_event(id, "B", &json!("b")).await.unwrap();
    }
    for id in &quick {
        wait_status(&rt, id, RuntimeStatus::Completed).await;
    }
    let spinning = rt.status(&slow).await.unwrap().unwrap();
    assert!(
        !spinning.status.is_terminal(),
        "the quick instances waited for the slow one: {spinning:?}"
    );
    wait_status(&rt, &slow, RuntimeStatus::Failed).await;

    // A WASI sleep returns at once on the episode's clock.
    let sleeper = rt.start_new("StdSleep", None, &json!(null)).await.unwrap();
    wait_status(&rt, &sleeper, RuntimeStatus::Running).await;
    rt.raise_event(&sleeper, "Go", &json!(null)).await.unwrap();
    let done = wait_status(&rt, &sleeper, RuntimeStatus::Completed).await;
    assert_eq!(json(done.output.as_deref().unwrap()), json!("slept"));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_spent_while_the_host_was_starved_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path()).await;
    // Advancing the epoch as fast as a thread can makes every deadline pass
    // at once, as if the host had been starved for the whole budget: the
    // guests got almost no CPU, so their episodes are retried, not failed.
    let engine = rt.engine().wasmtime().clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                engine.increment_epoch();
            }
        })
    };
    let ids: Vec<String> = start_sequences(&rt, 4).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for id in &ids {
        let instance = rt.status(id).await.unwrap().unwrap();
        assert_ne!(instance.status, RuntimeStatus::Failed, "{instance:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();
    for id in &ids {
        wait_status(&rt, id, RuntimeStatus::Running).await;
        rt.raise_event(id, "A", &json!(1)).await.unwrap();
        rt.raise_event(id, "B", &json!(2)).await.unwrap();
        wait_status(&rt, id, RuntimeStatus::Completed).await;
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_guest_pool_delays_episodes_and_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        // Room for one guest, four threads that want one each.
        guest_instances: 1,
        episode_threads: 4,
        ..Default::default()
    };
    let rt = runtime_of(dir.path(), config, &["Crunch"]).await;
    // Episodes of tens of milliseconds: they overlap, and all but one at a
    // time find the pool full.
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(rt.start_new("Crunch", None, &json!(20)).await.unwrap());
    }
    for id in &ids {
        wait_status(&rt, id, RuntimeStatus::Running).await;
        rt.raise_event(id, "Go", &json!(null)).await.unwrap();
    }
    for id in &ids {
        let done = wait_status(&rt, id, RuntimeStatus::Completed).await;
        assert_eq!(json(done.output.as_deref().unwrap()), json!(20_000_000));
    }
    rt.shutdown().await;
}

/// A raise that meets an episode computing for long waits a moment for it
/// (to go into the next episode), then is stored by a write of its own:
/// its answer never waits for a guest's computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_does_not_wait_for_a_long_episode() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        step_budget: Duration::from_secs(20),
        ..Default::default()
    };
    let rt = runtime_of(dir.path(), config, &["Crunch"]).await;
    // Its first episode computes for hundreds of milliseconds, leased here
    // from the moment the start returns.
    let id = rt.start_new("Crunch", None, &json!(1000)).await.unwrap();
    rt.raise_event(&id, "Go", &json!(null)).await.unwrap();
    let history = rt.history(&id).await.unwrap();
    assert!(
        !history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::OrchestratorStarted { .. })),
        "the raise was answered only after the long episode committed: {history:?}"
    );
    let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
    assert_eq!(
        json(done.output.as_deref().unwrap()),
        json!(1_000_000_000u64)
    );
    let history = rt.history(&id).await.unwrap();
    let raised = (history.iter())
        .filter(|e| matches!(e.event, HistoryEvent::EventRaised { .. }))
        .count();
    assert_eq!(raised, 1, "{history:?}");
    rt.shutdown().await;
}

/// A start carried into its first episode is answered once that episode's
/// commit created the instance, unless the episode is slow: then the start
/// is stored on its own and answered at once. Live ids refuse and finished
/// ids restart either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_goes_into_its_first_episode_unless_it_is_slow() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        step_budget: Duration::from_secs(20),
        ..Default::default()
    };
    let rt = runtime_of(dir.path(), config, &["Crunch"]).await;
    let first_steps = |history: &[duro::model::HistoryEntry]| {
        (history.iter())
            .filter(|e| matches!(e.event, HistoryEvent::OrchestratorStarted { .. }))
            .count()
    };
    // The first start of an orchestration on a host is stored on its own:
    // its first episode is quick, so the next ones are carried.
    rt.start_new("Crunch", Some("taught".into()), &json!(0))
        .await
        .unwrap();
    wait_status(&rt, "taught", RuntimeStatus::Running).await;
    let carried = rt.metrics().carried_starts.get();
    rt.start_new("Crunch", Some("quick".into()), &json!(0))
        .await
        .unwrap();
    assert_eq!(rt.metrics().carried_starts.get(), carried + 1);
    let history = rt.history("quick").await.unwrap();
    assert_eq!(
        first_steps(&history),
        1,
        "created with its first episode: {history:?}"
    );
    assert!(
        rt.pending("quick").await.unwrap().inbox.is_empty(),
        "the start was taken"
    );

    // Its live id refuses a start, carried or not; the instance is untouched.
    let again = rt
        .start_new("Crunch", Some("quick".into()), &json!(0))
        .await;
    assert!(
        matches!(again, Err(duro::runtime::RuntimeError::AlreadyExists(_))),
        "{again:?}"
    );
    assert_eq!(rt.history("quick").await.unwrap(), history);

    // Slow: carried, then taken back and stored before the episode ends.
    rt.start_new("Crunch", Some("slow".into()), &json!(1000))
        .await
        .unwrap();
    let history = rt.history("slow").await.unwrap();
    assert_eq!(
        first_steps(&history),
        0,
        "the start waited for its episode: {history:?}"
    );
    assert_eq!(rt.metrics().carried_starts.get(), carried + 1);
    for id in ["quick", "slow"] {
        rt.raise_event(id, "Go", &json!(null)).await.unwrap();
        wait_status(&rt, id, RuntimeStatus::Completed).await;
        let history = rt.history(id).await.unwrap();
        let started = (history.iter())
            .filter(|e| matches!(e.event, HistoryEvent::ExecutionStarted { .. }))
            .count();
        assert_eq!(started, 1, "{id}: {history:?}");
    }
    let slow = rt.status("slow").await.unwrap().unwrap();
    assert_eq!(
        json(slow.output.as_deref().unwrap()),
        json!(1_000_000_000u64)
    );

    // Finished, its id starts again (carried: the last first episode of
    // `Crunch` here was the slow one's, so one quick run teaches it again).
    let teacher = rt.start_new("Crunch", None, &json!(0)).await.unwrap();
    wait_status(&rt, &teacher, RuntimeStatus::Running).await;
    rt.start_new("Crunch", Some("quick".into()), &json!(0))
        .await
        .unwrap();
    assert_eq!(rt.metrics().carried_starts.get(), carried + 2);
    let history = rt.history("quick").await.unwrap();
    assert_eq!(first_steps(&history), 1, "{history:?}");
    assert_eq!(
        rt.status("quick").await.unwrap().unwrap().status,
        RuntimeStatus::Running
    );
    rt.shutdown().await;
}

async fn start_sequences(rt: &duro::runtime::Runtime, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(rt.start_new("Sequence", None, &json!(null)).await.unwrap());
    }
    ids
}

/// A hot instance is stepped warm, without replaying its history, and
/// ends exactly as a replayed one does: same output, same history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_instance_skips_replay_and_records_the_same_history() {
    let run = |warm_instances: usize| async move {
        let dir = tempfile::tempdir().unwrap();
        let config = RuntimeConfig {
            warm_instances,
            ..Default::default()
        };
        let rt = runtime_of(dir.path(), config, &["Program"]).await;
        // Waits, a timer, a race and an event for a wait not yet made: each
        // its own episode. (The timer is due at once, so the runtime is idle
        // only once it has fired: the history's order does not depend on
        // the machine's speed.)
        let program = json!({
            "ops": [{"wait": "a"}, {"timer": 0}, {"race": ["b", 60000]}, {"wait": "c"}, {"wait": "d"}],
            "log": []
        });
        let id = rt
            .start_new("Program", Some("p".into()), &program)
            .await
            .unwrap();
        for (name, payload) in [("a", 1), ("d", 4), ("b", 2), ("c", 3)] {
            wait_status(&rt, &id, RuntimeStatus::Running).await;
            rt.raise_event(&id, name, &json!(payload)).await.unwrap();
            // Idle twice, 30 ms apart: a moment between the commit that
            // schedules the zero-length timer and its firing has once looked
            // idle in CI (not reproduced since), and the next event must not
            // join that timer's episode.
            let deadline = std::time::Instant::now() + crate::support::PATIENCE;
            let mut idle_for = 0;
            while idle_for < 2 {
                assert!(std::time::Instant::now() < deadline);
                if rt.is_idle(&id).await.unwrap() {
                    idle_for += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                } else {
                    idle_for = 0;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let done = wait_status(&rt, &id, RuntimeStatus::Completed).await;
        let history: Vec<_> = rt
            .history(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| match e.event {
                // Episode times differ between runs.
                HistoryEvent::OrchestratorStarted { .. } => "OrchestratorStarted".to_string(),
                HistoryEvent::TaskScheduled {
                    task,
                    action: Action::CreateTimer { .. },
                } => {
                    format!("timer #{task}")
                }
                HistoryEvent::TimerFired { task, .. } => format!("fired #{task}"),
                other => format!("{other:?}"),
            })
            .collect();
        let stats = rt.warm_stats();
        rt.shutdown().await;
        (done.output, history, stats)
    };
    let (warm_output, warm_history, (hits, _)) = run(16).await;
    let (cold_output, cold_history, (cold_hits, _)) = run(0).await;
    assert_eq!(warm_output, cold_output);
    assert_eq!(warm_history, cold_history);
    assert_eq!(cold_hits, 0);
    assert!(hits >= 3, "only {hits} warm episodes");
}
