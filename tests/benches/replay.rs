//! Replay cost: how long a cold episode (a fresh instance replaying the
//! whole history) takes for histories of about 100, 1,000 and 10,000
//! events, and one instantiation with a three-event history, through the
//! runtime's `replay_check` (a replay exactly as an episode does it); and
//! what a whole episode (raise an event → committed) costs on such an
//! instance, with the warm-instance cache off (every episode replays) and
//! on (a hot instance is fed only the new event); and how much of a cold
//! replay is reading the history from the store. Real SQLite file, or with
//! `--postgres` a fresh schema of the database in `DURO_BENCH_POSTGRES_URL`.
//!
//! `cargo bench -p duro-tests --bench replay -- [--samples 15] [--postgres]`
//!
//! Prints a table and, last, one `RESULT {json}` line.

use std::time::{Duration, Instant};

use duro::model::RuntimeStatus;
use duro::runtime::{Runtime, RuntimeConfig};
use duro_tests::{COMPILE_CACHE, SCENARIO, TEST_GUESTS, bench_arg, guest_bytes};
use serde_json::json;

/// Median time of `samples` runs of `op`.
async fn median_of(samples: usize, mut op: impl AsyncFnMut()) -> Duration {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        op().await;
        times.push(started.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// Median of `samples` reads of the history of instance `id`: the part of a
/// cold replay that is the store's.
async fn history_cost(rt: &Runtime, id: &str, samples: usize) -> Duration {
    median_of(samples, async || {
        rt.history(id).await.expect("history");
    })
    .await
}

/// Median of `samples` cold replays of instance `id`.
async fn replay_cost(rt: &Runtime, id: &str, component: &[u8], samples: usize) -> Duration {
    median_of(samples, async || {
        let replayed = rt
            .replay_check(id, component.to_vec())
            .await
            .expect("replay");
        assert_eq!(replayed, Ok(()), "{id} diverged");
    })
    .await
}

async fn until_idle(rt: &Runtime, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !rt.is_idle(id).await.unwrap() {
        assert!(Instant::now() < deadline, "{id} never went idle");
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
}

/// Median of `samples` episodes: raise `Go`, wait until it is committed.
async fn episode_cost(rt: &Runtime, id: &str, samples: usize) -> Duration {
    median_of(samples, async || {
        rt.raise_event(id, "Go", &json!("again")).await.unwrap();
        until_idle(rt, id).await;
    })
    .await
}

struct Row {
    events: usize,
    history_read: Duration,
    cold_replay: Duration,
    episode: Duration,
}

/// The rows for one runtime (cache on or off).
async fn measure(warm_instances: usize, samples: usize) -> (Vec<Row>, &'static str) {
    let bench_store = duro_tests::BenchStore::open(&format!("replay_{warm_instances}")).await;
    let config = RuntimeConfig {
        compile_cache: Some(COMPILE_CACHE.into()),
        step_budget: Duration::from_secs(60),
        warm_instances,
        ..Default::default()
    };
    let rt = Runtime::start(config, bench_store.store.clone())
        .await
        .expect("runtime");
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
    rows.push(Row {
        events: rt.history(&id).await.unwrap().len(),
        history_read: history_cost(&rt, &id, samples).await,
        cold_replay: replay_cost(&rt, &id, &scenario, samples).await,
        episode: Duration::ZERO,
    });
    for timers in [5u64, 50, 500, 5000] {
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
        until_idle(&rt, &id).await;
        let events = rt.history(&id).await.unwrap().len();
        let history_read = history_cost(&rt, &id, samples).await;
        let cold_replay = replay_cost(&rt, &id, &guests, samples).await;
        // The first episode after the timers may replay (the cache fills);
        // the median is over the rest.
        let episode = episode_cost(&rt, &id, samples + 1).await;
        rows.push(Row {
            events,
            history_read,
            cold_replay,
            episode,
        });
    }
    rt.shutdown().await;
    let backend = bench_store.backend();
    bench_store.close().await;
    (rows, backend)
}

#[tokio::main]
async fn main() {
    let samples = bench_arg("--samples", 15) as usize;
    let (cold, backend) = measure(0, samples).await;
    let (warm, _) = measure(128, samples).await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:>8}  {:>17}  {:>16}  {:>22}  {:>22}",
        "events",
        "history read (ms)",
        "cold replay (ms)",
        "episode, replayed (ms)",
        "episode, warm (ms)"
    );
    for (c, w) in cold.iter().zip(&warm) {
        println!(
            "{:>8}  {:>17.3}  {:>16.3}  {:>22.3}  {:>22.3}",
            c.events,
            ms(c.history_read),
            ms(c.cold_replay),
            ms(c.episode),
            ms(w.episode)
        );
    }
    let result = json!({
        "backend": backend,
        "replay_cold": cold
            .iter()
            .map(|r| json!({
                "events": r.events,
                "ms": ms(r.cold_replay),
                "history_read_ms": ms(r.history_read),
            }))
            .collect::<Vec<_>>(),
        "episode": cold
            .iter()
            .zip(&warm)
            .skip(1)
            .map(|(c, w)| json!({
                "events": c.events,
                "replayed_ms": ms(c.episode),
                "warm_ms": ms(w.episode),
            }))
            .collect::<Vec<_>>(),
        "samples": samples,
    });
    println!("RESULT {result}");
}
