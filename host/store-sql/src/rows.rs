//! Stored rows as the model's types: one decoding for both backends, so
//! that a value one of them accepts the other does too (a NULL where a
//! value belongs, a negative count, an unknown status are errors that say
//! which row is corrupt, on SQLite and on PostgreSQL alike).

use duro_core::model::{HistoryEntry, Instance, Message, Millis, ParentCall, RuntimeStatus};
use duro_core::store::{StoreError, StoreResult};

/// The columns of an instance row, in the order [`InstanceRow`] holds
/// them: a literal, so that statements can be built with `concat!`.
#[macro_export]
macro_rules! instance_columns {
    () => {
        "id, name, status, input, output, custom_status, component, execution_id, \
         created_at, updated_at, history_len, parent_instance, parent_execution, parent_task, \
         trace_parent, scheduled_by"
    };
}

/// The columns of an instance row ([`instance_columns!`]).
pub const INSTANCE_COLUMNS: &str = instance_columns!();

/// An instance row as a driver reads it, column by column, before it is
/// checked.
#[derive(Debug, Clone, Default)]
pub struct InstanceRow {
    /// `id`.
    pub id: String,
    /// `name`.
    pub name: String,
    /// `status`, as stored.
    pub status: String,
    /// `input`.
    pub input: String,
    /// `output`.
    pub output: Option<String>,
    /// `custom_status`.
    pub custom_status: Option<String>,
    /// `component`.
    pub component: String,
    /// `execution_id`.
    pub execution_id: String,
    /// `created_at`.
    pub created_at: i64,
    /// `updated_at`.
    pub updated_at: i64,
    /// `history_len`.
    pub history_len: i64,
    /// `parent_instance`.
    pub parent_instance: Option<String>,
    /// `parent_execution`.
    pub parent_execution: Option<String>,
    /// `parent_task`.
    pub parent_task: Option<i64>,
    /// `trace_parent`.
    pub trace_parent: Option<String>,
    /// `scheduled_by`, as JSON.
    pub scheduled_by: Option<String>,
}

/// The error for a stored value that cannot be read.
pub fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        message: format!("stored {what} cannot be read: {e}"),
        retriable: false,
    }
}

/// A stored time or count, which is never negative.
fn unsigned(id: &str, column: &str, value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(&format!("{column} of instance `{id}`"), value))
}

impl InstanceRow {
    /// The instance, or why the row is corrupt. A parent is all three
    /// parent columns or none of them.
    ///
    /// ```
    /// use duro_store_sql::rows::InstanceRow;
    /// let row = InstanceRow {
    ///     id: "i".into(),
    ///     status: "Running".into(),
    ///     parent_instance: Some("p".into()),
    ///     parent_execution: Some("e".into()),
    ///     parent_task: None,
    ///     ..Default::default()
    /// };
    /// let error = row.decode().unwrap_err().to_string();
    /// assert!(error.contains("parent of instance `i`"), "{error}");
    /// ```
    pub fn decode(self) -> StoreResult<Instance> {
        let id = self.id;
        let status = RuntimeStatus::parse(&self.status)
            .ok_or_else(|| corrupt(&format!("status of instance `{id}`"), &self.status))?;
        let parent = match (
            self.parent_instance,
            self.parent_execution,
            self.parent_task,
        ) {
            (None, None, None) => None,
            (Some(instance), Some(execution), Some(task)) => Some(ParentCall {
                instance,
                execution,
                task: u32::try_from(task)
                    .map_err(|_| corrupt(&format!("parent task of instance `{id}`"), task))?,
            }),
            (instance, execution, task) => {
                return Err(corrupt(
                    &format!("parent of instance `{id}`"),
                    format!(
                        "parent_instance, parent_execution and parent_task must be all set or all \
                         NULL, not {instance:?}, {execution:?}, {task:?}"
                    ),
                ));
            }
        };
        let scheduled_by = self
            .scheduled_by
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| corrupt(&format!("scheduled_by of instance `{id}`"), e))?;
        Ok(Instance {
            created_at: unsigned(&id, "created_at", self.created_at)?,
            updated_at: unsigned(&id, "updated_at", self.updated_at)?,
            history_len: unsigned(&id, "history_len", self.history_len)?,
            id,
            name: self.name,
            status,
            input: self.input,
            output: self.output,
            custom_status: self.custom_status,
            component: self.component,
            execution_id: self.execution_id,
            parent,
            trace_parent: self.trace_parent,
            scheduled_by,
        })
    }
}

/// A history row (`seq`, `timestamp`, `event`) as its entry.
pub fn history_entry(seq: i64, timestamp: i64, event: &str) -> StoreResult<HistoryEntry> {
    Ok(HistoryEntry {
        seq: u64::try_from(seq).map_err(|_| corrupt("history position", seq))?,
        timestamp: timestamp.max(0) as Millis,
        event: serde_json::from_str(event).map_err(|e| corrupt("history event", e))?,
    })
}

/// A stored inbox message.
pub fn message(json: &str) -> StoreResult<Message> {
    serde_json::from_str(json).map_err(|e| corrupt("inbox message", e))
}

/// `SELECT name, component FROM instances` restricted to the statuses of
/// instances that have not finished (an index search per status), for
/// `ClientStore::in_flight_versions`: the same text on every backend.
pub fn in_flight_versions_sql() -> String {
    let live: Vec<String> = duro_core::store::plan::live_statuses()
        .into_iter()
        .map(|s| format!("'{s}'"))
        .collect();
    format!(
        "SELECT name, component FROM instances WHERE status IN ({}) AND component <> 'entity'",
        live.join(", ")
    )
}

/// Count `(name, component)` pairs into `(name, component, count)`.
pub fn count_versions(
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String, u64)> {
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for pair in pairs {
        *counts.entry(pair).or_default() += 1;
    }
    counts.into_iter().map(|((n, c), k)| (n, c, k)).collect()
}

/// The columns of a schedule row, in the order [`schedule_row`] takes them.
pub const SCHEDULE_COLUMNS: &str = "name, origin, spec, state, due_at, version";

/// A schedule row's columns as the row.
pub fn schedule_row(
    name: &str,
    origin: &str,
    spec: &str,
    state: &str,
    due_at: Option<i64>,
    version: i64,
) -> StoreResult<duro_core::schedule::ScheduleRow> {
    let what = |column: &str| format!("{column} of schedule `{name}`");
    Ok(duro_core::schedule::ScheduleRow {
        origin: duro_core::schedule::Origin::parse(origin)
            .ok_or_else(|| corrupt(&what("origin"), origin))?,
        spec: serde_json::from_str(spec).map_err(|e| corrupt(&what("spec"), e))?,
        state: serde_json::from_str(state).map_err(|e| corrupt(&what("state"), e))?,
        due_at: due_at
            .map(|due| Millis::try_from(due).map_err(|_| corrupt(&what("due_at"), due)))
            .transpose()?,
        version: u64::try_from(version).map_err(|_| corrupt(&what("version"), version))?,
    })
}

/// A schedule row's stored columns: spec and state as JSON.
pub fn schedule_json(row: &duro_core::schedule::ScheduleRow) -> StoreResult<(String, String)> {
    let json = |what: &str, e: serde_json::Error| StoreError::Backend {
        message: format!(
            "schedule `{}`: cannot encode its {what}: {e}",
            row.spec.name
        ),
        retriable: false,
    };
    Ok((
        serde_json::to_string(&row.spec).map_err(|e| json("definition", e))?,
        serde_json::to_string(&row.state).map_err(|e| json("state", e))?,
    ))
}

/// An instance's `scheduled_by` column: JSON, or NULL.
pub fn scheduled_by_json(instance: &Instance) -> Option<String> {
    let scheduled = instance.scheduled_by.as_ref()?;
    serde_json::to_string(scheduled).ok()
}

/// Orchestration instances by status: entities (ids that begin with `@`)
/// are counted apart ([`COUNT_ENTITIES`]).
pub const COUNT_BY_STATUS: &str =
    "SELECT status, count(*) FROM instances WHERE substr(id, 1, 1) <> '@' GROUP BY status";

/// Entities: a range of the primary key (every id that begins with `@`
/// sorts between `@` and `A`, bytewise).
pub const COUNT_ENTITIES: &str = "SELECT count(*) FROM instances WHERE id >= '@' AND id < 'A'";

/// Insert an entity's row unless it has one (`plan::Write::EnsureEntity`),
/// in SQLite's placeholders (`?N`; PostgreSQL says `$N`): id, name,
/// status, input, output (the record), component, time, input hash,
/// execution id. No history, so its length (the entity's version) is 0.
pub const INSERT_ENTITY: &str = "INSERT INTO instances (id, name, status, input, output, \
     custom_status, component, created_at, updated_at, history_len, input_hash, execution_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?7, 0, ?8, ?9) ON CONFLICT (id) DO NOTHING";
