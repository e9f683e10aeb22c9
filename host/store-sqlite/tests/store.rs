//! What only the SQLite store has to do: migrate the files earlier releases
//! wrote. (The contract every backend keeps is tested in
//! `host/cli/tests/store_contract.rs`.)

use duro_core::model::{Instance, RuntimeStatus, now_millis};
use duro_core::store::{ClientStore, StoreError};
use duro_store_sqlite::SqliteStore;

fn instance(id: &str) -> Instance {
    Instance::pending(
        id.into(),
        "Workflow".into(),
        "\"x\"".into(),
        "sha256:test".into(),
        now_millis(),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_and_its_inputs_found() {
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
    let by_input = async |json: &str| {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        store
            .list(&duro_core::model::InstanceQuery {
                input: Some(duro_core::model::canonical_json(&value)),
                name: Some("Workflow".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
    };
    let found = by_input(r#"{"a": 2, "b": 1}"#).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, "old-1");
    assert_eq!(found[0].input, r#"{"a":2,"b":1}"#);
    assert_eq!(found[0].status, RuntimeStatus::Completed);
    assert!(by_input(r#"{"a": 1}"#).await.is_empty());
    // Purging it takes it away; purging a live instance is refused.
    assert!(store.purge("old-1").await.unwrap());
    store.create_instance(&instance("live")).await.unwrap();
    assert!(matches!(
        store.purge("live").await,
        Err(StoreError::NotFinished { .. })
    ));
}
