//! The orchestration context: everything an orchestration may observe or
//! schedule, and the [`Task`] futures that scheduling returns.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::duro::workflow::orchestration_context as host;
use crate::bindings::duro::workflow::types::{
    LogLevel, RetryPolicy as WitRetryPolicy, TaskOutcome,
};
use crate::error::{Error, Result};
use crate::runtime;

/// The handle an orchestration receives: its input, deterministic time and
/// GUIDs, logging, and the durable tasks it can wait on.
///
/// It is `Copy`: pass it freely into helper functions and `async` blocks.
///
/// ```no_run
/// use std::time::Duration;
/// use duro_sdk::{Either, OrchestrationContext, Result, select};
///
/// async fn approval(ctx: OrchestrationContext) -> Result<&'static str> {
///     let deadline = ctx.current_time() + Duration::from_secs(3600);
///     let approved = ctx.wait_for_external_event::<bool>("Approve");
///     match select(approved, ctx.create_timer(deadline)).await {
///         Either::Left(yes) => Ok(if yes? { "approved" } else { "rejected" }),
///         Either::Right(()) => Ok("timed out"),
///     }
/// }
/// # fn main() {}
/// ```
#[derive(Debug, Clone, Copy)]
pub struct OrchestrationContext {
    _private: (),
}

impl OrchestrationContext {
    pub(crate) fn new() -> Self {
        OrchestrationContext { _private: () }
    }

    /// The instance's input, deserialized.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// let order_id: String = ctx.input()?;
    /// # Ok(()) }
    /// ```
    pub fn input<T: DeserializeOwned>(&self) -> Result<T> {
        let json = host::get_input();
        serde_json::from_str(&json)
            .map_err(|e| Error::msg(format!("the orchestration input {json} does not fit: {e}")))
    }

    /// The id of this instance.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// let id = ctx.instance_id();
    /// ctx.log(&format!("I am {id}"));
    /// # }
    /// ```
    pub fn instance_id(&self) -> String {
        host::instance_id()
    }

    /// The name this instance was started with.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// assert!(!ctx.name().is_empty());
    /// # }
    /// ```
    pub fn name(&self) -> String {
        host::orchestration_name()
    }

    /// The time of the current episode: the same on every replay. Use it
    /// instead of `SystemTime::now()`, which the sandbox pins to it anyway.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// let tomorrow = ctx.current_time() + std::time::Duration::from_secs(86_400);
    /// let _timer = ctx.create_timer(tomorrow);
    /// # }
    /// ```
    pub fn current_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(host::current_time())
    }

    /// A GUID that is the same on every replay.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// let order_id = ctx.new_guid();
    /// ctx.set_custom_status(&order_id);
    /// # }
    /// ```
    pub fn new_guid(&self) -> String {
        host::new_guid()
    }

    /// True while the host replays history recorded in an earlier episode.
    /// Use it for logging only: branching on it breaks determinism.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// if !ctx.is_replaying() {
    ///     // e.g. count something once per real execution
    /// }
    /// # }
    /// ```
    pub fn is_replaying(&self) -> bool {
        host::is_replaying()
    }

    /// Log at info level; the line is written once, not again on replay.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// ctx.log("order accepted");
    /// # }
    /// ```
    pub fn log(&self, message: &str) {
        host::log(LogLevel::Info, message);
    }

    /// Log a warning; the line is written once, not again on replay.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// ctx.log_warn("payment is late");
    /// # }
    /// ```
    pub fn log_warn(&self, message: &str) {
        host::log(LogLevel::Warn, message);
    }

    /// Set the status clients read alongside the runtime status.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// ctx.set_custom_status(&serde_json::json!({ "stage": "waiting" }));
    /// # }
    /// ```
    pub fn set_custom_status<T: Serialize>(&self, status: &T) {
        let json = serde_json::to_string(status).unwrap_or_else(|_| "null".into());
        host::set_custom_status(Some(&json));
    }

    /// Clear the custom status.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// ctx.set_custom_status(&"busy");
    /// ctx.clear_custom_status();
    /// # }
    /// ```
    pub fn clear_custom_status(&self) {
        host::set_custom_status(None);
    }

    /// Wait for the next external event called `name`, and deserialize its
    /// payload. Events raised before the wait are buffered, in order.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// let amount: u64 = ctx.wait_for_external_event("Payment").await?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_external_event<T: DeserializeOwned>(&self, name: &str) -> Task<Result<T>> {
        Task::new(host::wait_for_external_event(name), decode_event::<T>)
    }

    /// Wait for the next external event called `name` for at most `timeout`
    /// (a durable timer): `Ok(Some(payload))` if it came, `Ok(None)` if the
    /// time ran out first. The losing wait or timer is cancelled, so an
    /// event raised after the timeout waits for the next wait of its name.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// use std::time::Duration;
    /// match ctx.wait_for_external_event_with_timeout::<bool>("Approve", Duration::from_secs(86_400)).await? {
    ///     Some(true) => ctx.log("approved"),
    ///     Some(false) => ctx.log("rejected"),
    ///     None => ctx.log("no answer within a day: escalating"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_external_event_with_timeout<T: DeserializeOwned>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<T>> {
        let event = self.wait_for_external_event::<T>(name);
        let timer = self.sleep(timeout);
        match crate::select(event, timer).await {
            crate::Either::Left(payload) => payload.map(Some),
            crate::Either::Right(()) => Ok(None),
        }
    }

    /// Call the activity `name` with `input`: the host runs it once this
    /// episode is committed and completes the task with its output, or
    /// with its error (`Err`, with the activity's message). One attempt; see
    /// [`call_activity_with_retry`](Self::call_activity_with_retry). The
    /// result is recorded: replay never runs the activity again.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// let total: i64 = ctx.call_activity("Add", &vec![1, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    pub fn call_activity<I: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
    ) -> Task<Result<T>> {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        Task::new(host::call_activity(name, &json, None), decode_activity::<T>)
    }

    /// [`call_activity`](Self::call_activity), retrying failed attempts as
    /// `retry` says: the task completes with the first success, or with the
    /// error of the last attempt. Waits between attempts are durable (they
    /// survive host restarts); the attempt count is recorded in the history.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// use std::time::Duration;
    /// use duro_sdk::RetryPolicy;
    /// let policy = RetryPolicy::new(5, Duration::from_secs(1));
    /// let receipt: String = ctx.call_activity_with_retry("Charge", &42, policy).await?;
    /// # Ok(()) }
    /// ```
    pub fn call_activity_with_retry<I: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        input: &I,
        retry: RetryPolicy,
    ) -> Task<Result<T>> {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        let policy = WitRetryPolicy {
            max_attempts: retry.max_attempts,
            first_retry_interval_ms: retry.first_retry_interval.as_millis() as u64,
            backoff_coefficient: retry.backoff_coefficient,
            max_retry_interval_ms: retry.max_retry_interval.as_millis() as u64,
            retry_timeout_ms: retry.retry_timeout.map_or(0, |t| t.as_millis() as u64),
        };
        Task::new(
            host::call_activity(name, &json, Some(policy)),
            decode_activity::<T>,
        )
    }

    /// Send an HTTP request from the host, durably: it runs as a built-in
    /// activity once this episode commits, only to the hosts the manifest
    /// allows for this orchestration (`allowed_hosts`), following the
    /// `202 Accepted` and `Location` pattern if asked; the response is
    /// recorded in the history, so replay never sends the request again. A
    /// request that cannot be sent (denied, unreachable) is an `Err`; any
    /// status is a response.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// let response = ctx
    ///     .call_http(duro_sdk::HttpRequest::get("http://127.0.0.1:8080/report").poll_async())
    ///     .await?;
    /// ctx.log(&format!("{}: {}", response.status, response.body));
    /// # Ok(()) }
    /// ```
    pub fn call_http(&self, request: crate::HttpRequest) -> Task<Result<crate::HttpResponse>> {
        self.call_activity("duro:http", &request)
    }

    /// Start the orchestration `name` as a child instance with `input`, and
    /// complete with its output, or with an `Err` if it fails, is
    /// terminated or cannot start (its id taken by a live instance, its name
    /// unknown). The child's id is `instance_id`, or `<this id>:<task>`.
    /// It is a full instance (visible in the API with `parentInstanceId`);
    /// terminating this instance leaves it running.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// let shipped: String = ctx.call_sub_orchestration("Ship", None, &"order-7").await?;
    /// # Ok(()) }
    /// ```
    pub fn call_sub_orchestration<I: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: &I,
    ) -> Task<Result<T>> {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        Task::new(
            host::call_sub_orchestration(name, instance_id, &json),
            decode_child::<T>,
        )
    }

    /// [`call_sub_orchestration`](Self::call_sub_orchestration), starting
    /// the child again as `retry` says when it fails: the result is the
    /// first success, or the error of the last attempt. Waits between
    /// attempts are durable timers. With an `instance_id` every attempt
    /// reuses it (the failed child is replaced, as Durable Functions does);
    /// without one each attempt is a new child `<this id>:<task>`.
    ///
    /// Unlike [`call_activity_with_retry`](Self::call_activity_with_retry)
    /// the retries are driven by this orchestration's own code, so each
    /// attempt and each wait is a task of its own in the history.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// use std::time::Duration;
    /// let policy = duro_sdk::RetryPolicy::new(3, Duration::from_secs(30));
    /// let shipped: String = ctx
    ///     .call_sub_orchestration_with_retry("Ship", Some("ship-order-7"), &"order-7", policy)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn call_sub_orchestration_with_retry<I: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: &I,
        retry: RetryPolicy,
    ) -> impl Future<Output = Result<T>> + use<I, T> {
        let ctx = *self;
        let name = name.to_string();
        let instance_id = instance_id.map(str::to_string);
        let json = serde_json::to_value(input).unwrap_or(serde_json::Value::Null);
        async move {
            let started = ctx.current_time();
            let mut attempt = 1;
            loop {
                let result = ctx
                    .call_sub_orchestration::<_, T>(&name, instance_id.as_deref(), &json)
                    .await;
                let error = match result {
                    Ok(output) => return Ok(output),
                    Err(error) => error,
                };
                let Some(delay) = retry.delay_after(attempt) else {
                    return Err(error);
                };
                let next = ctx.current_time() + delay;
                let too_late = retry
                    .retry_timeout
                    .is_some_and(|limit| next.duration_since(started).unwrap_or_default() > limit);
                if too_late {
                    return Err(error);
                }
                ctx.create_timer(next).await;
                attempt += 1;
            }
        }
    }

    /// A durable timer that fires at `at` (at once if `at` is past). It
    /// survives host restarts and may be days away.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) {
    /// use std::time::Duration;
    /// ctx.create_timer(ctx.current_time() + Duration::from_secs(86_400)).await;
    /// # }
    /// ```
    pub fn create_timer(&self, at: SystemTime) -> Task<()> {
        Task::new(host::create_timer(epoch_millis(at)), decode_timer)
    }

    /// A durable timer that fires `after` from the current episode time.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) {
    /// ctx.sleep(std::time::Duration::from_secs(5)).await;
    /// # }
    /// ```
    pub fn sleep(&self, after: Duration) -> Task<()> {
        match self.current_time().checked_add(after) {
            Some(at) => self.create_timer(at),
            // Too far to add (e.g. `Duration::MAX`): the latest timer.
            None => Task::new(host::create_timer(u64::MAX), decode_timer),
        }
    }

    /// Send `operation` with `input` to an entity, one way, once this
    /// episode commits (recorded: replay sends nothing again). Inside a
    /// [`CriticalSection`](crate::CriticalSection) that holds the entity,
    /// it runs under the lock.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// ctx.signal_entity(&duro_sdk::EntityId::new("Counter", "apples"), "add", &1);
    /// # }
    /// ```
    pub fn signal_entity<I: Serialize>(
        &self,
        entity: &crate::EntityId,
        operation: &str,
        input: &I,
    ) {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        host::signal_entity(&entity.name, &entity.key, operation, &json);
        runtime::note_recorded_call();
    }

    /// [`signal_entity`](Self::signal_entity), run by the entity no
    /// earlier than `at` (a durable timer of the entity's wakes it; the
    /// signal is recorded now, so replay sends nothing again).
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// let tomorrow = ctx.current_time() + std::time::Duration::from_secs(86_400);
    /// ctx.signal_entity_at(&duro_sdk::EntityId::new("Reminder", "ann"), tomorrow, "ring", &());
    /// # }
    /// ```
    pub fn signal_entity_at<I: Serialize>(
        &self,
        entity: &crate::EntityId,
        at: SystemTime,
        operation: &str,
        input: &I,
    ) {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        host::signal_entity_at(
            &entity.name,
            &entity.key,
            operation,
            &json,
            epoch_millis(at),
        );
        runtime::note_recorded_call();
    }

    /// Run `operation` with `input` on an entity and wait for its output
    /// (an operation that fails gives its error). The result is recorded:
    /// replay hands back the same one.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// let count: i64 = ctx.call_entity(&duro_sdk::EntityId::new("Counter", "apples"), "get", &()).await?;
    /// # Ok(()) }
    /// ```
    pub fn call_entity<I: Serialize, T: DeserializeOwned>(
        &self,
        entity: &crate::EntityId,
        operation: &str,
        input: &I,
    ) -> Task<Result<T>> {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        Task::new(
            host::call_entity(&entity.name, &entity.key, operation, &json),
            decode_entity::<T>,
        )
    }

    /// Lock `entities` for this orchestration: resolves once every one is
    /// locked, into the [`CriticalSection`](crate::CriticalSection) that
    /// releases them when dropped. Locks are taken in one global order,
    /// so two orchestrations locking overlapping sets cannot deadlock.
    /// One critical section at a time; the host releases the locks if the
    /// orchestration ends (completes, fails, is terminated) holding them.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// let account = duro_sdk::EntityId::new("Account", "42");
    /// let _section = ctx.lock_entities(&[account.clone()]).await?;
    /// ctx.call_entity::<_, ()>(&account, "add", &5).await?;
    /// # Ok(()) }
    /// ```
    pub fn lock_entities(
        &self,
        entities: &[crate::EntityId],
    ) -> impl Future<Output = Result<crate::CriticalSection>> + use<> {
        let ids: Vec<(String, String)> = entities
            .iter()
            .map(|e| (e.name.clone(), e.key.clone()))
            .collect();
        let request = LockRequest {
            task: Some(Task::new(host::lock_entities(&ids), decode_entity::<()>)),
        };
        request
    }

    /// End this execution once the orchestration returns, and start a fresh
    /// one (empty history) with `input`. Return right after calling it.
    ///
    /// ```no_run
    /// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
    /// let count: u32 = ctx.input()?;
    /// if count < 10 { ctx.continue_as_new(&(count + 1)); }
    /// # Ok(()) }
    /// ```
    pub fn continue_as_new<T: Serialize>(&self, input: &T) {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        host::continue_as_new(&json);
        runtime::note_recorded_call();
        runtime::set_continue_as_new(json);
    }
}

/// `at` as milliseconds since 1970, as the host takes a due time: a time
/// past what they can say is the largest one (the host keeps it as
/// 9999-12-31, never earlier), a time before 1970 is 0.
pub(crate) fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn decode_event<T: DeserializeOwned>(outcome: TaskOutcome) -> Result<T> {
    match outcome {
        TaskOutcome::EventRaised(json) => serde_json::from_str(&json)
            .map_err(|e| Error::msg(format!("the event payload {json} does not fit: {e}"))),
        _ => Err(Error::msg("an event task got another kind of completion")),
    }
}

fn decode_activity<T: DeserializeOwned>(outcome: TaskOutcome) -> Result<T> {
    match outcome {
        TaskOutcome::ActivityCompleted(json) => serde_json::from_str(&json)
            .map_err(|e| Error::msg(format!("the activity output {json} does not fit: {e}"))),
        TaskOutcome::ActivityFailed(error) => Err(Error::msg(error)),
        _ => Err(Error::msg(
            "an activity task got another kind of completion",
        )),
    }
}

fn decode_entity<T: DeserializeOwned>(outcome: TaskOutcome) -> Result<T> {
    match outcome {
        TaskOutcome::ActivityCompleted(json) => serde_json::from_str(&json).map_err(|e| {
            Error::msg(format!(
                "the entity operation's output {json} does not fit: {e}"
            ))
        }),
        TaskOutcome::ActivityFailed(error) => Err(Error::msg(error)),
        _ => Err(Error::msg("an entity task got another kind of completion")),
    }
}

/// Release the entity locks this execution holds or asked for (recorded).
pub(crate) fn unlock_entities() {
    host::unlock_entities();
    runtime::note_recorded_call();
}

/// A `lock-entities` call in flight: dropped before it resolves, it gives
/// up the request (and any lock it took meanwhile).
struct LockRequest {
    task: Option<Task<Result<()>>>,
}

impl Future for LockRequest {
    type Output = Result<crate::CriticalSection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let request = self.get_mut();
        let task = request.task.as_mut().expect("polled after it resolved");
        match Pin::new(task).poll(cx) {
            Poll::Ready(granted) => {
                request.task = None;
                Poll::Ready(granted.map(|()| crate::CriticalSection::new()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for LockRequest {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            drop(task);
            unlock_entities();
        }
    }
}

fn decode_child<T: DeserializeOwned>(outcome: TaskOutcome) -> Result<T> {
    match outcome {
        TaskOutcome::SubOrchestrationCompleted(json) => serde_json::from_str(&json).map_err(|e| {
            Error::msg(format!(
                "the sub-orchestration output {json} does not fit: {e}"
            ))
        }),
        TaskOutcome::SubOrchestrationFailed(error) => Err(Error::msg(error)),
        _ => Err(Error::msg(
            "a sub-orchestration task got another kind of completion",
        )),
    }
}

/// How failed activity or sub-orchestration attempts are retried: attempt `n + 1` starts
/// `first_retry_interval * backoff_coefficient^(n - 1)` (at most
/// `max_retry_interval`) after attempt `n` failed, until `max_attempts`
/// attempts were made or `retry_timeout` has passed since the first.
///
/// ```
/// use std::time::Duration;
/// let policy = duro_sdk::RetryPolicy::new(3, Duration::from_millis(100));
/// assert_eq!(policy.backoff_coefficient, 1.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub first_retry_interval: Duration,
    /// Factor between consecutive waits (1: constant).
    pub backoff_coefficient: f64,
    /// Longest wait between two attempts.
    pub max_retry_interval: Duration,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// `max_attempts` attempts, `first_retry_interval` apart, no backoff.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = duro_sdk::RetryPolicy {
    ///     backoff_coefficient: 2.0,
    ///     ..duro_sdk::RetryPolicy::new(5, Duration::from_secs(1))
    /// };
    /// assert_eq!(policy.max_retry_interval, Duration::from_secs(3600));
    /// ```
    pub fn new(max_attempts: u32, first_retry_interval: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            first_retry_interval,
            backoff_coefficient: 1.0,
            max_retry_interval: Duration::from_secs(3600),
            retry_timeout: None,
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt `attempt` (1-based) failed, or `None` when
    /// that was the last attempt allowed.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = duro_sdk::RetryPolicy {
    ///     backoff_coefficient: 2.0,
    ///     max_retry_interval: Duration::from_secs(3),
    ///     ..duro_sdk::RetryPolicy::new(4, Duration::from_secs(1))
    /// };
    /// assert_eq!(policy.delay_after(1), Some(Duration::from_secs(1)));
    /// assert_eq!(policy.delay_after(2), Some(Duration::from_secs(2)));
    /// assert_eq!(policy.delay_after(3), Some(Duration::from_secs(3)));
    /// assert_eq!(policy.delay_after(4), None);
    /// ```
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let factor = self.backoff_coefficient.max(0.0).powi(attempt as i32 - 1);
        let millis = self.first_retry_interval.as_millis() as f64 * factor;
        let cap = self.max_retry_interval.as_millis() as f64;
        Some(Duration::from_millis(millis.min(cap) as u64))
    }
}

fn decode_timer(_: TaskOutcome) {}

/// A durable task: a future that resolves when the host delivers its
/// completion. Await it, or race it with [`select`](crate::select) and
/// [`when_any`](crate::when_any).
///
/// **Dropping a task cancels it.** A wait that is dropped before its event
/// came takes no event: the next event of its name goes to the oldest wait
/// that is still alive, or is buffered until one asks. A dropped timer
/// completes nothing (and its row is deleted). The cancellation is recorded
/// in the history, so replay cancels at the same point. `select` and
/// `when_any` drop their losers; to keep a wait across several races, race
/// a reference to it:
///
/// ```no_run
/// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<bool> {
/// use std::time::Duration;
/// use duro_sdk::{select, Either};
/// // One wait, kept alive across reminders: no event is missed between them.
/// let mut approval = ctx.wait_for_external_event::<bool>("Approve");
/// loop {
///     match select(&mut approval, ctx.sleep(Duration::from_secs(3600))).await {
///         Either::Left(approved) => return approved,
///         Either::Right(()) => ctx.log("still waiting for approval"),
///     }
/// }
/// # }
/// ```
#[must_use = "a task does nothing unless awaited, and dropping it cancels it"]
pub struct Task<T> {
    id: u32,
    decode: fn(TaskOutcome) -> T,
    /// Its completion has been taken: dropping it cancels nothing.
    done: bool,
    _output: PhantomData<fn() -> T>,
}

impl<T> Task<T> {
    fn new(id: u32, decode: fn(TaskOutcome) -> T) -> Self {
        runtime::note_recorded_call();
        Task {
            id,
            decode,
            done: false,
            _output: PhantomData,
        }
    }

    /// The task's sequence number in the instance's history.
    ///
    /// ```no_run
    /// # fn f(ctx: duro_sdk::OrchestrationContext) {
    /// let task = ctx.wait_for_external_event::<u32>("Go");
    /// ctx.log(&format!("waiting as task #{}", task.id()));
    /// # }
    /// ```
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let task = self.get_mut();
        match runtime::take_outcome(task.id) {
            Some(outcome) => {
                task.done = true;
                runtime::forget_waker(task.id);
                Poll::Ready((task.decode)(outcome))
            }
            None => {
                runtime::register_waker(task.id, cx.waker());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        runtime::forget_waker(self.id);
        // A completion delivered but never polled is discarded here; the
        // host has nothing left to cancel for it.
        if !self.done && runtime::take_outcome(self.id).is_none() {
            host::cancel_task(self.id);
            runtime::note_recorded_call();
        }
    }
}
