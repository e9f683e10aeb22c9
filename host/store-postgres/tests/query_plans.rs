//! Every statement the PostgreSQL store runs for the API, the clients and
//! the workers can be served by an index: explained with sequential scans
//! priced out, no plan may still scan a table. Skipped (and says so)
//! without `DURO_TEST_POSTGRES_URL`, unless `DURO_REQUIRE_POSTGRES` is set.

use duro_core::model::{InstanceQuery, RuntimeStatus};
use duro_store_postgres::{GROUPED_SETTINGS, PgOptions, PgStore, batch_sql, sql};
use duro_store_sql::listing::{self, SqlValue};
use tokio_postgres::types::ToSql;

async fn check(store: &PgStore, what: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) {
    let plan = store
        .explain(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}\n{sql}"));
    let scans: Vec<&String> = plan
        .iter()
        .filter(|line| line.contains("Seq Scan"))
        .collect();
    assert!(
        scans.is_empty(),
        "{what} scans a table:\n{}\n{sql}",
        plan.join("\n")
    );
}

/// `n` running instances of one component (for plans made on a table
/// with rows).
fn instances(n: u32) -> String {
    format!(
        "INSERT INTO components VALUES ('c', '', 0); \
         INSERT INTO instances (id, name, status, input, component, created_at, updated_at, \
             history_len, input_hash, execution_id) \
         SELECT 'i' || n, 'W', 'Running', '1', 'c', n, n, 1, 0, 'e' \
         FROM generate_series(1, {n}) n; "
    )
}

/// The grouped connections' settings (`GROUPED_SETTINGS`), for one
/// transaction.
fn grouped_settings() -> String {
    GROUPED_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET LOCAL {name} = {value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_is_served_by_an_index() {
    let Some((url, schema)) = PgStore::test_schema("plans").await else {
        return;
    };
    let options = PgOptions {
        schema: Some(schema.clone()),
        ..Default::default()
    };
    let store = PgStore::open(&url, options).await.unwrap();
    let (id, owner, now, limit) = ("i", "host", 1_000_i64, 10_i64);
    let ids = vec!["a".to_string(), "b".to_string()];
    let consumed = vec![1_i64, 2];
    check(&store, "get instance", sql::GET_INSTANCE, &[&id]).await;
    check(&store, "lock version", sql::LOCK_VERSION, &[&id]).await;
    check(&store, "lock lease", sql::LOCK_LEASE, &[&id]).await;
    check(&store, "whether messages wait", sql::MESSAGES_WAIT, &[&id]).await;
    check(&store, "lock instances", sql::LOCK_INSTANCES, &[&ids]).await;
    check(
        &store,
        "requeue after an episode",
        sql::REQUEUE_AFTER_EPISODE,
        &[&id, &"Running", &now],
    )
    .await;
    check(&store, "load history", sql::LOAD_HISTORY, &[&id]).await;
    check(
        &store,
        "load a page of a history",
        sql::LOAD_HISTORY_PAGE,
        &[&id, &500i64, &128i64],
    )
    .await;
    check(
        &store,
        "claim ready",
        sql::CLAIM_READY,
        &[&owner, &now, &now, &limit, &limit],
    )
    .await;
    check(&store, "release", sql::RELEASE, &[&ids, &owner]).await;
    check(&store, "consume", sql::DELETE_CONSUMED, &[&id, &consumed]).await;
    let finished = vec!["Completed".to_string()];
    check(
        &store,
        "enqueue",
        sql::ENQUEUE,
        &[&id, &"{}", &false, &now, &finished, &limit],
    )
    .await;
    check(
        &store,
        "due timers' instances",
        sql::DUE_TIMER_INSTANCES,
        &[&now, &limit],
    )
    .await;
    check(
        &store,
        "fire due timers",
        sql::FIRE_DUE_TIMERS,
        &[&now, &limit, &ids],
    )
    .await;
    check(&store, "next timer", sql::NEXT_TIMER_DUE, &[]).await;
    check(&store, "pending work", sql::HAS_PENDING_WORK, &[&id, &now]).await;
    check(
        &store,
        "claim activities",
        sql::CLAIM_ACTIVITIES,
        &[&owner, &now, &now, &limit, &now],
    )
    .await;
    check(&store, "next activity", sql::NEXT_ACTIVITY_DUE, &[]).await;
    check(&store, "due schedules", sql::DUE_SCHEDULES, &[&now, &limit]).await;
    check(&store, "next schedule", sql::NEXT_SCHEDULE_DUE, &[]).await;
    check(&store, "a schedule", sql::GET_SCHEDULE, &[&id]).await;
    check(
        &store,
        "a schedule's run ended",
        sql::SCHEDULED_RUN_ENDED,
        &[&id, &id, &now],
    )
    .await;
    for statement in sql::RENEW_LEASES {
        check(&store, "renew leases", statement, &[&owner, &now]).await;
    }
    for statement in sql::PURGE_BATCH.iter() {
        check(&store, "purge batch", statement, &[&ids]).await;
    }
    // The queue statements stay index searches on a table with rows and
    // statistics, whatever the planner estimates: with a generic plan
    // (forced here) an `IN (subquery)` became a hash join over a sequential
    // scan of every instance once the table had a few thousand rows.
    // (Each explained in the transaction that wrote the rows, which is
    // rolled back.)
    let rows = format!(
        "{}INSERT INTO queue (instance_id, ready_at, lease_owner, lease_until) \
         SELECT 'i' || n, CASE WHEN n % 10 = 0 THEN n END, \
             CASE WHEN n % 100 = 0 THEN 'h' END, n + 100000 \
         FROM generate_series(1, 1500) n; \
         INSERT INTO timers SELECT 'i' || n, 0, n, 'e' FROM generate_series(1, 1500) n; \
         ANALYZE instances; ANALYZE queue; ANALYZE timers; \
         SET LOCAL plan_cache_mode = force_generic_plan",
        instances(1500)
    );
    for (what, statement, params) in [
        (
            "due timers' instances",
            sql::DUE_TIMER_INSTANCES,
            &[&now as &(dyn ToSql + Sync), &limit] as &[&(dyn ToSql + Sync)],
        ),
        (
            "fire due timers",
            sql::FIRE_DUE_TIMERS,
            &[&now as &(dyn ToSql + Sync), &limit, &ids],
        ),
        (
            "lock instances",
            sql::LOCK_INSTANCES,
            &[&ids as &(dyn ToSql + Sync)],
        ),
        (
            "claim activities",
            sql::CLAIM_ACTIVITIES,
            &[&owner as &(dyn ToSql + Sync), &now, &now, &limit, &now],
        ),
        (
            "renew leases",
            sql::RENEW_LEASES[0],
            &[&owner as &(dyn ToSql + Sync), &now],
        ),
    ] {
        let plan = store.explain_with(statement, params, &rows).await.unwrap();
        assert!(
            !plan.iter().any(|line| line.contains("Seq Scan")),
            "{what} scans a table:\n{}",
            plan.join("\n")
        );
    }
    // A group's array statements, planned as the writer and the readers
    // plan them (their transactions' settings), on the small tables a new host's first
    // groups meet: the plan is kept for the connection's life, and without
    // the settings these plans scanned the whole table ever after.
    let small = format!(
        "{}INSERT INTO queue (instance_id) SELECT 'i' || n FROM generate_series(1, 300) n; \
         ANALYZE instances; ANALYZE queue; {}",
        instances(300),
        grouped_settings()
    );
    let (texts, numbers) = ("'{a,b}'", "'{1,2}'");
    let statements: [(&str, &str, &[&str]); 12] = [
        (
            "claim and load",
            sql::CLAIM_READY,
            &["text", "bigint", "bigint", "bigint", "bigint"],
        ),
        (
            "enqueue",
            batch_sql::ENQUEUE,
            &[
                "text[]",
                "text[]",
                "boolean[]",
                "bigint[]",
                "bigint[]",
                "text[]",
            ],
        ),
        ("get instances", sql::GET_INSTANCES, &["text[]"]),
        ("load many", sql::LOAD_MANY, &["text[]", "boolean[]"]),
        ("lock and read", batch_sql::LOCK_AND_READ, &["text[]"]),
        (
            "create",
            batch_sql::CREATE,
            &[
                "text[]",
                "text[]",
                "text[]",
                "text[]",
                "bigint[]",
                "bigint[]",
                "text[]",
                "text[]",
                "text[]",
                "bigint[]",
                "text[]",
                "text[]",
                "text[]",
                "boolean[]",
                "text[]",
                "text[]",
                "text[]",
                "text[]",
                "bigint[]",
                "bigint[]",
            ],
        ),
        (
            "append history",
            batch_sql::APPEND,
            &["text[]", "bigint[]", "bigint[]", "text[]"],
        ),
        ("consume", batch_sql::CONSUME, &["text[]", "bigint[]"]),
        (
            "update instances",
            batch_sql::UPDATE,
            &[
                "text[]", "text[]", "text[]", "text[]", "bigint[]", "bigint[]",
            ],
        ),
        (
            "requeue",
            batch_sql::REQUEUE,
            &["text[]", "text[]", "bigint[]"],
        ),
        ("drop timers", batch_sql::DROP_TIMERS, &["text[]"]),
        ("drop activities", batch_sql::DROP_ACTIVITIES, &["text[]"]),
    ];
    for (what, statement, types) in statements {
        let values: Vec<&str> = types
            .iter()
            .map(|t| match *t {
                "text[]" => texts,
                "boolean[]" => "'{f,f}'",
                "text" => "'h'",
                "bigint" => "10",
                _ => numbers,
            })
            .collect();
        let plan = store
            .explain_prepared(statement, types, &values, &small)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            !plan.iter().any(|line| line.contains("Seq Scan")),
            "{what} scans a table:\n{}",
            plan.join("\n")
        );
    }
    // The claim runs on the grouped connections (it loads what it claims,
    // joining the instances): on the table with rows and statistics too.
    let grouped = grouped_settings();
    let plan = store
        .explain_with(
            sql::CLAIM_READY,
            &[&owner, &now, &now, &limit, &limit],
            &format!("{rows}; {grouped}"),
        )
        .await
        .unwrap();
    assert!(
        !plan.iter().any(|line| line.contains("Seq Scan")),
        "claim ready scans a table:\n{}",
        plan.join("\n")
    );
    // Listings, with each filter and their combinations, and a continuation.
    let base = InstanceQuery {
        limit: 100,
        ..Default::default()
    };
    let queries = [
        ("everything", base.clone()),
        (
            "time window",
            InstanceQuery {
                created_from: Some(1),
                created_to: Some(2),
                ..base.clone()
            },
        ),
        (
            "name",
            InstanceQuery {
                name: Some("Workflow".into()),
                ..base.clone()
            },
        ),
        (
            "statuses",
            InstanceQuery {
                statuses: vec![RuntimeStatus::Running, RuntimeStatus::Completed],
                ..base.clone()
            },
        ),
        (
            "name and status",
            InstanceQuery {
                name: Some("Workflow".into()),
                statuses: vec![RuntimeStatus::Running],
                ..base.clone()
            },
        ),
        (
            "input",
            InstanceQuery {
                input: Some("\"x\"".into()),
                name: Some("Workflow".into()),
                created_from: Some(1),
                ..base.clone()
            },
        ),
        (
            "id prefix",
            InstanceQuery {
                id_prefix: Some("order-".into()),
                ..base.clone()
            },
        ),
        (
            "the entities of one name",
            InstanceQuery {
                id_prefix: Some("@counter@".into()),
                entities: true,
                ..base.clone()
            },
        ),
        (
            "continuation, newest first",
            InstanceQuery {
                after: Some((5, "m".into())),
                newest_first: true,
                ..base.clone()
            },
        ),
    ];
    for (what, query) in queries {
        let (statements, _) = listing::statements(&query, sql::INSTANCE_COLUMNS, 100);
        // What the store runs: the statements as one union.
        {
            let statement = listing::union_all(&statements).to_postgres();
            let args: Vec<Box<dyn ToSql + Sync>> = statement
                .args
                .iter()
                .map(|value| -> Box<dyn ToSql + Sync> {
                    match value {
                        SqlValue::Int(i) => Box::new(*i),
                        SqlValue::Text(t) => Box::new(t.clone()),
                    }
                })
                .collect();
            let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref()).collect();
            check(&store, what, &statement.sql, &params).await;
        }
    }
    drop(store);
    PgStore::drop_schema(&url, &schema).await.unwrap();
}
