//! Entity benchmark: a real `duro serve` process (release build) and
//! clients on keep-alive connections signalling one counter entity over the
//! management API (`POST entities/counter/{key}?op=add`), then waiting until
//! the entity has run them all. Prints operations per second with 1 and
//! with N clients, the host's CPU per operation, and operations per
//! episode commit (operations run / episode commits). Last, one
//! `RESULT {json}` line for `scripts/bench`.
//!
//! `cargo bench -p duro-tests --bench entities -- [--clients 64] [--signals 20000] [--postgres]`

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{API, Client, Server};

/// Send `signals` adds to `counter/key` from `clients` connections; the
/// time until the last has run.
async fn run(host: &str, key: &str, clients: usize, signals: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (host, next, key) = (host.to_string(), next.clone(), key.to_string());
            tokio::spawn(async move {
                let mut client = Client::connect(&host).await;
                let path = format!("{API}/entities/counter/{key}?op=add");
                while next.fetch_add(1, Ordering::Relaxed) < signals {
                    let (code, body) = client.call("POST", &path, "1").await;
                    assert_eq!(code, 202, "{body}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("client");
    }
    let mut client = Client::connect(host).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, state) = client
            .call("GET", &format!("{API}/entities/counter/{key}"), "")
            .await;
        if state.as_u64() == Some(signals as u64) {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the entity has {state} of {signals}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The host's CPU time so far (user + system), from /proc.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let fields: Vec<&str> = stat.rsplit_once(") ").expect("stat").1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// CPU time so far of the processes whose command line contains `needle`
/// (PostgreSQL's backends: `postgres:`), read before the connections close.
fn cpu_of(needle: &str) -> Duration {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            total += std::panic::catch_unwind(|| cpu(pid)).unwrap_or_default();
        }
    }
    total
}

/// A metric's value from `/metrics` (the sum of its series).
fn metric(host: &str, name: &str) -> f64 {
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    let clients = duro_tests::bench_arg("--clients", 64) as usize;
    let signals = duro_tests::bench_arg("--signals", 20_000) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = duro_tests::entity_manifest(dir.path());
    let database = match duro_tests::bench_postgres("entities").await {
        Some((url, schema)) => duro_tests::database_url(&url, &schema),
        None => dir.path().join("bench.db").display().to_string(),
    };
    let server = Server::start(&manifest, std::path::Path::new(&database));
    let host = server.host.clone();
    run(&host, "warm", 1, 100).await;
    let mut result = serde_json::Map::new();

    for (label, n, count) in [
        ("1 client", 1, signals / 10),
        ("N clients", clients, signals),
    ] {
        let (ops0, commits0) = (
            metric(&host, "duro_entity_operations_total"),
            metric(&host, "duro_commit_batch_episodes_count"),
        );
        let (cpu0, pg0) = (cpu(server.pid()), cpu_of("postgres:"));
        let took = run(&host, &format!("k{n}"), n, count).await;
        let used = cpu(server.pid()) - cpu0;
        let pg = cpu_of("postgres:").saturating_sub(pg0);
        let ops = metric(&host, "duro_entity_operations_total") - ops0;
        let commits = metric(&host, "duro_commit_batch_episodes_count") - commits0;
        println!(
            "entity signals ({label}: {n}): {count} in {took:.2?} = {:.0} operations/s, \
             host CPU {:.0} µs/operation (PostgreSQL {:.0} µs), {:.1} operations per episode commit",
            count as f64 / took.as_secs_f64(),
            used.as_micros() as f64 / count as f64,
            pg.as_micros() as f64 / count as f64,
            ops / commits.max(1.0),
        );
        result.insert(
            format!("clients_{n}"),
            serde_json::json!({
                "clients": n,
                "operations_per_s": count as f64 / took.as_secs_f64(),
                "host_cpu_us_per_operation": used.as_micros() as f64 / count as f64,
                "postgres_cpu_us_per_operation": pg.as_micros() as f64 / count as f64,
                "operations_per_episode_commit": ops / commits.max(1.0),
            }),
        );
    }
    let postgres = database.starts_with("postgres");
    println!("store: {}", if postgres { "PostgreSQL" } else { "SQLite" });
    let mut line = serde_json::json!({ "entities": result });
    if postgres {
        line["backend"] = "postgres".into();
    }
    println!("RESULT {line}");
}
