//! Instance queries at scale, over HTTP against a real `duro serve` (release
//! build): fill the database with N finished instances (`duro fill`), then
//! time filtered list pages (first and deep continuation pages), the lookup
//! by input that the seed's Check and Stop make, and a bulk purge of 100,000
//! instances while a probe keeps starting instances (the purge must not
//! stall the host).
//!
//! `cargo bench -p duro-tests --bench queries -- [--instances 1000000] [--purge 100000] [--requests 200]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{API, Client, Server, duro};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Time `requests` GETs of `path` (with `continuation`), after one warm-up.
async fn time_page(
    client: &mut Client,
    label: &str,
    path: &str,
    continuation: Option<&str>,
    requests: usize,
) {
    let first = client.request("GET", path, "", continuation).await;
    assert_eq!(first.status, 200, "{label}: {}", first.json);
    let rows = first.json.as_array().map_or(0, Vec::len);
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let reply = client.request("GET", path, "", continuation).await;
        samples.push(started.elapsed());
        assert_eq!(reply.status, 200);
    }
    println!(
        "| {label} | {rows} | {} | {} |",
        ms(percentile(&mut samples, 0.5)),
        ms(percentile(&mut samples, 0.99))
    );
}

#[tokio::main]
async fn main() {
    let instances = duro_tests::bench_arg("--instances", 1_000_000) as usize;
    let purge = (duro_tests::bench_arg("--purge", 100_000) as usize).min(instances);
    let requests = duro_tests::bench_arg("--requests", 200) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let database = dir.path().join("bench.db");

    // Spread over the last hour: the seed's ±20-minute window holds a third.
    let started = Instant::now();
    let filled = duro()
        .args([
            "fill",
            "--count",
            &instances.to_string(),
            "--spread-secs",
            "3600",
        ])
        .arg("--manifest")
        .arg(&manifest)
        .arg("--database")
        .arg(&database)
        .output()
        .expect("duro fill runs");
    assert!(
        filled.status.success(),
        "{}",
        String::from_utf8_lossy(&filled.stderr)
    );
    let fill_time = started.elapsed();
    let bytes = std::fs::metadata(&database).map_or(0, |m| m.len());
    println!(
        "filled {instances} finished instances in {fill_time:.1?} ({:.0}/s), database {} MiB",
        instances as f64 / fill_time.as_secs_f64(),
        bytes >> 20
    );

    let server = Server::start(&manifest, &database);
    let mut client = Client::connect(&server.host).await;
    let window = "createdTimeFrom=2000-01-01T00:00:00Z&createdTimeTo=2999-01-01T00:00:00Z";

    println!("\n| query over {instances} stored instances | rows | p50 | p99 |");
    println!("| --- | --- | --- | --- |");
    time_page(
        &mut client,
        "list, no filter, first page (top=100)",
        &format!("{API}/instances?top=100"),
        None,
        requests,
    )
    .await;
    let filtered =
        format!("{API}/instances?name=Workflow&runtimeStatus=Completed,Failed&{window}&top=100");
    time_page(
        &mut client,
        "name + 2 statuses + window, first page (top=100)",
        &filtered,
        None,
        requests,
    )
    .await;
    // A continuation deep in the listing: 50 pages of 1000 in.
    let mut token = None;
    for _ in 0..50 {
        let page = client
            .request(
                "GET",
                &format!(
                    "{API}/instances?name=Workflow&runtimeStatus=Completed,Failed&{window}&top=1000"
                ),
                "",
                token.as_deref(),
            )
            .await;
        token = page.continuation;
    }
    time_page(
        &mut client,
        "same, continued 50,000 rows deep",
        &filtered,
        token.as_deref(),
        requests,
    )
    .await;
    time_page(
        &mut client,
        "newest first, first page (top=100)",
        &format!("{API}/instances?runtimeStatus=Completed&newestFirst=true&top=100"),
        None,
        requests,
    )
    .await;
    let middle = instances / 2;
    time_page(
        &mut client,
        "find by name + input + window (the seed's Check/Stop)",
        &format!(
            "{API}/instances?name=Workflow&input=%22fill-{middle}%22&runtimeStatus=Pending,Running,Suspended,Completed&{window}&newestFirst=true&top=1"
        ),
        None,
        requests,
    )
    .await;
    time_page(
        &mut client,
        "id prefix (top=100)",
        &format!(
            "{API}/instances?instanceIdPrefix=fill-{}&top=100",
            middle / 10
        ),
        None,
        requests,
    )
    .await;

    // Purge the oldest `purge` instances while a probe keeps starting new ones.
    let (_, last) = client
        .call("GET", &format!("{API}/instances/fill-{}", purge - 1), "")
        .await;
    let to = last["createdTime"]
        .as_str()
        .expect("created time")
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (host, stop) = (server.host.clone(), stop.clone());
        tokio::spawn(async move {
            let mut client = Client::connect(&host).await;
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (code, _) = client
                    .call(
                        "POST",
                        &format!("{API}/orchestrators/Workflow"),
                        "\"probe\"",
                    )
                    .await;
                assert_eq!(code, 202);
                samples.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (code, body) = client
        .call(
            "DELETE",
            &format!("{API}/instances?createdTimeFrom=2000-01-01T00:00:00Z&createdTimeTo={to}"),
            "",
        )
        .await;
    let purge_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut probes = probe.await.expect("probe");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["instancesDeleted"], purge, "{body}");
    println!(
        "\npurged {purge} instances in {purge_time:.2?} ({:.0}/s); starts meanwhile: {} answered, p50 {}, p99 {}, max {}",
        purge as f64 / purge_time.as_secs_f64(),
        probes.len(),
        ms(percentile(&mut probes, 0.5)),
        ms(percentile(&mut probes, 0.99)),
        ms(percentile(&mut probes, 1.0)),
    );
}
