//! The management HTTP API, modelled on Durable Functions' built-in one,
//! under `/runtime/webhooks/durabletask/`.
//!
//! Architecture invariant: only this module knows the JSON shapes and status
//! codes of the management API.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::telemetry::StartTrace;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{
    HistoryEntry, Instance, InstanceQuery, Millis, RuntimeStatus, canonical_json, now_millis,
};
use crate::runtime::{Runtime, RuntimeError, decode_continuation, validate_instance_id};

/// Where the management API lives.
pub const BASE: &str = "/runtime/webhooks/durabletask";
/// Largest page a listing returns (`top` above it is capped).
pub const MAX_PAGE: usize = 1000;
/// Header carrying the continuation token of a listing.
pub const CONTINUATION_HEADER: &str = "x-ms-continuation-token";

/// The one error type of the HTTP API: a status and a message, rendered as
/// `{"error": message, "Message": message, "ExceptionMessage": message}`:
/// `error` is ours, the other two are the keys Durable Functions' clients
/// read from the extension's error bodies.
#[derive(Debug)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// What was wrong.
    pub message: String,
}

impl ApiError {
    /// A 400 with this message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.message,
            "Message": self.message,
            "ExceptionMessage": self.message,
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let status = match &e {
            RuntimeError::NotFound(_) => StatusCode::NOT_FOUND,
            RuntimeError::AlreadyExists(_)
            | RuntimeError::Busy(_)
            | RuntimeError::ScheduleBusy(_) => StatusCode::CONFLICT,
            RuntimeError::Finished { .. } => StatusCode::GONE,
            RuntimeError::NotFinished { .. } => StatusCode::PRECONDITION_FAILED,
            RuntimeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RuntimeError::InboxFull(_) => StatusCode::TOO_MANY_REQUESTS,
            RuntimeError::InvalidInstanceId { .. }
            | RuntimeError::EntityInstance(_)
            | RuntimeError::InvalidEntityId(_)
            | RuntimeError::UnknownEntity(_)
            | RuntimeError::UnknownOrchestration(_)
            | RuntimeError::InvalidSchedule(_) => StatusCode::BAD_REQUEST,
            RuntimeError::NoSchedule(_) => StatusCode::NOT_FOUND,
            RuntimeError::ScheduleExists(_) | RuntimeError::ScheduleFromManifest(_) => {
                StatusCode::CONFLICT
            }
            // The database is away or busy (PostgreSQL restarting, a
            // connection lost): nothing was written, try again later.
            RuntimeError::Store(store) if store.is_retriable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            // A store's or the engine's own words (SQL, driver, paths) are
            // for the operator: logged under an id the answer names.
            let incident = incident_id();
            tracing::warn!(%incident, "{status}: {e:#}");
            let what = if status == StatusCode::SERVICE_UNAVAILABLE {
                "the database is unavailable; try again"
            } else {
                "the host failed"
            };
            return ApiError {
                status,
                message: format!("{what} (the host's log has the cause under incident {incident})"),
            };
        }
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

/// A short id under which a failure's detail is logged, so that an answer
/// can point at it without saying it.
pub fn incident_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{n}", now_millis())
}

type ApiResult = Result<Response, ApiError>;

/// The management API's routes.
pub fn router(runtime: Arc<Runtime>) -> axum::Router {
    axum::Router::new()
        .route(&format!("{BASE}/orchestrators/{{name}}"), post(start))
        .route(
            &format!("{BASE}/orchestrators/{{name}}/{{instance_id}}"),
            post(start_with_id),
        )
        .route(&format!("{BASE}/instances"), get(list).delete(purge_many))
        // Durable Functions' clients list and bulk-purge at `instances/`.
        .route(&format!("{BASE}/instances/"), get(list).delete(purge_many))
        .route(
            &format!("{BASE}/instances/{{id}}"),
            get(status).delete(purge_one),
        )
        .route(
            &format!("{BASE}/instances/{{id}}/raiseEvent/{{event}}"),
            post(raise_event),
        )
        .route(&format!("{BASE}/instances/{{id}}/pending"), get(pending))
        .route(&format!("{BASE}/instances/{{id}}/{{verb}}"), post(control))
        .route("/metrics", get(metrics))
        .route(&format!("{BASE}/openapi.json"), get(openapi))
        .merge(crate::schedules_api::router())
        .merge(crate::entities_api::router())
        .with_state(runtime)
}

/// `GET /metrics`: the host's metrics in the OpenMetrics text format
/// (which Prometheus scrapes), behind the key like the rest of this API.
#[utoipa::path(
    get,
    path = "/metrics",
    summary = "The host's metrics (OpenMetrics text, for Prometheus)",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String)),
    tag = "host",
)]
async fn metrics(State(rt): State<Arc<Runtime>>) -> Response {
    if let Err(e) = rt.refresh_gauges().await {
        tracing::warn!("metrics: the store's counts could not be read: {e}");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        rt.metrics().encode(),
    )
        .into_response()
}

/// `GET openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/openapi.json",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
    tag = "host",
)]
async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    Json(DOCUMENT.get_or_init(crate::openapi::document)).into_response()
}

/// What an instance id must escape to be one path segment of a URL: the
/// controls, the space and what RFC 3986 does not allow in a segment.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Parse a request body as JSON; an empty body is `null`.
pub(crate) fn body_json(body: &[u8], what: &str) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("{what} is not valid JSON: {e}")))
}

pub(crate) fn timestamp(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn parse_time(text: &str, what: &str) -> Result<Millis, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis().max(0) as Millis)
        .map_err(|e| ApiError::bad_request(format!("{what} {text:?} is not an RFC 3339 time: {e}")))
}

fn parse_stored(text: &Option<String>) -> Value {
    text.as_deref()
        .map(|t| serde_json::from_str(t).unwrap_or(Value::String(t.into())))
        .unwrap_or(Value::Null)
}

/// The base of the links in answers: set by the management plane's gate
/// (the configured public URL or the listener's address, never a name a
/// client chose); `http://localhost` where no gate ran (in-process tests).
fn public_base(extensions: &axum::http::Extensions) -> &str {
    extensions
        .get::<crate::plane::PublicBase>()
        .map_or("http://localhost", |base| base.0.as_str())
}

fn status_links(base: &str, id: &str) -> Value {
    let segment = percent_encoding::utf8_percent_encode(id, PATH_SEGMENT);
    let base = format!("{base}{BASE}/instances/{segment}");
    json!({
        "id": id,
        "statusQueryGetUri": base,
        "sendEventPostUri": format!("{base}/raiseEvent/{{eventName}}"),
        "terminatePostUri": format!("{base}/terminate?reason={{text}}"),
        "suspendPostUri": format!("{base}/suspend?reason={{text}}"),
        "resumePostUri": format!("{base}/resume?reason={{text}}"),
        "purgeHistoryDeleteUri": base,
    })
}

/// An instance as the status JSON of Durable Functions.
pub fn status_json(instance: &Instance, show_input: bool) -> Value {
    let mut body = json!({
        "name": instance.name,
        "instanceId": instance.id,
        "runtimeStatus": instance.status.as_str(),
        "customStatus": parse_stored(&instance.custom_status),
        "output": parse_stored(&instance.output),
        "createdTime": timestamp(instance.created_at),
        "lastUpdatedTime": timestamp(instance.updated_at),
    });
    if show_input {
        body["input"] = parse_stored(&Some(instance.input.clone()));
    }
    if let Some(parent) = &instance.parent {
        body["parentInstanceId"] = parent.instance.clone().into();
    }
    if let Some(scheduled) = &instance.scheduled_by {
        body["scheduledBy"] = json!({
            "schedule": scheduled.schedule,
            "tick": timestamp(scheduled.tick),
        });
    }
    body
}

/// One history event as the status answer shows it.
fn history_event_json(entry: &HistoryEntry, show_output: bool) -> Value {
    let mut event = serde_json::to_value(&entry.event).unwrap_or(Value::Null);
    if let Some(map) = event.as_object_mut() {
        for key in ["input", "payload", "output"] {
            if let Some(Value::String(text)) = map.get(key)
                && let Ok(parsed) = serde_json::from_str::<Value>(text)
            {
                map.insert(key.into(), parsed);
            }
        }
        if !show_output {
            map.remove("output");
        }
        map.insert("timestamp".into(), timestamp(entry.timestamp).into());
    }
    event
}

/// Events read per page of a history that a status answer streams: a
/// history (up to `--max-history-events` events, each up to a payload's
/// size) is never held whole.
const HISTORY_PAGE: usize = 128;

/// The status answer `body` with its history streamed after it as
/// `historyEvents`, read a page at a time. Fails the body (the client
/// sees a cut-off answer) if the store fails midway.
fn with_streamed_history(
    rt: Arc<Runtime>,
    id: String,
    body: &Value,
    show_output: bool,
) -> axum::body::Body {
    let mut head = body.to_string();
    head.pop(); // the object's closing brace
    head.push_str(if head.ends_with('{') { "" } else { "," });
    head.push_str("\"historyEvents\":[");
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, ApiError>>(2);
    tokio::spawn(async move {
        if sender.send(Ok(head)).await.is_err() {
            return;
        }
        let mut from = 0;
        let mut first = true;
        loop {
            let page = match rt.history_page(&id, from, HISTORY_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = sender.send(Err(ApiError::from(e))).await;
                    return;
                }
            };
            let mut chunk = String::new();
            for entry in &page {
                if !first {
                    chunk.push(',');
                }
                first = false;
                chunk.push_str(&history_event_json(entry, show_output).to_string());
            }
            let last = page.len() < HISTORY_PAGE;
            from = page.last().map_or(from, |entry| entry.seq + 1);
            if last {
                chunk.push_str("]}");
            }
            if sender.send(Ok(chunk)).await.is_err() || last {
                return;
            }
        }
    });
    axum::body::Body::new(ChunkBody(receiver))
}

/// A body made of the chunks a task sends; an error ends it as failed.
struct ChunkBody(tokio::sync::mpsc::Receiver<Result<String, ApiError>>);

impl hyper::body::Body for ChunkBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| {
            chunk.map(|chunk| match chunk {
                Ok(text) => Ok(hyper::body::Frame::data(text.into())),
                Err(e) => {
                    tracing::warn!("a streamed history was cut off: {}", e.message);
                    Err(std::io::Error::other(e.message))
                }
            })
        })
    }
}

#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/orchestrators/{name}",
    summary = "Start an instance under a new id",
    params(("name" = String, Path, description = "Orchestration name")),
    request_body(content = serde_json::Value, description = "The input (JSON; empty is null)"),
    responses(
        (status = 202, description = "Started; `Location` is its status", body = crate::openapi::CheckStatusLinks),
        (status = 400, description = "Unknown orchestration or input not JSON", body = crate::openapi::ErrorBody),
    ),
    tag = "instances",
)]
async fn start(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    StartTrace(trace): StartTrace,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> ApiResult {
    start_instance(rt, name, None, &extensions, body, trace).await
}

#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/orchestrators/{name}/{instance_id}",
    summary = "Start an instance under a given id",
    params(
        ("name" = String, Path, description = "Orchestration name"),
        ("instance_id" = String, Path, description = "Instance id"),
    ),
    request_body(content = serde_json::Value, description = "The input (JSON; empty is null)"),
    responses(
        (status = 202, description = "Started", body = crate::openapi::CheckStatusLinks),
        (status = 400, description = "Unknown orchestration, input not JSON or a bad id", body = crate::openapi::ErrorBody),
        (status = 409, description = "A live instance has this id", body = crate::openapi::ErrorBody),
    ),
    tag = "instances",
)]
async fn start_with_id(
    State(rt): State<Arc<Runtime>>,
    Path((name, id)): Path<(String, String)>,
    StartTrace(trace): StartTrace,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> ApiResult {
    start_instance(rt, name, Some(id), &extensions, body, trace).await
}

async fn start_instance(
    rt: Arc<Runtime>,
    name: String,
    id: Option<String>,
    extensions: &axum::http::Extensions,
    body: axum::body::Bytes,
    trace: Option<crate::trace::TraceContext>,
) -> ApiResult {
    let input = body_json(&body, "the request body (the orchestration input)")?;
    let id = rt.start_new_traced(&name, id, &input, trace).await?;
    Ok(check_status_response(public_base(extensions), &id))
}

/// 202 with the instance's management links and `Location`, as Durable
/// Functions' `CreateCheckStatusResponse`.
fn check_status_response(base: &str, id: &str) -> Response {
    let links = status_links(base, id);
    let location = links["statusQueryGetUri"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut response = (StatusCode::ACCEPTED, Json(links)).into_response();
    let h = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, location);
    }
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StatusParams {
    show_history: Option<String>,
    show_history_output: Option<String>,
    show_input: Option<String>,
    wait_for_completion: Option<String>,
}

/// The longest `waitForCompletion` a status request may ask for.
const MAX_WAIT_FOR_COMPLETION_MS: u64 = 120_000;

fn flag(value: &Option<String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true") | Some("") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name}={other:?}: expected true or false"
        ))),
    }
}

fn checked_id(id: &str) -> Result<(), ApiError> {
    validate_instance_id(id).map_err(ApiError::from)
}

#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances/{id}",
    summary = "An instance's status (and history)",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("showHistory" = Option<bool>, Query, description = "Include `historyEvents`"),
        ("showHistoryOutput" = Option<bool>, Query, description = "Include outputs in the history"),
        ("showInput" = Option<bool>, Query, description = "Include the input (default true)"),
        ("waitForCompletion" = Option<u64>, Query, description = "Long poll: answer when it finishes or after this many ms (at most 120000)"),
    ),
    responses(
        (status = 200, description = "Finished", body = crate::openapi::InstanceStatus),
        (status = 202, description = "Pending, running or suspended", body = crate::openapi::InstanceStatus),
        (status = 400, description = "A bad parameter", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such instance", body = crate::openapi::ErrorBody),
    ),
    tag = "instances",
)]
async fn status(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
    Query(params): Query<StatusParams>,
) -> ApiResult {
    checked_id(&id)?;
    let show_history = flag(&params.show_history, "showHistory", false)?;
    let show_output = flag(&params.show_history_output, "showHistoryOutput", false)?;
    let show_input = flag(&params.show_input, "showInput", true)?;
    let wait = match params.wait_for_completion.as_deref() {
        None => None,
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) if ms <= MAX_WAIT_FOR_COMPLETION_MS => Some(Duration::from_millis(ms)),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "waitForCompletion={ms:?}: expected milliseconds, at most \
                     {MAX_WAIT_FOR_COMPLETION_MS}"
                )));
            }
        },
    };
    let instance = match wait {
        // A long poll: the answer comes as soon as the instance finishes.
        Some(timeout) => {
            rt.wait_until(&id, timeout, |i| i.status.is_terminal())
                .await?
        }
        None => rt
            .status(&id)
            .await?
            .ok_or(RuntimeError::NotFound(id.clone()))?,
    };
    let body = status_json(&instance, show_input);
    let code = match instance.status {
        RuntimeStatus::Pending | RuntimeStatus::Running | RuntimeStatus::Suspended => {
            StatusCode::ACCEPTED
        }
        _ => StatusCode::OK,
    };
    if show_history {
        let streamed = with_streamed_history(rt, id, &body, show_output);
        return Ok((code, [(header::CONTENT_TYPE, "application/json")], streamed).into_response());
    }
    Ok((code, Json(body)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    created_time_from: Option<String>,
    created_time_to: Option<String>,
    runtime_status: Option<String>,
    instance_id_prefix: Option<String>,
    name: Option<String>,
    top: Option<String>,
    show_input: Option<String>,
    input: Option<String>,
    newest_first: Option<String>,
}

fn list_query(params: &ListParams, headers: &HeaderMap) -> Result<InstanceQuery, ApiError> {
    let mut query = InstanceQuery {
        limit: 100,
        ..Default::default()
    };
    if let Some(from) = &params.created_time_from {
        query.created_from = Some(parse_time(from, "createdTimeFrom")?);
    }
    if let Some(to) = &params.created_time_to {
        query.created_to = Some(parse_time(to, "createdTimeTo")?);
    }
    if let Some(statuses) = &params.runtime_status {
        for name in statuses.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            query
                .statuses
                .push(RuntimeStatus::parse(name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "runtimeStatus {name:?} is not one of Pending, Running, Completed, Failed, \
                     Terminated, Suspended, ContinuedAsNew"
                    ))
                })?);
        }
    }
    query.id_prefix = params.instance_id_prefix.clone();
    query.name = params.name.clone();
    if let Some(input) = &params.input {
        let value: Value = serde_json::from_str(input).map_err(|e| {
            ApiError::bad_request(format!("input={input:?} is not a JSON value: {e}"))
        })?;
        query.input = Some(canonical_json(&value));
    }
    query.newest_first = flag(&params.newest_first, "newestFirst", false)?;
    if let Some(top) = &params.top {
        // Larger pages are capped rather than refused, as clients written
        // for Durable Functions (which has no cap) may ask for them.
        query.limit = top
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ApiError::bad_request(format!("top={top:?}: expected a positive number"))
            })?
            .min(MAX_PAGE);
    }
    if let Some(token) = headers.get(CONTINUATION_HEADER) {
        let token = token.to_str().unwrap_or_default();
        if !token.is_empty() {
            query.after = Some(decode_continuation(token).ok_or_else(|| {
                ApiError::bad_request(format!("{CONTINUATION_HEADER} {token:?} is not valid"))
            })?);
        }
    }
    Ok(query)
}

#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances",
    summary = "A page of instances (also at `instances/`)",
    params(
        ("createdTimeFrom" = Option<String>, Query, description = "Created at or after (RFC 3339)"),
        ("createdTimeTo" = Option<String>, Query, description = "Created at or before (RFC 3339)"),
        ("runtimeStatus" = Option<String>, Query, description = "Comma-separated statuses"),
        ("instanceIdPrefix" = Option<String>, Query, description = "Id prefix"),
        ("name" = Option<String>, Query, description = "Orchestration name (duro extension)"),
        ("input" = Option<String>, Query, description = "Exact input as JSON (duro extension)"),
        ("newestFirst" = Option<bool>, Query, description = "Newest first (duro extension)"),
        ("showInput" = Option<bool>, Query, description = "Include inputs"),
        ("top" = Option<u32>, Query, description = "Page size (default 100, at most 1000)"),
        ("x-ms-continuation-token" = Option<String>, Header, description = "The previous page's token"),
    ),
    responses(
        (status = 200, description = "The page; `x-ms-continuation-token` when more follow", body = Vec<crate::openapi::InstanceStatus>),
        (status = 400, description = "A bad filter", body = crate::openapi::ErrorBody),
    ),
    tag = "instances",
)]
async fn list(
    State(rt): State<Arc<Runtime>>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> ApiResult {
    let mut query = list_query(&params, &headers)?;
    let show_input = flag(&params.show_input, "showInput", false)?;
    // What is not shown is not read (an input may be 1 MiB).
    query.skip_input = !show_input;
    let (instances, continuation) = rt.list_page(query).await?;
    let body: Vec<Value> = instances
        .iter()
        .map(|i| status_json(i, show_input))
        .collect();
    let mut response = (StatusCode::OK, Json(body)).into_response();
    if let Some(token) = continuation.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(CONTINUATION_HEADER, token);
    }
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{id}/raiseEvent/{event}",
    summary = "Raise an event on an instance",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("event" = String, Path, description = "Event name"),
    ),
    request_body(content = serde_json::Value, description = "The payload (JSON; empty is null)"),
    responses(
        (status = 202, description = "Durably delivered to its inbox"),
        (status = 400, description = "Payload not JSON", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such instance", body = crate::openapi::ErrorBody),
        (status = 410, description = "The instance has finished", body = crate::openapi::ErrorBody),
        (status = 429, description = "The instance has as many events waiting as it may (`--max-inbox-messages`)", body = crate::openapi::ErrorBody),
    ),
    tag = "instances",
)]
async fn raise_event(
    State(rt): State<Arc<Runtime>>,
    Path((id, event)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    checked_id(&id)?;
    let payload = body_json(&body, "the event payload")?;
    rt.raise_event(&id, &event, &payload).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET instances/{id}/pending`: what the instance waits on (a duro
/// extension, for the dashboard).
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances/{id}/pending",
    summary = "What an instance waits on: open timers, activities and sub-orchestrations, and its inbox",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Its open tasks and inbox", body = crate::openapi::PendingWork),
        (status = 404, description = "No such instance", body = crate::openapi::ErrorBody),
    ),
    tag = "instances",
)]
async fn pending(State(rt): State<Arc<Runtime>>, Path(id): Path<String>) -> ApiResult {
    checked_id(&id)?;
    // An unknown id is NotFound (404) from the store's load itself.
    let pending = rt.pending(&id).await?;
    let tasks: Vec<Value> = pending
        .tasks
        .iter()
        .map(|(task, action)| {
            let mut entry = serde_json::to_value(action).unwrap_or(Value::Null);
            entry["task"] = (*task).into();
            if let crate::model::Action::CreateTimer { fire_at } = action {
                entry["fireTime"] = timestamp(*fire_at).into();
            }
            entry
        })
        .collect();
    let inbox: Vec<Value> = pending
        .inbox
        .iter()
        .map(|message| serde_json::to_value(message).unwrap_or(Value::Null))
        .collect();
    Ok(Json(json!({ "tasks": tasks, "inbox": inbox })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ControlParams {
    reason: Option<String>,
    restart_with_new_instance_id: Option<String>,
}

/// `terminate`, `suspend`, `resume`, `restart` and `upgrade`: one handler,
/// the verb in the path.
async fn control(
    State(rt): State<Arc<Runtime>>,
    Path((id, verb)): Path<(String, String)>,
    Query(p): Query<ControlParams>,
    extensions: axum::http::Extensions,
) -> ApiResult {
    checked_id(&id)?;
    match verb.as_str() {
        "restart" => {
            // Durable Functions restarts under a new id unless told otherwise.
            let new_id = flag(
                &p.restart_with_new_instance_id,
                "restartWithNewInstanceId",
                true,
            )?;
            let started = rt.restart(&id, new_id).await?;
            return Ok(check_status_response(public_base(&extensions), &started));
        }
        "terminate" => rt.terminate(&id, p.reason).await?,
        "suspend" => rt.suspend(&id, p.reason).await?,
        "resume" => rt.resume(&id, p.reason).await?,
        "upgrade" => {
            return match rt.upgrade(&id).await? {
                Ok(component) => Ok((
                    StatusCode::OK,
                    Json(json!({ "instanceId": id, "component": component })),
                )
                    .into_response()),
                Err(divergence) => Err(ApiError {
                    status: StatusCode::CONFLICT,
                    message: format!(
                        "instance `{id}` cannot move to the deployed component: {divergence}"
                    ),
                }),
            };
        }
        other => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "no operation `{other}` on instances (terminate, suspend, resume, restart, upgrade)"
                ),
            });
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

#[utoipa::path(
    delete,
    path = "/runtime/webhooks/durabletask/instances/{id}",
    summary = "Purge a finished instance and its history",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Deleted", body = crate::openapi::PurgeResult),
        (status = 404, description = "No such instance", body = crate::openapi::ErrorBody),
        (status = 412, description = "Not finished", body = crate::openapi::ErrorBody),
    ),
    tag = "instances",
)]
async fn purge_one(State(rt): State<Arc<Runtime>>, Path(id): Path<String>) -> ApiResult {
    checked_id(&id)?;
    if !rt.purge(&id).await? {
        return Err(RuntimeError::NotFound(id).into());
    }
    Ok((StatusCode::OK, Json(json!({ "instancesDeleted": 1 }))).into_response())
}

#[utoipa::path(
    delete,
    path = "/runtime/webhooks/durabletask/instances",
    summary = "Purge the instances created in a window (also at `instances/`)",
    params(
        ("createdTimeFrom" = String, Query, description = "Created at or after (RFC 3339); required"),
        ("createdTimeTo" = Option<String>, Query, description = "Created at or before (default now)"),
        ("runtimeStatus" = Option<String>, Query, description = "Statuses (default Completed,Failed,Terminated)"),
    ),
    responses(
        (status = 200, description = "Deleted", body = crate::openapi::PurgeResult),
        (status = 400, description = "No createdTimeFrom, or a bad filter", body = crate::openapi::ErrorBody),
        (status = 404, description = "Nothing matched", body = crate::openapi::ErrorBody),
    ),
    tag = "instances",
)]
async fn purge_many(
    State(rt): State<Arc<Runtime>>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> ApiResult {
    // As in Durable Functions: a bulk purge needs a start time, and ends now
    // unless told otherwise.
    if params.created_time_from.is_none() {
        return Err(ApiError::bad_request(
            "Please provide value for 'createdTimeFrom' parameter.",
        ));
    }
    let mut query = list_query(&params, &headers)?;
    query.created_to = query.created_to.or(Some(now_millis()));
    let finished = [
        RuntimeStatus::Completed,
        RuntimeStatus::Failed,
        RuntimeStatus::Terminated,
    ];
    if query.statuses.is_empty() {
        query.statuses = finished.to_vec();
    }
    // Purging a live instance would orphan its activities and leave a
    // parent waiting forever for a child that no longer exists; as the
    // single purge (412), only finished instances may go.
    if let Some(live) = query.statuses.iter().find(|s| !finished.contains(s)) {
        return Err(ApiError::bad_request(format!(
            "runtimeStatus {}: only finished instances (Completed, Failed, Terminated) \
             may be purged; terminate live ones first",
            live.as_str()
        )));
    }
    let deleted = rt.purge_matching(query).await?;
    if deleted == 0 {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: "no instance matches the purge filter".into(),
        });
    }
    Ok((StatusCode::OK, Json(json!({ "instancesDeleted": deleted }))).into_response())
}
