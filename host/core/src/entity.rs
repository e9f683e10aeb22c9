//! Durable entities, pure: their ids, the record an entity's instance row
//! stores (state, lock holder, deferred queue), and [`process`], which runs
//! an entity's messages one at a time under its lock. No wasmtime, no SQL.
//!
//! An entity is an instance whose id is `@name@key` (Durable Functions'
//! scheduler id): its messages go through the same inbox, leases and
//! commits as an orchestration's, and an episode runs the operations it
//! finds there instead of replaying a history.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::model::{Instance, Message, Millis, ParentCall, RuntimeStatus, instance_id_problem};

/// The component an entity's row names: a placeholder the stores hold,
/// since operations run on the component the entity's name is registered
/// with when they run (an entity has no history to replay).
pub const COMPONENT: &str = "entity";

/// Longest entity name.
pub const MAX_NAME: usize = 128;

/// Most lock holders an entity remembers as released before their lock
/// request reached it (an orchestration that ended while its request was
/// on the way).
const RELEASED_REMEMBERED: usize = 32;

/// The id of an entity: its name (lowercase, as Durable Functions keeps it)
/// and its key.
///
/// ```
/// use duro_core::entity::EntityId;
/// let id = EntityId::new("Counter", "apples").unwrap();
/// assert_eq!(id.instance_id(), "@counter@apples");
/// assert_eq!(EntityId::parse("@counter@apples"), Some(id));
/// assert!(EntityId::new("a@b", "k").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityId {
    /// The entity name, lowercase.
    pub name: String,
    /// The key.
    pub key: String,
}

impl EntityId {
    /// The id of entity `name` with `key`, or why there can be none.
    pub fn new(name: &str, key: &str) -> Result<Self, String> {
        let name = name.to_lowercase();
        if name.is_empty() {
            return Err("the entity name is empty".into());
        }
        if name.len() > MAX_NAME {
            return Err(format!(
                "the entity name is longer than {MAX_NAME} characters"
            ));
        }
        if name.contains('@') {
            return Err(format!("the entity name {name:?} contains `@`"));
        }
        if key.is_empty() {
            return Err("the entity key is empty".into());
        }
        let id = EntityId {
            name,
            key: key.to_string(),
        };
        if let Some(problem) = instance_id_problem(&id.instance_id()) {
            return Err(format!(
                "the entity id {:?} is not valid: {problem}",
                id.instance_id()
            ));
        }
        Ok(id)
    }

    /// The id of the entity's instance: `@name@key`.
    pub fn instance_id(&self) -> String {
        format!("@{}@{}", self.name, self.key)
    }

    /// The entity an instance id names, if it names one.
    pub fn parse(instance_id: &str) -> Option<Self> {
        let rest = instance_id.strip_prefix('@')?;
        let (name, key) = rest.split_once('@')?;
        (!name.is_empty() && !key.is_empty()).then(|| EntityId {
            name: name.to_string(),
            key: key.to_string(),
        })
    }
}

impl std::fmt::Display for EntityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

/// Whether an instance id is an entity's (ids that begin with `@` are
/// reserved for entities).
pub fn is_entity(instance_id: &str) -> bool {
    instance_id.starts_with('@')
}

/// The instance row of an entity before its first operation: running, with
/// an empty record, created by the first message sent to it.
pub fn new_row(id: &EntityId, now: Millis) -> Instance {
    let mut row = Instance::pending(
        id.instance_id(),
        id.name.clone(),
        "null".into(),
        COMPONENT.into(),
        now,
        None,
    );
    row.status = RuntimeStatus::Running;
    // No history: the count is the entity's version, one more per episode.
    row.history_len = 0;
    row.output = Some(EntityRecord::default().to_json());
    row
}

/// The orchestration execution that holds (or asked for) entity locks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Its instance.
    pub instance: String,
    /// Its execution.
    pub execution: String,
}

/// What an entity's instance row stores (as JSON, in its `output`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRecord {
    /// The state, as JSON; none: the entity has no state (never set, or
    /// deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Who holds the entity's lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockHolder>,
    /// Operations and lock requests waiting for the lock, in arrival order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<Message>,
    /// Scheduled signals waiting for their time, in due order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduled: Vec<Message>,
    /// The task number of the entity's next timer.
    #[serde(default)]
    pub next_timer: u32,
    /// Holders that released their lock before their request arrived: it
    /// is dropped when it does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<LockHolder>,
    /// Operations run so far.
    #[serde(default)]
    pub operations: u64,
    /// When the last one ran.
    #[serde(default)]
    pub last_operation_at: Millis,
}

impl EntityRecord {
    /// The record an entity's row holds (an empty one if there is none or
    /// it cannot be read).
    pub fn read(output: Option<&str>) -> Self {
        output
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()
    }

    /// As stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }

    /// True when nothing is left of the entity: no state, no lock, nothing
    /// waiting (it may be purged).
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.lock.is_none()
            && self.queue.is_empty()
            && self.scheduled.is_empty()
    }
}

/// How much may wait for an entity's lock in its record: the record is
/// rewritten by every episode of the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most operations waiting.
    pub operations: usize,
    /// Most bytes of their inputs together.
    pub bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            operations: 1_000,
            bytes: 8 << 20,
        }
    }
}

/// One operation to run on an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Its name.
    pub name: String,
    /// Its input, as JSON.
    pub input: String,
    /// The orchestration call waiting for its result, if it was called
    /// (none: a signal).
    pub caller: Option<ParentCall>,
}

/// Take an entity's messages (what its record deferred first, then `inbox`,
/// in arrival order) one at a time: run each operation the lock lets
/// through with `run` (which changes `state` only if the operation
/// succeeds, and returns its result or error), take and pass on lock
/// requests, release locks, and defer what waits for the lock into the
/// record, within `limits`: an operation past them fails (its caller gets
/// the error; a signal is dropped and counted in the result). Answers to
/// callers and lock requests passed on are added to `sent` as (instance
/// id, message). A scheduled signal not due at `at` waits in the record
/// (counted in the same limits) and asks for a timer; one that has come
/// due runs after what the lock deferred and before the inbox.
pub fn process(
    record: &mut EntityRecord,
    inbox: Vec<Message>,
    at: Millis,
    limits: QueueLimits,
    mut run: impl FnMut(&mut Option<String>, &Operation) -> Result<String, String>,
    sent: &mut Vec<(String, Message)>,
) -> Processed {
    let mut pending: VecDeque<Message> = std::mem::take(&mut record.queue).into();
    let scheduled = std::mem::take(&mut record.scheduled);
    let (due, later): (Vec<Message>, Vec<Message>) = scheduled
        .into_iter()
        .partition(|m| due_time(m).is_none_or(|due| due <= at));
    record.scheduled = later;
    pending.extend(due.into_iter().map(made_due));
    pending.extend(inbox);
    let mut deferred: Vec<Message> = Vec::new();
    let mut processed = Processed::default();
    while let Some(message) = pending.pop_front() {
        if let Some(due) = due_time(&message).filter(|&due| due > at) {
            let (operations, bytes) = queued(&deferred, &record.scheduled);
            let size = operation_input(&message).map_or(0, str::len);
            if operations < limits.operations && bytes + size <= limits.bytes {
                let place = record
                    .scheduled
                    .partition_point(|m| due_time(m).is_some_and(|d| d <= due));
                record.scheduled.insert(place, message);
                processed.timers.push((record.next_timer, due));
                record.next_timer = record.next_timer.wrapping_add(1);
            } else {
                processed.dropped += 1;
            }
            continue;
        }
        match message {
            Message::EntityOperation {
                ref operation,
                ref input,
                ref caller,
                ref holder,
                ..
            } => {
                if record.lock.is_some() && record.lock.as_ref() != holder.as_deref() {
                    let (operations, bytes) = queued(&deferred, &record.scheduled);
                    if operations < limits.operations && bytes + input.len() <= limits.bytes {
                        deferred.push(message);
                        continue;
                    }
                    let refusal = format!(
                        "operation `{operation}` refused: the entity is locked and {operations} \
                         operations ({bytes} bytes of input) wait for it, as many as it may hold"
                    );
                    match caller {
                        Some(caller) => sent.push((
                            caller.instance.clone(),
                            Message::EntityDone {
                                task: caller.task,
                                execution: caller.execution.clone(),
                                result: Err(refusal),
                            },
                        )),
                        None => processed.dropped += 1,
                    }
                    continue;
                }
                let operation = Operation {
                    name: operation.clone(),
                    input: input.clone(),
                    caller: caller.as_deref().cloned(),
                };
                let result = run(&mut record.state, &operation);
                record.operations += 1;
                record.last_operation_at = at;
                if let Some(caller) = operation.caller {
                    sent.push((
                        caller.instance,
                        Message::EntityDone {
                            task: caller.task,
                            execution: caller.execution,
                            result,
                        },
                    ));
                }
            }
            Message::EntityLock {
                ref holder,
                ref entities,
                position,
                task,
            } => {
                if let Some(at) = record.released.iter().position(|h| h == holder) {
                    // Its orchestration let go before the request came.
                    record.released.remove(at);
                    continue;
                }
                if record.lock.is_some() {
                    deferred.push(message);
                    continue;
                }
                record.lock = Some(holder.clone());
                let next = position as usize + 1;
                match entities.get(next) {
                    Some(entity) => sent.push((
                        entity.clone(),
                        Message::EntityLock {
                            holder: holder.clone(),
                            entities: entities.clone(),
                            position: next as u32,
                            task,
                        },
                    )),
                    None => sent.push((
                        holder.instance.clone(),
                        Message::EntityLockGranted {
                            task,
                            execution: holder.execution.clone(),
                        },
                    )),
                }
            }
            Message::EntityUnlock { holder } => {
                if record.lock.as_ref() == Some(&holder) {
                    record.lock = None;
                    // What waited for the lock goes first again.
                    let mut again: VecDeque<Message> = std::mem::take(&mut deferred).into();
                    again.extend(pending);
                    pending = again;
                    continue;
                }
                let is_request = |m: &Message| matches!(m, Message::EntityLock { holder: h, .. } if *h == holder);
                let waiting = deferred.len() + pending.len();
                deferred.retain(|m| !is_request(m));
                pending.retain(|m| !is_request(m));
                if deferred.len() + pending.len() == waiting {
                    // Its request may still be on the way.
                    record.released.push(holder);
                    if record.released.len() > RELEASED_REMEMBERED {
                        record.released.remove(0);
                    }
                }
            }
            // Nothing else means anything to an entity.
            _ => {}
        }
    }
    record.queue = deferred;
    processed
}

/// What [`process`] leaves to its caller.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// Signals dropped for want of room.
    pub dropped: usize,
    /// Timers to set for scheduled signals: (task, due time).
    pub timers: Vec<(u32, Millis)>,
}

/// When a scheduled signal is due.
fn due_time(message: &Message) -> Option<Millis> {
    match message {
        Message::EntityOperation { due, .. } => *due,
        _ => None,
    }
}

/// A scheduled signal whose time has come: an operation like any other.
fn made_due(mut message: Message) -> Message {
    if let Message::EntityOperation { due, .. } = &mut message {
        *due = None;
    }
    message
}

fn operation_input(message: &Message) -> Option<&str> {
    match message {
        Message::EntityOperation { input, .. } => Some(input),
        _ => None,
    }
}

/// Operations waiting (for the lock, or for their time), and the bytes of
/// their inputs.
fn queued(deferred: &[Message], scheduled: &[Message]) -> (usize, usize) {
    (deferred.iter().chain(scheduled))
        .filter_map(operation_input)
        .fold((0, 0), |(n, bytes), input| (n + 1, bytes + input.len()))
}

/// The entities of a lock request in the one order every request takes
/// them (sorted, without repeats), so that two orchestrations cannot
/// deadlock.
///
/// ```
/// let order = duro_core::entity::lock_order(vec!["@b@1".into(), "@a@2".into(), "@b@1".into()]);
/// assert_eq!(order, ["@a@2", "@b@1"]);
/// ```
pub fn lock_order(mut entities: Vec<String>) -> Vec<String> {
    entities.sort();
    entities.dedup();
    entities
}

/// The entities an execution with this history holds locks on, or asked
/// to lock and has not let go: what must be released when it ends.
///
/// ```
/// use duro_core::model::{Action, HistoryEvent};
/// let lock = |task, entities: &[&str]| HistoryEvent::TaskScheduled {
///     task,
///     action: Action::LockEntities { entities: entities.iter().map(|e| e.to_string()).collect() },
/// };
/// let history = vec![lock(0, &["@a@1", "@b@2"])];
/// assert_eq!(duro_core::entity::locks_held(&history), ["@a@1", "@b@2"]);
/// ```
pub fn locks_held(history: &[crate::model::HistoryEvent]) -> Vec<String> {
    use crate::model::{Action, HistoryEvent};
    let mut held = Vec::new();
    for event in history {
        match event {
            HistoryEvent::TaskScheduled {
                action: Action::LockEntities { entities },
                ..
            } => held = entities.clone(),
            HistoryEvent::TaskScheduled {
                action: Action::UnlockEntities { .. },
                ..
            }
            | HistoryEvent::ExecutionStarted { .. } => held.clear(),
            _ => {}
        }
    }
    held
}

/// The messages that release `entities` for `holder`.
pub fn unlocks(entities: &[String], holder: &LockHolder) -> Vec<(String, Message)> {
    entities
        .iter()
        .map(|entity| {
            (
                entity.clone(),
                Message::EntityUnlock {
                    holder: holder.clone(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, holder: Option<&LockHolder>) -> Message {
        Message::EntityOperation {
            operation: name.into(),
            input: "1".into(),
            caller: None,
            holder: holder.cloned().map(Box::new),
            due: None,
        }
    }

    fn holder(instance: &str) -> LockHolder {
        LockHolder {
            instance: instance.into(),
            execution: "e".into(),
        }
    }

    fn lock(holder: &LockHolder, entities: &[&str], position: u32) -> Message {
        Message::EntityLock {
            holder: holder.clone(),
            entities: entities.iter().map(|e| e.to_string()).collect(),
            position,
            task: 7,
        }
    }

    /// Runs `add` (state += 1) and `fail` (an error); returns the names run.
    fn run_all(
        record: &mut EntityRecord,
        inbox: Vec<Message>,
    ) -> (Vec<String>, Vec<(String, Message)>) {
        let mut ran = Vec::new();
        let mut sent = Vec::new();
        process(
            record,
            inbox,
            5,
            QueueLimits {
                operations: 3,
                bytes: 100,
            },
            |state, operation| {
                ran.push(operation.name.clone());
                if operation.name == "fail" {
                    return Err("no".into());
                }
                let n: i64 = state.as_deref().map_or(0, |s| s.parse().unwrap());
                *state = Some((n + 1).to_string());
                Ok("null".into())
            },
            &mut sent,
        );
        (ran, sent)
    }

    #[test]
    fn operations_run_in_order_and_a_failure_keeps_the_state() {
        let mut record = EntityRecord::default();
        let (ran, _) = run_all(
            &mut record,
            vec![op("add", None), op("fail", None), op("add", None)],
        );
        assert_eq!(ran, ["add", "fail", "add"]);
        assert_eq!(record.state.as_deref(), Some("2"));
        assert_eq!(record.operations, 3);
    }

    #[test]
    fn a_lock_defers_others_until_its_holder_lets_go() {
        let h = holder("o");
        let mut record = EntityRecord::default();
        let (ran, sent) = run_all(
            &mut record,
            vec![lock(&h, &["@a@1"], 0), op("add", None), op("add", Some(&h))],
        );
        assert_eq!(ran, ["add"], "only the holder's operation runs");
        assert_eq!(record.queue.len(), 1);
        assert!(matches!(&sent[0], (to, Message::EntityLockGranted { task: 7, .. }) if to == "o"));
        let (ran, _) = run_all(&mut record, vec![Message::EntityUnlock { holder: h }]);
        assert_eq!(ran, ["add"], "the deferred one runs on release");
        assert!(record.queue.is_empty() && record.lock.is_none());
    }

    #[test]
    fn operations_past_the_queue_limit_fail_and_signals_are_counted() {
        let h = holder("o");
        let mut record = EntityRecord::default();
        let call = Message::EntityOperation {
            operation: "add".into(),
            input: "1".into(),
            caller: Some(Box::new(ParentCall {
                instance: "caller".into(),
                execution: "e".into(),
                task: 3,
            })),
            holder: None,
            due: None,
        };
        let mut inbox = vec![lock(&h, &["@a@1"], 0)];
        inbox.extend(std::iter::repeat_n(op("add", None), 4));
        inbox.push(call);
        let mut sent = Vec::new();
        let processed = process(
            &mut record,
            inbox,
            5,
            QueueLimits {
                operations: 3,
                bytes: 100,
            },
            |_, _| Ok("null".into()),
            &mut sent,
        );
        assert_eq!((processed.dropped, record.queue.len()), (1, 3));
        assert!(sent.iter().any(|(to, m)| to == "caller"
            && matches!(m, Message::EntityDone { result: Err(e), .. } if e.contains("refused"))));
    }

    #[test]
    fn a_scheduled_signal_waits_for_its_time_and_asks_for_a_timer() {
        let mut record = EntityRecord::default();
        let later = |due| Message::EntityOperation {
            operation: "add".into(),
            input: "1".into(),
            caller: None,
            holder: None,
            due: Some(due),
        };
        let mut sent = Vec::new();
        let processed = process(
            &mut record,
            vec![later(50), later(9), op("add", None)],
            5,
            QueueLimits::default(),
            |state, _| {
                *state = Some(
                    state
                        .as_deref()
                        .map_or(1, |s| s.parse::<i64>().unwrap() + 1)
                        .to_string(),
                );
                Ok("null".into())
            },
            &mut sent,
        );
        assert_eq!(
            record.state.as_deref(),
            Some("1"),
            "only the unscheduled one ran"
        );
        assert_eq!(processed.timers, [(0, 50), (1, 9)]);
        assert_eq!(
            record
                .scheduled
                .iter()
                .map(|m| due_time(m).unwrap())
                .collect::<Vec<_>>(),
            [9, 50]
        );
        let (ran, _) = run_all(&mut record, vec![]);
        assert!(ran.is_empty(), "at 5 nothing is due");
        let mut sent = Vec::new();
        process(
            &mut record,
            vec![],
            10,
            QueueLimits::default(),
            |state, _| {
                *state = Some("2".into());
                Ok("null".into())
            },
            &mut sent,
        );
        assert_eq!(record.state.as_deref(), Some("2"), "due at 9, run at 10");
        assert_eq!(record.scheduled.len(), 1);
    }

    #[test]
    fn a_lock_request_passes_to_the_next_entity_in_order() {
        let h = holder("o");
        let mut record = EntityRecord::default();
        let (_, sent) = run_all(&mut record, vec![lock(&h, &["@a@1", "@b@2"], 0)]);
        assert!(matches!(&sent[0], (to, Message::EntityLock { position: 1, .. }) if to == "@b@2"));
    }

    #[test]
    fn a_release_before_the_request_drops_the_request() {
        let h = holder("o");
        let mut record = EntityRecord::default();
        run_all(
            &mut record,
            vec![Message::EntityUnlock { holder: h.clone() }],
        );
        let (_, sent) = run_all(&mut record, vec![lock(&h, &["@a@1"], 0), op("add", None)]);
        assert!(sent.is_empty());
        assert!(record.lock.is_none() && record.released.is_empty());
        assert_eq!(record.state.as_deref(), Some("1"));
    }

    #[test]
    fn a_release_takes_a_waiting_request_back() {
        let (first, second) = (holder("o1"), holder("o2"));
        let mut record = EntityRecord::default();
        run_all(
            &mut record,
            vec![lock(&first, &["@a@1"], 0), lock(&second, &["@a@1"], 0)],
        );
        assert_eq!(record.queue.len(), 1);
        run_all(&mut record, vec![Message::EntityUnlock { holder: second }]);
        assert!(record.queue.is_empty() && record.released.is_empty());
        assert_eq!(record.lock, Some(first));
    }

    #[test]
    fn ids_round_trip_and_bad_ones_are_named() {
        let id = EntityId::new("Account", "42").unwrap();
        assert_eq!(EntityId::parse(&id.instance_id()), Some(id));
        assert!(EntityId::new("", "k").unwrap_err().contains("empty"));
        assert!(EntityId::new("a", "").unwrap_err().contains("empty"));
        assert!(EntityId::new("a", "x/y").unwrap_err().contains("not valid"));
        assert!(EntityId::parse("plain").is_none());
    }
}
