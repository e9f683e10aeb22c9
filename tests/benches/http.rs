//! HTTP lifecycle benchmark: a real `duro serve` process (release build), and
//! clients on keep-alive connections driving the management API:
//! POST start → poll GET status until Running → POST raiseEvent → poll GET
//! status until 200 (Completed).
//!
//! `cargo bench -p duro-tests --bench http -- [--clients 64] [--lifecycles 4000] [--poll-ms 1] [--long-poll 1]`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{API, Client, Server};

async fn wait_for(client: &mut Client, id: &str, status: &str, poll: Duration) {
    let path = format!("{API}/instances/{id}?showInput=false");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = client.call("GET", &path, "").await;
        if body["runtimeStatus"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {status}: {body}"
        );
        tokio::time::sleep(poll).await;
    }
}

/// Start → Running → raise → Completed; returns raise → Completed. With
/// `long_poll`, Completed is awaited with one `waitForCompletion` request
/// instead of polling.
async fn lifecycle(client: &mut Client, n: usize, poll: Duration, long_poll: bool) -> Duration {
    let (code, body) = client
        .call(
            "POST",
            &format!("{API}/orchestrators/Workflow"),
            &format!("\"b{n}\""),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    wait_for(client, &id, "Running", poll).await;
    let raised = Instant::now();
    let (code, _) = client
        .call(
            "POST",
            &format!("{API}/instances/{id}/raiseEvent/Workflow"),
            "null",
        )
        .await;
    assert_eq!(code, 202);
    if long_poll {
        let path = format!("{API}/instances/{id}?showInput=false&waitForCompletion=30000");
        let (code, body) = client.call("GET", &path, "").await;
        assert_eq!(
            (code, &body["runtimeStatus"]),
            (200, &serde_json::json!("Completed"))
        );
    } else {
        wait_for(client, &id, "Completed", poll).await;
    }
    raised.elapsed()
}

#[tokio::main]
async fn main() {
    let clients = duro_tests::bench_arg("--clients", 64) as usize;
    let lifecycles = duro_tests::bench_arg("--lifecycles", 4000) as usize;
    let poll = Duration::from_millis(duro_tests::bench_arg("--poll-ms", 1));
    let long_poll = duro_tests::bench_arg("--long-poll", 0) != 0;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let server = Server::start(&manifest, &dir.path().join("bench.db"));
    let host = server.host.clone();

    let mut one = Client::connect(&host).await;
    lifecycle(&mut one, usize::MAX, poll, long_poll).await;
    let mut latencies = Vec::new();
    for n in 0..200 {
        latencies.push(lifecycle(&mut one, n, poll, long_poll).await);
    }
    latencies.sort();

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (host, next) = (host.clone(), next.clone());
            tokio::spawn(async move {
                let mut client = Client::connect(&host).await;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= lifecycles {
                        return;
                    }
                    lifecycle(&mut client, 1000 + n, poll, long_poll).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("client");
    }
    let elapsed = started.elapsed();
    drop(server);

    println!(
        "HTTP latency raiseEvent→Completed seen by {}, 1 client: p50 {:?}  p99 {:?}",
        if long_poll {
            "a waitForCompletion long-poll".to_string()
        } else {
            format!("polling every {poll:?}")
        },
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    println!(
        "HTTP throughput: {lifecycles} lifecycles with {clients} clients in {elapsed:.2?} = {:.0} lifecycles/s",
        lifecycles as f64 / elapsed.as_secs_f64()
    );
}
