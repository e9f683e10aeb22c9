//! A group's common writes said once for the whole group: the guards,
//! history rows, consumed messages, instance rows and leases of its plain
//! episodes, and the rows of its new instances, each kind one statement
//! over arrays, whatever the group's size. The server's cost is mostly per
//! statement (start-up, planning, protocol), so a group of ten episodes
//! costs about what one did.

use deadpool_postgres::GenericClient;
use duro_core::model::{HistoryEvent, Instance, Message, RuntimeStatus, input_hash};
use duro_core::store::plan::{self, Write as Planned};
use duro_core::store::{StoreError, StoreResult, Version};
use duro_store_sql::rows;
use tokio_postgres::types::ToSql;

use crate::ops;
use crate::writer::Write;

/// How the sessions of the grouped writes and reads plan (their
/// connections' options). Their statements are planned once per
/// connection and the plan kept (a generic plan: planning each run would
/// cost more than running), so the plan must not depend on how large the
/// tables were when it was made: with sequential scans priced out, the
/// arrays' rows are found through their indexes, as the query-plan test
/// checks, where a plan made on a near-empty table scanned the whole table
/// ever after.
pub const GROUPED_SETTINGS: [(&str, &str); 2] = [
    ("enable_seqscan", "off"),
    ("plan_cache_mode", "force_generic_plan"),
];

/// `GROUPED_SETTINGS` as connection options (each ` -c name=value`).
pub fn grouped_options() -> String {
    GROUPED_SETTINGS
        .iter()
        .map(|(name, value)| format!(" -c {name}={value}"))
        .collect()
}

/// The statements, each over arrays (`$1` … one per column). A join to
/// `UNNEST` also names the ids as `= ANY($1)`: without it the planner,
/// guessing the arrays' length, may hash-join a scan of the whole table.
pub mod sql {
    /// Lock the rows of the instances `$1` and their queue rows, in id
    /// order (the order two groups must take them in not to deadlock),
    /// and read their versions, lease holders and whether messages wait.
    pub const LOCK_AND_READ: &str = "SELECT i.id, i.execution_id, i.history_len, i.component, \
         q.lease_owner, EXISTS (SELECT 1 FROM inbox WHERE instance_id = i.id) \
         FROM instances i JOIN queue q ON q.instance_id = i.id \
         WHERE i.id = ANY($1) AND q.instance_id = ANY($1) ORDER BY i.id FOR UPDATE OF i, q";
    /// New instances: their rows, queue rows, start messages and first
    /// events, none where the id is taken; the ids created are returned (a
    /// taken one is created step by step after, `ops::create_careful`: a
    /// finished instance there is replaced, a live one refuses). Where
    /// `$13` (the start) is NULL, the first episode, committed in the same
    /// group, took the start: the row is stored as that episode left it
    /// (`$16`…`$20`) and ready only if messages it can take wait, as
    /// `REQUEUE` would say, so that a new instance's row is written once
    /// and not inserted then updated (each write of a row whose status
    /// changes inserts into all six of its indexes).
    pub const CREATE: &str = "WITH n AS (SELECT * FROM UNNEST($1::text[], $2::text[], \
             $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], \
             $9::text[], $10::bigint[], $11::text[], $12::text[], $13::text[], $14::boolean[], \
             $15::text[], $16::text[], $17::text[], $18::text[], $19::bigint[], $20::bigint[]) \
             AS n (id, name, input, component, at, hash, execution, parent, parent_execution, \
                 parent_task, trace_parent, scheduled_by, start, control, started, status, \
                 output, custom_status, updated, history_len)), \
         created AS (INSERT INTO instances (id, name, status, input, output, custom_status, \
                 component, created_at, updated_at, history_len, input_hash, execution_id, \
                 parent_instance, parent_execution, parent_task, trace_parent, scheduled_by) \
             SELECT id, name, status, input, output, custom_status, component, at, updated, \
                 history_len, hash, execution, parent, parent_execution, parent_task, \
                 trace_parent, scheduled_by \
             FROM n ON CONFLICT (id) DO NOTHING RETURNING id), \
         queued AS (INSERT INTO queue (instance_id, ready_at) \
             SELECT n.id, CASE WHEN n.start IS NOT NULL THEN n.at \
                 WHEN EXISTS (SELECT 1 FROM inbox WHERE instance_id = n.id \
                     AND (control OR n.status <> 'Suspended')) THEN n.updated END \
             FROM n JOIN created USING (id)), \
         started AS (INSERT INTO inbox (instance_id, message, control, created_at) \
             SELECT n.id, n.start, n.control, n.at FROM n JOIN created USING (id) \
             WHERE n.start IS NOT NULL), \
         first AS (INSERT INTO history (instance_id, seq, timestamp, event) \
             SELECT n.id, 0, n.at, n.started FROM n JOIN created USING (id)) \
         SELECT id FROM created";
    /// History rows.
    pub const APPEND: &str = "INSERT INTO history (instance_id, seq, timestamp, event) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[])";
    /// Messages the episodes consumed ($1 their instances, $2 their ids).
    pub const CONSUME: &str = "DELETE FROM inbox WHERE id = ANY($2) AND instance_id = ANY($1)";
    /// The episodes' instance rows (the columns an episode changes).
    pub const UPDATE: &str = "UPDATE instances i SET status = u.status, output = u.output, \
         custom_status = u.custom_status, updated_at = u.at, history_len = u.history_len \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]) \
             AS u (id, status, output, custom_status, at, history_len) \
         WHERE i.id = u.id AND i.id = ANY($1)";
    /// Leases back, each instance ready again if messages it can take
    /// remain (read after the consumed ones were deleted), as
    /// `ops::sql::REQUEUE_AFTER_EPISODE`.
    pub const REQUEUE: &str = "UPDATE queue q SET lease_owner = NULL, lease_until = NULL, \
         ready_at = CASE WHEN EXISTS (SELECT 1 FROM inbox WHERE instance_id = u.id \
             AND (control OR u.status <> 'Suspended')) THEN u.at END \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS u (id, status, at) \
         WHERE q.instance_id = u.id AND q.instance_id = ANY($1)";
    /// Clients' messages for live instances (of no status in $6), each
    /// while fewer than its limit wait (a control message always), as
    /// `ops::sql::ENQUEUE` says one: the instance marked ready if it can
    /// take the message now; the instances that took one are returned.
    /// ($1 instances, $2 messages, $3 control, $4 times, $5 limits.)
    pub const ENQUEUE: &str = "WITH m AS (SELECT * FROM UNNEST($1::text[], $2::text[], \
             $3::boolean[], $4::bigint[], $5::bigint[]) AS m (id, message, control, at, max_inbox)), \
         s AS (SELECT id, status FROM instances \
             WHERE id = ANY($1) AND NOT status = ANY($6) ORDER BY id FOR UPDATE), \
         target AS (UPDATE queue q SET ready_at = CASE WHEN m.control OR s.status <> 'Suspended' \
                 THEN COALESCE(q.ready_at, m.at) ELSE q.ready_at END \
             FROM s JOIN m ON m.id = s.id \
             WHERE q.instance_id = s.id AND q.instance_id = ANY($1) \
                 AND (m.control OR (SELECT count(*) FROM (SELECT 1 FROM inbox \
                     WHERE instance_id = s.id LIMIT m.max_inbox) w) < m.max_inbox) \
             RETURNING q.instance_id, m.message, m.control, m.at) \
         INSERT INTO inbox (instance_id, message, control, created_at) \
         SELECT * FROM target RETURNING instance_id";
    /// The scheduled work of finished instances.
    pub const DROP_TIMERS: &str = "DELETE FROM timers WHERE instance_id = ANY($1)";
    pub const DROP_ACTIVITIES: &str = "DELETE FROM activities WHERE instance_id = ANY($1)";
}

/// The part of a group said in arrays, and which writes it covers.
#[derive(Default)]
pub struct Batch<'a> {
    /// Per write of the group: whether the batch says all of it.
    pub covered: Vec<bool>,
    /// Every instance the group's writes name, sorted: locked first.
    locked: Vec<&'a str>,
    /// The guarded instances, their expected versions, and whether their
    /// inbox must be empty (`plan::Write::Guard`).
    guards: Vec<(&'a str, &'a Version, bool)>,
    creates: Vec<&'a Instance>,
    /// Those of `creates` whose start their first episode, in this group,
    /// took (`EpisodeCommit::created`).
    started: Vec<&'a str>,
    /// The rows those first episodes leave, stored by the create.
    firsts: Vec<&'a Instance>,
    history: History<'a>,
    consumed: (Vec<&'a str>, Vec<i64>),
    updates: Vec<&'a Instance>,
    finished: Vec<&'a str>,
    messages: Messages<'a>,
}

/// Clients' messages as columns.
#[derive(Default)]
struct Messages<'a> {
    ids: Vec<&'a str>,
    json: Vec<String>,
    control: Vec<bool>,
    at: Vec<i64>,
    max_inbox: Vec<i64>,
}

/// History rows as columns.
#[derive(Default)]
struct History<'a> {
    ids: Vec<&'a str>,
    seqs: Vec<i64>,
    stamps: Vec<i64>,
    events: Vec<String>,
}

impl<'a> Batch<'a> {
    /// Sort out `writes` (a group's round, on distinct instances, in key
    /// order):
    /// a new instance, or an episode whose plan holds only the writes
    /// every episode makes, goes into the batch; any other write is said
    /// on its own, after it.
    pub fn of(writes: impl IntoIterator<Item = &'a Write>) -> StoreResult<Batch<'a>> {
        let mut batch = Batch::default();
        for write in writes {
            let covered = match write {
                Write::Create(instance) => {
                    batch.creates.push(instance);
                    true
                }
                Write::Episode(commit) => {
                    let planned = plan::episode(commit);
                    let plain = planned.iter().all(|w| {
                        matches!(
                            w,
                            Planned::Create {
                                start_taken: true,
                                ..
                            } | Planned::Guard { .. }
                                | Planned::AppendEvents { .. }
                                | Planned::Consume { .. }
                                | Planned::UpdateInstance { .. }
                                | Planned::DropScheduledWork { .. }
                        )
                    });
                    if plain {
                        for w in planned {
                            batch.add(w)?;
                        }
                    }
                    plain
                }
                // A message for an entity may have to create its row
                // first: said on its own.
                Write::Enqueue {
                    id,
                    message,
                    max_inbox,
                    at,
                } if plan::ensure_entity(id, *at).is_none() => {
                    let m = &mut batch.messages;
                    m.ids.push(id);
                    m.json.push(ops::to_json("message", message)?);
                    m.control.push(message.is_control());
                    m.at.push(*at as i64);
                    m.max_inbox.push(*max_inbox as i64);
                    true
                }
                _ => false,
            };
            if !matches!(write, Write::Create(_) | Write::Schedule(_)) {
                batch.locked.push(write.key());
            }
            batch.covered.push(covered);
        }
        batch.locked.sort_unstable();
        Ok(batch)
    }

    fn add(&mut self, write: Planned<'a>) -> StoreResult<()> {
        match write {
            Planned::Create {
                instance,
                start_taken: true,
            } => {
                self.creates.push(instance);
                self.started.push(&instance.id);
            }
            // Created by this group, the instance is as its episode
            // expects (the create says if the id is taken).
            Planned::Guard { id, .. } if self.started.contains(&id) => {}
            Planned::Guard {
                id,
                expected,
                unread_inbox,
            } => self.guards.push((id, expected, unread_inbox)),
            Planned::AppendEvents {
                id,
                first_seq,
                events,
                at,
            } => {
                for (n, event) in events.iter().enumerate() {
                    self.history
                        .push(id, (first_seq + n as u64) as i64, at as i64, event)?;
                }
            }
            Planned::Consume { id, messages } => {
                for &message in messages {
                    self.consumed.0.push(id);
                    self.consumed.1.push(message);
                }
            }
            Planned::UpdateInstance { instance } if self.started.contains(&&*instance.id) => {
                self.firsts.push(instance)
            }
            Planned::UpdateInstance { instance } => self.updates.push(instance),
            Planned::DropScheduledWork { id } => self.finished.push(id),
            other => unreachable!("not a plain episode's write: {other:?}"),
        }
        Ok(())
    }

    /// Send every statement of the batch at once (the caller sends the
    /// group's other writes right after, in the same round trip), then
    /// check what the guards read: `Err` if any write of the batch would
    /// be refused (the group then runs again write by write, which finds
    /// the one and says why).
    pub async fn apply(&self, c: &impl GenericClient, owner: &str) -> StoreResult<Vec<&'a str>> {
        let locked = !self.locked.is_empty();
        let created = !self.creates.is_empty();
        let creates = Columns::of_creates(&self.creates, &self.firsts)?;
        let updates = Columns::of_updates(&self.updates);
        let (h, consumed) = (&self.history, &self.consumed);
        type Params<'p> = Vec<&'p (dyn ToSql + Sync)>;
        let lock: Params<'_> = vec![&self.locked];
        let instances: Params<'_> = creates.instances().to_vec();
        let history: Params<'_> = vec![&h.ids, &h.seqs, &h.stamps, &h.events];
        let consume: Params<'_> = vec![&consumed.0, &consumed.1];
        let rows: Params<'_> = vec![
            &updates.ids,
            &updates.status,
            &updates.output,
            &updates.custom_status,
            &updates.at,
            &updates.history_len,
        ];
        let requeue: Params<'_> = vec![&updates.ids, &updates.status, &updates.at];
        let finished: Params<'_> = vec![&self.finished];
        let updating = !self.updates.is_empty();
        let finishing = !self.finished.is_empty();
        let m = &self.messages;
        let finished_statuses = plan::finished_statuses();
        let enqueue: Params<'_> = vec![
            &m.ids,
            &m.json,
            &m.control,
            &m.at,
            &m.max_inbox,
            &finished_statuses,
        ];
        let statements = [
            (locked, sql::LOCK_AND_READ),
            (created, sql::CREATE),
            (!h.ids.is_empty(), sql::APPEND),
            (!consumed.0.is_empty(), sql::CONSUME),
            (updating, sql::UPDATE),
            (updating, sql::REQUEUE),
            (finishing, sql::DROP_TIMERS),
            (finishing, sql::DROP_ACTIVITIES),
            (!m.ids.is_empty(), sql::ENQUEUE),
        ];
        // Prepared first (at once when the connection has them already),
        // so that they run in the order sent: one still being prepared
        // would run after one that was not, and a new instance's rows must
        // exist before its first episode's update and requeue.
        futures_util::future::try_join_all(
            (statements.iter())
                .filter(|(used, _)| *used)
                .map(|(_, statement)| c.prepare_cached(statement)),
        )
        .await
        .map_err(crate::backend)?;
        let (read, inserted, appended, consumed, updated, requeued, timers, calls, enqueued) = tokio::join!(
            biased;
            when(locked, ops::rows(c, sql::LOCK_AND_READ, &lock)),
            when(created, ops::rows(c, sql::CREATE, &instances)),
            when(!h.ids.is_empty(), ops::exec(c, sql::APPEND, &history)),
            when(!consumed.0.is_empty(), ops::exec(c, sql::CONSUME, &consume)),
            when(updating, ops::exec(c, sql::UPDATE, &rows)),
            when(updating, ops::exec(c, sql::REQUEUE, &requeue)),
            when(finishing, ops::exec(c, sql::DROP_TIMERS, &finished)),
            when(finishing, ops::exec(c, sql::DROP_ACTIVITIES, &finished)),
            when(!m.ids.is_empty(), ops::exec(c, sql::ENQUEUE, &enqueue)),
        );
        for done in [appended, consumed, updated, requeued, timers, calls] {
            done?;
        }
        if let Some(enqueued) = enqueued?
            && enqueued as usize != m.ids.len()
        {
            // Gone, finished or full: the run write by write says which.
            return Err(StoreError::Backend {
                message: "a message of the group was refused".into(),
                retriable: false,
            });
        }
        // New instances whose id was taken: created step by step after.
        let created: Vec<String> = (inserted?.unwrap_or_default().iter())
            .map(|row| row.get(0))
            .collect();
        let taken: Vec<&'a str> = (self.creates.iter())
            .filter(|instance| !created.contains(&instance.id))
            .map(|instance| instance.id.as_str())
            .collect();
        if taken.iter().any(|id| self.started.contains(id)) {
            // Its episode's other writes ran on the instance there: the
            // run write by write refuses it, or replaces a finished one.
            return Err(StoreError::Backend {
                message: "a first episode's instance id was taken".into(),
                retriable: false,
            });
        }
        let read = read?.unwrap_or_default();
        for &(id, expected, unread_inbox) in &self.guards {
            let Some(row) = read.iter().find(|r| r.get::<_, &str>(0) == id) else {
                return Err(StoreError::NotFound(id.to_string()));
            };
            let holder: Option<String> = row.get(4);
            if let Some(holder) = holder.filter(|holder| holder != owner) {
                return Err(ops::conflict(
                    id,
                    format!("its lease passed to {holder} (this host's had expired)"),
                ));
            }
            let actual = Version {
                execution_id: row.get(1),
                history_len: row.get::<_, i64>(2) as u64,
                component: row.get(3),
            };
            if let Some(change) = expected.change_to(&actual) {
                return Err(ops::conflict(id, change));
            }
            if unread_inbox && row.get::<_, bool>(5) {
                return Err(plan::unread_messages_wait(id));
            }
        }
        Ok(taken)
    }
}

impl<'a> History<'a> {
    fn push(&mut self, id: &'a str, seq: i64, at: i64, event: &HistoryEvent) -> StoreResult<()> {
        self.ids.push(id);
        self.seqs.push(seq);
        self.stamps.push(at);
        self.events.push(ops::to_json("history event", event)?);
        Ok(())
    }
}

/// `Some` of what `op` answers if `send`, else `None` without sending.
async fn when<T>(send: bool, op: impl Future<Output = StoreResult<T>>) -> StoreResult<Option<T>> {
    if send { op.await.map(Some) } else { Ok(None) }
}

/// Rows as columns, for the array statements.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<&'a str>,
    at: Vec<i64>,
    // New instances.
    name: Vec<&'a str>,
    input: Vec<&'a str>,
    component: Vec<&'a str>,
    hash: Vec<i64>,
    execution: Vec<&'a str>,
    parent: Vec<Option<&'a str>>,
    parent_execution: Vec<Option<&'a str>>,
    parent_task: Vec<Option<i64>>,
    trace_parent: Vec<Option<&'a str>>,
    scheduled_by: Vec<Option<String>>,
    start: Vec<Option<String>>,
    control: Vec<bool>,
    started: Vec<String>,
    /// New instances' `updated_at` (`at` is their `created_at`).
    updated: Vec<i64>,
    // Episodes' rows (and new instances').
    status: Vec<&'static str>,
    output: Vec<Option<&'a str>>,
    custom_status: Vec<Option<&'a str>>,
    history_len: Vec<i64>,
}

impl<'a> Columns<'a> {
    /// New instances' columns; one in `firsts` (its first episode's row)
    /// is stored as that row, with no start message.
    fn of_creates(instances: &[&'a Instance], firsts: &[&'a Instance]) -> StoreResult<Columns<'a>> {
        let mut c = Columns::default();
        let start = ops::to_json("message", &Message::Start)?;
        for instance in instances {
            let parent = instance.parent.as_ref();
            c.ids.push(&instance.id);
            c.at.push(instance.created_at as i64);
            c.name.push(&instance.name);
            c.input.push(&instance.input);
            c.component.push(&instance.component);
            c.hash.push(input_hash(&instance.input));
            c.execution.push(&instance.execution_id);
            c.parent.push(parent.map(|p| p.instance.as_str()));
            c.parent_execution
                .push(parent.map(|p| p.execution.as_str()));
            c.parent_task.push(parent.map(|p| p.task as i64));
            c.trace_parent.push(instance.trace_parent.as_deref());
            c.scheduled_by.push(rows::scheduled_by_json(instance));
            match firsts.iter().find(|first| first.id == instance.id) {
                Some(first) => {
                    c.start.push(None);
                    c.status.push(first.status.as_str());
                    c.output.push(first.output.as_deref());
                    c.custom_status.push(first.custom_status.as_deref());
                    c.updated.push(first.updated_at as i64);
                    c.history_len.push(first.history_len as i64);
                }
                None => {
                    c.start.push(Some(start.clone()));
                    c.status.push(RuntimeStatus::Pending.as_str());
                    c.output.push(None);
                    c.custom_status.push(None);
                    c.updated.push(instance.created_at as i64);
                    // Its `ExecutionStarted` event.
                    c.history_len.push(1);
                }
            }
            c.control.push(Message::Start.is_control());
            c.started.push(ops::to_json(
                "history event",
                &HistoryEvent::ExecutionStarted {
                    name: instance.name.clone(),
                    input: instance.input.clone(),
                },
            )?);
        }
        Ok(c)
    }

    fn instances(&self) -> [&(dyn ToSql + Sync); 20] {
        [
            &self.ids,
            &self.name,
            &self.input,
            &self.component,
            &self.at,
            &self.hash,
            &self.execution,
            &self.parent,
            &self.parent_execution,
            &self.parent_task,
            &self.trace_parent,
            &self.scheduled_by,
            &self.start,
            &self.control,
            &self.started,
            &self.status,
            &self.output,
            &self.custom_status,
            &self.updated,
            &self.history_len,
        ]
    }

    fn of_updates(instances: &[&'a Instance]) -> Columns<'a> {
        let mut c = Columns::default();
        for instance in instances {
            c.ids.push(&instance.id);
            c.at.push(instance.updated_at as i64);
            c.status.push(instance.status.as_str());
            c.output.push(instance.output.as_deref());
            c.custom_status.push(instance.custom_status.as_deref());
            c.history_len.push(instance.history_len as i64);
        }
        c
    }
}
