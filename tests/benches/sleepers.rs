//! What sleeping instances cost: a real `duro serve` (release build) with
//! 0, 10,000 and 100,000 scenario instances started and waiting for their
//! event; the server's resident memory at each level (all of it, and the
//! anonymous part without the database pages SQLite maps), right after the
//! last start and after an idle period (when the host has dropped its warm
//! instances and freed its caches), and the database's bytes (file and WAL)
//! per sleeping instance. Between 0 and 10,000 a burst of instances is
//! started and terminated: 0 sleeping again, on a host that has run guests.
//!
//! With `--postgres`, the server keeps its state in a fresh schema of the
//! database in `DURO_BENCH_POSTGRES_URL`, and the bytes are its tables'
//! (indexes included); the memory is the host's alone.
//!
//! `cargo bench -p duro-tests --bench sleepers -- [--max 100000] [--clients 32] [--burst 1000] [--idle-release-ms 2000] [--postgres]`
//!
//! Prints a table and, last, one `RESULT {json}` line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{API, Client, Server};

/// POST `path(n)` for each `n` in `from..to`, `clients` at a time; each
/// must answer 202.
async fn post_each(
    host: &str,
    from: usize,
    to: usize,
    clients: usize,
    path: fn(usize) -> (String, String),
) {
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
                    let (path, body) = path(n);
                    let (status, reply) = client.call("POST", &path, &body).await;
                    assert_eq!(status, 202, "{path}: {reply}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

fn start_sleeper(n: usize) -> (String, String) {
    let path = format!("{API}/orchestrators/Workflow/sleeper-{n}");
    (path, format!("\"s{n}\""))
}

fn start_burst(n: usize) -> (String, String) {
    let path = format!("{API}/orchestrators/Workflow/burst-{n}");
    (path, format!("\"b{n}\""))
}

fn terminate_burst(n: usize) -> (String, String) {
    let path = format!("{API}/instances/burst-{n}/terminate?reason=done");
    (path, String::new())
}

/// Wait until instance `id` is `status` (the host claims in order: every
/// episode before its own has run), then a moment for the commits.
async fn settle(host: &str, id: &str, status: &str) {
    let mut client = Client::connect(host).await;
    let path = format!("{API}/instances/{id}");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (_, body) = client.call("GET", &path, "").await;
        if body["runtimeStatus"] == status {
            break;
        }
        assert!(Instant::now() < deadline, "{id} never became {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// One measured level.
struct Row {
    label: &'static str,
    sleeping: usize,
    /// (RSS, anonymous RSS) right after the level was reached, then after
    /// an idle period.
    busy: (u64, u64),
    idle: (u64, u64),
    database: u64,
}

fn sqlite_bytes(dir: &std::path::Path) -> u64 {
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
    let postgres = duro_tests::bench_postgres("sleepers").await;
    let database = match &postgres {
        Some((url, schema)) => duro_tests::database_url(url, schema).into(),
        None => dir.path().join("duro.db"),
    };
    let database_bytes = || match &postgres {
        Some((url, schema)) => {
            duro_tests::block_on(duro_store_postgres::PgStore::schema_bytes(url, schema))
                .expect("PostgreSQL reachable")
        }
        None => sqlite_bytes(dir.path()),
    };
    let server = Server::start_with(
        &manifest,
        &database,
        &[("DURO_IDLE_RELEASE_MS", &idle_ms.to_string())],
    );
    let burst = duro_tests::bench_arg("--burst", 1000) as usize;
    const AFTER_BURST: &str = "0 after a burst";
    let mut levels = vec![
        ("0", 0),
        (AFTER_BURST, 0),
        ("10,000", 10_000),
        ("100,000", 100_000),
    ];
    levels.retain(|&(label, n)| n <= max && (burst > 0 || label != AFTER_BURST));
    let mut rows: Vec<Row> = Vec::new();
    let mut started = 0;
    for (label, level) in levels {
        if level > started {
            let begun = Instant::now();
            post_each(&server.host, started, level, clients, start_sleeper).await;
            settle(&server.host, &format!("sleeper-{}", level - 1), "Running").await;
            eprintln!(
                "{level} sleeping ({:.1?} to start the last {})",
                begun.elapsed(),
                level - started
            );
            started = level;
        } else if label == AFTER_BURST {
            post_each(&server.host, 0, burst, clients, start_burst).await;
            settle(&server.host, &format!("burst-{}", burst - 1), "Running").await;
            post_each(&server.host, 0, burst, clients, terminate_burst).await;
            settle(&server.host, &format!("burst-{}", burst - 1), "Terminated").await;
            eprintln!("{burst} instances started and terminated");
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let busy = server.resident_bytes();
        // Warm instances go after one idle period, the caches after the
        // first whole period without an episode: wait for both.
        tokio::time::sleep(Duration::from_millis(2 * idle_ms + 500)).await;
        rows.push(Row {
            label,
            sleeping: level,
            busy,
            idle: server.resident_bytes(),
            database: database_bytes(),
        });
    }
    println!(
        "{:>16}  {:>16}  {:>21}  {:>10}  {:>15}  {:>14}  {:>16}",
        "sleeping",
        "busy RSS (MiB)",
        "busy anon RSS (MiB)",
        "RSS (MiB)",
        "anon RSS (MiB)",
        "database (MiB)",
        "bytes / sleeper"
    );
    // Per sleeper: beyond the database of the last level without one.
    let base_db = rows
        .iter()
        .rfind(|r| r.sleeping == 0)
        .map_or(0, |r| r.database);
    let per_sleeper = |row: &Row| match row.sleeping {
        0 => 0,
        n => row.database.saturating_sub(base_db) / n as u64,
    };
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    for row in &rows {
        println!(
            "{:>16}  {:>16.1}  {:>21.1}  {:>10.1}  {:>15.1}  {:>14.1}  {:>16}",
            row.label,
            mib(row.busy.0),
            mib(row.busy.1),
            mib(row.idle.0),
            mib(row.idle.1),
            mib(row.database),
            per_sleeper(row)
        );
    }
    let result = serde_json::json!({
        "backend": if postgres.is_some() { "postgres" } else { "sqlite" },
        "idle_release_ms": idle_ms,
        "burst": burst,
        "sleepers": rows.iter().map(|row| serde_json::json!({
            "level": row.label,
            "sleeping": row.sleeping,
            "busy_rss_bytes": row.busy.0,
            "busy_anon_rss_bytes": row.busy.1,
            "rss_bytes": row.idle.0,
            "anon_rss_bytes": row.idle.1,
            "database_bytes": row.database,
            "bytes_per_sleeper": per_sleeper(row),
        })).collect::<Vec<_>>(),
    });
    println!("RESULT {result}");
    drop(server);
    if let Some((url, schema)) = &postgres {
        duro_store_postgres::PgStore::drop_schema(url, schema)
            .await
            .expect("PostgreSQL reachable");
    }
}
