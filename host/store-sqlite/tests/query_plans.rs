//! Every query the API, the durable client and the workers issue is answered
//! from an index: `EXPLAIN QUERY PLAN` of each must show no scan of a table
//! and no sort of the rows it found, so an index cannot silently stop being
//! used as the schema or the queries change.

use duro_core::model::{InstanceQuery, RuntimeStatus, canonical_json};
use duro_store_sql::listing::{self, SqlValue};
use duro_store_sqlite::{INSTANCE_COLUMNS, SqliteStore, sql};

/// What a plan may do beyond index searches.
#[derive(Clone, Copy, PartialEq)]
enum Allow {
    /// Index searches only.
    Searches,
    /// A walk of one index in order that stops at the LIMIT (a listing
    /// without filters, the claim of ready work from the inbox queue).
    OrderedWalk,
    /// Sorting the few rows of one input when no name narrows the index
    /// (input without name).
    SortOneInput,
}

/// Explain `sql`, fail on what `allow` does not allow; returns the plan.
fn check(store: &SqliteStore, what: &str, sql: &str, args: &[SqlValue], allow: Allow) -> String {
    let plan = store
        .explain(sql, args)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{sql}"));
    let text = plan.join("\n");
    for line in &plan {
        // Reading back a subquery's own rows (bounded by its LIMIT) is not a
        // scan of a table.
        if line.starts_with("SCAN (subquery") {
            continue;
        }
        let scans_table = line.starts_with("SCAN ")
            && !line.contains("USING INDEX")
            && !line.contains("USING COVERING INDEX")
            && !line.contains("VIRTUAL TABLE")
            && !line.starts_with("SCAN CONSTANT ROW");
        assert!(
            !scans_table,
            "{what} scans a table:\n{text}\n-- for --\n{sql}"
        );
        // A constant row is the one row of a SELECT without FROM.
        if line.starts_with("SCAN ")
            && !line.contains("VIRTUAL TABLE")
            && !line.starts_with("SCAN CONSTANT ROW")
        {
            assert!(
                allow == Allow::OrderedWalk,
                "{what} walks a whole index instead of searching it:\n{text}\n-- for --\n{sql}"
            );
        }
        if line.contains("TEMP B-TREE") {
            assert!(
                allow == Allow::SortOneInput,
                "{what} sorts its rows instead of reading them in index order:\n{text}\n-- for --\n{sql}"
            );
        }
    }
    println!("{what}:\n  {}", plan.join("\n  "));
    text
}

fn listing_cases() -> Vec<(&'static str, InstanceQuery, Allow)> {
    let window = InstanceQuery {
        created_from: Some(1_000),
        created_to: Some(2_000),
        ..Default::default()
    };
    let input = Some(canonical_json(&serde_json::json!("order-42")));
    let live = vec![
        RuntimeStatus::Pending,
        RuntimeStatus::Running,
        RuntimeStatus::Suspended,
        RuntimeStatus::Completed,
    ];
    vec![
        (
            "list everything",
            InstanceQuery::default(),
            Allow::OrderedWalk,
        ),
        ("list by time window", window.clone(), Allow::Searches),
        (
            "list by name",
            InstanceQuery {
                name: Some("Workflow".into()),
                ..Default::default()
            },
            Allow::Searches,
        ),
        (
            "list by name and window",
            InstanceQuery {
                name: Some("Workflow".into()),
                ..window.clone()
            },
            Allow::Searches,
        ),
        (
            "list by one status",
            InstanceQuery {
                statuses: vec![RuntimeStatus::Running],
                ..Default::default()
            },
            Allow::Searches,
        ),
        (
            "list by statuses and window",
            InstanceQuery {
                statuses: live.clone(),
                ..window.clone()
            },
            Allow::Searches,
        ),
        (
            "list by name, statuses and window",
            InstanceQuery {
                name: Some("Workflow".into()),
                statuses: live.clone(),
                ..window.clone()
            },
            Allow::Searches,
        ),
        (
            "list the entities of one name",
            InstanceQuery {
                id_prefix: Some("@counter@".into()),
                entities: true,
                ..Default::default()
            },
            Allow::Searches,
        ),
        (
            "list by id prefix",
            InstanceQuery {
                id_prefix: Some("order-".into()),
                ..Default::default()
            },
            Allow::Searches,
        ),
        (
            "list by id prefix, statuses and window",
            InstanceQuery {
                id_prefix: Some("order-".into()),
                statuses: live.clone(),
                ..window.clone()
            },
            Allow::Searches,
        ),
        (
            "find by input and name in a window (the seed's Check and Stop)",
            InstanceQuery {
                name: Some("Workflow".into()),
                input: input.clone(),
                statuses: live.clone(),
                newest_first: true,
                ..window.clone()
            },
            Allow::Searches,
        ),
        (
            "find by input without a name",
            InstanceQuery {
                input: input.clone(),
                ..Default::default()
            },
            Allow::SortOneInput,
        ),
        (
            "bulk purge: finished instances in a window",
            InstanceQuery {
                statuses: vec![
                    RuntimeStatus::Completed,
                    RuntimeStatus::Failed,
                    RuntimeStatus::Terminated,
                ],
                ..window
            },
            Allow::Searches,
        ),
    ]
}

#[test]
fn every_query_is_answered_from_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("plans.db")).unwrap();
    for (what, query, allow) in listing_cases() {
        // Each page, the first and the following ones (continued with a
        // row-value comparison), in both directions.
        for newest_first in [query.newest_first, !query.newest_first] {
            for after in [None, Some((1_500, "order-7".to_string()))] {
                let query = InstanceQuery {
                    newest_first,
                    after: after.clone(),
                    ..query.clone()
                };
                let (statements, _) = listing::statements(&query, INSTANCE_COLUMNS, 100);
                let walk = if after.is_some() && allow == Allow::OrderedWalk {
                    // Continuing an unfiltered listing seeks its position.
                    Allow::Searches
                } else {
                    allow
                };
                for statement in statements {
                    let label = format!(
                        "{what} (newest_first={newest_first}, continued={})",
                        after.is_some()
                    );
                    let plan = check(&store, &label, &statement.sql, &statement.args, walk);
                    // A continued page seeks to its position, not to the
                    // start of the window.
                    if statement.sql.contains("(created_at, id)") && allow != Allow::SortOneInput {
                        assert!(
                            plan.contains("(created_at,id)"),
                            "{label} does not seek to its continuation:\n{plan}"
                        );
                    }
                }
            }
        }
    }
    let id = || vec![SqlValue::Text("order-42".into())];
    check(
        &store,
        "versions in flight",
        &duro_store_sql::rows::in_flight_versions_sql(),
        &[],
        Allow::Searches,
    );
    check(
        &store,
        "claim ready work",
        sql::CLAIM_READY,
        &[SqlValue::Int(64)],
        Allow::OrderedWalk,
    );
    check(
        &store,
        "read an instance",
        sql::GET_INSTANCE,
        &id(),
        Allow::Searches,
    );
    check(
        &store,
        "due schedules",
        sql::DUE_SCHEDULES,
        &[SqlValue::Int(1_000), SqlValue::Int(64)],
        Allow::Searches,
    );
    check(
        &store,
        "next schedule due",
        sql::NEXT_SCHEDULE_DUE,
        &[],
        Allow::Searches,
    );
    check(
        &store,
        "a schedule's run ended",
        sql::SCHEDULED_RUN_ENDED,
        &[
            SqlValue::Text("nightly".into()),
            SqlValue::Text("nightly:2026-01-01T00:00:00Z".into()),
            SqlValue::Int(1_000),
        ],
        Allow::Searches,
    );
    check(
        &store,
        "load a history",
        sql::LOAD_HISTORY,
        &id(),
        Allow::Searches,
    );
    check(
        &store,
        "load a page of a history",
        sql::LOAD_HISTORY_PAGE,
        &[
            SqlValue::Text("order-42".into()),
            SqlValue::Int(500),
            SqlValue::Int(128),
        ],
        Allow::Searches,
    );
    check(
        &store,
        "load an inbox",
        sql::LOAD_INBOX,
        &id(),
        Allow::Searches,
    );
    check(
        &store,
        "whether messages wait",
        sql::MESSAGES_WAIT,
        &id(),
        Allow::Searches,
    );
    check(
        &store,
        "count what an instance has waiting",
        sql::COUNT_WAITING,
        &[SqlValue::Text("i".into()), SqlValue::Int(10_000)],
        Allow::Searches,
    );
    check(
        &store,
        "fire due timers",
        sql::FIRE_DUE_TIMERS,
        &[SqlValue::Int(1_000)],
        Allow::Searches,
    );
    check(
        &store,
        "next timer due",
        sql::NEXT_TIMER_DUE,
        &[],
        Allow::Searches,
    );
    check(
        &store,
        "pending work of an instance",
        sql::HAS_PENDING_WORK,
        &[SqlValue::Text("i-1".into()), SqlValue::Int(1_000)],
        Allow::Searches,
    );
    check(
        &store,
        "claim due activities",
        sql::CLAIM_ACTIVITIES,
        &[SqlValue::Int(1_000), SqlValue::Int(32)],
        Allow::Searches,
    );
    check(
        &store,
        "next activity due",
        sql::NEXT_ACTIVITY_DUE,
        &[],
        Allow::Searches,
    );
    check(
        &store,
        "a message for an instance that may be gone",
        sql::INSERT_MESSAGE_IF_PRESENT,
        &[
            SqlValue::Text("i".into()),
            SqlValue::Text("{}".into()),
            SqlValue::Int(0),
            SqlValue::Int(1),
        ],
        Allow::Searches,
    );
    let ids = vec![SqlValue::Text(r#"["a","b"]"#.into())];
    for statement in sql::PURGE_BATCH.iter() {
        check(&store, "purge a batch", statement, &ids, Allow::Searches);
    }
}
