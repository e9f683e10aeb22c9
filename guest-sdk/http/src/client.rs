//! The durable client: start, query and steer orchestration instances from
//! an HTTP trigger.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::bindings::duro::workflow::client as host;
use crate::bindings::duro::workflow::entities;
use crate::bindings::duro::workflow::schedules;

/// Lifecycle state of an instance, named as in Durable Functions.
///
/// ```
/// let live = [duro_http::RuntimeStatus::Pending, duro_http::RuntimeStatus::Running];
/// # let _ = live;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeStatus {
    /// Created, first step not yet run.
    Pending,
    /// Started and not finished.
    Running,
    /// Returned an output.
    Completed,
    /// Failed.
    Failed,
    /// Stopped by a client.
    Terminated,
    /// Paused by a client.
    Suspended,
    /// Replaced by a new execution.
    ContinuedAsNew,
}

impl From<host::RuntimeStatus> for RuntimeStatus {
    fn from(s: host::RuntimeStatus) -> Self {
        match s {
            host::RuntimeStatus::Pending => RuntimeStatus::Pending,
            host::RuntimeStatus::Running => RuntimeStatus::Running,
            host::RuntimeStatus::Completed => RuntimeStatus::Completed,
            host::RuntimeStatus::Failed => RuntimeStatus::Failed,
            host::RuntimeStatus::Terminated => RuntimeStatus::Terminated,
            host::RuntimeStatus::Suspended => RuntimeStatus::Suspended,
            host::RuntimeStatus::ContinuedAsNew => RuntimeStatus::ContinuedAsNew,
        }
    }
}

impl From<RuntimeStatus> for host::RuntimeStatus {
    fn from(s: RuntimeStatus) -> Self {
        match s {
            RuntimeStatus::Pending => host::RuntimeStatus::Pending,
            RuntimeStatus::Running => host::RuntimeStatus::Running,
            RuntimeStatus::Completed => host::RuntimeStatus::Completed,
            RuntimeStatus::Failed => host::RuntimeStatus::Failed,
            RuntimeStatus::Terminated => host::RuntimeStatus::Terminated,
            RuntimeStatus::Suspended => host::RuntimeStatus::Suspended,
            RuntimeStatus::ContinuedAsNew => host::RuntimeStatus::ContinuedAsNew,
        }
    }
}

/// An instance as the client sees it; serializes with the field names of
/// Durable Functions' status JSON.
///
/// ```no_run
/// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
/// if let Some(status) = client.get_status("order-42")? {
///     let body = duro_http::Response::json(200, &status);
///     # let _ = body;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// The orchestration name.
    pub name: String,
    /// The instance id.
    pub instance_id: String,
    /// Where it stands.
    pub runtime_status: RuntimeStatus,
    /// Its input.
    pub input: serde_json::Value,
    /// Its output (or error message once failed).
    pub output: serde_json::Value,
    /// Its custom status.
    pub custom_status: serde_json::Value,
    /// Creation time, ms since the Unix epoch (RFC 3339 in JSON).
    #[serde(serialize_with = "as_rfc3339")]
    pub created_time: u64,
    /// Last change, ms since the Unix epoch (RFC 3339 in JSON).
    #[serde(serialize_with = "as_rfc3339")]
    pub last_updated_time: u64,
}

fn as_rfc3339<S: serde::Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

/// Format milliseconds since the Unix epoch as RFC 3339 UTC, the way the
/// management API does (no date crate needed inside the guest).
///
/// ```
/// assert_eq!(duro_http::rfc3339(0), "1970-01-01T00:00:00.000Z");
/// assert_eq!(duro_http::rfc3339(1_795_859_523_242), "2026-11-28T09:52:03.242Z");
/// assert_eq!(duro_http::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
/// ```
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Days to civil date: Howard Hinnant's algorithm.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z",
        ms % 1000
    )
}

fn parse_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_string()))
}

impl From<host::InstanceStatus> for InstanceStatus {
    fn from(s: host::InstanceStatus) -> Self {
        InstanceStatus {
            name: s.name,
            instance_id: s.instance_id,
            runtime_status: s.runtime_status.into(),
            input: parse_json(&s.input),
            output: s.output.as_deref().map(parse_json).unwrap_or_default(),
            custom_status: s
                .custom_status
                .as_deref()
                .map(parse_json)
                .unwrap_or_default(),
            created_time: s.created_time,
            last_updated_time: s.last_updated_time,
        }
    }
}

/// Which instances to list; the default lists everything, oldest first,
/// 100 per page. Every combination of filters is answered from an index of
/// the host's store, so a page costs the same with ten or a million stored
/// instances.
///
/// ```
/// let recent_running = duro_http::InstanceQuery {
///     created_from: Some(1_700_000_000_000),
///     runtime_status: vec![duro_http::RuntimeStatus::Running],
///     name: Some("Workflow".into()),
///     ..Default::default()
/// };
/// // The newest `Workflow` started with the input "order-42".
/// let by_input = duro_http::InstanceQuery {
///     name: Some("Workflow".into()),
///     input: Some(serde_json::json!("order-42")),
///     newest_first: true,
///     page_size: Some(1),
///     ..Default::default()
/// };
/// # let _ = (recent_running, by_input);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceQuery {
    /// Created at or after (ms since the Unix epoch).
    pub created_from: Option<u64>,
    /// Created at or before.
    pub created_to: Option<u64>,
    /// Any of these statuses (empty: all).
    pub runtime_status: Vec<RuntimeStatus>,
    /// Orchestration name.
    pub name: Option<String>,
    /// Instance id prefix; listings with a prefix are ordered by id.
    pub instance_id_prefix: Option<String>,
    /// Only instances whose input equals this JSON value (object key order
    /// does not matter).
    pub input: Option<serde_json::Value>,
    /// Newest first (by creation time, then id) instead of oldest first.
    pub newest_first: bool,
    /// Page size (default 100, at most 1000).
    pub page_size: Option<u32>,
    /// The continuation of the previous page.
    pub continuation: Option<String>,
}

/// One page of a listing, in the query's order.
///
/// ```no_run
/// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
/// let page = client.list_instances(&Default::default())?;
/// let more = page.continuation.is_some();
/// # let _ = more; Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct InstancePage {
    /// The instances, in the query's order.
    pub instances: Vec<InstanceStatus>,
    /// For the next page; none on the last.
    pub continuation: Option<String>,
}

/// Why the host refused a client call.
///
/// ```no_run
/// # fn f(client: &duro_http::DurableClient) {
/// match client.raise_event("order-42", "Approve", &true) {
///     Ok(()) => {}
///     Err(duro_http::ClientError::Finished(_)) => { /* too late */ }
///     Err(other) => { let _ = duro_http::Response::error(&other); }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// No such instance.
    NotFound(String),
    /// The instance id is taken.
    AlreadyExists(String),
    /// A malformed argument.
    InvalidArgument(String),
    /// The instance has finished.
    Finished(String),
    /// No orchestration has this name.
    UnknownOrchestration(String),
    /// The host failed.
    Internal(String),
}

impl ClientError {
    /// The HTTP status that fits this error.
    ///
    /// ```
    /// assert_eq!(duro_http::ClientError::Finished("done".into()).http_status(), 410);
    /// ```
    pub fn http_status(&self) -> u16 {
        match self {
            ClientError::NotFound(_) => 404,
            ClientError::AlreadyExists(_) => 409,
            ClientError::InvalidArgument(_) | ClientError::UnknownOrchestration(_) => 400,
            ClientError::Finished(_) => 410,
            ClientError::Internal(_) => 500,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotFound(m)
            | ClientError::AlreadyExists(m)
            | ClientError::InvalidArgument(m)
            | ClientError::Finished(m)
            | ClientError::UnknownOrchestration(m)
            | ClientError::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<host::ClientError> for ClientError {
    fn from(e: host::ClientError) -> Self {
        match e {
            host::ClientError::NotFound(m) => ClientError::NotFound(m),
            host::ClientError::AlreadyExists(m) => ClientError::AlreadyExists(m),
            host::ClientError::InvalidArgument(m) => ClientError::InvalidArgument(m),
            host::ClientError::Finished(m) => ClientError::Finished(m),
            host::ClientError::UnknownOrchestration(m) => ClientError::UnknownOrchestration(m),
            host::ClientError::Internal(m) => ClientError::Internal(m),
        }
    }
}

/// The durable client handed to every HTTP function.
///
/// ```no_run
/// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
/// let id = client.start_new("Workflow", None, &"order-42")?;
/// client.raise_event(&id, "Approve", &true)?;
/// let status = client.get_status(&id)?;
/// # let _ = status; Ok(()) }
/// ```
#[derive(Debug)]
pub struct DurableClient {
    _private: (),
}

fn to_json<T: Serialize>(value: &T) -> Result<String, ClientError> {
    serde_json::to_string(value).map_err(|e| ClientError::InvalidArgument(e.to_string()))
}

impl DurableClient {
    pub(crate) fn new() -> Self {
        DurableClient { _private: () }
    }

    /// Start an instance of orchestration `name`; returns its id.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let id = client.start_new("Workflow", Some("order-42"), &"input")?;
    /// # let _ = id;
    /// # Ok(()) }
    /// ```
    pub fn start_new<T: Serialize>(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: &T,
    ) -> Result<String, ClientError> {
        Ok(host::start_new(name, instance_id, &to_json(input)?)?)
    }

    /// The answer of the async HTTP API pattern (Durable Functions'
    /// `CreateCheckStatusResponse`): `202 Accepted`, `Location` and
    /// `Retry-After: 1`, and a body with the instance's management URLs
    /// (`statusQueryGetUri`, `sendEventPostUri`, `terminatePostUri`,
    /// `purgeHistoryDeleteUri`, …) on the host the request came to. A
    /// client polls `Location` until it answers `200` with the output.
    ///
    /// ```no_run
    /// # use duro_http::{DurableClient, Request, Response};
    /// fn start(req: &Request, client: &DurableClient) -> Response {
    ///     match client.start_new("Job", None, &req.json::<serde_json::Value>().ok()) {
    ///         Ok(id) => client.create_check_status_response(req, &id),
    ///         Err(e) => Response::error(&e),
    ///     }
    /// }
    /// ```
    pub fn create_check_status_response(
        &self,
        req: &crate::Request,
        instance_id: &str,
    ) -> crate::Response {
        let base = match req.header("host") {
            Some(host) => format!("http://{host}/runtime/webhooks/durabletask/instances"),
            None => "/runtime/webhooks/durabletask/instances".to_string(),
        };
        let id = percent_encode(instance_id);
        let status = format!("{base}/{id}");
        let body = serde_json::json!({
            "id": instance_id,
            "statusQueryGetUri": status,
            "sendEventPostUri": format!("{status}/raiseEvent/{{eventName}}"),
            "terminatePostUri": format!("{status}/terminate?reason={{text}}"),
            "suspendPostUri": format!("{status}/suspend?reason={{text}}"),
            "resumePostUri": format!("{status}/resume?reason={{text}}"),
            "restartPostUri": format!("{status}/restart"),
            "purgeHistoryDeleteUri": status,
        });
        crate::Response::json(202, &body)
            .with_header("location", &status)
            .with_header("retry-after", "1")
    }

    /// One instance's status, or none.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let running = client.get_status("order-42")?.is_some();
    /// # let _ = running;
    /// # Ok(()) }
    /// ```
    pub fn get_status(&self, instance_id: &str) -> Result<Option<InstanceStatus>, ClientError> {
        Ok(host::get_status(instance_id)?.map(Into::into))
    }

    /// One page of instances matching `query`.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let query = duro_http::InstanceQuery { page_size: Some(10), ..Default::default() };
    /// let first_ten = client.list_instances(&query)?.instances;
    /// # let _ = first_ten;
    /// # Ok(()) }
    /// ```
    pub fn list_instances(&self, query: &InstanceQuery) -> Result<InstancePage, ClientError> {
        let page = host::query_instances(&host::InstanceFilter {
            created_from: query.created_from,
            created_to: query.created_to,
            runtime_status: query.runtime_status.iter().map(|s| (*s).into()).collect(),
            name: query.name.clone(),
            instance_id_prefix: query.instance_id_prefix.clone(),
            input: query.input.as_ref().map(to_json).transpose()?,
            newest_first: query.newest_first,
            page_size: query.page_size,
            continuation: query.continuation.clone(),
        })?;
        Ok(InstancePage {
            instances: page.instances.into_iter().map(Into::into).collect(),
            continuation: page.continuation,
        })
    }

    /// Every instance matching `query`, following continuations.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let query = duro_http::InstanceQuery { name: Some("Workflow".into()), ..Default::default() };
    /// let all = client.list_all(&query)?;
    /// # let _ = all;
    /// # Ok(()) }
    /// ```
    pub fn list_all(&self, query: &InstanceQuery) -> Result<Vec<InstanceStatus>, ClientError> {
        let mut query = query.clone();
        let mut all = Vec::new();
        loop {
            let page = self.list_instances(&query)?;
            all.extend(page.instances);
            match page.continuation {
                Some(next) => query.continuation = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Send an event to an instance.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// client.raise_event("order-42", "Approve", &serde_json::json!({ "by": "ops" }))?;
    /// # Ok(()) }
    /// ```
    pub fn raise_event<T: Serialize>(
        &self,
        instance_id: &str,
        event_name: &str,
        payload: &T,
    ) -> Result<(), ClientError> {
        Ok(host::raise_event(
            instance_id,
            event_name,
            &to_json(payload)?,
        )?)
    }

    /// Terminate an instance.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// client.terminate("order-42", Some("cancelled by the customer"))?;
    /// # Ok(()) }
    /// ```
    pub fn terminate(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        Ok(host::terminate(instance_id, reason)?)
    }

    /// Suspend an instance.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// client.suspend("order-42", None)?;
    /// # Ok(()) }
    /// ```
    pub fn suspend(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        Ok(host::suspend(instance_id, reason)?)
    }

    /// Resume an instance.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// client.resume("order-42", None)?;
    /// # Ok(()) }
    /// ```
    pub fn resume(&self, instance_id: &str, reason: Option<&str>) -> Result<(), ClientError> {
        Ok(host::resume(instance_id, reason)?)
    }

    /// Delete a finished instance and its history; false if there was
    /// none, `InvalidArgument` if it has not finished.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let existed = client.purge("order-42")?;
    /// # let _ = existed;
    /// # Ok(()) }
    /// ```
    pub fn purge(&self, instance_id: &str) -> Result<bool, ClientError> {
        Ok(host::purge(instance_id)?)
    }

    /// Every schedule of the host, by name, each as the management API
    /// shows it (`name`, `definition`, `paused`, `nextFireTimes`,
    /// `recentRuns`, `counts`, ...).
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// for schedule in client.list_schedules()? {
    ///     println!("{} next fires at {}", schedule["name"], schedule["nextFireTimes"][0]);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list_schedules(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        schedules::list_schedules()?
            .iter()
            .map(|text| from_host_json(text))
            .collect()
    }

    /// One schedule, or `None` if there is none of that name.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let paused = client
    ///     .get_schedule("nightly")?
    ///     .is_some_and(|s| s["paused"] == true);
    /// # let _ = paused; Ok(()) }
    /// ```
    pub fn get_schedule(&self, name: &str) -> Result<Option<serde_json::Value>, ClientError> {
        schedules::get_schedule(name)?
            .map(|text| from_host_json(&text))
            .transpose()
    }

    /// Create a schedule from its definition (the keys of a manifest's
    /// `[[schedule]]`, in camelCase: `name`, `cron`, `orchestration`,
    /// `timezone`, `input`, `overlap`, `catchUp`, ...); returns it.
    /// `InvalidArgument` names a bad field, `AlreadyExists` a taken name.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let created = client.create_schedule(&serde_json::json!({
    ///     "name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
    ///     "orchestration": "Report", "input": {"region": "eu"},
    /// }))?;
    /// # let _ = created; Ok(()) }
    /// ```
    pub fn create_schedule<T: Serialize>(
        &self,
        definition: &T,
    ) -> Result<serde_json::Value, ClientError> {
        from_host_json(&schedules::create_schedule(&to_json(definition)?)?)
    }

    /// Delete a schedule made at run time (a manifest's is changed by
    /// deploys: `InvalidArgument`); the instances it started stay.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// client.delete_schedule("nightly")?;
    /// # Ok(()) }
    /// ```
    pub fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        Ok(schedules::delete_schedule(name)?)
    }

    /// Pause a schedule: no tick fires until it is resumed.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// client.pause_schedule("nightly", Some("maintenance window"))?;
    /// # Ok(()) }
    /// ```
    pub fn pause_schedule(&self, name: &str, reason: Option<&str>) -> Result<(), ClientError> {
        Ok(schedules::pause_schedule(name, reason)?)
    }

    /// Resume a paused schedule from its next tick, or (`catch_up`) let
    /// its catch-up policy fire the ticks missed while it was paused.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// client.resume_schedule("nightly", None, false)?;
    /// # Ok(()) }
    /// ```
    pub fn resume_schedule(
        &self,
        name: &str,
        reason: Option<&str>,
        catch_up: bool,
    ) -> Result<(), ClientError> {
        Ok(schedules::resume_schedule(name, reason, catch_up)?)
    }

    /// Start a tick now, under the schedule's overlap policy: the id of
    /// the instance it started, `None` if the policy skipped or buffered it.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// if let Some(id) = client.trigger_schedule("nightly", Some("rerun"))? {
    ///     let status = client.get_status(&id)?;
    ///     # let _ = status;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn trigger_schedule(
        &self,
        name: &str,
        reason: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        Ok(schedules::trigger_schedule(name, reason)?)
    }

    /// Send `operation` with `input` to the entity `name`/`key`, one way:
    /// durable when this returns (the entity is created by its first
    /// operation).
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// client.signal_entity("Counter", "apples", "add", &1)?;
    /// # Ok(()) }
    /// ```
    pub fn signal_entity<T: Serialize>(
        &self,
        name: &str,
        key: &str,
        operation: &str,
        input: &T,
    ) -> Result<(), ClientError> {
        Ok(entities::signal_entity(
            name,
            key,
            operation,
            &to_json(input)?,
        )?)
    }

    /// [`signal_entity`](Self::signal_entity), run by the entity no
    /// earlier than `at` (milliseconds since the epoch).
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient, tomorrow_ms: u64) -> Result<(), duro_http::ClientError> {
    /// client.signal_entity_at("Reminder", "ann", "ring", &(), tomorrow_ms)?;
    /// # Ok(()) }
    /// ```
    pub fn signal_entity_at<T: Serialize>(
        &self,
        name: &str,
        key: &str,
        operation: &str,
        input: &T,
        at: u64,
    ) -> Result<(), ClientError> {
        Ok(entities::signal_entity_at(
            name,
            key,
            operation,
            &to_json(input)?,
            at,
        )?)
    }

    /// The state of the entity `name`/`key`, or `None` if it has none.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let count = client.read_entity_state("Counter", "apples")?.unwrap_or_default();
    /// # Ok(()) }
    /// ```
    pub fn read_entity_state(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        entities::read_entity_state(name, key)?
            .map(|state| from_host_json(&state))
            .transpose()
    }

    /// One page of the entities of `name` (every entity when `None`) whose
    /// key starts with `key_prefix`, in key order, with their state: pass
    /// the page's `continuation` back for the next.
    ///
    /// ```no_run
    /// # fn f(client: &duro_http::DurableClient) -> Result<(), duro_http::ClientError> {
    /// let page = client.list_entities(Some("Counter"), None, Some(50), None)?;
    /// for entity in &page.entities {
    ///     println!("{} = {:?}", entity.key, entity.state);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list_entities(
        &self,
        name: Option<&str>,
        key_prefix: Option<&str>,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<EntityPage, ClientError> {
        let page = entities::list_entities(name, key_prefix, page_size, continuation)?;
        Ok(EntityPage {
            entities: page
                .entities
                .into_iter()
                .map(|e| {
                    Ok(EntityStatus {
                        name: e.name,
                        key: e.key,
                        state: e.state.as_deref().map(from_host_json).transpose()?,
                        locked_by: e.locked_by,
                        queued: e.queued,
                        last_operation_time: e.last_operation_time,
                    })
                })
                .collect::<Result<_, ClientError>>()?,
            continuation: page.continuation,
        })
    }
}

/// An entity as [`DurableClient::list_entities`] finds it.
///
/// ```
/// let e = duro_http::EntityStatus { name: "counter".into(), key: "a".into(),
///     state: Some(serde_json::json!(3)), locked_by: None, queued: 0, last_operation_time: 0 };
/// assert_eq!(e.state, Some(serde_json::json!(3)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityStatus {
    /// The name, lowercase.
    pub name: String,
    /// The key.
    pub key: String,
    /// Its state.
    pub state: Option<serde_json::Value>,
    /// The orchestration instance holding its lock, if one does.
    pub locked_by: Option<String>,
    /// Operations and lock requests waiting for the lock.
    pub queued: u32,
    /// When its last operation ran (ms since the epoch).
    pub last_operation_time: u64,
}

/// One page of entities.
///
/// ```
/// let page = duro_http::EntityPage { entities: vec![], continuation: None };
/// assert!(page.entities.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityPage {
    /// The entities.
    pub entities: Vec<EntityStatus>,
    /// Pass it back for the next page; none on the last one.
    pub continuation: Option<String>,
}

/// JSON the host wrote.
fn from_host_json(text: &str) -> Result<serde_json::Value, ClientError> {
    serde_json::from_str(text).map_err(|e| {
        ClientError::Internal(format!("the host answered JSON that does not parse: {e}"))
    })
}

/// An instance id as one URL path segment.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
