//! Replay cost: how long a cold episode (a fresh instance replaying the
//! whole history) takes for histories of about 100, 1,000 and 10,000
//! events, and one instantiation with a three-event history; through the
//! runtime's `replay_check`, which replays a stored instance against a
//! component exactly as an episode does, on a real SQLite file.
//!
//! `cargo bench -p duro-tests --bench replay -- [--samples 15]`
//!
//! Prints a table and, last, one `RESULT {json}` line.

use std::time::{Duration, Instant};

use duro::model::RuntimeStatus;
use duro::runtime::{Runtime, RuntimeConfig};
use duro_tests::{COMPILE_CACHE, SCENARIO, TEST_GUESTS, bench_arg, guest_bytes};
use serde_json::json;

/// Median of `samples` cold replays of instance `id`.
async fn replay_cost(rt: &Runtime, id: &str, component: &[u8], samples: usize) -> Duration {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let replayed = rt
            .replay_check(id, component.to_vec())
            .await
            .expect("replay");
        times.push(started.elapsed());
        assert_eq!(replayed, Ok(()), "{id} diverged");
    }
    times.sort();
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let samples = bench_arg("--samples", 15) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = RuntimeConfig {
        compile_cache: Some(COMPILE_CACHE.into()),
        step_budget: Duration::from_secs(60),
        ..Default::default()
    };
    let store = duro::database::open(&dir.path().join("bench.db")).unwrap();
    let rt = Runtime::start(config, store).await.expect("runtime");
    let (guests, scenario) = (guest_bytes(TEST_GUESTS), guest_bytes(SCENARIO));
    rt.register(guests.clone(), &["Timers"])
        .await
        .expect("register");
    rt.register(scenario.clone(), &["Workflow"])
        .await
        .expect("register");

    let mut rows = Vec::new();
    // One instantiation and a three-event replay: the floor of an episode.
    let id = rt
        .start_new("Workflow", None, &json!("floor"))
        .await
        .unwrap();
    rt.wait_until(&id, Duration::from_secs(60), |i| {
        i.status == RuntimeStatus::Running
    })
    .await
    .unwrap();
    let events = rt.history(&id).await.unwrap().len();
    let floor = replay_cost(&rt, &id, &scenario, samples).await;
    rows.push((events, floor));

    for timers in [50u64, 500, 5000] {
        let id = rt.start_new("Timers", None, &json!(timers)).await.unwrap();
        let wanted = 2 * timers as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while rt.history(&id).await.unwrap().len() < wanted {
            assert!(
                Instant::now() < deadline,
                "the history of {id} did not grow"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rt.wait_until(&id, Duration::from_secs(60), |i| {
            i.status == RuntimeStatus::Running
        })
        .await
        .unwrap();
        // Let the episode that took the timers commit.
        while !rt.is_idle(&id).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events = rt.history(&id).await.unwrap().len();
        rows.push((events, replay_cost(&rt, &id, &guests, samples).await));
    }
    rt.shutdown().await;

    println!("{:>10}  {:>16}", "events", "cold replay (ms)");
    for (events, cost) in &rows {
        println!("{events:>10}  {:>16.3}", cost.as_secs_f64() * 1e3);
    }
    let result = json!({
        "replay_cold": rows
            .iter()
            .map(|(events, cost)| json!({ "events": events, "ms": cost.as_secs_f64() * 1e3 }))
            .collect::<Vec<_>>(),
        "samples": samples,
    });
    println!("RESULT {result}");
}
