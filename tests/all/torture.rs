//! Crash torture: scenario lifecycles over HTTP from many clients while the
//! host is killed with SIGKILL at random moments and restarted on the same
//! database: `Workflow` ended by its event, and one in four each a
//! `WorkflowWithTimeout` ended by its durable timer and a `Chain` of three
//! activities. Every acknowledged start must reach Completed exactly once
//! with the right output, with one event (or one timer, or three activity
//! results) and one completion in its history.
//!
//! On SQLite and on PostgreSQL. CI runs the short form (10 kills). A long run:
//! `DURO_TORTURE_KILLS=200 DURO_TORTURE_CLIENTS=32 ./scripts/test --test all torture -- --nocapture`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::host::{Host, Reply, try_request};

const API: &str = "/runtime/webhooks/durabletask";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the clients were told, per instance.
#[derive(Debug, Default, Clone)]
struct Acknowledged {
    start: bool,
    event: bool,
    /// How the lifecycle ends.
    kind: Lifecycle,
}

/// The kinds of lifecycles the clients run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// `Workflow`, ended by its event.
    #[default]
    Event,
    /// `WorkflowWithTimeout`, left to its durable timer (no event is sent).
    Timer,
    /// `Chain`: three activities in sequence (no event is sent).
    Activities,
}

/// A small deterministic generator, seeded and printed so a run can be
/// told apart from another.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Send until the host answers (it may be down, or die mid-request).
fn send(
    address: &RwLock<String>,
    method: &str,
    path: &str,
    body: &str,
    give_up: Instant,
) -> Option<Reply> {
    while Instant::now() < give_up {
        let current = address.read().unwrap().clone();
        match try_request(&current, method, path, Some(body), &[]) {
            Ok(reply) if reply.status < 500 => return Some(reply),
            // Down, cut off, or 5xx from a host going away: try again.
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    None
}

#[test]
fn acknowledged_work_survives_repeated_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    torture(&dir.path().join("duro.db"), &[]);
}

/// The same on PostgreSQL: a killed host's leases expire (after a second
/// here) and the restarted host, a new lease owner, takes its work over.
#[test]
fn acknowledged_work_survives_repeated_kill_9_on_postgres() {
    let Some(database) = crate::support::postgres_database("torture") else {
        return;
    };
    torture(std::path::Path::new(&database), &["--lease-ttl-ms", "1000"]);
}

/// Run the clients against a host on `database` (a SQLite file or a
/// `postgres://` URL), killing and restarting it, then check every
/// acknowledged lifecycle.
fn torture(database: &std::path::Path, extra: &[&str]) {
    let kills = setting("DURO_TORTURE_KILLS", 10);
    let clients = setting("DURO_TORTURE_CLIENTS", 8);
    let seed = setting(
        "DURO_TORTURE_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(
        dir.path(),
        &format!(
            "[[orchestration]]\nname = \"Chain\"\ncomponent = {:?}\n\
             [[activity]]\nname = \"Add\"\ncomponent = {:?}\n",
            duro_tests::TEST_GUESTS,
            duro_tests::TEST_ACTIVITIES
        ),
    );
    let host = Host::start_with(&manifest, database, extra);
    let address = Arc::new(RwLock::new(host.address.clone()));
    let host = Arc::new(Mutex::new(Some(host)));
    let ledger: Arc<Mutex<BTreeMap<String, Acknowledged>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let give_up = Instant::now() + Duration::from_secs(60 + kills * 6);

    let workers: Vec<_> = (0..clients)
        .map(|client| {
            let (address, ledger, stop, requests) = (
                address.clone(),
                ledger.clone(),
                stop.clone(),
                requests.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("t{client}-{n}");
                    // One lifecycle in four ends by a durable timer, one by
                    // three activities, the others by an event.
                    let kind = match n % 4 {
                        1 => Lifecycle::Activities,
                        3 => Lifecycle::Timer,
                        _ => Lifecycle::Event,
                    };
                    let (name, input) = match kind {
                        Lifecycle::Timer => (
                            "WorkflowWithTimeout",
                            json!({ "name": id, "timeout_ms": 200 }),
                        ),
                        Lifecycle::Activities => ("Chain", json!(n)),
                        Lifecycle::Event => ("Workflow", json!(format!("in-{id}"))),
                    };
                    n += 1;
                    let input = input.to_string();
                    let start = format!("{API}/orchestrators/{name}/{id}");
                    let Some(reply) = send(&address, "POST", &start, &input, give_up) else {
                        return;
                    };
                    // 409: an earlier attempt was durable, its answer lost.
                    assert!(
                        reply.status == 202 || reply.status == 409,
                        "start {id}: {} {}",
                        reply.status,
                        reply.body
                    );
                    requests.fetch_add(1, Ordering::Relaxed);
                    ledger.lock().unwrap().insert(
                        id.clone(),
                        Acknowledged {
                            start: true,
                            event: false,
                            kind,
                        },
                    );
                    if kind != Lifecycle::Event {
                        continue;
                    }
                    let raise = format!("{API}/instances/{id}/raiseEvent/Workflow");
                    let Some(reply) = send(&address, "POST", &raise, "\"go\"", give_up) else {
                        return;
                    };
                    // 410: a retried raise after the first one finished it.
                    assert!(
                        reply.status == 202 || reply.status == 410,
                        "raise {id}: {} {}",
                        reply.status,
                        reply.body
                    );
                    requests.fetch_add(1, Ordering::Relaxed);
                    ledger.lock().unwrap().get_mut(&id).unwrap().event = true;
                }
            })
        })
        .collect();

    let mut rng = Rng(seed);
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        let running = host.lock().unwrap().take().unwrap();
        running.kill();
        let restarted = Host::start_with(&manifest, database, extra);
        *address.write().unwrap() = restarted.address.clone();
        *host.lock().unwrap() = Some(restarted);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }

    let ledger = ledger.lock().unwrap().clone();
    let host = host.lock().unwrap().take().unwrap();
    let (mut lost, mut duplicated, mut wrong) = (Vec::new(), Vec::new(), Vec::new());
    for (id, acked) in &ledger {
        if !acked.start {
            continue;
        }
        if !acked.event && acked.kind == Lifecycle::Event {
            // The client stopped between its start and its event: send it now.
            let raise = host.post(
                &format!("{API}/instances/{id}/raiseEvent/Workflow"),
                "\"go\"",
            );
            assert!(
                raise.status == 202 || raise.status == 410,
                "{id}: {}",
                raise.body
            );
        }
        let status = host.poll(&format!("{API}/instances/{id}?showHistory=true"), |r| {
            r.status == 200 || r.status == 404
        });
        if status.status != 200 || status.json()["runtimeStatus"] != "Completed" {
            lost.push((id.clone(), status.status, status.body.clone()));
            continue;
        }
        let body = status.json();
        let expected = match acked.kind {
            Lifecycle::Timer => json!({ "name": id, "outcome": "timeout", "payload": null }),
            // Chain(n) = n + 1 + 2 + 3, n from the id's counter.
            Lifecycle::Activities => {
                json!(id.rsplit('-').next().unwrap().parse::<i64>().unwrap() + 6)
            }
            Lifecycle::Event => json!(format!("Workflow for in-{id} stopped")),
        };
        if body["output"] != expected {
            wrong.push((id.clone(), body["output"].clone()));
        }
        let history = body["historyEvents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let count = |kind: &str| {
            history
                .iter()
                .filter(|e| e["EventType"] == kind || e["eventType"] == kind)
                .count()
        };
        let (events, timers, activities) = match acked.kind {
            Lifecycle::Event => (1, 0, 0),
            Lifecycle::Timer => (0, 1, 0),
            Lifecycle::Activities => (0, 0, 3),
        };
        if count("ExecutionCompleted") != 1
            || count("EventRaised") != events
            || count("TimerFired") != timers
            || count("TaskCompleted") != activities
        {
            duplicated.push((id.clone(), Value::Array(history.clone())));
        }
    }
    let acknowledged = ledger.values().filter(|a| a.start).count();
    println!(
        "torture (seed {seed}): {} instances, {kills} kills, {} acknowledged requests, \
         {} lost, {} duplicated, {} wrong",
        acknowledged,
        requests.load(Ordering::Relaxed),
        lost.len(),
        duplicated.len(),
        wrong.len()
    );
    assert!(acknowledged > 0, "no request was acknowledged");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert!(wrong.is_empty(), "wrong outputs: {wrong:?}");
}
