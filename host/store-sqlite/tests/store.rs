//! The SQLite store's contract: concurrent writes are group-committed yet
//! isolated from each other, appends are checked against the version they
//! were computed from, and a file survives reopening.

use std::sync::Arc;

use duro_core::model::{HistoryEvent, Instance, Message, RuntimeStatus, fresh_id, now_millis};
use duro_core::store::{ClientStore, EpisodeCommit, RuntimeStore, StoreError, Version};
use duro_store_sqlite::SqliteStore;

fn instance(id: &str) -> Instance {
    Instance {
        id: id.into(),
        name: "Workflow".into(),
        status: RuntimeStatus::Pending,
        input: "\"x\"".into(),
        output: None,
        custom_status: None,
        component: "sha256:test".into(),
        execution_id: fresh_id(),
        created_at: now_millis(),
        updated_at: now_millis(),
        history_len: 1,
        parent: None,
    }
}

fn open(dir: &std::path::Path) -> SqliteStore {
    let store = SqliteStore::open(dir.join("store.db")).unwrap();
    store.put_component("sha256:test", b"bytes").unwrap();
    store
}

#[test]
fn concurrent_writes_are_grouped_but_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    // 64 threads, each creating one instance; every fourth id is taken twice.
    let results: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let id = if i % 4 == 3 {
                    format!("i{}", i - 1)
                } else {
                    format!("i{i}")
                };
                (id.clone(), store.create_instance(&instance(&id)))
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(failed.len(), 16, "one of each pair of duplicates fails");
    for (id, result) in &failed {
        assert!(
            matches!(result, Err(StoreError::AlreadyExists(d)) if d == id),
            "{result:?}"
        );
    }
    for i in (0..64).filter(|i| i % 4 != 3) {
        let id = format!("i{i}");
        let stored = store.instance(&id).unwrap().expect("created");
        assert_eq!(stored.status, RuntimeStatus::Pending);
        assert_eq!(
            store.history(&id).unwrap().len(),
            1,
            "{id}: ExecutionStarted"
        );
    }
}

#[test]
fn an_episode_computed_from_an_old_version_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_instance(&instance("a")).unwrap();
    store
        .enqueue(
            "a",
            &Message::EventRaised {
                name: "E".into(),
                payload: "1".into(),
            },
        )
        .unwrap();
    let loaded = store.load("a").unwrap();
    let mut row = loaded.instance.clone();
    row.status = RuntimeStatus::Running;
    row.history_len = 2;
    let mut expected = Version::of(&loaded.instance);
    expected.history_len = 5;
    let stale = EpisodeCommit {
        instance: row,
        expected,
        reset_history: false,
        new_events: vec![HistoryEvent::OrchestratorStarted { timestamp: 1 }],
        consumed: loaded.inbox.iter().map(|m| m.id).collect(),
        new_timers: Vec::new(),
        cancelled_timers: Vec::new(),
        new_activities: Vec::new(),
        new_children: Vec::new(),
        follow_up: Vec::new(),
    };
    let results = store.commit_episodes(vec![stale]);
    match &results[0] {
        Err(StoreError::Conflict { change, .. }) => {
            assert!(change.contains("1 events long, not 5"), "{change}")
        }
        other => panic!("{other:?}"),
    }
    let after = store.load("a").unwrap();
    assert_eq!(
        after.instance.status,
        RuntimeStatus::Pending,
        "row untouched"
    );
    assert_eq!(after.history.len(), 1, "history untouched");
    assert_eq!(after.inbox.len(), 2, "inbox untouched (start + event)");
}

/// An episode computed for one execution (or one component) of an
/// instance, committed after a restart of the same id (or an upgrade), is
/// refused even when the history lengths happen to agree.
#[test]
fn an_episode_of_an_old_execution_or_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put_component("sha256:other", b"other").unwrap();
    let commit_for = |loaded: &duro_core::store::LoadedInstance| EpisodeCommit {
        instance: Instance {
            status: RuntimeStatus::Completed,
            output: Some("\"stale\"".into()),
            history_len: 2,
            parent: None,
            ..loaded.instance.clone()
        },
        expected: Version::of(&loaded.instance),
        reset_history: false,
        new_events: vec![HistoryEvent::ExecutionCompleted {
            output: "\"stale\"".into(),
        }],
        consumed: loaded.inbox.iter().map(|m| m.id).collect(),
        new_timers: Vec::new(),
        cancelled_timers: Vec::new(),
        new_activities: Vec::new(),
        new_children: Vec::new(),
        follow_up: Vec::new(),
    };

    // Computed for the first execution; meanwhile the id finished and was
    // started again (same history length, 1).
    store.create_instance(&instance("a")).unwrap();
    let old = store.load("a").unwrap();
    let stale = commit_for(&old);
    store
        .enqueue("a", &Message::Terminate { reason: None })
        .unwrap();
    let mut finished = store.load("a").unwrap().instance;
    finished.status = RuntimeStatus::Terminated;
    finished.history_len = 2;
    let terminate = EpisodeCommit {
        expected: Version::of(&old.instance),
        ..commit_for(&old)
    };
    let terminate = EpisodeCommit {
        instance: finished,
        consumed: store
            .load("a")
            .unwrap()
            .inbox
            .iter()
            .map(|m| m.id)
            .collect(),
        ..terminate
    };
    assert!(store.commit_episodes(vec![terminate])[0].is_ok());
    store.create_instance(&instance("a")).unwrap();
    let restarted = store.load("a").unwrap().instance;
    assert_eq!(restarted.history_len, old.instance.history_len);
    match &store.commit_episodes(vec![stale])[0] {
        Err(StoreError::Conflict { change, .. }) => {
            assert!(change.contains("replaced execution"), "{change}")
        }
        other => panic!("{other:?}"),
    }
    let now = store.load("a").unwrap();
    assert_eq!(now.instance.status, RuntimeStatus::Pending, "untouched");
    assert_eq!(now.history.len(), 1);

    // Computed on one component; meanwhile the instance was upgraded.
    let before = store.load("a").unwrap();
    let stale = commit_for(&before);
    store
        .set_component("a", "sha256:other", &Version::of(&before.instance))
        .unwrap();
    match &store.commit_episodes(vec![stale])[0] {
        Err(StoreError::Conflict { change, .. }) => {
            assert!(change.contains("moved from component"), "{change}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.load("a").unwrap().instance.history_len, 1);
}

#[test]
fn everything_written_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.create_instance(&instance("kept")).unwrap();
        store
            .enqueue(
                "kept",
                &Message::EventRaised {
                    name: "E".into(),
                    payload: "{}".into(),
                },
            )
            .unwrap();
    }
    let store = open(dir.path());
    let loaded = store.load("kept").unwrap();
    assert_eq!(loaded.history.len(), 1);
    assert_eq!(loaded.inbox.len(), 2);
    assert_eq!(store.claim_ready(10, 0).unwrap(), vec!["kept".to_string()]);
    assert!(store.claim_ready(10, 0).unwrap().is_empty(), "leased");
    store.release("kept").unwrap();
    assert_eq!(store.claim_ready(10, 0).unwrap(), vec!["kept".to_string()]);
    assert!(matches!(
        store.enqueue("ghost", &Message::Start),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn a_version_1_database_is_migrated_and_its_inputs_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The schema as the first release wrote it, with one instance whose
        // input was stored with its keys out of order.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../src/migrations/0001_initial.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO components VALUES ('sha256:test', x'00', 0);
             INSERT INTO instances (id, name, status, input, component, created_at, updated_at, history_len)
             VALUES ('old-1', 'Workflow', 'Completed', '{\"b\":1,\"a\":2}', 'sha256:test', 1000, 1000, 2);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let by_input = |json: &str| {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        store
            .list(&duro_core::model::InstanceQuery {
                input: Some(duro_core::model::canonical_json(&value)),
                name: Some("Workflow".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
    };
    let found = by_input(r#"{"a": 2, "b": 1}"#);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, "old-1");
    assert_eq!(found[0].input, r#"{"a":2,"b":1}"#);
    assert_eq!(found[0].status, RuntimeStatus::Completed);
    assert!(by_input(r#"{"a": 1}"#).is_empty());
    // Purging it takes it away; purging a live instance is refused.
    assert!(store.purge("old-1").unwrap());
    store.create_instance(&instance("live")).unwrap();
    assert!(matches!(
        store.purge("live"),
        Err(StoreError::NotFinished { .. })
    ));
}
