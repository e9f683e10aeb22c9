//! The management API's entity routes, as Durable Functions' HTTP API has
//! them: signal an entity (`POST entities/{name}/{key}?op=`), read its
//! state (`GET entities/{name}/{key}`), list entities (`GET entities`,
//! `GET entities/{name}`), and clean entity storage (`POST entities/clean`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, body::Bytes};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, BASE, CONTINUATION_HEADER, body_json, parse_time, timestamp};
use crate::runtime::{EntityView, Runtime};

type ApiResult = Result<Response, ApiError>;

/// The entity routes (behind the management API's key, like the rest).
pub fn router() -> axum::Router<Arc<Runtime>> {
    axum::Router::new()
        .route(&format!("{BASE}/entities"), get(list_all))
        .route(&format!("{BASE}/entities/"), get(list_all))
        .route(&format!("{BASE}/entities/clean"), post(clean))
        .route(&format!("{BASE}/entities/{{name}}"), get(list_named))
        .route(
            &format!("{BASE}/entities/{{name}}/{{key}}"),
            get(read).post(signal),
        )
}

/// The query of a signal.
#[derive(Debug, Deserialize)]
pub(crate) struct SignalQuery {
    /// The operation (Durable Functions' `op`).
    op: Option<String>,
    /// Run it no earlier than this time (RFC 3339; a duro extension).
    #[serde(rename = "scheduledTime")]
    scheduled_time: Option<String>,
}

/// `POST entities/{name}/{key}?op=`: send the operation, with the body as
/// its input (JSON; empty is null), one way.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/entities/{name}/{key}",
    summary = "Signal an entity: run an operation on it, one way",
    params(
        ("name" = String, Path, description = "Entity name (any case)"),
        ("key" = String, Path, description = "Entity key"),
        ("op" = String, Query, description = "The operation"),
        ("scheduledTime" = Option<String>, Query, description = "Run it no earlier than this time (RFC 3339): a scheduled signal, kept by the entity until then"),
    ),
    request_body(content = serde_json::Value, description = "The operation's input (JSON; empty is null)"),
    responses(
        (status = 202, description = "Durably delivered to the entity's inbox"),
        (status = 400, description = "No operation, an unknown entity name, a bad key, or an input that is not JSON", body = crate::openapi::ErrorBody),
        (status = 413, description = "The input is larger than `--max-payload-bytes`", body = crate::openapi::ErrorBody),
        (status = 429, description = "The entity has as many messages waiting as it may (`--max-inbox-messages`)", body = crate::openapi::ErrorBody),
    ),
    tag = "entities",
)]
pub(crate) async fn signal(
    State(rt): State<Arc<Runtime>>,
    Path((name, key)): Path<(String, String)>,
    Query(query): Query<SignalQuery>,
    body: Bytes,
) -> ApiResult {
    let id = Runtime::entity_id(&name, &key)?;
    let operation = query
        .op
        .filter(|op| !op.is_empty())
        .ok_or_else(|| ApiError::bad_request("the operation is missing: add ?op=<operation>"))?;
    let input = body_json(&body, "the operation's input")?;
    let at = match &query.scheduled_time {
        Some(time) => Some(parse_time(time, "scheduledTime")?),
        None => None,
    };
    rt.signal_entity(&id, &operation, &input, at).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The query of a read.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReadQuery {
    /// Answer the entity's details (lock holder, queue) instead of its
    /// bare state (a duro extension).
    #[serde(default)]
    show_details: bool,
}

/// `GET entities/{name}/{key}`: the state itself (200), or 404 if the
/// entity has none.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/entities/{name}/{key}",
    summary = "Read an entity's state",
    params(
        ("name" = String, Path, description = "Entity name (any case)"),
        ("key" = String, Path, description = "Entity key"),
        ("showDetails" = Option<bool>, Query, description = "Answer its details (state, lock holder, queue, counts) instead of the bare state"),
    ),
    responses(
        (status = 200, description = "The state (or, with showDetails, the entity)", body = serde_json::Value),
        (status = 404, description = "The entity has no state", body = crate::openapi::ErrorBody),
    ),
    tag = "entities",
)]
pub(crate) async fn read(
    State(rt): State<Arc<Runtime>>,
    Path((name, key)): Path<(String, String)>,
    Query(query): Query<ReadQuery>,
) -> ApiResult {
    let id = Runtime::entity_id(&name, &key)?;
    let entity = rt.entity(&id).await?;
    if query.show_details
        && let Some(entity) = &entity
    {
        return Ok(Json(entity_json(entity, true)).into_response());
    }
    match entity.and_then(|e| e.state) {
        Some(state) => Ok(Json(parse(&state)).into_response()),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("entity {id} has no state"),
        }),
    }
}

/// The query of a listing.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListQuery {
    /// Include each entity's state.
    #[serde(default)]
    fetch_state: bool,
    /// Page size (1 to 1000, default 100).
    top: Option<usize>,
    /// Only keys that start with this (a duro extension; with a name).
    key_prefix: Option<String>,
    /// Also list entities without state (a duro extension).
    #[serde(default)]
    include_deleted: bool,
}

/// `GET entities`: every entity, in id order, a page at a time.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/entities",
    summary = "List entities",
    params(
        ("fetchState" = Option<bool>, Query, description = "Include each entity's state"),
        ("top" = Option<usize>, Query, description = "Page size (1 to 1000, default 100)"),
        ("includeDeleted" = Option<bool>, Query, description = "Also list entities without state"),
    ),
    responses((status = 200, description = "A page of entities; x-ms-continuation-token names the next", body = Vec<crate::openapi::Entity>)),
    tag = "entities",
)]
pub(crate) async fn list_all(
    State(rt): State<Arc<Runtime>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    list(&rt, None, query, &headers).await
}

/// `GET entities/{name}`: the entities of one name.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/entities/{name}",
    summary = "List the entities of one name",
    params(
        ("name" = String, Path, description = "Entity name (any case)"),
        ("fetchState" = Option<bool>, Query, description = "Include each entity's state"),
        ("top" = Option<usize>, Query, description = "Page size (1 to 1000, default 100)"),
        ("keyPrefix" = Option<String>, Query, description = "Only keys that start with this"),
        ("includeDeleted" = Option<bool>, Query, description = "Also list entities without state"),
    ),
    responses((status = 200, description = "A page of entities; x-ms-continuation-token names the next", body = Vec<crate::openapi::Entity>)),
    tag = "entities",
)]
pub(crate) async fn list_named(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    Runtime::entity_id(&name, "k")?;
    list(&rt, Some(&name), query, &headers).await
}

async fn list(
    rt: &Runtime,
    name: Option<&str>,
    query: ListQuery,
    headers: &HeaderMap,
) -> ApiResult {
    let after = match headers.get(CONTINUATION_HEADER) {
        Some(token) => Some(
            token
                .to_str()
                .ok()
                .filter(|t| t.starts_with('@'))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{CONTINUATION_HEADER} {token:?} is not valid"))
                })?
                .to_string(),
        ),
        None => None,
    };
    let limit = query.top.unwrap_or(100).clamp(1, 1000);
    let (page, next) = rt
        .list_entities(name, query.key_prefix.as_deref(), after, limit)
        .await?;
    let body: Vec<Value> = page
        .iter()
        .filter(|e| query.include_deleted || e.state.is_some())
        .map(|e| entity_json(e, query.fetch_state))
        .collect();
    let mut response = Json(body).into_response();
    if let Some(token) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(CONTINUATION_HEADER, token);
    }
    Ok(response)
}

/// `POST entities/clean`: delete entities that hold nothing and release
/// locks whose orchestration has ended (Durable Functions'
/// `CleanEntityStorage`).
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/entities/clean",
    summary = "Delete empty entities and release orphaned locks",
    responses((status = 200, description = "What was cleaned", body = crate::openapi::EntityClean)),
    tag = "entities",
)]
pub(crate) async fn clean(State(rt): State<Arc<Runtime>>) -> ApiResult {
    let (removed, released) = rt.clean_entities().await?;
    Ok(Json(json!({
        "emptyEntitiesRemoved": removed,
        "orphanedLocksReleased": released,
    }))
    .into_response())
}

/// An entity as the listing (and a read with details) answers it.
pub fn entity_json(entity: &EntityView, with_state: bool) -> Value {
    let mut body = json!({
        "entityId": { "name": entity.id.name, "key": entity.id.key },
        "lastOperationTime": timestamp(entity.last_operation_at),
        "exists": entity.state.is_some(),
        "lockedBy": entity.locked_by,
        "queued": entity.queued,
        "operations": entity.operations,
    });
    if with_state {
        body["state"] = entity.state.as_deref().map_or(Value::Null, parse);
        body["queue"] = entity
            .queue
            .iter()
            .map(|(kind, operation, from)| json!({ "kind": kind, "operation": operation, "from": from }))
            .collect();
    }
    body
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.to_string()))
}
