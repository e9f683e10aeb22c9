//! The management API's schedule routes: list, show (with the next fire
//! times and recent runs), create, change and delete schedules made at run
//! time, and pause, resume or trigger any schedule, each with a reason.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, body::Bytes};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, BASE};
use crate::runtime::Runtime;
use crate::schedule::{ScheduleSpec, to_json as schedule_json};

type ApiResult = Result<Response, ApiError>;

/// The schedule routes (behind the management API's key, like the rest).
pub fn router() -> axum::Router<Arc<Runtime>> {
    axum::Router::new()
        .route(&format!("{BASE}/schedules"), get(list).post(create))
        .route(
            &format!("{BASE}/schedules/{{name}}"),
            get(show).put(update).delete(remove),
        )
        .route(&format!("{BASE}/schedules/{{name}}/{{verb}}"), post(act))
}

fn not_a_definition(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!(
        "the body is not a schedule definition ({{\"name\", \"cron\", \"orchestration\", ...}}): {e}"
    ))
}

/// `GET schedules`: every schedule, by name.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/schedules",
    summary = "List the schedules",
    responses((status = 200, description = "Every schedule, by name", body = Vec<crate::openapi::Schedule>)),
    tag = "schedules",
)]
pub(crate) async fn list(State(rt): State<Arc<Runtime>>) -> ApiResult {
    let rows = rt.schedules().await?;
    Ok(Json(rows.iter().map(schedule_json).collect::<Vec<_>>()).into_response())
}

/// `POST schedules`: create one (201), refused if the name is taken.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/schedules",
    summary = "Create a schedule",
    request_body(content = Object, description = "The definition: name, cron, timezone, orchestration, input, overlap, catchUp, catchUpWindowMs, jitterMs, startAt, endAt, paused"),
    responses(
        (status = 201, description = "Created", body = crate::openapi::Schedule),
        (status = 400, description = "A field breaks a rule (named)", body = crate::openapi::ErrorBody),
        (status = 409, description = "The name is taken", body = crate::openapi::ErrorBody),
    ),
    tag = "schedules",
)]
pub(crate) async fn create(State(rt): State<Arc<Runtime>>, body: Bytes) -> ApiResult {
    let spec: ScheduleSpec = serde_json::from_slice(&body).map_err(not_a_definition)?;
    let row = rt.create_schedule(spec).await?;
    Ok((StatusCode::CREATED, Json(schedule_json(&row))).into_response())
}

/// `GET schedules/{name}`.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/schedules/{name}",
    summary = "A schedule: definition, next fire times, recent runs",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule", body = crate::openapi::Schedule),
        (status = 404, description = "No such schedule", body = crate::openapi::ErrorBody),
    ),
    tag = "schedules",
)]
pub(crate) async fn show(State(rt): State<Arc<Runtime>>, Path(name): Path<String>) -> ApiResult {
    Ok(Json(schedule_json(&rt.schedule(&name).await?)).into_response())
}

/// `PUT schedules/{name}`: a new definition for a schedule made through
/// the API (its runs kept; ticks from the next one).
#[utoipa::path(
    put,
    path = "/runtime/webhooks/durabletask/schedules/{name}",
    summary = "Change a schedule created through the API",
    params(("name" = String, Path, description = "Schedule name")),
    request_body(content = Object, description = "The new definition (its name, if given, must be the path's)"),
    responses(
        (status = 200, description = "Changed", body = crate::openapi::Schedule),
        (status = 400, description = "A field breaks a rule (named)", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such schedule", body = crate::openapi::ErrorBody),
        (status = 409, description = "Defined in the manifest", body = crate::openapi::ErrorBody),
    ),
    tag = "schedules",
)]
pub(crate) async fn update(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    match value.get("name") {
        None => {
            if let Some(map) = value.as_object_mut() {
                map.insert("name".into(), name.clone().into());
            }
        }
        Some(given) if given.as_str() == Some(name.as_str()) => {}
        Some(given) => {
            return Err(ApiError::bad_request(format!(
                "the body names schedule {given}, the path `{name}`; a schedule cannot be renamed"
            )));
        }
    }
    let spec: ScheduleSpec = serde_json::from_value(value).map_err(not_a_definition)?;
    let row = rt.update_schedule(spec).await?;
    Ok(Json(schedule_json(&row)).into_response())
}

/// `DELETE schedules/{name}`: one made through the API (its instances
/// stay).
#[utoipa::path(
    delete,
    path = "/runtime/webhooks/durabletask/schedules/{name}",
    summary = "Delete a schedule created through the API",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Deleted", body = crate::openapi::DeletedSchedule),
        (status = 404, description = "No such schedule", body = crate::openapi::ErrorBody),
        (status = 409, description = "Defined in the manifest", body = crate::openapi::ErrorBody),
    ),
    tag = "schedules",
)]
pub(crate) async fn remove(State(rt): State<Arc<Runtime>>, Path(name): Path<String>) -> ApiResult {
    rt.delete_schedule(&name).await?;
    Ok(Json(json!({ "name": name, "deleted": true })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActParams {
    reason: Option<String>,
    catch_up: Option<String>,
}

/// `POST schedules/{name}/pause|resume|trigger`, `?reason=` (and for a
/// resume `catchUp=true` to fire the ticks missed while paused, under
/// the catch-up policy).
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/schedules/{name}/{verb}",
    summary = "Pause, resume or trigger a schedule",
    params(
        ("name" = String, Path, description = "Schedule name"),
        ("verb" = String, Path, description = "pause, resume or trigger"),
        ("reason" = Option<String>, Query, description = "Why (recorded in its runs)"),
        ("catchUp" = Option<bool>, Query, description = "resume: fire the ticks missed while paused (default false)"),
    ),
    responses(
        (status = 200, description = "Done: the schedule (and for a trigger what became of the tick)", body = crate::openapi::Schedule),
        (status = 400, description = "A bad parameter", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such schedule or verb", body = crate::openapi::ErrorBody),
        (status = 409, description = "It changed meanwhile; try again", body = crate::openapi::ErrorBody),
    ),
    tag = "schedules",
)]
pub(crate) async fn act(
    State(rt): State<Arc<Runtime>>,
    Path((name, verb)): Path<(String, String)>,
    Query(p): Query<ActParams>,
) -> ApiResult {
    let catch_up = match p.catch_up.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "catchUp must be true or false, not {other:?}"
            )));
        }
    };
    let row = match verb.as_str() {
        "pause" => rt.pause_schedule(&name, true, p.reason, false).await?,
        "resume" => rt.pause_schedule(&name, false, p.reason, catch_up).await?,
        "trigger" => {
            let triggered = rt.trigger_schedule(&name, p.reason).await?;
            let mut body = schedule_json(&triggered.schedule);
            body["triggered"] = json!({
                "decision": triggered.decision,
                "instanceId": triggered.instance,
            });
            return Ok(Json(body).into_response());
        }
        other => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("no operation `{other}` on schedules (pause, resume, trigger)"),
            });
        }
    };
    Ok(Json(schedule_json(&row)).into_response())
}
