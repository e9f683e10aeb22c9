//! What sleeping instances cost: a real `duro serve` (release build) with
//! 0, 10,000 and 100,000 scenario instances started and waiting for their
//! event; the server's resident memory at each level (all of it, and the
//! anonymous part without the database pages SQLite maps), and the
//! database's bytes (file and WAL) per sleeping instance.
//!
//! `cargo bench -p duro-tests --bench sleepers -- [--max 100000] [--clients 32]`
//!
//! Prints a table and, last, one `RESULT {json}` line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{API, Client, Server};

/// Start instances `from..to`, `clients` at a time.
async fn start(host: &str, from: usize, to: usize, clients: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (host, next) = (host.to_string(), next.clone());
            tokio::spawn(async move {
                let mut client = Client::connect(&host).await;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        break;
                    }
                    let path = format!("{API}/orchestrators/Workflow/sleeper-{n}");
                    let (status, body) = client.call("POST", &path, &format!("\"s{n}\"")).await;
                    assert_eq!(status, 202, "{body}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

/// Wait until the last instance started is Running (every episode before it
/// has run; the host claims in order), then a moment for the commits.
async fn settle(host: &str, last: usize) {
    let mut client = Client::connect(host).await;
    let path = format!("{API}/instances/sleeper-{last}");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (_, body) = client.call("GET", &path, "").await;
        if body["runtimeStatus"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "sleeper-{last} never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn database_bytes(dir: &std::path::Path) -> u64 {
    ["duro.db", "duro.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::main]
async fn main() {
    let max = duro_tests::bench_arg("--max", 100_000) as usize;
    let clients = duro_tests::bench_arg("--clients", 32) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let idle_ms = duro_tests::bench_arg("--idle-release-ms", 2000);
    let server = Server::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &[("DURO_IDLE_RELEASE_MS", &idle_ms.to_string())],
    );
    let mut levels = vec![0, 10_000, 100_000];
    levels.retain(|&n| n <= max);
    let mut rows = Vec::new();
    let mut started = 0;
    for level in levels {
        if level > started {
            let begun = Instant::now();
            start(&server.host, started, level, clients).await;
            settle(&server.host, level - 1).await;
            eprintln!(
                "{level} sleeping ({:.1?} to start the last {})",
                begun.elapsed(),
                level - started
            );
            started = level;
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let busy = server.resident_bytes();
        // Warm instances go after one idle period, the caches after the
        // first whole period without an episode: wait for both.
        tokio::time::sleep(Duration::from_millis(2 * idle_ms + 500)).await;
        rows.push((
            level,
            busy,
            server.resident_bytes(),
            database_bytes(dir.path()),
        ));
    }
    println!(
        "{:>10}  {:>16}  {:>21}  {:>10}  {:>15}  {:>14}  {:>16}",
        "sleeping",
        "busy RSS (MiB)",
        "busy anon RSS (MiB)",
        "RSS (MiB)",
        "anon RSS (MiB)",
        "database (MiB)",
        "bytes / sleeper"
    );
    let base_db = rows[0].3;
    let per_sleeper = |level: usize, db: u64| {
        if level > 0 {
            (db - base_db) / level as u64
        } else {
            0
        }
    };
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    for &(level, (busy_rss, busy_anon), (rss, anon), db) in &rows {
        println!(
            "{level:>10}  {:>16.1}  {:>21.1}  {:>10.1}  {:>15.1}  {:>14.1}  {:>16}",
            mib(busy_rss),
            mib(busy_anon),
            mib(rss),
            mib(anon),
            mib(db),
            per_sleeper(level, db)
        );
    }
    let result = serde_json::json!({
        "idle_release_ms": idle_ms,
        "sleepers": rows.iter().map(|&(level, (busy_rss, busy_anon), (rss, anon), db)| serde_json::json!({
            "sleeping": level,
            "busy_rss_bytes": busy_rss,
            "busy_anon_rss_bytes": busy_anon,
            "rss_bytes": rss,
            "anon_rss_bytes": anon,
            "database_bytes": db,
            "bytes_per_sleeper": per_sleeper(level, db),
        })).collect::<Vec<_>>(),
    });
    println!("RESULT {result}");
}
