//! Instance queries at scale: the seed's Check and Stop find their instance
//! by input among 100,000 others, listings page on the index in both
//! directions, and a bulk purge takes them all away in batches.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::host::{Host, duro_binary, scenario_manifest};

const API: &str = "/runtime/webhooks/durabletask";
const FILLED: usize = 100_000;

/// `duro fill`: finished `Workflow` instances `old-{n}` with input `"in-{n}"`,
/// created over the last ten minutes (inside the seed's 20-minute window).
fn fill(manifest: &Path, database: &Path, count: usize) {
    let output = Command::new(duro_binary())
        .arg("fill")
        .arg("--manifest")
        .arg(manifest)
        .arg("--database")
        .arg(database)
        .args(["--count", &count.to_string()])
        .args(["--id-prefix", "old-", "--input-prefix", "in-"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "duro fill failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ids(reply: &Value) -> Vec<String> {
    reply
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instanceId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_scenario_finds_its_instance_among_100k_in_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = scenario_manifest(dir.path(), "");
    let database = dir.path().join("duro.db");
    fill(&manifest, &database, FILLED);
    let host = Host::start_with(&manifest, &database, &[]);

    // A finished instance from the fill is found by its input.
    let old = host.get("/api/check/in-99999");
    assert_eq!(old.status, 200, "{}", old.body);
    assert_eq!(old.json()["instanceId"], "old-99999");
    assert_eq!(old.json()["runtimeStatus"], "Completed");

    // Starting the same input again: the newest instance wins.
    let started = host.get("/api/start/in-5");
    assert_eq!(started.status, 200, "{}", started.body);
    let id = started.json()["id"].as_str().unwrap().to_string();
    let check = host.poll("/api/check/in-5", |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    assert_eq!(check.json()["instanceId"], id.as_str(), "{}", check.body);
    let stop = host.get("/api/stop/in-5");
    assert_eq!(stop.status, 200, "{}", stop.body);
    assert_eq!(stop.json()["instanceId"], id.as_str());
    let done = host.poll("/api/check/in-5", |r| {
        r.json()["runtimeStatus"] == "Completed"
    });
    assert_eq!(done.json()["instanceId"], id.as_str(), "{}", done.body);
    assert_eq!(done.json()["output"], "Workflow for in-5 stopped");

    // A fresh input runs the whole scenario; an unknown one is a 404.
    assert_eq!(host.get("/api/start/fresh").status, 200);
    assert_eq!(host.get("/api/stop/fresh").status, 200);
    let fresh = host.poll("/api/check/fresh", |r| {
        r.json()["runtimeStatus"] == "Completed"
    });
    assert_eq!(fresh.json()["runtimeStatus"], "Completed", "{}", fresh.body);
    for path in ["/api/check/in-unknown", "/api/stop/in-unknown"] {
        assert_eq!(host.get(path).status, 404, "{path}");
    }

    // The management API finds by input too (an extension of Durable
    // Functions' list), with both instances of "in-5", newest first.
    let both = host.get(&format!(
        "{API}/instances?name=Workflow&input=%22in-5%22&newestFirst=true&showInput=true"
    ));
    assert_eq!(both.status, 200, "{}", both.body);
    assert_eq!(ids(&both.json()), vec![id.clone(), "old-5".to_string()]);
    assert_eq!(both.json()[0]["input"], "in-5");

    // Paging by id prefix is ordered by id: old-1234, old-12340, ...
    let pages = host.pages(
        &format!("{API}/instances/?instanceIdPrefix=old-1234&top=4"),
        10,
    );
    let seen: Vec<String> = pages
        .iter()
        .flatten()
        .map(|i| i["instanceId"].as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = std::iter::once("old-1234".to_string())
        .chain((0..10).map(|d| format!("old-1234{d}")))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(pages.len(), 3);

    // Newest-first pages of finished instances continue where they stopped.
    let pages = host.pages(
        &format!("{API}/instances?runtimeStatus=Completed,Failed&newestFirst=true&top=1000"),
        3,
    );
    let keys: Vec<(String, String)> = pages
        .iter()
        .flatten()
        .map(|item| {
            (
                item["createdTime"].as_str().unwrap().to_string(),
                item["instanceId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 3000);
    assert!(
        keys.windows(2).all(|w| w[1] < w[0]),
        "pages are newest first, with no repeats"
    );

    // Bulk purge of everything finished, in batches; the host keeps serving.
    let purged = host.request(
        "DELETE",
        &format!("{API}/instances/?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Completed"),
        None,
        &[],
    );
    assert_eq!(purged.status, 200, "{}", purged.body);
    assert_eq!(purged.json()["instancesDeleted"], FILLED + 2);
    assert_eq!(host.get("/api/check/in-99999").status, 404);
    assert_eq!(host.get("/api/start/after-purge").status, 200);
    let after = host.poll("/api/check/after-purge", |r| {
        r.status == 200 && r.json()["runtimeStatus"] == "Running"
    });
    assert_eq!(after.json()["runtimeStatus"], "Running", "{}", after.body);
}

#[test]
fn inputs_match_as_json_values_and_restart_keeps_them() {
    // (Workflow wants a string: obj-1 fails at once, which is fine here.)
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    let body = r#"{ "b": [1, 2], "a": "x" }"#;
    let started = host.post(&format!("{API}/orchestrators/Workflow/obj-1"), body);
    assert_eq!(started.status, 202, "{}", started.body);
    // Key order and whitespace do not matter; the value does.
    let same = host.get(&format!(
        "{API}/instances?input=%7B%22a%22%3A%22x%22%2C%22b%22%3A%5B1%2C2%5D%7D"
    ));
    assert_eq!(ids(&same.json()), vec!["obj-1"], "{}", same.body);
    let other = host.get(&format!("{API}/instances?input=%7B%22a%22%3A%22y%22%7D"));
    assert_eq!(other.json(), json!([]));

    // restart with a new id: a second instance with the same input.
    let started = host.post(&format!("{API}/orchestrators/Workflow/r-1"), "\"rx\"");
    assert_eq!(started.status, 202, "{}", started.body);
    // Newest first orders by creation time, then id: created in the same
    // millisecond (which a fast host manages) the two would sort by id.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let restarted = host.post(
        &format!("{API}/instances/r-1/restart?restartWithNewInstanceId=true"),
        "",
    );
    assert_eq!(restarted.status, 202, "{}", restarted.body);
    let new_id = restarted.json()["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, "r-1");
    assert!(restarted.header("location").unwrap().ends_with(&new_id));
    let both = host.get(&format!("{API}/instances?input=%22rx%22&newestFirst=true"));
    assert_eq!(ids(&both.json()), vec![new_id.clone(), "r-1".to_string()]);

    // Restart under the same id needs the instance to have finished.
    let live = host.post(
        &format!("{API}/instances/r-1/restart?restartWithNewInstanceId=false"),
        "",
    );
    assert_eq!(live.status, 409, "{}", live.body);
    host.post(&format!("{API}/instances/r-1/terminate?reason=done"), "");
    host.poll(&format!("{API}/instances/r-1"), |r| r.status == 200);
    let again = host.post(
        &format!("{API}/instances/r-1/restart?restartWithNewInstanceId=false"),
        "",
    );
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.json()["id"], "r-1");
    let status = host.poll(&format!("{API}/instances/r-1"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    assert_eq!(status.json()["input"], "rx", "{}", status.body);
    assert_eq!(
        host.post(&format!("{API}/instances/nobody/restart"), "")
            .status,
        404
    );

    // The CLI: list --input, restart --new-id.
    let cli = |args: &[&str]| crate::cli::duro(&host, args);
    let (ok, out, err) = cli(&["list", "--input", r#"{"b":[1,2],"a":"x"}"#, "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&listed), vec!["obj-1"], "{out}");
    let (ok, _, err) = cli(&["list", "--input", "{not json"]);
    assert!(!ok);
    assert!(err.contains("--input"), "{err}");
    let (ok, out, err) = cli(&["restart", &new_id, "--new-id"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("restarted as "), "{out}");
    let (ok, _, err) = cli(&["purge", "r-1"]);
    assert!(!ok, "a running instance is not purged");
    assert!(err.contains("412"), "{err}");
    // Bulk purge from the CLI: obj-1 failed at once (its input is no string).
    let failed = host.poll(&format!("{API}/instances/obj-1"), |r| r.status == 200);
    assert_eq!(failed.json()["runtimeStatus"], "Failed", "{}", failed.body);
    let (ok, out, err) = cli(&[
        "purge",
        "--from",
        "2000-01-01T00:00:00Z",
        "--status",
        "Failed",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "purged 1 instance(s)");
    let (ok, _, err) = cli(&["purge", "--to", "2000-01-01T00:00:00Z"]);
    assert!(!ok, "a purge needs an id or --from");
    assert!(err.contains("--from") || err.contains("<ID>"), "{err}");
}
