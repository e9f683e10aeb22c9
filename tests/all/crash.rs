//! Acknowledged requests survive `kill -9` of the host.

use crate::host::{Host, sample};

const API: &str = "/runtime/webhooks/durabletask";

#[test]
fn acknowledged_starts_and_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let database = dir.path().join("duro.db");

    // Kill right after each 202: the acknowledgement must already be durable.
    let host = Host::start_with(&manifest, &database, &[]);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let r = host.post(
                &format!("{API}/orchestrators/Workflow/crash-{i}"),
                &format!("\"c{i}\""),
            );
            assert_eq!(r.status, 202, "{}", r.body);
            if i == 0 {
                // Once the host has seen a quick first episode of it, the
                // next starts are created by their first episode's commit.
                host.poll(&format!("{API}/instances/crash-0"), |r| {
                    r.json()["runtimeStatus"] == "Running"
                });
            }
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    let metrics = host.get("/metrics").body;
    assert!(
        !metrics.contains("duro_carried_starts_total 0"),
        "no start was carried into its first episode: {metrics}"
    );
    host.kill();

    let host = Host::start_with(&manifest, &database, &[]);
    for id in &ids {
        let running = host.poll(&format!("{API}/instances/{id}"), |r| {
            r.json()["runtimeStatus"] == "Running"
        });
        assert_eq!(
            running.json()["runtimeStatus"],
            "Running",
            "{id}: {}",
            running.body
        );
        let raised = host.post(&format!("{API}/instances/{id}/raiseEvent/Workflow"), "true");
        assert_eq!(raised.status, 202);
    }
    host.kill();

    let host = Host::start_with(&manifest, &database, &[]);
    for id in &ids {
        let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
        assert_eq!(
            done.json()["runtimeStatus"],
            "Completed",
            "{id}: {}",
            done.body
        );
    }
}

/// An event raised right after its instance's start, while the first
/// episode still runs or commits, waits for that commit and goes into the
/// next episode (no write of its own): what a client that starts then
/// raises at once does. Each event ends in its history once, across a
/// `kill -9` right after the last 202.
#[test]
fn events_raised_while_the_first_episode_commits_go_into_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let database = dir.path().join("duro.db");
    let host = Host::start_with_env(&manifest, &database, &[("DURO_WARM_INSTANCES", "128")], &[]);
    const N: usize = 40;
    for n in 0..N {
        let started = host.post(&format!("{API}/orchestrators/Workflow/quick-{n}"), "\"q\"");
        assert_eq!(started.status, 202, "{}", started.body);
        let raised = host.post(
            &format!("{API}/instances/quick-{n}/raiseEvent/Workflow"),
            "\"q\"",
        );
        assert_eq!(raised.status, 202, "{}", raised.body);
    }
    let metrics = host.get("/metrics").body;
    let carried = sample(&metrics, "duro_carried_messages_total", "").unwrap_or(0.0) as usize;
    // Stored one by one instead, none would be: the raise meets the first
    // episode under way nearly every time.
    assert!(
        carried >= N / 2,
        "{carried} of {N} events were carried into an episode: {metrics}"
    );
    host.kill();

    let host = Host::start_with(&manifest, &database, &[]);
    for n in 0..N {
        let done = host.poll(
            &format!("{API}/instances/quick-{n}?showHistory=true"),
            |r| r.json()["runtimeStatus"] == "Completed",
        );
        assert_eq!(
            crate::host::history_count(&done.json(), "EventRaised"),
            1,
            "{}",
            done.body
        );
    }
}

/// An event for a warm instance is carried into the episode it starts and
/// stored by that episode's commit (one fsync'd write, not two): its 202
/// comes after that commit, so `kill -9` right after it loses nothing, and
/// the event is in the history exactly once.
#[test]
fn an_event_carried_into_its_episode_survives_kill_9_after_its_202() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let database = dir.path().join("duro.db");
    // Warm instances on, whatever the suite runs with.
    let host = Host::start_with_env(&manifest, &database, &[("DURO_WARM_INSTANCES", "128")], &[]);
    let started = host.post(&format!("{API}/orchestrators/Workflow/carried"), "\"c\"");
    assert_eq!(started.status, 202, "{}", started.body);
    // Its first episode ran here, so the instance is warm on this host.
    host.poll(&format!("{API}/instances/carried"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    let raised = host.post(
        &format!("{API}/instances/carried/raiseEvent/Workflow"),
        "\"c\"",
    );
    assert_eq!(raised.status, 202, "{}", raised.body);
    let metrics = host.get("/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|line| line == "duro_carried_messages_total 1"),
        "the event was carried into its episode: {metrics}"
    );
    host.kill();

    let host = Host::start_with(&manifest, &database, &[]);
    let done = host.get(&format!("{API}/instances/carried?showHistory=true"));
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    assert_eq!(
        crate::host::history_count(&done.json(), "EventRaised"),
        1,
        "{}",
        done.body
    );
    // Finished now: an event is refused, whichever path it takes.
    let late = host.post(&format!("{API}/instances/carried/raiseEvent/Workflow"), "1");
    assert_eq!(late.status, 410, "{}", late.body);
}

/// A commit the store keeps refusing for a reason of its own (here a
/// trigger put in from outside, as a full disk or a broken constraint
/// would) is retried after a growing delay, with the instance's lease
/// held meanwhile: not run again at once by a claim, in a hot loop, while
/// the backoff waits. Once the cause is gone the instance completes.
fn a_commit_that_keeps_failing_backs_off(host: &Host, database: &Breakable) {
    let started = host.post(&format!("{API}/orchestrators/Workflow/doomed"), "\"d\"");
    assert_eq!(started.status, 202, "{}", started.body);
    host.poll(&format!("{API}/instances/doomed"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    database.break_completions("doomed");
    let before = episodes_run(host);
    let raised = host.post(&format!("{API}/instances/doomed/raiseEvent/Workflow"), "1");
    assert_eq!(raised.status, 202, "{}", raised.body);
    // Retries 250 ms, 500 ms and 1 s after the first failure, then 2 s
    // after that: at most five episodes in two seconds.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let tried = episodes_run(host) - before;
    eprintln!("episodes of the failing commit in two seconds: {tried}");
    assert!(
        (1.0..=5.0).contains(&tried),
        "{tried} episodes of the failing commit ran in two seconds"
    );
    let status = host.get(&format!("{API}/instances/doomed"));
    assert_eq!(status.json()["runtimeStatus"], "Running", "{}", status.body);
    database.mend();
    let done = host.get(&format!("{API}/instances/doomed?waitForCompletion=20000"));
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
}

/// A warm instance takes a message its sender has not stored (a carried
/// raise) without reading the store: its commit must be refused while an
/// older message waits in its inbox, or the newer would be taken first.
/// Here the older one is put in from outside (as another host or a fired
/// timer would), unmarked, so that no claim takes it first: `FirstOf` must
/// answer with it.
fn a_stored_message_goes_before_a_later_carried_one(host: &Host, database: &Breakable) {
    let started = host.post(
        &format!("{API}/orchestrators/FirstOf/behind"),
        r#"["Older", "Newer"]"#,
    );
    assert_eq!(started.status, 202, "{}", started.body);
    host.poll(&format!("{API}/instances/behind"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    // The first episode's commit told the warm instance its row.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let older = r#"{"type":"EventRaised","name":"Older","payload":"\"first\""}"#;
    database.run(&format!(
        "INSERT INTO inbox (instance_id, message, control, created_at) \
         VALUES ('behind', '{older}', false, 0);"
    ));
    let raised = host.post(
        &format!("{API}/instances/behind/raiseEvent/Newer"),
        "\"second\"",
    );
    assert_eq!(raised.status, 202, "{}", raised.body);
    let done = host.get(&format!("{API}/instances/behind?waitForCompletion=20000"));
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    assert_eq!(
        done.json()["output"],
        serde_json::json!({"event": "Older", "payload": "first"}),
        "{}",
        done.body
    );
}

/// The scenario's manifest with `FirstOf` too.
fn first_of_manifest(dir: &std::path::Path) -> std::path::PathBuf {
    let first_of = format!(
        "[[orchestration]]\nname = \"FirstOf\"\ncomponent = {:?}\n",
        duro_tests::SCENARIO
    );
    crate::host::scenario_manifest(dir, &first_of)
}

#[test]
fn a_stored_message_goes_before_a_later_carried_one_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = first_of_manifest(dir.path());
    let database = dir.path().join("duro.db");
    let warm = [("DURO_WARM_INSTANCES", "128")];
    let host = Host::start_with_env(&manifest, &database, &warm, &[]);
    a_stored_message_goes_before_a_later_carried_one(&host, &Breakable::Sqlite(database));
}

#[test]
fn a_stored_message_goes_before_a_later_carried_one_on_postgres() {
    let Some(database) = crate::support::postgres_database("behind") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = first_of_manifest(dir.path());
    let warm = [("DURO_WARM_INSTANCES", "128")];
    let host = Host::start_with_env(&manifest, std::path::Path::new(&database), &warm, &[]);
    a_stored_message_goes_before_a_later_carried_one(&host, &Breakable::Postgres(database));
}

/// Every episode the host ran, whatever its outcome.
fn episodes_run(host: &Host) -> f64 {
    (host.get("/metrics").body.lines())
        .filter(|line| line.starts_with("duro_episodes_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A host's database, whose commits a test can break (or whose rows it
/// can write) from outside.
enum Breakable {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Breakable {
    /// Refuse every write that would finish instance `id`.
    fn break_completions(&self, id: &str) {
        match self {
            Breakable::Sqlite(path) => self.sqlite(
                path,
                &format!(
                    "CREATE TRIGGER doom BEFORE UPDATE OF status ON instances \
                 WHEN NEW.id = '{id}' AND NEW.status = 'Completed' \
                 BEGIN SELECT RAISE(ABORT, 'broken by the test'); END;"
                ),
            ),
            Breakable::Postgres(url) => postgres(
                url,
                &format!(
                    "CREATE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'broken by the test'; END $$; \
                 CREATE TRIGGER doom BEFORE UPDATE ON instances FOR EACH ROW \
                 WHEN (NEW.id = '{id}' AND NEW.status = 'Completed') EXECUTE FUNCTION doom();"
                ),
            ),
        }
    }

    fn mend(&self) {
        match self {
            Breakable::Sqlite(path) => self.sqlite(path, "DROP TRIGGER doom;"),
            Breakable::Postgres(url) => postgres(url, "DROP TRIGGER doom ON instances;"),
        }
    }

    /// Run `sql` in the host's database.
    fn run(&self, sql: &str) {
        match self {
            Breakable::Sqlite(path) => self.sqlite(path, sql),
            Breakable::Postgres(url) => postgres(url, sql),
        }
    }

    fn sqlite(&self, path: &std::path::Path, sql: &str) {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }
}

/// Run `sql` in the schema of `database` (a URL with `?schema=`).
fn postgres(database: &str, sql: &str) {
    let (url, schema) = database.split_once("?schema=").expect("a schema");
    let sql = format!("SET search_path TO {schema}; {sql}");
    duro_tests::block_on(async move {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driving = tokio::spawn(connection);
        client.batch_execute(&sql).await.unwrap();
        drop(client);
        let _ = driving.await;
    });
}

#[test]
fn a_commit_that_keeps_failing_backs_off_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let database = dir.path().join("duro.db");
    let host = Host::start_with(&manifest, &database, &[]);
    a_commit_that_keeps_failing_backs_off(&host, &Breakable::Sqlite(database));
}

#[test]
fn a_commit_that_keeps_failing_backs_off_on_postgres() {
    let Some(database) = crate::support::postgres_database("backoff") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with(&manifest, std::path::Path::new(&database), &[]);
    a_commit_that_keeps_failing_backs_off(&host, &Breakable::Postgres(database));
}
