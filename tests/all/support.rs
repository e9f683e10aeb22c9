//! Starting a runtime on a fresh database with every test guest registered.

use std::path::Path;
use std::time::Duration;

use duro::model::{Instance, RuntimeStatus};
use duro::runtime::{Runtime, RuntimeConfig};
use duro_tests::{
    COMPILE_CACHE, SCENARIO, TEST_ACTIVITIES, TEST_ENTITIES, TEST_GUESTS, guest_bytes,
};

/// Long enough for a debug build under load; tests poll, never sleep this long.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const SCENARIO_NAMES: &[&str] = &["Workflow", "WorkflowWithTimeout", "FirstOf"];
pub const TEST_NAMES: &[&str] = &[
    "Fickle",
    "Trio",
    "Sequence",
    "Panics",
    "Spin",
    "Probe",
    "Counter",
    "Refuses",
    "Hog",
    "EternalCounter",
    "Reminders",
    "KeptWait",
    "SecondWait",
    "TimerAfterContinue",
    "Guids",
    "StdSleep",
    "Program",
    "Crunch",
    "Approval",
    "Chain",
    "FanOut",
    "CallOne",
    "FetchThenWait",
    "Parent",
    "Verdict",
    "RetryingParent",
    "Timers",
    "Monitor",
    "HttpCaller",
    "EntityCaller",
    "Transfer",
    "HoldLock",
];

pub const ENTITY_NAMES: &[&str] = &["Counter", "Account", "Relay", "Ledger"];

pub const ACTIVITY_NAMES: &[&str] = &["Add", "Fail", "Flaky", "Trap", "Attempt"];

pub async fn runtime(dir: &Path) -> Runtime {
    runtime_with(dir, RuntimeConfig::default().warm_instances).await
}

/// A runtime that replays every episode from history (no warm instances):
/// for tests of what replay detects.
pub async fn cold_runtime(dir: &Path) -> Runtime {
    runtime_with(dir, 0).await
}

async fn runtime_with(dir: &Path, warm_instances: usize) -> Runtime {
    let config = RuntimeConfig {
        compile_cache: Some(COMPILE_CACHE.into()),
        step_budget: Duration::from_secs(1),
        activity_budget: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
        warm_instances,
        ..Default::default()
    };
    let store = duro::database::open(&dir.join("duro.db")).await.unwrap();
    let runtime = Runtime::start(config, store).await.expect("runtime starts");
    runtime
        .register(guest_bytes(SCENARIO), SCENARIO_NAMES)
        .await
        .expect("scenario registers");
    runtime
        .register(guest_bytes(TEST_GUESTS), TEST_NAMES)
        .await
        .expect("test guests register");
    runtime
        .register_activities(guest_bytes(TEST_ACTIVITIES), ACTIVITY_NAMES)
        .await
        .expect("test activities register");
    runtime
        .register_entities(guest_bytes(TEST_ENTITIES), ENTITY_NAMES)
        .await
        .expect("test entities register");
    runtime.open_activities();
    runtime
}

pub async fn wait_status(runtime: &Runtime, id: &str, status: RuntimeStatus) -> Instance {
    let instance = runtime
        .wait_until(id, PATIENCE, |i| i.status == status)
        .await
        .expect("status readable");
    assert_eq!(
        instance.status, status,
        "instance {id} did not reach {status}: {instance:?}"
    );
    instance
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"))
}

/// A `postgres://` URL for `duro serve --database` with a schema of its own
/// (see `PgStore::test_schema`: empty, or `None` and the test skipped).
pub fn postgres_database(test: &str) -> Option<String> {
    let (url, schema) = duro_tests::block_on(duro_store_postgres::PgStore::test_schema(&format!(
        "e2e_{test}"
    )))?;
    Some(duro_tests::database_url(&url, &schema))
}
