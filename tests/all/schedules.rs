//! Schedules through the public surface: a manifest's schedules start
//! their ticks on a real host (each instance saying which schedule and tick
//! started it), the overlap policy skips while a run is going, pause and
//! resume fire no burst, triggers start a tick at once, schedules made
//! through the API are changed and deleted there, bad definitions get a 400
//! naming the field and change nothing, and a hot deploy changes one
//! schedule and removes another.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::host::{Host, Reply};

const API: &str = "/runtime/webhooks/durabletask";

/// The scenario app, the test guests' `Counter` (done in one episode given 3) and
/// `Sequence` (waits for two events), and `schedules`.
fn manifest(dir: &Path, file: &str, schedules: &str) -> std::path::PathBuf {
    let guests = duro_tests::TEST_GUESTS;
    let path = dir.join(file);
    let base = duro_tests::scenario_manifest(
        dir,
        &format!(
            "[[orchestration]]\nname = \"Counter\"\ncomponent = {guests:?}\n\
             [[orchestration]]\nname = \"Sequence\"\ncomponent = {guests:?}\n{schedules}"
        ),
    );
    std::fs::rename(base, &path).unwrap();
    path
}

fn schedule(host: &Host, name: &str) -> Value {
    let reply = host.get(&format!("{API}/schedules/{name}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn started(host: &Host, name: &str) -> u64 {
    schedule(host, name)["counts"]["started"].as_u64().unwrap()
}

fn send(host: &Host, method: &str, path: &str, body: &str) -> Reply {
    host.request(
        method,
        path,
        Some(body),
        &[("content-type", "application/json")],
    )
}

/// Wait (at most the suite's patience) until `check` holds.
fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn manifest_schedules_fire_and_are_managed_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(
        dir.path(),
        "duro.toml",
        "[[schedule]]\nname = \"every-second\"\ncron = \"* * * * * *\"\norchestration = \"Counter\"\n\
         input = 3\n\
         [[schedule]]\nname = \"held\"\ncron = \"* * * * * *\"\norchestration = \"Sequence\"\n",
    );
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);

    // Ticks start instances named after the schedule and tick, which run.
    until("two ticks of every-second", || {
        started(&host, "every-second") >= 2
    });
    let shown = schedule(&host, "every-second");
    assert_eq!(shown["origin"], "manifest");
    assert_eq!(shown["definition"]["cron"], "* * * * * *");
    assert_eq!(shown["nextFireTimes"].as_array().unwrap().len(), 5);
    let run = shown["recentRuns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|run| run["decision"] == "started")
        .unwrap()
        .clone();
    let id = run["instanceId"].as_str().unwrap();
    assert!(id.starts_with("every-second:20"), "{id}");
    let status = host
        .poll(&format!("{API}/instances/{}", id), |r| {
            r.json()["runtimeStatus"] == "Completed"
        })
        .json();
    assert_eq!(status["runtimeStatus"], "Completed", "{status}");
    assert_eq!(status["scheduledBy"]["schedule"], "every-second");
    assert_eq!(status["scheduledBy"]["tick"], run["tick"]);
    assert_eq!(status["input"], json!(3));

    // `held` starts one run, which waits for events: the ticks after it
    // are skipped (overlap = skip, the default).
    until("held skips a tick", || {
        schedule(&host, "held")["counts"]["skipped"].as_u64() >= Some(1)
    });
    assert_eq!(started(&host, "held"), 1);
    // A trigger follows the policy too.
    let triggered = send(
        &host,
        "POST",
        &format!("{API}/schedules/held/trigger?reason=by%20hand"),
        "",
    );
    assert_eq!(triggered.status, 200, "{}", triggered.body);
    assert_eq!(triggered.json()["triggered"]["decision"], "skipped");

    // Paused, nothing fires; resumed, no burst of the missed ticks.
    let paused = send(
        &host,
        "POST",
        &format!("{API}/schedules/every-second/pause?reason=maintenance"),
        "",
    );
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["pauseReason"], "maintenance");
    assert_eq!(paused.json()["nextFireTimes"], json!([]));
    let before = schedule(&host, "every-second")["counts"].clone();
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(schedule(&host, "every-second")["counts"], before);
    let resumed = send(
        &host,
        "POST",
        &format!("{API}/schedules/every-second/resume"),
        "",
    );
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    until("a tick after the resume", || {
        started(&host, "every-second") > before["started"].as_u64().unwrap()
    });
    let after = schedule(&host, "every-second")["counts"].clone();
    assert_eq!(after["missed"], before["missed"], "no tick missed: {after}");
    assert!(
        after["started"].as_u64().unwrap() <= before["started"].as_u64().unwrap() + 2,
        "no burst: {before} then {after}"
    );
    let decisions: Vec<Value> = schedule(&host, "every-second")["recentRuns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["decision"].clone())
        .collect();
    assert!(decisions.contains(&json!("paused")) && decisions.contains(&json!("resumed")));

    // A manifest's schedule is changed by deploys, not through the API.
    for (method, body) in [
        ("DELETE", ""),
        ("PUT", r#"{"cron": "@daily", "orchestration": "Counter"}"#),
    ] {
        let refused = send(
            &host,
            method,
            &format!("{API}/schedules/every-second"),
            body,
        );
        assert_eq!(refused.status, 409, "{method}: {}", refused.body);
        assert!(
            refused.json()["error"]
                .as_str()
                .unwrap()
                .contains("manifest")
        );
    }

    // The metrics count what fired.
    let metrics = host.get("/metrics").body;
    assert!(
        metrics
            .contains(r#"duro_schedule_ticks_total{schedule="every-second",decision="started"}"#),
        "{metrics}"
    );
}

#[test]
fn schedules_made_through_the_api_are_checked_changed_triggered_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &manifest(dir.path(), "duro.toml", ""),
        &dir.path().join("duro.db"),
        &[],
    );
    let yearly = json!({
        "name": "yearly", "cron": "0 0 1 1 *", "timezone": "Europe/Berlin",
        "orchestration": "Counter", "input": 3,
    });
    let created = send(
        &host,
        "POST",
        &format!("{API}/schedules"),
        &yearly.to_string(),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    assert_eq!(created["origin"], "api");
    // Midnight in Berlin on New Year's day is 23:00 UTC the day before.
    assert!(
        created["nextFireTimes"][0]
            .as_str()
            .unwrap()
            .ends_with("-12-31T23:00:00.000Z"),
        "{created}"
    );
    let again = send(
        &host,
        "POST",
        &format!("{API}/schedules"),
        &yearly.to_string(),
    );
    assert_eq!(again.status, 409, "{}", again.body);

    // Bad definitions: 400 naming the problem, nothing stored.
    for (body, named) in [
        (
            json!({"name": "b", "cron": "61 * * * *", "orchestration": "Counter"}),
            "cron \"61 * * * *\"",
        ),
        (
            json!({"name": "b", "cron": "@daily", "timezone": "Mars/Base", "orchestration": "Counter"}),
            "Mars/Base",
        ),
        (
            json!({"name": "b", "cron": "@daily", "orchestration": "Nope"}),
            "no orchestration named `Nope`",
        ),
        (
            json!({"name": "b c", "cron": "@daily", "orchestration": "Counter"}),
            "schedule name \"b c\"",
        ),
        (
            json!({"name": "b", "cron": "@daily", "orchestration": "Counter", "overlap": "sometimes"}),
            "sometimes",
        ),
        (
            json!({"name": "b", "cron": "@daily", "orchestration": "Counter", "endAt": "soon"}),
            "end_at \"soon\"",
        ),
    ] {
        let refused = send(
            &host,
            "POST",
            &format!("{API}/schedules"),
            &body.to_string(),
        );
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        let error = refused.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(named), "{body}: {error}");
    }
    let not_json = send(&host, "POST", &format!("{API}/schedules"), "{nope");
    assert_eq!(not_json.status, 400, "{}", not_json.body);
    let listed = host.get(&format!("{API}/schedules")).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // Changed: the runs kept, ticks from the next one of the new cron.
    let changed = send(
        &host,
        "PUT",
        &format!("{API}/schedules/yearly"),
        r#"{"cron": "0 12 * * *", "orchestration": "Counter", "timezone": "UTC", "input": 3}"#,
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert!(
        changed.json()["nextFireTimes"][0]
            .as_str()
            .unwrap()
            .ends_with("T12:00:00.000Z"),
        "{}",
        changed.body
    );
    let renamed = send(
        &host,
        "PUT",
        &format!("{API}/schedules/yearly"),
        r#"{"name": "other", "cron": "@daily", "orchestration": "Counter"}"#,
    );
    assert_eq!(renamed.status, 400, "{}", renamed.body);

    // Triggered: a run at once, under an id with the trigger's time.
    let triggered = send(
        &host,
        "POST",
        &format!("{API}/schedules/yearly/trigger?reason=test"),
        "",
    );
    assert_eq!(triggered.status, 200, "{}", triggered.body);
    let triggered = triggered.json();
    assert_eq!(triggered["triggered"]["decision"], "started");
    let id = triggered["triggered"]["instanceId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("yearly:"), "{id}");
    assert_eq!(triggered["recentRuns"][0]["reason"], "test");
    let status = host.poll(&format!("{API}/instances/{}", &id), |r| {
        r.json()["runtimeStatus"] == "Completed"
    });
    assert_eq!(status.json()["scheduledBy"]["schedule"], "yearly");

    // A burst of triggers (`allow_all`): each starts its own instance, none
    // refused, none sharing a millisecond's id.
    let made = send(
        &host,
        "POST",
        &format!("{API}/schedules"),
        r#"{"name": "burst", "cron": "@yearly", "orchestration": "Counter", "input": 3, "overlap": "allow_all"}"#,
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let burst: Vec<Reply> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| send(&host, "POST", &format!("{API}/schedules/burst/trigger"), ""))
            })
            .collect();
        calls.into_iter().map(|call| call.join().unwrap()).collect()
    });
    let mut started: Vec<String> = burst
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.json()["triggered"]["instanceId"]
                .as_str()
                .unwrap_or_else(|| panic!("{}", reply.body))
                .to_string()
        })
        .collect();
    started.sort();
    started.dedup();
    assert_eq!(started.len(), 20, "{started:?}");

    let unknown_verb = send(
        &host,
        "POST",
        &format!("{API}/schedules/yearly/explode"),
        "",
    );
    assert_eq!(unknown_verb.status, 404, "{}", unknown_verb.body);
    let deleted = send(&host, "DELETE", &format!("{API}/schedules/yearly"), "");
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(host.get(&format!("{API}/schedules/yearly")).status, 404);
    // Its run stays.
    assert_eq!(host.get(&format!("{API}/instances/{}", &id)).status, 200);
}

#[test]
fn a_hot_deploy_changes_one_schedule_and_removes_another() {
    use crate::cli::duro;
    let dir = tempfile::tempdir().unwrap();
    let v1 = manifest(
        dir.path(),
        "v1.toml",
        "[[schedule]]\nname = \"kept\"\ncron = \"0 0 1 1 *\"\norchestration = \"Counter\"\n\
         [[schedule]]\nname = \"dropped\"\ncron = \"0 0 1 1 *\"\norchestration = \"Counter\"\n",
    );
    let host = Host::start_with(&v1, &dir.path().join("duro.db"), &[]);
    let triggered = send(&host, "POST", &format!("{API}/schedules/kept/trigger"), "");
    assert_eq!(triggered.status, 200, "{}", triggered.body);
    let v2 = manifest(
        dir.path(),
        "v2.toml",
        "[[schedule]]\nname = \"kept\"\ncron = \"0 12 * * *\"\norchestration = \"Counter\"\n",
    );
    let (ok, out, err) = duro(&host, &["deploy", v2.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let kept = schedule(&host, "kept");
    assert_eq!(kept["definition"]["cron"], "0 12 * * *");
    assert!(
        kept["nextFireTimes"][0]
            .as_str()
            .unwrap()
            .ends_with("T12:00:00.000Z"),
        "{kept}"
    );
    assert_eq!(kept["counts"]["started"], 1, "the history is kept: {kept}");
    assert_eq!(host.get(&format!("{API}/schedules/dropped")).status, 404);
    // A manifest schedule naming an orchestration it does not declare is
    // refused whole: nothing changes.
    let v3 = manifest(
        dir.path(),
        "v3.toml",
        "[[schedule]]\nname = \"kept\"\ncron = \"@daily\"\norchestration = \"Missing\"\n",
    );
    let (ok, _, err) = duro(&host, &["deploy", v3.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no orchestration named `Missing`"), "{err}");
    assert_eq!(schedule(&host, "kept")["definition"]["cron"], "0 12 * * *");
    // Nor may a manifest's schedule take the name of one made through the
    // API: refused before anything is deployed.
    let made = send(
        &host,
        "POST",
        &format!("{API}/schedules"),
        r#"{"name": "taken", "cron": "@daily", "orchestration": "Counter"}"#,
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let v4 = manifest(
        dir.path(),
        "v4.toml",
        "[[schedule]]\nname = \"taken\"\ncron = \"@hourly\"\norchestration = \"Counter\"\n",
    );
    let (ok, _, err) = duro(&host, &["deploy", v4.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("400") && err.contains("made through the API"),
        "{err}"
    );
    assert_eq!(schedule(&host, "taken")["origin"], "api");
    assert_eq!(schedule(&host, "kept")["definition"]["cron"], "0 12 * * *");
}

/// A schedule firing every second (every tick kept: `allow_all`, catch-up
/// `all`), its host SIGKILLed ten times at random moments and restarted:
/// every tick from the first to the last one due has exactly one instance.
#[test]
fn every_tick_fires_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), "duro.toml", TICKING);
    let database = dir.path().join("duro.db");
    let mut host = Host::start_with(&manifest, &database, &[]);
    let mut rng = seeded();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200 + rng.below(1_300)));
        host.kill();
        host = Host::start_with(&manifest, &database, &[]);
    }
    std::thread::sleep(Duration::from_millis(1_500));
    check_every_tick_once(&host);
}

/// The same with three hosts on one PostgreSQL database, one of them
/// SIGKILLed at random moments (and restarted) while the others go on.
#[test]
fn every_tick_fires_exactly_once_with_three_hosts_one_killed() {
    let Some(database) = crate::support::postgres_database("ticks") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), "duro.toml", TICKING);
    let serve = || Host::start_with(&manifest, Path::new(&database), &["--lease-ttl-ms", "1000"]);
    let mut hosts = vec![serve(), serve(), serve()];
    let mut rng = seeded();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1_200)));
        let victim = rng.below(3) as usize;
        hosts.remove(victim).kill();
        hosts.insert(victim, serve());
    }
    std::thread::sleep(Duration::from_millis(1_500));
    check_every_tick_once(&hosts[0]);
}

const TICKING: &str = "[[schedule]]\nname = \"tick\"\ncron = \"* * * * * *\"\n\
    orchestration = \"Counter\"\ninput = 3\noverlap = \"allow_all\"\ncatch_up = \"all\"\n\
    catch_up_window_ms = 600000\n";

fn seeded() -> crate::torture::Rng {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    crate::torture::Rng(seed)
}

/// Pause `tick`, then check its instances: one per second from the first
/// tick to the last before its next one, none twice, each run once.
fn check_every_tick_once(host: &Host) {
    let paused = send(host, "POST", &format!("{API}/schedules/tick/pause"), "");
    assert_eq!(paused.status, 200, "{}", paused.body);
    let shown = paused.json();
    let next = tick_of(shown["nextTick"].as_str().unwrap());
    let listed = host
        .get(&format!("{API}/instances?instanceIdPrefix=tick:&top=1000"))
        .json();
    let mut ticks: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            tick_of(
                i["instanceId"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("tick:"),
            )
        })
        .collect();
    ticks.sort();
    assert!(ticks.len() >= 5, "{} ticks: {listed}", ticks.len());
    let first = ticks[0];
    let expected: Vec<i64> = (first..next).step_by(1_000).collect();
    assert_eq!(ticks, expected, "one instance per second up to {next}");
    // Each started once: the schedule counted each start once, and each
    // instance has one start in its history.
    assert_eq!(shown["counts"]["started"], ticks.len() as u64, "{shown}");
    assert_eq!(shown["counts"]["missed"], 0, "{shown}");
    for instance in listed.as_array().unwrap() {
        let id = instance["instanceId"].as_str().unwrap();
        let done = host.poll(&format!("{API}/instances/{id}?showHistory=true"), |r| {
            r.json()["runtimeStatus"] == "Completed"
        });
        let body = done.json();
        assert_eq!(body["runtimeStatus"], "Completed", "{id}: {}", done.body);
        assert_eq!(
            crate::host::history_count(&body, "ExecutionStarted"),
            1,
            "{id}"
        );
    }
}

fn tick_of(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_millis()
}

#[test]
fn the_cli_manages_schedules() {
    use crate::cli::duro;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &manifest(dir.path(), "duro.toml", ""),
        &dir.path().join("duro.db"),
        &[],
    );
    let (ok, out, err) = duro(
        &host,
        &[
            "schedule",
            "create",
            "nightly",
            "--cron",
            "30 2 * * *",
            "--timezone",
            "America/New_York",
            "--orchestration",
            "Counter",
            "--input",
            "3",
            "--overlap",
            "buffer_one",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("America/New_York") && out.contains("buffer_one"),
        "{out}"
    );
    let (ok, out, _) = duro(&host, &["schedule", "list"]);
    assert!(ok);
    let row = out
        .lines()
        .find(|l| l.starts_with("nightly"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("30 2 * * *") && row.contains("active") && row.contains("api"),
        "{out}"
    );
    let (ok, out, _) = duro(&host, &["--json", "schedule", "show", "nightly"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["nextFireTimes"].as_array().unwrap().len(), 5);
    let (ok, out, _) = duro(
        &host,
        &["schedule", "pause", "nightly", "--reason", "audit"],
    );
    assert!(ok && out.contains("paused nightly"), "{out}");
    let (ok, out, _) = duro(&host, &["schedule", "list"]);
    assert!(ok && out.contains("paused"), "{out}");
    let (ok, out, _) = duro(&host, &["schedule", "resume", "nightly"]);
    assert!(ok && out.contains("next fire"), "{out}");
    let (ok, out, err) = duro(
        &host,
        &["schedule", "trigger", "nightly", "--reason", "now"],
    );
    assert!(ok && out.contains("started nightly:"), "{out}{err}");
    // Bad input: a non-zero exit naming the problem.
    let (ok, _, err) = duro(
        &host,
        &[
            "schedule",
            "create",
            "bad",
            "--cron",
            "* * *",
            "--orchestration",
            "Counter",
        ],
    );
    assert!(!ok && err.contains("400") && err.contains("cron"), "{err}");
    let (ok, _, err) = duro(&host, &["schedule", "show", "missing"]);
    assert!(!ok && err.contains("no schedule named `missing`"), "{err}");
    let (ok, out, _) = duro(&host, &["schedule", "delete", "nightly"]);
    assert!(ok && out.contains("deleted nightly"), "{out}");
}

/// The runtime on an injected clock: a per-minute schedule fires 1,000
/// ticks, each once, as fast as the test moves the clock (through the
/// timer loop, the same due-time machinery as durable timers); then an
/// hour-long outage fires only the latest missed tick (`catch_up =
/// "latest"`), counting the others as missed.
#[test]
fn a_thousand_ticks_fire_on_the_injected_clock() {
    use duro::model::ManualClock;
    use duro::runtime::{Runtime, RuntimeConfig};
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t0 = tick_of("2026-01-01T00:00:00Z") as u64;
    const MINUTE: u64 = 60_000;
    let clock = Arc::new(ManualClock::new(t0 - 1));
    tokio.block_on(async {
        let config = RuntimeConfig {
            compile_cache: Some(duro_tests::COMPILE_CACHE.into()),
            poll_interval: Duration::from_secs(60),
            clock: clock.clone(),
            ..Default::default()
        };
        let store = duro::database::open(&dir.path().join("duro.db"))
            .await
            .unwrap();
        let runtime = Runtime::start(config, store).await.unwrap();
        runtime
            .register(
                duro_tests::guest_bytes(duro_tests::TEST_GUESTS),
                &["Counter"],
            )
            .await
            .unwrap();
        runtime.open_activities();
        let spec = serde_json::from_value(json!({
            "name": "m", "cron": "* * * * *", "orchestration": "Counter", "input": 3,
            "overlap": "allow_all",
        }))
        .unwrap();
        runtime.create_schedule(spec).await.unwrap();
        let counts = async |runtime: &Runtime| runtime.schedule("m").await.unwrap().state.counts;
        for i in 1..=1_000u64 {
            clock.advance(MINUTE);
            runtime.clock_moved();
            let deadline = std::time::Instant::now() + crate::support::PATIENCE;
            while counts(&runtime).await.started < i {
                assert!(std::time::Instant::now() < deadline, "tick {i} never fired");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(counts(&runtime).await.started, i, "tick {i} fired once");
        }
        let row = runtime.schedule("m").await.unwrap();
        assert_eq!(
            row.state.last_instance.as_deref(),
            Some(duro::schedule::instance_id("m", t0 + 999 * MINUTE).as_str())
        );
        let last = runtime
            .status(row.state.last_instance.as_deref().unwrap())
            .await
            .unwrap();
        assert!(last.is_some(), "its instance exists");
        // An hour and a half down: the latest missed tick fires, the rest
        // are counted missed (the window is an hour).
        clock.advance(90 * MINUTE);
        runtime.clock_moved();
        let deadline = std::time::Instant::now() + crate::support::PATIENCE;
        while counts(&runtime).await.started < 1_001 {
            assert!(
                std::time::Instant::now() < deadline,
                "the latest tick never fired"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let after = counts(&runtime).await;
        assert_eq!((after.started, after.missed), (1_001, 89), "{after:?}");
        runtime.shutdown().await;
    });
}

/// An HTTP function manages schedules through the durable client:
/// creates one (a bad definition is refused naming the field), reads and
/// lists, pauses, resumes, triggers (the instance starts) and deletes it;
/// a manifest's schedule it may not delete.
#[test]
fn an_http_function_manages_schedules_through_the_durable_client() {
    let dir = tempfile::tempdir().unwrap();
    let http = duro_tests::TEST_GUESTS_HTTP;
    let host = Host::start_with(
        &manifest(
            dir.path(),
            "duro.toml",
            &format!(
                "[[http]]\nname = \"Schedules\"\nroute = \"/schedules\"\nmethods = [\"POST\"]\n\
                 component = {http:?}\n\
                 [[schedule]]\nname = \"from-manifest\"\ncron = \"@yearly\"\norchestration = \"Counter\"\n"
            ),
        ),
        &dir.path().join("duro.db"),
        &[],
    );
    let call = |query: &str, body: &str| {
        let reply = host.post(&format!("/schedules?{query}"), body);
        (reply.status, reply.json())
    };
    let (status, created) = call(
        "op=create",
        r#"{"name": "guest-made", "cron": "0 6 * * 1", "timezone": "Asia/Tokyo", "orchestration": "Counter", "input": 3}"#,
    );
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["origin"], "api");
    assert!(
        created["nextFireTimes"][0]
            .as_str()
            .unwrap()
            .ends_with("T21:00:00.000Z"),
        "{created}"
    );
    let (status, refused) = call(
        "op=create",
        r#"{"name": "x", "cron": "@often", "orchestration": "Counter"}"#,
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("cron"),
        "{refused}"
    );
    let (_, listed) = call("op=list", "");
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from-manifest", "guest-made"]);
    assert_eq!(call("op=get&name=nothing", "").1, Value::Null);
    assert_eq!(call("op=pause&name=guest-made&reason=quiet", "").0, 200);
    assert_eq!(call("op=get&name=guest-made", "").1["pauseReason"], "quiet");
    assert_eq!(call("op=resume&name=guest-made", "").0, 200);
    let (status, id) = call("op=trigger&name=guest-made", "");
    assert_eq!(status, 200, "{id}");
    let id = id.as_str().unwrap().to_string();
    let done = host.poll(&format!("{API}/instances/{id}"), |r| {
        r.json()["runtimeStatus"] == "Completed"
    });
    assert_eq!(done.json()["scheduledBy"]["schedule"], "guest-made");
    let (status, refused) = call("op=delete&name=from-manifest", "");
    assert_eq!(status, 400, "{refused}");
    assert_eq!(call("op=delete&name=guest-made", "").0, 200);
    assert_eq!(call("op=get&name=guest-made", "").1, Value::Null);
}

/// `buffer_one` and `terminate_previous` on a real host: a run that waits
/// for two events holds the buffered tick back until it completes, and is
/// terminated by the next tick under `terminate_previous`.
#[test]
fn a_buffered_tick_starts_when_its_run_ends_and_a_newer_tick_terminates_the_old_run() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &manifest(
            dir.path(),
            "duro.toml",
            "[[schedule]]\nname = \"buffered\"\ncron = \"* * * * * *\"\norchestration = \"Sequence\"\n\
             overlap = \"buffer_one\"\n\
             [[schedule]]\nname = \"replaced\"\ncron = \"* * * * * *\"\norchestration = \"Sequence\"\n\
             overlap = \"terminate_previous\"\n",
        ),
        &dir.path().join("duro.db"),
        &[],
    );
    // `buffered`: one run, then a tick waits for it.
    until("a buffered tick", || {
        !schedule(&host, "buffered")["bufferedTick"].is_null()
    });
    let first = schedule(&host, "buffered")["lastInstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(started(&host, "buffered"), 1);
    for event in ["A", "B"] {
        let raised = host.post(&format!("{API}/instances/{first}/raiseEvent/{event}"), "1");
        assert_eq!(raised.status, 202, "{}", raised.body);
    }
    until("the buffered tick started", || {
        started(&host, "buffered") == 2
    });
    let shown = schedule(&host, "buffered");
    let second = shown["lastInstanceId"].as_str().unwrap();
    assert_ne!(second, first);
    assert_eq!(shown["bufferedTick"], Value::Null, "{shown}");
    assert_eq!(
        host.get(&format!("{API}/instances/{first}")).json()["runtimeStatus"],
        "Completed"
    );
    assert!(
        shown["recentRuns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["decision"] == "buffered"),
        "{shown}"
    );
    // `replaced`: each tick terminates the run before it.
    until("a run replaced", || started(&host, "replaced") >= 2);
    let runs = schedule(&host, "replaced")["recentRuns"].clone();
    let replacing = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["decision"] == "terminated_previous")
        .unwrap_or_else(|| panic!("{runs}"));
    let older = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["instanceId"].is_string() && r["tick"].as_str() < replacing["tick"].as_str())
        .map(|r| r["instanceId"].as_str().unwrap().to_string())
        .next()
        .unwrap();
    let ended = host.poll(&format!("{API}/instances/{older}"), |r| {
        r.json()["runtimeStatus"] == "Terminated"
    });
    assert_eq!(
        ended.json()["runtimeStatus"],
        "Terminated",
        "{}",
        ended.body
    );
    assert!(
        ended.json()["output"]
            .as_str()
            .unwrap()
            .contains("terminate_previous")
    );
}
