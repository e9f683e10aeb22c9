//! Several `duro serve` processes on one PostgreSQL database: the work
//! spreads over them, and when one is killed (SIGKILL) with work in flight,
//! the others finish it once its leases expire, recording every activity
//! result once. Skipped without `DURO_TEST_POSTGRES_URL` (see `support`).

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::host::{Host, duro_binary};
use crate::support::postgres_database;

const API: &str = "/runtime/webhooks/durabletask";

fn manifest(dir: &Path) -> std::path::PathBuf {
    let (guests, activities) = (duro_tests::TEST_GUESTS, duro_tests::TEST_ACTIVITIES);
    duro_tests::scenario_manifest(
        dir,
        &format!(
            "[[orchestration]]\nname = \"FanOut\"\ncomponent = {guests:?}\n\
             [[activity]]\nname = \"Add\"\ncomponent = {activities:?}\n"
        ),
    )
}

#[test]
fn hosts_share_one_database_and_finish_the_work_of_one_killed() {
    let Some(database) = postgres_database("scaleout") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let serve = || Host::start_with(&manifest, Path::new(&database), &["--lease-ttl-ms", "1000"]);
    let (doomed, survivor) = (serve(), serve());
    // Thirty fan-outs of twenty activities each, started through both hosts.
    let ids: Vec<String> = (0..30).map(|i| format!("fan-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let host = if i % 2 == 0 { &doomed } else { &survivor };
        let started = host.post(&format!("{API}/orchestrators/FanOut/{id}"), "20");
        assert_eq!(started.status, 202, "{}", started.body);
    }
    // Both hosts see every instance: one database.
    let listed = survivor.get(&format!("{API}/instances?top=100")).json();
    assert_eq!(listed.as_array().unwrap().len(), 30, "{listed}");
    doomed.kill();
    for id in &ids {
        let done = survivor.poll(&format!("{API}/instances/{id}?showHistory=true"), |r| {
            r.status == 200
        });
        let body = done.json();
        assert_eq!(body["runtimeStatus"], "Completed", "{id}: {}", done.body);
        assert_eq!(body["output"], json!(210), "{id}");
        // Each of the twenty results recorded once, whichever host ran it.
        let completed = body["historyEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["eventType"] == "TaskCompleted")
            .count();
        assert_eq!(completed, 20, "{id}: {}", done.body);
    }
    // A new host joins and serves what is there.
    let late = serve();
    let status = late.get(&format!("{API}/instances/fan-0"));
    assert_eq!(status.json()["runtimeStatus"], "Completed");
}

#[test]
fn a_database_that_cannot_be_reached_stops_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(duro_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(manifest(dir.path()))
        .args(["--database", "postgres://duro:secret@127.0.0.1:1/duro"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open the database postgres://duro:***@127.0.0.1:1/duro"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
    let output = Command::new(duro_binary())
        .args(["serve", "--database", "mysql://db/duro"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a database duro knows"), "{stderr}");
}
