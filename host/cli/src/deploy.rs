//! Hot deploys over the management API: `POST deploy` takes an app (its
//! manifest and components), replays the in-flight instances of every
//! changed orchestration against it, and (unless a dry run) serves it;
//! `GET versions` lists the orchestration versions in use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{ApiError, BASE};
use crate::manifest::{self, ResolvedApp};
use crate::runtime::{DeployMode, DeployReport, RuntimeError};
use crate::server::{Served, orchestration_components};

/// Largest app a deploy uploads (manifest and components, base64 in JSON).
const MAX_DEPLOY_BODY: usize = 256 << 20;

/// The body of `POST deploy`: an app as `duro deploy` uploads it.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppUpload {
    /// The manifest's text.
    pub manifest: String,
    /// Each component the manifest names, by its path as written there,
    /// base64-encoded.
    pub components: HashMap<String, String>,
}

impl AppUpload {
    /// Read the manifest at `path` and every component it names.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let manifest = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the manifest {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut components = HashMap::new();
        for component in manifest::component_paths(path, &manifest)? {
            let full = base.join(&component);
            let bytes = std::fs::read(&full)
                .with_context(|| format!("cannot read component {}", full.display()))?;
            components.insert(
                component.to_string_lossy().into_owned(),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
        Ok(AppUpload {
            manifest,
            components,
        })
    }

    /// The app, resolved as `duro serve` resolves a manifest on disk.
    fn resolve(&self) -> anyhow::Result<ResolvedApp> {
        manifest::resolve(
            Path::new("(uploaded manifest)"),
            &self.manifest,
            |component| {
                let key = component.to_string_lossy();
                let encoded = self.components.get(key.as_ref()).ok_or_else(|| {
                    anyhow::anyhow!("component {key} was not uploaded with the manifest")
                })?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| anyhow::anyhow!("component {key} is not base64: {e}"))?;
                Ok((PathBuf::from(component), bytes))
            },
        )
    }
}

struct DeployState {
    served: Arc<Served>,
    /// One deploy at a time: each checks against what the last installed,
    /// and only one upload is held in memory.
    running: tokio::sync::Mutex<()>,
}

/// The deploy routes, on the host serving `served`.
pub(crate) fn router(served: Arc<Served>) -> Router {
    let state = Arc::new(DeployState {
        served,
        running: tokio::sync::Mutex::new(()),
    });
    Router::new()
        .route(&format!("{BASE}/deploy"), post(deploy))
        .route(&format!("{BASE}/versions"), get(versions))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeployParams {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    upgrade_compatible: bool,
}

/// `POST deploy?dryRun=&upgradeCompatible=`: 200 with the report (a dry run
/// changes nothing); 400 naming what is wrong with the app, and then
/// nothing changes either.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/deploy",
    summary = "Deploy a new version of the app, checked by replay",
    params(
        ("dryRun" = Option<bool>, Query, description = "Check only; change nothing"),
        ("upgradeCompatible" = Option<bool>, Query, description = "Move the in-flight instances that replayed"),
    ),
    request_body(content = crate::openapi::AppUpload),
    responses(
        (status = 200, description = "The report", body = crate::openapi::DeployReport),
        (status = 400, description = "What is wrong with the app; nothing changed", body = crate::openapi::ErrorBody),
        (status = 500, description = "The host failed to install the checked app (its store); deploy again", body = crate::openapi::ErrorBody),
    ),
    tag = "deploys",
)]
async fn deploy(
    State(state): State<Arc<DeployState>>,
    params: Result<Query<DeployParams>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // One deploy is read, parsed and checked at a time: a second one is
    // refused before its upload (up to 256 MiB) is read into memory.
    let Ok(_one_at_a_time) = state.running.try_lock() else {
        return Err(ApiError {
            status: axum::http::StatusCode::CONFLICT,
            message: "another deploy is under way; deploy again when it has finished".into(),
        });
    };
    let outcome = deploy_locked(&state, params, body).await;
    // What this deploy compiled and no longer serves (a dry run's, a
    // refused app's, the versions it replaced) is dropped.
    state.served.prune().await;
    outcome
}

/// A deploy, under the deploy lock.
async fn deploy_locked(
    state: &DeployState,
    params: DeployParams,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = read_upload(body).await?;
    let upload: AppUpload = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not an app upload ({{\"manifest\": text, \"components\": {{path: base64}}}}): {e}"
        ))
    })?;
    let mut app = upload
        .resolve()
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    // The upload names variables; their values are this host's.
    app.bind_variables(&state.served.variables)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    drop(body);
    let served = &state.served;
    let functions = served
        .prepare(&app)
        .await
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let mode = DeployMode {
        dry_run: params.dry_run,
        upgrade_compatible: params.upgrade_compatible,
    };
    let report = served
        .runtime
        .deploy(
            orchestration_components(&app)
                .into_iter()
                .map(|(_, bytes, names)| (bytes, names))
                .collect(),
            mode,
        )
        .await
        .map_err(|e| match e {
            RuntimeError::Component(message) => ApiError::bad_request(message),
            other => ApiError::from(other),
        })?;
    if !mode.dry_run {
        served
            .install(&app, functions)
            .await
            // Everything was checked before: this is the host's trouble
            // (its store), and the orchestrations are already deployed.
            .map_err(|e| ApiError {
                status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                message: format!(
                    "the orchestrations were deployed, but installing the app's activities \
                     and routes failed (deploy again): {e:#}"
                ),
            })?;
        tracing::info!(
            orchestrations = report.orchestrations.len(),
            checked = report.instances.len(),
            moved = report.instances.iter().filter(|c| c.moved).count(),
            "deployed a new version of the app"
        );
    }
    Ok(Json(report_json(&report, mode.dry_run)).into_response())
}

/// The whole upload, at most [`MAX_DEPLOY_BODY`] bytes.
async fn read_upload(body: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, MAX_DEPLOY_BODY)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError {
            status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("a deploy uploads at most {MAX_DEPLOY_BODY} bytes"),
        }),
        Err(e) => Err(ApiError::bad_request(format!(
            "the upload could not be read: {e}"
        ))),
    }
}

/// The report as the API answers it.
fn report_json(report: &DeployReport, dry_run: bool) -> Value {
    json!({
        "dryRun": dry_run,
        "orchestrations": report.orchestrations.iter().map(|o| json!({
            "name": o.name,
            "from": o.from,
            "to": o.to,
            "changed": o.changed(),
        })).collect::<Vec<_>>(),
        "removed": report.removed,
        "instances": report.instances.iter().map(|c| json!({
            "instanceId": c.instance_id,
            "orchestration": c.orchestration,
            "from": c.from,
            "to": c.to,
            "compatible": c.divergence.is_none(),
            "divergence": c.divergence.as_ref().map(|d| json!({
                "event": d.position,
                "task": d.task,
                "expected": d.expected,
                "actual": d.actual,
            })),
            "moved": c.moved,
        })).collect::<Vec<_>>(),
    })
}

/// `GET versions`: each orchestration's deployed version and every older
/// one an in-flight instance still runs on.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/versions",
    summary = "Each orchestration's deployed version and the older ones in use",
    responses((status = 200, description = "The versions", body = Vec<crate::openapi::OrchestrationVersion>)),
    tag = "deploys",
)]
async fn versions(State(state): State<Arc<DeployState>>) -> Result<Response, ApiError> {
    let versions = state.served.runtime.versions().await?;
    let body: Vec<Value> = versions
        .into_iter()
        .map(|v| {
            json!({
                "orchestration": v.name,
                "component": v.component,
                "current": v.current,
                "inFlight": v.in_flight,
            })
        })
        .collect();
    Ok(Json(body).into_response())
}
