//! Plain data of durable orchestrations: instances, history events, inbox
//! messages. Knows neither wasmtime nor SQLite.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = u64;

/// The wall-clock time now, in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the runtime reads the time: the system clock in a host, a clock
/// the test moves in simulations (so that timers fire without real sleeps).
pub trait Clock: std::fmt::Debug + Send + Sync + 'static {
    /// The time now, in [`Millis`].
    fn now(&self) -> Millis;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        now_millis()
    }
}

/// A clock that moves only when told: for tests and simulations.
///
/// ```
/// use duro_core::model::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance(500);
/// assert_eq!(clock.now(), 1_500);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock that reads `start`.
    pub fn new(start: Millis) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(start))
    }

    /// Move the clock forward by `millis`.
    pub fn advance(&self, millis: Millis) {
        self.0
            .fetch_add(millis, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The lifecycle state of an instance, named as in Durable Functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuntimeStatus {
    /// Created; its first episode has not run yet.
    Pending,
    /// Started and not finished (it may be waiting).
    Running,
    /// Returned an output.
    Completed,
    /// Returned an error, trapped, or diverged from its history.
    Failed,
    /// Stopped by a client.
    Terminated,
    /// Paused by a client; messages wait in its inbox.
    Suspended,
    /// Replaced by a new execution (kept for clients that saw it).
    ContinuedAsNew,
}

impl RuntimeStatus {
    /// Every status, in a stable order.
    pub const ALL: [RuntimeStatus; 7] = [
        RuntimeStatus::Pending,
        RuntimeStatus::Running,
        RuntimeStatus::Completed,
        RuntimeStatus::Failed,
        RuntimeStatus::Terminated,
        RuntimeStatus::Suspended,
        RuntimeStatus::ContinuedAsNew,
    ];

    /// True once the instance can no longer change on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RuntimeStatus::Completed | RuntimeStatus::Failed | RuntimeStatus::Terminated
        )
    }

    /// The name used in the store and in the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Pending => "Pending",
            RuntimeStatus::Running => "Running",
            RuntimeStatus::Completed => "Completed",
            RuntimeStatus::Failed => "Failed",
            RuntimeStatus::Terminated => "Terminated",
            RuntimeStatus::Suspended => "Suspended",
            RuntimeStatus::ContinuedAsNew => "ContinuedAsNew",
        }
    }

    /// Parse a status name, ignoring ASCII case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::tagged_enum! {
    tag = "kind", rename_all = "camelCase";
    /// A scheduling call an orchestration made, as recorded in its history.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Action {
        /// `wait-for-external-event(name)`.
        WaitForEvent {
            /// The event name.
            name: String,
        },
        /// `create-timer(fire-at)`.
        CreateTimer {
            /// When the timer is due.
            fire_at: Millis,
        },
        /// `call-sub-orchestration(name, instance-id, input)`, with the child's
        /// id resolved (the default is `<parent>:<task>`).
        CallSubOrchestration {
            /// The child's orchestration.
            name: String,
            /// The child's instance id.
            instance_id: String,
            /// Its input, as JSON.
            input: String,
        },
        /// `call-entity(entity, operation, input)`: a request whose result
        /// completes the task.
        CallEntity {
            /// The entity's instance id (`@name@key`).
            entity: String,
            /// The operation.
            operation: String,
            /// Its input, as JSON.
            input: String,
        },
        /// `signal-entity(entity, operation, input)`: one way, nothing
        /// completes.
        SignalEntity {
            /// The entity's instance id (`@name@key`).
            entity: String,
            /// The operation.
            operation: String,
            /// Its input, as JSON.
            input: String,
            /// Run it no earlier than this (`signal-entity-at`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            at: Option<Millis>,
        },
        /// `lock-entities(entities)`: completes once every entity is
        /// locked for this execution (in `entities`' order, sorted).
        LockEntities {
            /// The entities' instance ids, sorted, without repeats.
            entities: Vec<String>,
        },
        /// `unlock-entities()`: the critical section ends; nothing completes.
        UnlockEntities {
            /// The entities let go.
            entities: Vec<String>,
        },
        /// `call-activity(name, input, retry)`.
        CallActivity {
            /// The activity's name.
            name: String,
            /// Its input, as JSON.
            input: String,
            /// How failed attempts are retried (none: one attempt).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            retry: Option<RetryPolicy>,
        },
    }
}

/// How an activity is retried after a failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry, in milliseconds.
    pub first_retry_interval_ms: u64,
    /// Factor between consecutive waits.
    pub backoff_coefficient: f64,
    /// Longest wait between attempts, in milliseconds.
    pub max_retry_interval_ms: u64,
    /// No retry starts later than this after the first attempt (0: no limit).
    pub retry_timeout_ms: u64,
}

// The policy is compared as recorded (replay matches scheduling calls), and
// a coefficient read back from JSON is the one written.
impl Eq for RetryPolicy {}

impl RetryPolicy {
    /// The wait before attempt `next` (2 for the first retry), or none if no
    /// further attempt may start: too many attempts, or past the retry
    /// timeout (`elapsed` since the first attempt).
    ///
    /// ```
    /// use duro_core::model::RetryPolicy;
    /// let policy = RetryPolicy { max_attempts: 4, first_retry_interval_ms: 100,
    ///     backoff_coefficient: 2.0, max_retry_interval_ms: 300, retry_timeout_ms: 0 };
    /// assert_eq!(policy.delay_before(2, 0), Some(100));
    /// assert_eq!(policy.delay_before(3, 0), Some(200));
    /// assert_eq!(policy.delay_before(4, 0), Some(300));
    /// assert_eq!(policy.delay_before(5, 0), None);
    /// ```
    pub fn delay_before(&self, next: u32, elapsed: Millis) -> Option<Millis> {
        if next > self.max_attempts.max(1) {
            return None;
        }
        let retries_before = next.saturating_sub(2) as i32;
        let delay = self.first_retry_interval_ms as f64
            * self.backoff_coefficient.max(1.0).powi(retries_before);
        let delay = (delay.min(self.max_retry_interval_ms.max(self.first_retry_interval_ms) as f64))
            as Millis;
        if self.retry_timeout_ms > 0 && elapsed + delay > self.retry_timeout_ms {
            return None;
        }
        Some(delay)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::WaitForEvent { name } => write!(f, "wait-for-external-event({name:?})"),
            Action::CreateTimer { fire_at } => write!(f, "create-timer({fire_at})"),
            Action::CallActivity { name, input, .. } => {
                write!(f, "call-activity({name:?}, {input})")
            }
            Action::CallEntity {
                entity,
                operation,
                input,
            } => write!(f, "call-entity({entity:?}, {operation:?}, {input})"),
            Action::SignalEntity {
                entity,
                operation,
                input,
                at: None,
            } => write!(f, "signal-entity({entity:?}, {operation:?}, {input})"),
            Action::SignalEntity {
                entity,
                operation,
                input,
                at: Some(at),
            } => write!(
                f,
                "signal-entity-at({entity:?}, {operation:?}, {input}, {at})"
            ),
            Action::LockEntities { entities } => write!(f, "lock-entities({entities:?})"),
            Action::UnlockEntities { entities } => write!(f, "unlock-entities({entities:?})"),
            Action::CallSubOrchestration {
                name,
                instance_id,
                input,
            } => write!(
                f,
                "call-sub-orchestration({name:?}, {instance_id:?}, {input})"
            ),
        }
    }
}

crate::tagged_enum! {
    tag = "eventType";
    /// One entry of an instance's history. The history is append-only and is the
    /// whole truth about an orchestration: replaying it rebuilds its state.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum HistoryEvent {
        /// The execution began with this input.
        ExecutionStarted {
            /// The orchestration name.
            name: String,
            /// The input, as JSON.
            input: String,
        },
        /// An episode began; the orchestration's clock reads `timestamp` until the
        /// next one.
        OrchestratorStarted {
            /// The episode time.
            timestamp: Millis,
        },
        /// The orchestration made a scheduling call; `task` is its sequence number.
        TaskScheduled {
            /// Sequence number of the call.
            task: u32,
            /// What was scheduled.
            action: Action,
        },
        /// The orchestration dropped a task before it completed: its wait takes
        /// no event and its timer completes nothing.
        TaskCancelled {
            /// Sequence number of the cancelled call.
            task: u32,
        },
        /// An external event arrived.
        EventRaised {
            /// The event name.
            name: String,
            /// The payload, as JSON.
            payload: String,
        },
        /// A durable timer fell due.
        TimerFired {
            /// The timer's task.
            task: u32,
            /// Its due time.
            fire_at: Millis,
        },
        /// An activity returned this output.
        TaskCompleted {
            /// The activity's task.
            task: u32,
            /// Its output, as JSON.
            output: String,
            /// Attempts it took.
            attempts: u32,
        },
        /// An activity failed on its last attempt.
        TaskFailed {
            /// The activity's task.
            task: u32,
            /// The last attempt's error.
            error: String,
            /// Attempts made.
            attempts: u32,
        },
        /// A sub-orchestration completed with this output.
        SubOrchestrationCompleted {
            /// The call's task.
            task: u32,
            /// The child's output, as JSON.
            output: String,
        },
        /// A sub-orchestration failed, was terminated or could not start.
        SubOrchestrationFailed {
            /// The call's task.
            task: u32,
            /// Why.
            error: String,
        },
        /// An entity operation this orchestration called returned this
        /// output.
        EntityOperationCompleted {
            /// The call's task.
            task: u32,
            /// The operation's output, as JSON.
            output: String,
        },
        /// An entity operation this orchestration called failed.
        EntityOperationFailed {
            /// The call's task.
            task: u32,
            /// Why.
            error: String,
        },
        /// Every entity of a `lock-entities` call is locked for this
        /// execution.
        EntityLockGranted {
            /// The call's task.
            task: u32,
        },
        /// The orchestration returned this output.
        ExecutionCompleted {
            /// The output, as JSON.
            output: String,
        },
        /// The orchestration failed.
        ExecutionFailed {
            /// Why.
            error: String,
        },
        /// The orchestration asked to start over with this input.
        ContinuedAsNew {
            /// The next execution's input, as JSON.
            input: String,
        },
        /// A client terminated the instance.
        ExecutionTerminated {
            /// The reason given, if any.
            reason: Option<String>,
        },
        /// A client suspended the instance.
        ExecutionSuspended {
            /// The reason given, if any.
            reason: Option<String>,
        },
        /// A client resumed the instance.
        ExecutionResumed {
            /// The reason given, if any.
            reason: Option<String>,
        },
    }
}

impl HistoryEvent {
    /// The `eventType` name of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            HistoryEvent::ExecutionStarted { .. } => "ExecutionStarted",
            HistoryEvent::OrchestratorStarted { .. } => "OrchestratorStarted",
            HistoryEvent::TaskScheduled { .. } => "TaskScheduled",
            HistoryEvent::TaskCancelled { .. } => "TaskCancelled",
            HistoryEvent::EventRaised { .. } => "EventRaised",
            HistoryEvent::TimerFired { .. } => "TimerFired",
            HistoryEvent::TaskCompleted { .. } => "TaskCompleted",
            HistoryEvent::TaskFailed { .. } => "TaskFailed",
            HistoryEvent::SubOrchestrationCompleted { .. } => "SubOrchestrationCompleted",
            HistoryEvent::SubOrchestrationFailed { .. } => "SubOrchestrationFailed",
            HistoryEvent::EntityOperationCompleted { .. } => "EntityOperationCompleted",
            HistoryEvent::EntityOperationFailed { .. } => "EntityOperationFailed",
            HistoryEvent::EntityLockGranted { .. } => "EntityLockGranted",
            HistoryEvent::ExecutionCompleted { .. } => "ExecutionCompleted",
            HistoryEvent::ExecutionFailed { .. } => "ExecutionFailed",
            HistoryEvent::ContinuedAsNew { .. } => "ContinuedAsNew",
            HistoryEvent::ExecutionTerminated { .. } => "ExecutionTerminated",
            HistoryEvent::ExecutionSuspended { .. } => "ExecutionSuspended",
            HistoryEvent::ExecutionResumed { .. } => "ExecutionResumed",
        }
    }
}

/// A recorded history event with when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in the instance's history, from 0.
    pub seq: u64,
    /// Wall-clock time of recording.
    pub timestamp: Millis,
    /// The event.
    pub event: HistoryEvent,
}

/// Something that happened to an instance and waits in its inbox for the
/// next episode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    /// The instance was created: run its first episode.
    Start,
    /// A client raised an event.
    EventRaised {
        /// Event name.
        name: String,
        /// Payload, as JSON.
        payload: String,
    },
    /// A timer fell due.
    TimerFired {
        /// The timer's task.
        task: u32,
        /// Its due time.
        fire_at: Millis,
        /// The execution that created it: a timer of an earlier execution
        /// (before continue-as-new or a restart) completes nothing. Absent in
        /// messages stored before executions had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution: Option<String>,
    },
    /// An activity finished: its output, or its last attempt's error.
    ActivityDone {
        /// The activity's task.
        task: u32,
        /// The execution that called it.
        execution: String,
        /// Output JSON, or error message.
        result: Result<String, String>,
        /// Attempts made.
        attempts: u32,
    },
    /// A sub-orchestration this instance called has ended.
    ChildDone {
        /// The call's task.
        task: u32,
        /// The execution that called it.
        execution: String,
        /// Output JSON, or why it failed.
        result: Result<String, String>,
    },
    /// An operation for an entity: a signal (no caller) or an
    /// orchestration's call.
    EntityOperation {
        /// The operation.
        operation: String,
        /// Its input, as JSON.
        input: String,
        /// The call waiting for the result, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller: Option<Box<ParentCall>>,
        /// The lock holder that sent it, if it was sent inside a critical
        /// section (it runs while the entity is locked for that holder).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<Box<crate::entity::LockHolder>>,
        /// Run it no earlier than this (a scheduled signal): until then it
        /// waits in the entity's record, woken by a durable timer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due: Option<Millis>,
    },
    /// A request to lock an entity for `holder`: the entity at `position`
    /// of `entities` takes it, then passes it to the next one; the last
    /// tells the holder.
    EntityLock {
        /// Who asks.
        holder: crate::entity::LockHolder,
        /// Every entity of the request, in lock order.
        entities: Vec<String>,
        /// Which of them this request is for.
        position: u32,
        /// The holder's `lock-entities` task.
        task: u32,
    },
    /// `holder` lets go of the entity.
    EntityUnlock {
        /// Who held it.
        holder: crate::entity::LockHolder,
    },
    /// An entity operation this instance called has run.
    EntityDone {
        /// The call's task.
        task: u32,
        /// The execution that called it.
        execution: String,
        /// Output JSON, or why it failed.
        result: Result<String, String>,
    },
    /// Every entity this instance asked to lock is locked for it.
    EntityLockGranted {
        /// The `lock-entities` task.
        task: u32,
        /// The execution that asked.
        execution: String,
    },
    /// A client terminated the instance.
    Terminate {
        /// Why.
        reason: Option<String>,
    },
    /// A client suspended the instance.
    Suspend {
        /// Why.
        reason: Option<String>,
    },
    /// A client resumed the instance.
    Resume {
        /// Why.
        reason: Option<String>,
    },
}

impl Message {
    /// The execution a completion belongs to; none for what is addressed to
    /// the instance (or a timer stored before executions had ids).
    pub fn execution(&self) -> Option<&str> {
        match self {
            Message::TimerFired { execution, .. } => execution.as_deref(),
            Message::ActivityDone { execution, .. }
            | Message::ChildDone { execution, .. }
            | Message::EntityDone { execution, .. }
            | Message::EntityLockGranted { execution, .. } => Some(execution),
            _ => None,
        }
    }

    /// Control messages steer the instance itself and are processed even
    /// while it is suspended.
    pub fn is_control(&self) -> bool {
        matches!(
            self,
            Message::Terminate { .. } | Message::Suspend { .. } | Message::Resume { .. }
        )
    }
}

/// A message as stored, with its inbox position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Inbox position; messages are consumed in this order.
    pub id: i64,
    /// The message.
    pub message: Message,
}

/// The state of an instance as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The instance id.
    pub id: String,
    /// The orchestration name.
    pub name: String,
    /// Where it stands.
    pub status: RuntimeStatus,
    /// Input, as JSON.
    pub input: String,
    /// Output as JSON once completed, or the error message once failed.
    pub output: Option<String>,
    /// The custom status, as JSON.
    pub custom_status: Option<String>,
    /// Digest of the component the instance runs on.
    pub component: String,
    /// The id of the current execution: new on every start, restart and
    /// continue-as-new. Episodes commit only to the execution they ran for.
    pub execution_id: String,
    /// Creation time.
    pub created_at: Millis,
    /// Time of the last change.
    pub updated_at: Millis,
    /// Number of history events: the version appends are checked against.
    pub history_len: u64,
    /// The call this instance is a sub-orchestration of, if any.
    pub parent: Option<ParentCall>,
    /// The W3C `traceparent` of the request that started it (or of its
    /// parent), which its episodes and activities are traced under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// The schedule and tick that started it, if a schedule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_by: Option<ScheduledBy>,
}

/// The schedule and tick that started an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledBy {
    /// The schedule.
    pub schedule: String,
    /// The tick.
    pub tick: Millis,
}

impl Instance {
    /// A new instance of `name`, created at `now` on `component`, before its
    /// first episode: a fresh execution with only its `ExecutionStarted`.
    ///
    /// ```
    /// let i = duro_core::model::Instance::pending("i".into(), "N".into(), "null".into(), "sha256:x".into(), 5, None);
    /// assert_eq!((i.status, i.history_len, i.created_at), (duro_core::model::RuntimeStatus::Pending, 1, 5));
    /// ```
    pub fn pending(
        id: String,
        name: String,
        input: String,
        component: String,
        now: Millis,
        parent: Option<ParentCall>,
    ) -> Self {
        Instance {
            id,
            name,
            status: RuntimeStatus::Pending,
            input,
            output: None,
            custom_status: None,
            component,
            execution_id: fresh_id(),
            created_at: now,
            updated_at: now,
            history_len: 1,
            parent,
            trace_parent: None,
            scheduled_by: None,
        }
    }
}

/// The orchestration call a sub-orchestration answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentCall {
    /// The parent instance.
    pub instance: String,
    /// Its execution that made the call.
    pub execution: String,
    /// The call's task there.
    pub task: u32,
}

/// An activity an episode scheduled: a row that waits for an activity
/// worker, and stays until its result is in the instance's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityCall {
    /// The instance that called it.
    pub instance: String,
    /// The execution that called it.
    pub execution: String,
    /// The call's task.
    pub task: u32,
    /// The activity's name.
    pub name: String,
    /// Its input, as JSON.
    pub input: String,
    /// How failed attempts are retried.
    pub retry: Option<RetryPolicy>,
}

/// A durable timer: a row with a due time, not a sleeping task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// The instance it belongs to.
    pub instance: String,
    /// The timer's task.
    pub task: u32,
    /// When it is due.
    pub fire_at: Millis,
    /// The execution that created it.
    pub execution: String,
}

/// Filter for listing instances. Every combination is answered from an
/// index (see `store::sqlite`): the cost of a page is O(log n + page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    /// Created at or after.
    pub created_from: Option<Millis>,
    /// Created at or before.
    pub created_to: Option<Millis>,
    /// Any of these statuses (empty: all).
    pub statuses: Vec<RuntimeStatus>,
    /// Orchestration name.
    pub name: Option<String>,
    /// Instance id prefix. Listings with a prefix are ordered by id.
    pub id_prefix: Option<String>,
    /// The exact input, as canonical JSON (see [`canonical_json`]).
    pub input: Option<String>,
    /// Page size.
    pub limit: usize,
    /// Continue after this position (the last instance of the previous page).
    pub after: Option<(Millis, String)>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Leave the inputs out of the instances found (their `input` reads
    /// `null`): a listing that does not show inputs does not read them.
    pub skip_input: bool,
    /// List entities (ids that begin with `@`) instead of orchestration
    /// instances: a listing holds one kind or the other.
    pub entities: bool,
}

/// The one text of a JSON value that inputs are stored and compared as:
/// object keys sorted (whatever map type serde_json was built with), no
/// insignificant whitespace.
///
/// ```
/// let a: serde_json::Value = serde_json::from_str(r#"{ "b": 1, "a": [true, null] }"#).unwrap();
/// assert_eq!(duro_core::model::canonical_json(&a), r#"{"a":[true,null],"b":1}"#);
/// ```
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(key.clone()).to_string());
                    out.push(':');
                    write(value, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// [`canonical_json`] of a JSON text; a text that is not JSON is kept as it
/// is (it can only ever equal itself).
///
/// ```
/// assert_eq!(duro_core::model::canonical_json_text("{ \"b\": 1, \"a\": 2 }".into()), r#"{"a":2,"b":1}"#);
/// assert_eq!(duro_core::model::canonical_json_text("not json".into()), "not json");
/// ```
pub fn canonical_json_text(text: String) -> String {
    serde_json::from_str::<serde_json::Value>(&text)
        .map(|value| canonical_json(&value))
        .unwrap_or(text)
}

/// A fresh id, unique across processes and restarts: 128 bits of a hash of
/// the time, the process and a counter, in hex. Instance ids and execution
/// ids are made this way.
pub fn fresh_id() -> String {
    use sha2::Digest as _;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!(
        "{:?}\n{}\n{n}",
        std::time::SystemTime::now(),
        std::process::id()
    );
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..16])
}

/// Longest instance id.
pub const MAX_INSTANCE_ID_LEN: usize = 256;

/// Why `id` cannot be an instance id, if it cannot: ids travel in URL
/// paths and log lines.
pub fn instance_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_INSTANCE_ID_LEN {
        Some("it is longer than 256 characters")
    } else if id.chars().any(|c| matches!(c, '/' | '\\' | '#' | '?')) {
        Some("it contains one of / \\ # ?")
    } else if id.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    }
}

/// The 64-bit hash of a canonical input that the store indexes.
pub fn input_hash(canonical: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(canonical.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// What a finished sub-orchestration tells its parent: its output, or why
/// it did not complete.
pub fn child_result(child: &Instance) -> Result<String, String> {
    let output = child.output.clone().unwrap_or_else(|| "null".into());
    match child.status {
        RuntimeStatus::Completed => Ok(output),
        RuntimeStatus::Terminated => Err(format!(
            "sub-orchestration `{}` was terminated: {output}",
            child.id
        )),
        _ => Err(format!(
            "sub-orchestration `{}` failed: {}",
            child.id,
            serde_json::from_str::<String>(&output).unwrap_or(output)
        )),
    }
}
