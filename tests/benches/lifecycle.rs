//! Lifecycle benchmark: start → (Running) → raise event → Completed, through
//! the runtime's public API on a real SQLite file (WAL, synchronous=FULL),
//! or with `--postgres` on a fresh schema of the database in
//! `DURO_BENCH_POSTGRES_URL`.
//!
//! `cargo bench -p duro-tests --bench lifecycle -- [--clients 64] [--lifecycles 2000] [--latency-samples 200] [--postgres]`
//!
//! Reports lifecycles per second at N concurrent clients, and the latency
//! from raising the event to seeing the instance Completed with one client;
//! last, one `RESULT {json}` line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duro::model::RuntimeStatus;
use duro::runtime::{Runtime, RuntimeConfig};
use duro_tests::{COMPILE_CACHE, SCENARIO, bench_arg, guest_bytes};
use serde_json::json;

async fn lifecycle(rt: &Runtime, n: usize) -> Duration {
    let id = rt
        .start_new("Workflow", None, &json!(format!("bench-{n}")))
        .await
        .expect("start");
    let patience = Duration::from_secs(60);
    let running = rt
        .wait_until(&id, patience, |i| i.status == RuntimeStatus::Running)
        .await
        .expect("status");
    assert_eq!(running.status, RuntimeStatus::Running);
    let raised = Instant::now();
    rt.raise_event(&id, "Workflow", &json!(null))
        .await
        .expect("raise");
    let done = rt
        .wait_until(&id, patience, |i| i.status == RuntimeStatus::Completed)
        .await
        .expect("status");
    assert_eq!(done.status, RuntimeStatus::Completed);
    raised.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let clients = bench_arg("--clients", 64) as usize;
    let lifecycles = bench_arg("--lifecycles", 2000) as usize;
    let samples = bench_arg("--latency-samples", 200) as usize;
    let bench_store = duro_tests::BenchStore::open("lifecycle").await;
    let config = RuntimeConfig {
        compile_cache: Some(COMPILE_CACHE.into()),
        ..Default::default()
    };
    let rt = Arc::new(
        Runtime::start(config, bench_store.store.clone())
            .await
            .expect("runtime"),
    );
    rt.register(guest_bytes(SCENARIO), &["Workflow"])
        .await
        .expect("register");
    // Warm up: compile, first instantiation.
    lifecycle(&rt, usize::MAX).await;

    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        latencies.push(lifecycle(&rt, n).await);
    }
    latencies.sort();

    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (rt, next) = (rt.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= lifecycles {
                        return;
                    }
                    lifecycle(&rt, samples + n).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("client");
    }
    let elapsed = started.elapsed();

    println!(
        "latency raise→Completed, 1 client, {samples} samples: p50 {:?}  p99 {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "throughput: {lifecycles} lifecycles (start → Running → event → Completed) \
         with {clients} clients in {elapsed:.2?} = {:.0} lifecycles/s",
        lifecycles as f64 / elapsed.as_secs_f64()
    );
    let per_second = lifecycles as f64 / elapsed.as_secs_f64();
    let result = json!({
        "backend": bench_store.backend(),
        "in_process": {
            "clients": clients,
            "lifecycles_per_s": per_second,
            // Each lifecycle is two episodes (start, then the event).
            "episodes_per_s": 2.0 * per_second,
            "raise_to_done_p50_ms": percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            "raise_to_done_p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        }
    });
    println!("RESULT {result}");
    if let Ok(rt) = Arc::try_unwrap(rt) {
        rt.shutdown().await;
    }
    bench_store.close().await;
}
