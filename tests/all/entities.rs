//! Durable entities over a real `duro serve`: signals from many clients
//! applied exactly once (also across kill -9), orchestrations calling
//! entities, critical sections that keep a total across concurrent
//! transfers and crashes, locks released when their holder ends, failing
//! operations that roll back, cleaning, and the errors a client gets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::host::{Host, Reply};
use crate::support::PATIENCE;

const BASE: &str = "/runtime/webhooks/durabletask";

/// The scenario's manifest with the entity test guests (see
/// `duro_tests::entity_manifest`).
pub fn entity_manifest(dir: &Path) -> PathBuf {
    duro_tests::entity_manifest(dir)
}

fn signal(host: &Host, entity: &str, op: &str, input: &Value) -> Reply {
    host.post(
        &format!("{BASE}/entities/{entity}?op={op}"),
        &input.to_string(),
    )
}

/// The state of `entity` once `done` holds for it (or the state then).
fn state_when(host: &Host, entity: &str, done: impl Fn(&Value) -> bool) -> Value {
    let reply = host.poll(&format!("{BASE}/entities/{entity}"), |r| {
        r.status == 200 && done(&r.json())
    });
    assert_eq!(reply.status, 200, "{entity}: {}", reply.body);
    reply.json()
}

fn start(host: &Host, orchestration: &str, id: &str, input: &Value) {
    let reply = host.post(
        &format!("{BASE}/orchestrators/{orchestration}/{id}"),
        &input.to_string(),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
}

fn finished(host: &Host, id: &str) -> Value {
    let reply = host.poll(&format!("{BASE}/instances/{id}"), |r| {
        r.status == 200
            && matches!(
                r.json()["runtimeStatus"].as_str(),
                Some("Completed" | "Failed" | "Terminated")
            )
    });
    reply.json()
}

/// `total` signals of `add 1` from `clients` threads, each retried until
/// acknowledged (a host being killed refuses some).
fn hammer(address: &str, entity: &str, clients: usize, total: usize) {
    let per_client = total / clients;
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                for _ in 0..per_client {
                    let path = format!("{BASE}/entities/{entity}?op=add");
                    let reply = crate::host::try_request(address, "POST", &path, Some("1"), &[])
                        .expect("the host answers");
                    assert_eq!(reply.status, 202, "{}", reply.body);
                }
            });
        }
    });
}

#[test]
fn signals_from_64_clients_are_each_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &entity_manifest(dir.path()),
        &dir.path().join("duro.db"),
        &[],
    );
    let total: usize = std::env::var("DURO_ENTITY_SIGNALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
        / 64
        * 64;
    let started = Instant::now();
    hammer(&host.address, "Counter/hits", 64, total);
    let state = state_when(&host, "counter/hits", |s| s.as_i64() >= Some(total as i64));
    assert_eq!(state, json!(total), "every signal applied exactly once");
    eprintln!(
        "{total} signals from 64 clients applied in {:?}",
        started.elapsed()
    );
    // Nothing more arrives later.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        host.get(&format!("{BASE}/entities/counter/hits")).json(),
        json!(total)
    );
    let details = host
        .get(&format!("{BASE}/entities/counter/hits?showDetails=true"))
        .json();
    assert_eq!(details["operations"], json!(total));
    assert_eq!(details["queued"], json!(0));
}

#[test]
fn signals_survive_kill_9_and_are_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = entity_manifest(dir.path());
    let database = dir.path().join("duro.db");
    let mut acknowledged = 0usize;
    for round in 0..5 {
        let host = Host::start_with(&manifest, &database, &[]);
        let address = host.address.clone();
        let sender = std::thread::spawn(move || {
            let mut sent = 0usize;
            for _ in 0..400 {
                let path = format!("{BASE}/entities/counter/crash?op=add");
                match crate::host::try_request(&address, "POST", &path, Some("1"), &[]) {
                    Ok(reply) if reply.status == 202 => sent += 1,
                    _ => break,
                }
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(150 + 50 * round));
        host.kill();
        acknowledged += sender.join().unwrap();
    }
    let host = Host::start_with(&manifest, &database, &[]);
    // Signals sent but cut off before their 202 may have landed too; none
    // acknowledged may be lost, and none applied twice.
    let state = state_when(&host, "counter/crash", |s| {
        s.as_i64() >= Some(acknowledged as i64)
    });
    std::thread::sleep(Duration::from_millis(300));
    let settled = host
        .get(&format!("{BASE}/entities/counter/crash?showDetails=true"))
        .json();
    assert!(
        state.as_i64() >= Some(acknowledged as i64),
        "{state} < {acknowledged}"
    );
    assert!(
        settled["state"].as_i64().unwrap() <= acknowledged as i64 + 5,
        "at most one cut-off signal per kill lands: {settled} vs {acknowledged}"
    );
    assert_eq!(
        settled["state"],
        json!(settled["operations"]),
        "each applied once"
    );
}

#[test]
fn orchestrations_call_entities_and_get_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &entity_manifest(dir.path()),
        &dir.path().join("duro.db"),
        &[],
    );
    for i in 0..20 {
        start(
            &host,
            "EntityCaller",
            &format!("caller-{i}"),
            &json!({ "key": "shared", "times": 3 }),
        );
    }
    let mut seen: Vec<i64> = Vec::new();
    for i in 0..20 {
        let status = finished(&host, &format!("caller-{i}"));
        assert_eq!(status["runtimeStatus"], "Completed", "{status}");
        let output: Vec<i64> = serde_json::from_value(status["output"].clone()).unwrap();
        assert_eq!(output.len(), 4);
        assert!(output[..3].windows(2).all(|w| w[0] < w[1]), "{output:?}");
        assert_eq!(output[3], -1, "the failing operation's error came back");
        seen.extend(&output[..3]);
    }
    // Signals (add 100) interleave with the calls; each call saw its own add.
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 60, "{seen:?}");
    // The signals (add 100) each sent once; the failures changed nothing.
    let state = state_when(&host, "counter/shared", |s| {
        s.as_i64() == Some(60 + 20 * 100)
    });
    assert_eq!(state, json!(60 + 20 * 100));
    assert_eq!(
        host.get(&format!("{BASE}/entities/counter/fail-signals"))
            .status,
        404
    );
}

#[test]
fn transfers_under_locks_keep_the_total_across_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = entity_manifest(dir.path());
    let database = dir.path().join("duro.db");
    let mut host = Host::start_with(&manifest, &database, &[]);
    for a in 0..10 {
        assert_eq!(
            signal(&host, &format!("Account/a{a}"), "deposit", &json!(100)).status,
            202
        );
    }
    for a in 0..10 {
        state_when(&host, &format!("account/a{a}"), |s| *s == json!(100));
    }
    for t in 0..50 {
        let (from, to) = (t % 10, (t * 7 + 3) % 10);
        let to = if to == from { (to + 1) % 10 } else { to };
        start(
            &host,
            "Transfer",
            &format!("transfer-{t}"),
            &json!({ "from": format!("a{from}"), "to": format!("a{to}"), "amount": 30 + t }),
        );
    }
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        host.kill();
        host = Host::start_with(&manifest, &database, &[]);
    }
    let mut moved = 0;
    for t in 0..50 {
        let status = finished(&host, &format!("transfer-{t}"));
        assert_eq!(status["runtimeStatus"], "Completed", "{status}");
        moved += status["output"]["moved"].as_bool().unwrap() as usize;
    }
    let total: i64 = (0..10)
        .map(|a| {
            host.get(&format!("{BASE}/entities/account/a{a}"))
                .json()
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 1000, "no transfer half applied ({moved} moved)");
    assert!(moved > 0);
    for a in 0..10 {
        let details = host
            .get(&format!("{BASE}/entities/account/a{a}?showDetails=true"))
            .json();
        assert_eq!(details["lockedBy"], Value::Null, "{details}");
        assert_eq!(details["queued"], json!(0), "{details}");
    }
}

#[test]
fn a_lock_held_by_a_terminated_orchestration_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &entity_manifest(dir.path()),
        &dir.path().join("duro.db"),
        &[],
    );
    assert_eq!(
        signal(&host, "Account/held", "deposit", &json!(50)).status,
        202
    );
    start(&host, "HoldLock", "holder", &json!("held"));
    let locked = host.poll(
        &format!("{BASE}/entities/account/held?showDetails=true"),
        |r| r.status == 200 && r.json()["lockedBy"] == json!("holder"),
    );
    assert_eq!(
        locked.json()["lockedBy"],
        json!("holder"),
        "{}",
        locked.body
    );
    // Operations from others wait for the lock.
    assert_eq!(
        signal(&host, "Account/held", "deposit", &json!(1)).status,
        202
    );
    std::thread::sleep(Duration::from_millis(300));
    let waiting = host
        .get(&format!("{BASE}/entities/account/held?showDetails=true"))
        .json();
    assert_eq!(waiting["state"], json!(50), "{waiting}");
    assert_eq!(waiting["queued"], json!(1), "{waiting}");
    let reply = host.post(
        &format!("{BASE}/instances/holder/terminate?reason=stop"),
        "",
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let state = state_when(&host, "account/held", |s| *s == json!(51));
    assert_eq!(
        state,
        json!(51),
        "the waiting deposit ran once the lock was released"
    );
    let details = host
        .get(&format!("{BASE}/entities/account/held?showDetails=true"))
        .json();
    assert_eq!(details["lockedBy"], Value::Null, "{details}");
}

#[test]
fn failing_operations_roll_back_and_relays_signal_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &entity_manifest(dir.path()),
        &dir.path().join("duro.db"),
        &[],
    );
    assert_eq!(signal(&host, "Counter/roll", "add", &json!(5)).status, 202);
    assert_eq!(
        signal(&host, "Counter/roll", "fail", &Value::Null).status,
        202
    );
    assert_eq!(signal(&host, "Counter/roll", "add", &json!(1)).status, 202);
    assert_eq!(
        state_when(&host, "counter/roll", |s| *s == json!(6)),
        json!(6)
    );
    // The failed operation's signal was dropped with it.
    assert_eq!(
        host.get(&format!("{BASE}/entities/counter/fail-signals"))
            .status,
        404
    );

    assert_eq!(
        signal(
            &host,
            "Relay/r",
            "forward",
            &json!({ "to": "relayed", "amount": 7 })
        )
        .status,
        202
    );
    assert_eq!(
        state_when(&host, "counter/relayed", |s| *s == json!(7)),
        json!(7)
    );
    assert_eq!(
        signal(&host, "Relay/r", "start", &json!("started-by-entity")).status,
        202
    );
    let started = host.poll(&format!("{BASE}/instances/started-by-entity"), |r| {
        r.status == 200
    });
    assert_eq!(started.json()["name"], "Sequence", "{}", started.body);

    // A spinning operation is stopped by the budget and fails alone.
    assert_eq!(
        signal(&host, "Counter/roll", "spin", &Value::Null).status,
        202
    );
    assert_eq!(signal(&host, "Counter/roll", "add", &json!(1)).status, 202);
    assert_eq!(
        state_when(&host, "counter/roll", |s| *s == json!(7)),
        json!(7)
    );
    // A guest's sleep passes at once on the sandbox's clock.
    assert_eq!(
        signal(&host, "Counter/roll", "nap", &Value::Null).status,
        202
    );
    assert_eq!(
        state_when(&host, "counter/roll", |s| *s == json!(8)),
        json!(8)
    );
}

#[test]
fn entities_list_read_clean_and_refuse_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &entity_manifest(dir.path()),
        &dir.path().join("duro.db"),
        &[],
    );
    for key in ["k1", "k2", "k3", "other"] {
        assert_eq!(
            signal(&host, &format!("Counter/{key}"), "add", &json!(1)).status,
            202
        );
    }
    state_when(&host, "counter/other", |s| *s == json!(1));
    for key in ["k1", "k2", "k3"] {
        state_when(&host, &format!("counter/{key}"), |s| *s == json!(1));
    }
    let pages = host.pages(
        &format!("{BASE}/entities/counter?top=2&fetchState=true"),
        10,
    );
    let keys: Vec<&str> = pages
        .iter()
        .flatten()
        .map(|e| e["entityId"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k1", "k2", "k3", "other"]);
    assert_eq!(pages.len(), 2, "two pages of two");
    assert_eq!(pages[0][0]["state"], json!(1));
    let prefixed = host
        .get(&format!("{BASE}/entities/counter?keyPrefix=k"))
        .json();
    assert_eq!(prefixed.as_array().unwrap().len(), 3);
    // Counted apart on /metrics.
    let metrics = host.get("/metrics").body;
    assert!(metrics.contains("\nduro_entities 4\n"), "{metrics}");
    assert!(
        metrics.contains("duro_instances{status=\"Running\"} 0"),
        "{metrics}"
    );
    // Entities are not orchestration instances.
    let instances = host.get(&format!("{BASE}/instances")).json();
    assert!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .all(|i| !i["instanceId"].as_str().unwrap().starts_with('@')),
        "{instances}"
    );

    // delete (built in), then clean removes the empty entity.
    assert_eq!(
        signal(&host, "Counter/k1", "delete", &Value::Null).status,
        202
    );
    let gone = host.poll(&format!("{BASE}/entities/counter/k1"), |r| r.status == 404);
    assert_eq!(gone.status, 404, "{}", gone.body);
    let cleaned = host.post(&format!("{BASE}/entities/clean"), "");
    assert_eq!(cleaned.status, 200, "{}", cleaned.body);
    assert_eq!(cleaned.json()["emptyEntitiesRemoved"], json!(1));
    let all = host
        .get(&format!("{BASE}/entities?includeDeleted=true"))
        .json();
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");

    // Bad requests name their problem.
    let unknown = signal(&host, "Nobody/x", "add", &json!(1));
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.error().contains("no entity named `nobody`"),
        "{}",
        unknown.body
    );
    let no_op = host.post(&format!("{BASE}/entities/counter/x"), "1");
    assert_eq!(no_op.status, 400);
    assert!(no_op.error().contains("?op="), "{}", no_op.body);
    let not_json = host.post(&format!("{BASE}/entities/counter/x?op=add"), "{nope");
    assert_eq!(not_json.status, 400);
    assert!(
        not_json.error().contains("not valid JSON"),
        "{}",
        not_json.body
    );
    let at_name = host.post(&format!("{BASE}/entities/a@b/x?op=add"), "1");
    assert_eq!(at_name.status, 400);
    assert!(at_name.error().contains("`@`"), "{}", at_name.body);
    let missing = host.get(&format!("{BASE}/entities/counter/never"));
    assert_eq!(missing.status, 404);
    // Orchestration operations refuse entity ids, and no orchestration
    // may take one.
    let raise = host.post(&format!("{BASE}/instances/@counter@k2/raiseEvent/x"), "1");
    assert_eq!(raise.status, 400, "{}", raise.body);
    assert!(
        raise.error().contains("is an entity's id"),
        "{}",
        raise.body
    );
    let taken = host.post(&format!("{BASE}/orchestrators/Sequence/@counter@k9"), "1");
    assert_eq!(taken.status, 400, "{}", taken.body);
    assert!(taken.error().contains("name entities"), "{}", taken.body);
    let big = format!("\"{}\"", "a".repeat(3 << 19));
    let too_big = host.post(&format!("{BASE}/entities/counter/x?op=add"), &big);
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    assert!(too_big.error().contains("bytes"), "{}", too_big.body);
    let _ = PATIENCE;
}

/// Two hosts on one PostgreSQL database: signals from 64 clients through
/// both land once each, and transfers under locks keep their total while
/// one host is killed and the other takes its leases over.
#[test]
fn two_hosts_on_postgres_share_entities_and_survive_one_killed() {
    let Some(database) = crate::support::postgres_database("entities") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = entity_manifest(dir.path());
    let serve = || Host::start_with(&manifest, Path::new(&database), &["--lease-ttl-ms", "1000"]);
    let (doomed, survivor) = (serve(), serve());
    let total = 6_400;
    std::thread::scope(|scope| {
        for host in [&doomed, &survivor] {
            scope.spawn(|| hammer(&host.address, "Counter/shared", 32, total / 2));
        }
    });
    for a in 0..10 {
        assert_eq!(
            signal(&survivor, &format!("Account/a{a}"), "deposit", &json!(100)).status,
            202
        );
    }
    for a in 0..10 {
        state_when(&survivor, &format!("account/a{a}"), |s| *s == json!(100));
    }
    for t in 0..30 {
        let host = if t % 2 == 0 { &doomed } else { &survivor };
        let (from, to) = (t % 10, (t * 3 + 1) % 10);
        let to = if to == from { (to + 1) % 10 } else { to };
        start(
            host,
            "Transfer",
            &format!("pg-transfer-{t}"),
            &json!({ "from": format!("a{from}"), "to": format!("a{to}"), "amount": 25 }),
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    doomed.kill();
    let state = state_when(&survivor, "counter/shared", |s| {
        s.as_i64() >= Some(total as i64)
    });
    assert_eq!(state, json!(total), "each signal applied once");
    for t in 0..30 {
        let status = finished(&survivor, &format!("pg-transfer-{t}"));
        assert_eq!(status["runtimeStatus"], "Completed", "{status}");
    }
    let balances: i64 = (0..10)
        .map(|a| {
            survivor
                .get(&format!("{BASE}/entities/account/a{a}"))
                .json()
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(balances, 1000, "no transfer half applied");
}

/// A hundred orchestrations call one entity on a runtime that keeps no
/// instance warm (every episode replays its history): each gets its own
/// results, and each history replays on its component without divergence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_calls_replay_to_the_same_results_without_the_warm_cache() {
    use duro::model::RuntimeStatus;
    let dir = tempfile::tempdir().unwrap();
    let rt = crate::support::cold_runtime(dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..100 {
        let input = json!({ "key": "replayed", "times": 2 });
        ids.push(
            rt.start_new("EntityCaller", Some(format!("cold-{i}")), &input)
                .await
                .unwrap(),
        );
    }
    let mut seen: Vec<i64> = Vec::new();
    for id in &ids {
        let done = crate::support::wait_status(&rt, id, RuntimeStatus::Completed).await;
        let output: Vec<i64> = serde_json::from_str(done.output.as_deref().unwrap()).unwrap();
        assert_eq!(output[2], -1, "{output:?}");
        seen.extend(&output[..2]);
        let replayed = rt
            .replay_check(id, duro_tests::guest_bytes(duro_tests::TEST_GUESTS))
            .await
            .unwrap();
        assert!(replayed.is_ok(), "{id}: {replayed:?}");
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 200, "every call saw its own add");
    let counter = duro::runtime::Runtime::entity_id("Counter", "replayed").unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let state = rt.entity(&counter).await.unwrap().and_then(|e| e.state);
        if state.as_deref() == Some("10200") || std::time::Instant::now() > deadline {
            assert_eq!(
                state.as_deref(),
                Some("10200"),
                "200 adds and 100 signals of 100"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_cli_signals_reads_lists_and_cleans_entities() {
    use crate::cli::duro;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &entity_manifest(dir.path()),
        &dir.path().join("duro.db"),
        &[],
    );
    let (ok, out, err) = duro(
        &host,
        &["entity", "signal", "Counter", "cli", "add", "--input", "4"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "signaled add to counter/cli");
    state_when(&host, "counter/cli", |s| *s == json!(4));
    let (ok, out, err) = duro(&host, &["entity", "get", "Counter", "cli"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("state       4") && out.contains("locked by   -"),
        "{out}"
    );
    let (ok, out, _) = duro(&host, &["--json", "entity", "list", "counter"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["entityId"]["key"], "cli", "{listed}");
    assert_eq!(listed[0]["state"], json!(4), "{listed}");
    let (ok, out, _) = duro(&host, &["entity", "list"]);
    assert!(
        ok && out.contains("ENTITY") && out.contains("counter"),
        "{out}"
    );
    let (ok, out, _) = duro(&host, &["entity", "clean"]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        "removed 0 empty entities, released 0 orphaned locks"
    );
    // Bad input: a clear message and a non-zero exit.
    let (ok, _, err) = duro(
        &host,
        &["entity", "signal", "Counter", "cli", "add", "--input", "{x"],
    );
    assert!(
        !ok && err.contains("--input") && err.contains("not JSON"),
        "{err}"
    );
    let (ok, _, err) = duro(&host, &["entity", "signal", "Nobody", "x", "add"]);
    assert!(
        !ok && err.contains("400") && err.contains("no entity named `nobody`"),
        "{err}"
    );
    let (ok, _, err) = duro(&host, &["entity", "get", "Counter", "never"]);
    assert!(!ok && err.contains("404"), "{err}");
}

/// An HTTP function's durable client signals, reads and lists entities.
#[test]
fn http_functions_signal_read_and_list_entities() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &entity_manifest(dir.path()),
        &dir.path().join("duro.db"),
        &[],
    );
    let signaled = host.post("/entities?op=signal&name=Counter&key=fn&operation=add", "9");
    assert_eq!(signaled.status, 200, "{}", signaled.body);
    let read = host.poll("/entities?op=read&name=counter&key=fn", |r| r.body == "9");
    assert_eq!(read.json(), json!(9), "{}", read.body);
    let never = host.get("/entities?op=read&name=counter&key=never");
    assert_eq!(never.json(), Value::Null);
    let listed = host.get("/entities?op=list&name=Counter").json();
    assert_eq!(listed["entities"][0]["key"], "fn", "{listed}");
    assert_eq!(listed["entities"][0]["state"], json!(9), "{listed}");
    let unknown = host.post("/entities?op=signal&name=Nobody&key=x&operation=add", "1");
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert!(
        unknown.body.contains("no entity named `nobody`"),
        "{}",
        unknown.body
    );
}

/// Scheduled signals wait for their time in the entity (a durable timer
/// wakes it), across a kill -9, from a client and from an orchestration.
#[test]
fn scheduled_signals_run_at_their_time_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = entity_manifest(dir.path());
    let database = dir.path().join("duro.db");
    let host = Host::start_with(&manifest, &database, &[]);
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let reply = host.post(
        &format!("{BASE}/entities/Counter/later?op=add&scheduledTime={at}"),
        "5",
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(signal(&host, "Counter/later", "add", &json!(1)).status, 202);
    start(
        &host,
        "EntityCaller",
        "schedules-later",
        &json!({ "key": "later", "times": 1, "later_ms": 1500 }),
    );
    // From an entity, and from an HTTP function's durable client.
    let remind = json!({ "to": "later", "amount": 10_000, "after_ms": 1500 });
    assert_eq!(
        signal(&host, "Relay/reminder", "remind", &remind).status,
        202
    );
    let at_ms = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).timestamp_millis();
    let from_function = host.post(
        &format!("/entities?op=signal_at&name=Counter&key=later&operation=add&at={at_ms}"),
        "20000",
    );
    assert_eq!(from_function.status, 200, "{}", from_function.body);
    // Now: the immediate add (1) and the caller's add (1) and signal (100).
    state_when(&host, "counter/later", |s| *s == json!(102));
    let details = host
        .get(&format!("{BASE}/entities/counter/later?showDetails=true"))
        .json();
    assert_eq!(
        details["state"],
        json!(102),
        "nothing scheduled ran early: {details}"
    );
    host.kill();
    let host = Host::start_with(&manifest, &database, &[]);
    let state = state_when(&host, "counter/later", |s| *s == json!(31107));
    assert_eq!(state, json!(31107), "the four scheduled signals ran once");
    let bad = host.post(
        &format!("{BASE}/entities/Counter/later?op=add&scheduledTime=soon"),
        "1",
    );
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("scheduledTime"), "{}", bad.body);
}

/// Crash torture for entities: 64 clients each send numbered signals to
/// one `Ledger` entity (waiting for each 202) while the host is killed
/// with SIGKILL and restarted on the same database, 10 times in CI
/// (`DURO_TORTURE_KILLS`, `DURO_TORTURE_CLIENTS` for longer runs, as for
/// `torture.rs`). Per sender the entity must see every acknowledged number,
/// once, in order: a number it never saw was not acknowledged (its request
/// was cut off by a kill), and nothing is applied twice.
#[test]
fn numbered_signals_survive_repeated_kill_9_once_each() {
    entity_torture(None);
}

#[test]
fn numbered_signals_survive_repeated_kill_9_once_each_on_postgres() {
    if let Some(database) = crate::support::postgres_database("entity_torture") {
        entity_torture(Some(database));
    }
}

fn entity_torture(postgres: Option<String>) {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, RwLock};
    let setting = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let kills = setting("DURO_TORTURE_KILLS", 10);
    let clients = setting("DURO_TORTURE_CLIENTS", 64);
    let dir = tempfile::tempdir().unwrap();
    let manifest = entity_manifest(dir.path());
    let database = postgres.unwrap_or_else(|| dir.path().join("duro.db").display().to_string());
    let extra: &[&str] = &["--lease-ttl-ms", "1000"];
    let serve = || Host::start_with(&manifest, Path::new(&database), extra);
    let host = serve();
    let address = Arc::new(RwLock::new(host.address.clone()));
    let host = Arc::new(Mutex::new(Some(host)));
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<BTreeSet<u64>>>> =
        Arc::new(Mutex::new(vec![BTreeSet::new(); clients as usize]));
    let workers: Vec<_> = (0..clients as usize)
        .map(|client| {
            let (address, stop, acknowledged) =
                (address.clone(), stop.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let body = json!({ "sender": format!("c{client}"), "seq": seq }).to_string();
                    let path = format!("{BASE}/entities/ledger/torture?op=record");
                    let at = address.read().unwrap().clone();
                    match crate::host::try_request(&at, "POST", &path, Some(&body), &[]) {
                        Ok(reply) if reply.status == 202 => {
                            acknowledged.lock().unwrap()[client].insert(seq);
                        }
                        // Cut off by a kill, or refused while the host
                        // stops: not acknowledged; the next number follows.
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    let mut rng = crate::torture::Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(150 + rng.below(350)));
        host.lock().unwrap().take().unwrap().kill();
        let restarted = serve();
        *address.write().unwrap() = restarted.address.clone();
        *host.lock().unwrap() = Some(restarted);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let host = host.lock().unwrap().take().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let total: usize = acknowledged.iter().map(BTreeSet::len).sum();
    host.poll(&format!("{BASE}/entities/ledger/torture"), |r| {
        r.status == 200 && r.json()["count"].as_u64() >= Some(total as u64)
    });
    // The ones cut off may land a little later: let the entity settle.
    std::thread::sleep(Duration::from_millis(500));
    let ledger = host.get(&format!("{BASE}/entities/ledger/torture")).json();
    assert_eq!(
        ledger["duplicates"],
        json!(0),
        "nothing applied twice: {ledger}"
    );
    for (client, acked) in acknowledged.iter().enumerate() {
        let seen = &ledger["senders"][format!("c{client}")];
        let missing: BTreeSet<u64> = serde_json::from_value(seen["missing"].clone()).unwrap();
        let lost: Vec<&u64> = acked.intersection(&missing).collect();
        assert!(
            lost.is_empty(),
            "c{client}: acknowledged and never run: {lost:?}"
        );
        if let Some(&last) = acked.last() {
            assert!(
                seen["last"].as_u64().unwrap() >= last,
                "c{client}: {seen} < {last}"
            );
        }
    }
    eprintln!(
        "{kills} kills, {clients} clients: {total} signals acknowledged, {} run, none twice",
        ledger["count"]
    );
}

/// A hot deploy sets the entities: one left out of the app is refused from
/// then on, and deployed again it finds its state where it was.
#[test]
fn a_deploy_sets_the_entities_and_their_state_stays() {
    use crate::cli::duro;
    let dir = tempfile::tempdir().unwrap();
    let manifest = entity_manifest(dir.path());
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    assert_eq!(signal(&host, "Counter/kept", "add", &json!(3)).status, 202);
    state_when(&host, "counter/kept", |s| *s == json!(3));
    let without = dir.path().join("without.toml");
    std::fs::write(
        &without,
        format!(
            "[[orchestration]]\nname = \"Workflow\"\ncomponent = {:?}\n",
            duro_tests::SCENARIO
        ),
    )
    .unwrap();
    let (ok, _, err) = duro(&host, &["deploy", without.to_str().unwrap()]);
    assert!(ok, "{err}");
    let refused = signal(&host, "Counter/kept", "add", &json!(1));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("no entity named `counter`"),
        "{}",
        refused.body
    );
    let (ok, _, err) = duro(&host, &["deploy", manifest.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(signal(&host, "Counter/kept", "add", &json!(1)).status, 202);
    assert_eq!(
        state_when(&host, "counter/kept", |s| *s == json!(4)),
        json!(4)
    );
}
