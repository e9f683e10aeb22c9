//! Several `duro serve` processes on one PostgreSQL database: the work
//! spreads over them, and when one is killed (SIGKILL) with work in flight,
//! the others finish it once its leases expire, recording every activity
//! result once. Skipped without `DURO_TEST_POSTGRES_URL` (see `support`).

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::host::{Host, duro_binary, refusal, sample};
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
        assert_eq!(
            crate::host::history_count(&body, "TaskCompleted"),
            20,
            "{id}: {}",
            done.body
        );
    }
    // A new host joins and serves what is there.
    let late = serve();
    let status = late.get(&format!("{API}/instances/fan-0"));
    assert_eq!(status.json()["runtimeStatus"], "Completed");
}

#[test]
fn a_database_that_cannot_be_reached_stops_serve_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refusal(
        Command::new(duro_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(manifest(dir.path()))
            .args(["--database", "postgres://duro:secret@127.0.0.1:1/duro"]),
    );
    assert!(
        stderr.contains("cannot open the database postgres://duro:***@127.0.0.1:1/duro"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
    let stderr =
        refusal(Command::new(duro_binary()).args(["serve", "--database", "mysql://db/duro"]));
    assert!(stderr.contains("not a database duro knows"), "{stderr}");
}

/// A TCP proxy to PostgreSQL that the test can cut: while down it closes
/// every connection through it and every new one at once, as a database
/// that went away.
struct Outage {
    address: String,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Outage {
    fn to(upstream: String) -> Outage {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_down, sockets) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if is_down.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut kept = sockets.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                kept.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Outage {
            address,
            down,
            open,
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            for socket in self.open.lock().unwrap().drain(..) {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

#[test]
fn a_database_that_goes_away_gives_503s_then_everything_resumes() {
    let Some(database) = postgres_database("outage") else {
        return;
    };
    // The same database, reached through the proxy.
    let (scheme_and_credentials, rest) = database.split_once('@').unwrap();
    let (upstream, path) = rest.split_once('/').unwrap();
    let upstream = if upstream.contains(':') {
        upstream.to_string()
    } else {
        format!("{upstream}:5432")
    };
    let outage = Outage::to(upstream);
    let through = format!("{scheme_and_credentials}@{}/{path}", outage.address);
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(&manifest(dir.path()), Path::new(&through), &[]);
    let started = host.post(&format!("{API}/orchestrators/Workflow/before"), "\"a\"");
    assert_eq!(started.status, 202, "{}", started.body);
    host.poll(&format!("{API}/instances/before"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });

    outage.set_down(true);
    let refused = host.post(&format!("{API}/orchestrators/Workflow/during"), "\"b\"");
    assert_eq!(refused.status, 503, "{}", refused.body);
    // Says what to do, and where the cause is, without the driver's words.
    let message = refused.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("database is unavailable") && message.contains("incident"),
        "{message}"
    );
    let status = host.get(&format!("{API}/instances/before"));
    assert_eq!(status.status, 503, "{}", status.body);
    let raised = host.post(
        &format!("{API}/instances/before/raiseEvent/Workflow"),
        "true",
    );
    assert_eq!(raised.status, 503, "{}", raised.body);

    outage.set_down(false);
    // Nothing acknowledged was lost, nothing refused was written.
    let raised = host.poll(&format!("{API}/instances/before"), |r| r.status != 503);
    assert_eq!(raised.json()["runtimeStatus"], "Running", "{}", raised.body);
    assert_eq!(host.get(&format!("{API}/instances/during")).status, 404);
    let again = host.post(
        &format!("{API}/instances/before/raiseEvent/Workflow"),
        "true",
    );
    assert_eq!(again.status, 202, "{}", again.body);
    let done = host.poll(&format!("{API}/instances/before"), |r| r.status == 200);
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
}

/// A host whose fallback polling is ten minutes away still takes, within
/// moments, work another host wrote: PostgreSQL's NOTIFY wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_wakes_on_another_hosts_writes() {
    use duro::database::{Database, OpenOptions, open_database};
    use duro::model::{Instance, Message, RuntimeStatus, now_millis};
    use duro::runtime::{Runtime, RuntimeConfig};

    let Some(database) = postgres_database("notify") else {
        return;
    };
    let database: Database = database.parse().unwrap();
    let store = open_database(&database, &OpenOptions::default())
        .await
        .unwrap();
    let config = RuntimeConfig {
        compile_cache: Some(duro_tests::COMPILE_CACHE.into()),
        poll_interval: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    let rt = Runtime::start(config, store).await.unwrap();
    let digest = rt
        .register(duro_tests::guest_bytes(duro_tests::SCENARIO), &["Workflow"])
        .await
        .unwrap();
    // Let the runtime's first rounds pass: from now on only a notification
    // (or ten minutes) wakes it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The other host has no runtime: it writes as its API would.
    let other = open_database(&database, &OpenOptions::default())
        .await
        .unwrap();
    let instance = Instance::pending(
        "woken".into(),
        "Workflow".into(),
        "\"x\"".into(),
        digest,
        now_millis(),
        None,
    );
    other.create_instance(&instance).await.unwrap();
    crate::support::wait_status(&rt, "woken", RuntimeStatus::Running).await;
    let event = Message::EventRaised {
        name: "Workflow".into(),
        payload: "true".into(),
    };
    other.enqueue("woken", &event, now_millis()).await.unwrap();
    let done = crate::support::wait_status(&rt, "woken", RuntimeStatus::Completed).await;
    assert_eq!(done.output.as_deref(), Some("\"Workflow for x stopped\""));
    rt.shutdown().await;
}

/// A long poll (`waitForCompletion`) on one host for an instance whose last
/// episode another host commits answers once that commit is made (the
/// committing host tells the others which instances it finished), not on
/// its next re-read of the row. Both hosts wait for each instance: one of
/// them commits its last episode, the other hears of it.
#[test]
fn a_waiter_hears_of_an_instance_another_host_finished() {
    let Some(database) = postgres_database("foreign_finish") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let serve = || Host::start_with(&manifest, Path::new(&database), &[]);
    let hosts = [serve(), serve()];
    const N: usize = 10;
    for n in 0..N {
        let id = format!("told-{n}");
        let started = hosts[n % 2].post(&format!("{API}/orchestrators/Workflow/{id}"), "\"t\"");
        assert_eq!(started.status, 202, "{}", started.body);
        std::thread::scope(|scope| {
            let waits: Vec<_> = (hosts.iter())
                .map(|host| {
                    let path = format!("{API}/instances/{id}?waitForCompletion=20000");
                    scope.spawn(move || host.get(&path))
                })
                .collect();
            // The long polls are under way before the event is raised.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let raised =
                hosts[n % 2].post(&format!("{API}/instances/{id}/raiseEvent/Workflow"), "1");
            assert_eq!(raised.status, 202, "{}", raised.body);
            for wait in waits {
                let done = wait.join().unwrap();
                assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
            }
        });
    }
    let told: f64 = (hosts.iter())
        .map(|host| {
            sample(
                &host.get("/metrics").body,
                "duro_foreign_finishes_total",
                "",
            )
            .unwrap_or(0.0)
        })
        .sum();
    // One waiter an instance is on the host that did not commit its end;
    // a host tells the others once it has heard from one (at its start).
    assert!(
        told >= (N / 2) as f64,
        "{told} of {N} finishes were told to the other host's waiter"
    );
}

/// On PostgreSQL too, a host runs the episodes of what it was sent: a start
/// goes into its instance's first episode, whose commit creates it, with a
/// lease held in memory (no claim, no load of the start), while the other
/// host claims work as usual; a raise through either host lands.
#[test]
fn a_host_runs_the_episodes_of_what_it_was_sent() {
    let Some(database) = postgres_database("carried") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let serve = || carrying_host(&manifest, &database);
    let hosts = [serve(), serve()];
    // Enough for a quick first episode to be seen on a loaded machine.
    const EACH: usize = 16;
    for n in 0..2 * EACH {
        let id = format!("sent-{n}");
        // The last raise of each host goes through the other one.
        let (starter, raiser) = match n {
            n if n == EACH - 1 => (&hosts[0], &hosts[1]),
            n if n == 2 * EACH - 1 => (&hosts[1], &hosts[0]),
            _ => (&hosts[n / EACH], &hosts[n / EACH]),
        };
        let started = starter.post(&format!("{API}/orchestrators/Workflow/{id}"), "\"t\"");
        assert_eq!(started.status, 202, "{}", started.body);
        let raised = raiser.post(&format!("{API}/instances/{id}/raiseEvent/Workflow"), "1");
        assert_eq!(raised.status, 202, "{}", raised.body);
        let done = starter.get(&format!("{API}/instances/{id}?waitForCompletion=20000"));
        assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
        let history = starter.get(&format!("{API}/instances/{id}?showHistory=true"));
        let events = history.json()["historyEvents"].as_array().unwrap().len();
        assert!(events > 0, "{}", history.body);
    }
    for host in &hosts {
        let metrics = host.get("/metrics").body;
        let count = |name: &str| sample(&metrics, name, "").unwrap_or(0.0);
        // The first start of each host cannot be: how quick a first
        // episode is has not been seen yet.
        assert!(
            count("duro_carried_starts_total") >= 1.0,
            "no start was carried: {metrics}"
        );
        // A raise is carried into its episode, warm here or not.
        let raises = count("duro_carried_messages_total");
        eprintln!("raises carried: {raises}");
        assert!(raises >= 1.0, "no raise was carried: {metrics}");
    }
}

/// Behind a load balancer, the raises for one instance reach every host:
/// each is carried into an episode on the host it reached, whether the
/// instance is cold there (it is read whole) or warm but out of date
/// (another host ran it since: the episode's commit is refused, and the
/// raise is carried once more into one that reads it whole), instead of
/// being stored for whichever host claims it.
#[test]
fn a_raise_is_carried_on_whichever_host_it_reaches() {
    let Some(database) = postgres_database("roundrobin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let guests = duro_tests::TEST_GUESTS;
    let manifest = duro_tests::scenario_manifest(
        dir.path(),
        &format!("[[orchestration]]\nname = \"Sequence\"\ncomponent = {guests:?}\n"),
    );
    let serve = || carrying_host(&manifest, &database);
    let (first, second) = (serve(), serve());
    const N: usize = 8;
    for n in 0..N {
        let id = format!("rr-{n}");
        let started = first.post(&format!("{API}/orchestrators/Sequence/{id}"), "null");
        assert_eq!(started.status, 202, "{}", started.body);
        // Wait for its first episode: a raise must meet it run, not leased.
        first.poll(&format!("{API}/instances/{id}"), |r| {
            r.json()["runtimeStatus"] == "Running"
        });
        // Cold on the second host; then warm on the first, but behind.
        let raised = second.post(&format!("{API}/instances/{id}/raiseEvent/A"), "1");
        assert_eq!(raised.status, 202, "{}", raised.body);
        let raised = first.post(&format!("{API}/instances/{id}/raiseEvent/B"), "2");
        assert_eq!(raised.status, 202, "{}", raised.body);
        let done = second.get(&format!("{API}/instances/{id}?waitForCompletion=20000"));
        assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
        assert_eq!(done.json()["output"], json!([1, 2]), "{}", done.body);
    }
    for (name, host) in [("first", &first), ("second", &second)] {
        let metrics = host.get("/metrics").body;
        let carried = sample(&metrics, "duro_carried_messages_total", "").unwrap_or(0.0);
        // Every raise but one that met its instance leased elsewhere.
        assert!(
            carried >= (N - 1) as f64,
            "the {name} host carried {carried} of {N} raises: {metrics}"
        );
    }
}

/// A host on `database` that carries what it is sent: the warm cache
/// pinned on (CI runs the suite once more with it off), and a request
/// waiting for its episode's commit as long as it takes (by default 50 ms,
/// after which it is stored instead) on a loaded machine.
fn carrying_host(manifest: &Path, database: &str) -> Host {
    Host::start_with_env(
        manifest,
        Path::new(database),
        &[
            ("DURO_WARM_INSTANCES", "128"),
            ("DURO_CARRY_PATIENCE_MS", "10000"),
        ],
        &[],
    )
}

/// A host tells another of the instances it finishes only if a waiter
/// there waits for them: with each instance's clients on one host, the
/// hosts tell each other nothing, however many waiters they have.
#[test]
fn a_finish_is_told_only_to_a_host_that_waits_for_it() {
    let Some(database) = postgres_database("told_waited") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let serve = || Host::start_with(&manifest, Path::new(&database), &[]);
    let (first, second) = (serve(), serve());
    let told = |host: &Host| {
        sample(
            &host.get("/metrics").body,
            "duro_foreign_finishes_total",
            "",
        )
        .unwrap_or(0.0)
    };
    let started = first.post(&format!("{API}/orchestrators/Workflow/held"), "\"t\"");
    assert_eq!(started.status, 202, "{}", started.body);
    std::thread::scope(|scope| {
        let held =
            scope.spawn(|| second.get(&format!("{API}/instances/held?waitForCompletion=30000")));
        // Its waiter has said so by then.
        std::thread::sleep(std::time::Duration::from_millis(300));
        const N: usize = 10;
        for n in 0..N {
            let path = format!("{API}/instances/alone-{n}");
            let started = first.post(&format!("{API}/orchestrators/Workflow/alone-{n}"), "\"t\"");
            assert_eq!(started.status, 202, "{}", started.body);
            let raised = first.post(&format!("{path}/raiseEvent/Workflow"), "1");
            assert_eq!(raised.status, 202, "{}", raised.body);
            let done = first.get(&format!("{path}?waitForCompletion=20000"));
            assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
        }
        assert_eq!(
            told(&second),
            0.0,
            "finishes nobody there waits for were told"
        );
        let raised = first.post(&format!("{API}/instances/held/raiseEvent/Workflow"), "1");
        assert_eq!(raised.status, 202, "{}", raised.body);
        let done = held.join().unwrap();
        assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    });
}
