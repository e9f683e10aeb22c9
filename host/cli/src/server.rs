//! `duro serve`: resolve the manifest, register its components, then serve
//! the app's HTTP functions and the management API on one socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};

use crate::api::{self, ApiError};
use crate::engine;
use crate::manifest::{self, AuthLevel, ResolvedApp, ResolvedHttp};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::trigger::Triggers;

/// Everything `duro serve` needs, from flags and environment.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where state lives (SQLite file or PostgreSQL).
    pub database: crate::database::Database,
    /// The app manifest.
    pub manifest: PathBuf,
    /// Key for `auth = "function"` routes (the app plane only).
    pub function_key: Option<String>,
    /// Key for the management plane; without one it is served on loopback
    /// listeners only.
    pub admin_key: Option<String>,
    /// The base URL clients reach this host at, for the links the
    /// management API hands out and as one of the host's own names.
    pub public_url: Option<String>,
    /// Origins besides the host's own whose pages may change state through
    /// the management API.
    pub allowed_origins: Vec<String>,
    /// Connection limits and deadlines of the HTTP server.
    pub http_limits: crate::listen::HttpLimits,
    /// Sizes and counts callers and guests may not exceed.
    pub limits: crate::runtime::Limits,
    /// Most messages one instance may have waiting (429 past it).
    pub max_inbox: usize,
    /// Certificates to trust for outbound HTTPS besides the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Variable values the host supplies (environment, file, flags).
    pub variables: std::collections::HashMap<String, String>,
    /// Compiled-code cache (default: [`default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Longest an orchestration step may run.
    pub step_budget: Duration,
    /// Longest an HTTP function call may run.
    pub trigger_budget: Duration,
    /// PostgreSQL: how long leases outlive their last renewal.
    pub lease_ttl: Duration,
    /// How spans join W3C traces (OpenTelemetry export sets its own).
    pub trace_link: Arc<dyn crate::trace::TraceLink>,
}

struct Route {
    function: ResolvedHttp,
    digest: String,
}

/// The app a host serves, which a deploy replaces.
pub(crate) struct Served {
    /// The runtime.
    pub(crate) runtime: Arc<Runtime>,
    /// What the HTTP functions' routes share.
    state: Arc<AppState>,
    /// The routes of the app's HTTP functions, swapped whole by a deploy.
    functions: Arc<RwLock<axum::Router>>,
    /// The digests of the HTTP functions' components served now.
    http_digests: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The variable values this host supplies, for the apps deployed to it.
    pub(crate) variables: std::collections::HashMap<String, String>,
}

impl Served {
    /// Check an app's HTTP functions and activities and build its routes,
    /// changing nothing yet (a deploy refuses the whole app if any is bad).
    pub(crate) async fn prepare(&self, app: &ResolvedApp) -> anyhow::Result<axum::Router> {
        if app.needs_function_key() && self.state.function_key.is_none() {
            anyhow::bail!("a route has auth = \"function\" but the host has no function key");
        }
        for activity in &app.activities {
            self.runtime
                .check_activity_component(app.files[&activity.component].clone())
                .await
                .with_context(|| format!("activity `{}`", activity.name))?;
        }
        for (name, path) in &app.entities {
            self.runtime
                .check_entity_component(app.files[path].clone())
                .await
                .with_context(|| format!("entity `{name}`"))?;
        }
        self.runtime
            .check_manifest_schedules(&app.schedules)
            .await?;
        functions_router(&self.state, app)
    }

    /// Make `app`'s activities and the routes `prepare` built the ones
    /// served (its orchestrations are the runtime's `deploy`).
    pub(crate) async fn install(
        &self,
        app: &ResolvedApp,
        functions: axum::Router,
    ) -> anyhow::Result<()> {
        register_activities(&self.runtime, app).await?;
        self.runtime
            .sync_manifest_schedules(&app.schedules)
            .await
            .context("the manifest's schedules")?;
        *self.functions.write().expect("functions poisoned") = functions;
        *self.http_digests.lock().expect("digests poisoned") = http_digests(app);
        Ok(())
    }

    /// Forget the components that nothing served or in flight uses any
    /// more (after a deploy, or a dry run that compiled what it checked).
    pub(crate) async fn prune(&self) {
        let keep = self.http_digests.lock().expect("digests poisoned").clone();
        self.state.triggers.retain(&keep);
        if let Err(e) = self.runtime.prune_components(&keep).await {
            tracing::warn!("unused components were not dropped: {e}");
        }
    }
}

/// The digests of an app's HTTP functions' components.
fn http_digests(app: &ResolvedApp) -> std::collections::HashSet<String> {
    (app.http.iter())
        .map(|function| engine::digest(&app.files[&function.component]))
        .collect()
}

/// An app's orchestration components (path, bytes), each with the
/// orchestrations it defines.
pub(crate) fn orchestration_components(app: &ResolvedApp) -> Vec<(PathBuf, Vec<u8>, Vec<String>)> {
    let entries = app
        .orchestrations
        .iter()
        .map(|(name, path)| (name.as_str(), path));
    ResolvedApp::by_component(entries)
        .into_iter()
        .map(|(path, names)| {
            let bytes = app.files[&path].clone();
            (path, bytes, names)
        })
        .collect()
}

/// Register an app's activities with their options, its entities, and
/// where its orchestrations' `call_http` may go.
async fn register_activities(runtime: &Runtime, app: &ResolvedApp) -> anyhow::Result<()> {
    let entities = (app.entities.iter()).map(|(name, path)| (name.as_str(), path));
    for (path, names) in ResolvedApp::by_component(entities) {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        runtime
            .register_entities(app.files[&path].clone(), &names)
            .await
            .with_context(|| format!("entity component {}", path.display()))?;
    }
    let names: Vec<&str> = app.entities.iter().map(|(name, _)| name.as_str()).collect();
    runtime.retain_entities(&names);
    let entries = (app.activities.iter()).map(|a| (a.name.as_str(), &a.component));
    for (path, names) in ResolvedApp::by_component(entries) {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        runtime
            .register_activities(app.files[&path].clone(), &names)
            .await
            .with_context(|| format!("activity component {}", path.display()))?;
    }
    for activity in &app.activities {
        runtime.set_activity_options(&activity.name, activity.options.clone());
    }
    for (orchestration, hosts) in &app.http_allowed {
        runtime.allow_http_hosts(orchestration, hosts.clone());
    }
    Ok(())
}

/// The routes of an app's HTTP functions, their components prepared.
fn functions_router(state: &Arc<AppState>, app: &ResolvedApp) -> anyhow::Result<axum::Router> {
    // A segment such as `:id` is a literal in a manifest route (parameters
    // are `{id}`), not the axum 0.7 syntax the default checks refuse.
    let mut router = axum::Router::new().without_v07_checks();
    for function in &app.http {
        let bytes = &app.files[&function.component];
        let digest = engine::digest(bytes);
        let component = state
            .triggers
            .engine()
            .component(&digest, bytes)
            .with_context(|| format!("http function `{}`", function.name))?;
        state
            .triggers
            .prepare(&digest, &component)
            .with_context(|| {
                format!(
                    "http function `{}`: component {}",
                    function.name,
                    function.component.display()
                )
            })?;
        let route = Arc::new(Route {
            function: function.clone(),
            digest,
        });
        let mut filter: Option<MethodFilter> = None;
        for method in &route.function.methods {
            let m = MethodFilter::try_from(method.parse::<axum::http::Method>()?)
                .map_err(|e| anyhow::anyhow!("method {method}: {e}"))?;
            filter = Some(filter.map_or(m, |f| f.or(m)));
        }
        let filter = filter.expect("manifest guarantees a method");
        let path = route.function.route.clone();
        let name = route.function.name.clone();
        let state = state.clone();
        let handler: axum::routing::MethodRouter = on(
            filter,
            move |params: Result<Path<Vec<(String, String)>>, PathRejection>, request: Request| {
                let (route, state) = (route.clone(), state.clone());
                async move {
                    match params {
                        Ok(Path(params)) => {
                            let response = call_trigger(&state, &route, params, request).await;
                            state
                                .metrics
                                .http_requests
                                .get_or_create(&vec![
                                    ("function", route.function.name.clone()),
                                    ("status", response.status().as_u16().to_string()),
                                ])
                                .inc();
                            response
                        }
                        Err(rejection) => {
                            ApiError::bad_request(rejection.body_text()).into_response()
                        }
                    }
                }
            },
        );
        // The manifest's checks make this infallible; should the router
        // still refuse a route, that is an error for this app, never a
        // panic of the host (or of a deploy's connection).
        router = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            router.route(&path, handler)
        }))
        .map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("refused");
            anyhow::anyhow!("http function `{name}`: route `{path}` cannot be served: {why}")
        })?;
    }
    Ok(router
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no route matches this path".into(),
            }
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: format!("this route does not take {method}"),
            }
        }))
}

struct AppState {
    triggers: Triggers,
    function_key: Option<String>,
    /// Stripped from what guests see, like the function key.
    admin_key: Option<String>,
    /// Slots for HTTP function calls under way.
    calls: Arc<tokio::sync::Semaphore>,
    /// Longest an HTTP function call may take, by the wall clock.
    trigger_budget: Duration,
    /// Largest request body a function takes.
    max_body: usize,
    /// Where calls are counted.
    metrics: Arc<duro_wasm::metrics::Metrics>,
}

/// HTTP function calls under way at once; more get 503. The engine's pool
/// holds 1000 guest instances, and what these leave is for orchestrations.
const MAX_CONCURRENT_CALLS: usize = 800;

/// Validate everything, then bind and serve until ctrl-c. The first line on
/// stdout names the bound address.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    // Everything that can be wrong with the input is found before binding.
    let mut app = manifest::load(&config.manifest)?;
    app.bind_variables(&config.variables)
        .with_context(|| format!("manifest {}", config.manifest.display()))?;
    if app.needs_function_key() && config.function_key.is_none() {
        anyhow::bail!(
            "manifest {}: a route has auth = \"function\" but no function key is set \
             (--function-key or DURO_FUNCTION_KEY)",
            config.manifest.display()
        );
    }
    // Checked now, before anything binds; bound to the port once known.
    let gate = crate::plane::Gate::new(
        config.admin_key.clone(),
        config.listen,
        config.public_url.as_deref(),
        &config.allowed_origins,
    )?;
    if config.admin_key.is_some() && config.admin_key == config.function_key {
        anyhow::bail!(
            "the admin key and the function key are the same: whoever may call a function \
             could deploy code; give them different values"
        );
    }
    // One host per SQLite file: taken before the store is opened, held
    // until the process ends.
    let _sqlite_lock = match &config.database {
        crate::database::Database::Sqlite(path) => Some(crate::database::lock_sqlite(path)?),
        crate::database::Database::Postgres { .. } => None,
    };
    let store = {
        let database = config.database.clone();
        let options = crate::database::OpenOptions {
            lease_ttl: config.lease_ttl,
            max_inbox: config.max_inbox,
        };
        crate::database::open_database(&database, &options).await?
    };
    let data_dir = config.database.data_dir();
    let runtime_config = RuntimeConfig {
        step_budget: config.step_budget,
        compile_cache: Some(
            config
                .cache_dir
                .clone()
                .unwrap_or_else(|| default_cache_dir(&data_dir)),
        ),
        // Hosts sharing PostgreSQL hear of each other's work through
        // LISTEN/NOTIFY; polling is only the fallback.
        poll_interval: match config.database {
            crate::database::Database::Postgres { .. } => Duration::from_secs(2),
            crate::database::Database::Sqlite(_) => RuntimeConfig::default().poll_interval,
        },
        trace_link: config.trace_link.clone(),
        limits: config.limits,
        tls: crate::tls::TlsClient::new(config.ca_file.as_deref())?,
        ..Default::default()
    };
    let runtime = Arc::new(Runtime::start(runtime_config, store).await?);

    for (path, bytes, names) in orchestration_components(&app) {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        runtime
            .register(bytes, &names)
            .await
            .with_context(|| format!("orchestration component {}", path.display()))?;
    }
    register_activities(&runtime, &app).await?;
    runtime.open_activities();
    runtime
        .sync_manifest_schedules(&app.schedules)
        .await
        .context("the manifest's schedules")?;

    let triggers = Triggers::new(
        runtime.engine().clone(),
        runtime.clone(),
        config.trigger_budget,
    )?;
    let state = Arc::new(AppState {
        triggers,
        function_key: config.function_key.clone(),
        admin_key: config.admin_key.clone(),
        calls: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS)),
        trigger_budget: config.trigger_budget,
        max_body: config.http_limits.max_request_bytes,
        metrics: runtime.metrics().clone(),
    });
    let functions = Arc::new(RwLock::new(functions_router(&state, &app)?));
    let served = Arc::new(Served {
        runtime: runtime.clone(),
        state,
        functions: functions.clone(),
        http_digests: std::sync::Mutex::new(http_digests(&app)),
        variables: config.variables.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // The links the gate hands out name the bound address.
    let gate = Arc::new(gate.bound_to(address));
    // Only the host's own routes: a guest's error responses are its own.
    let api = api::router(runtime.clone())
        .merge(crate::deploy::router(served))
        .merge(crate::dashboard::page());
    let max_body = config.http_limits.max_request_bytes;
    let api = api
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(move |response: Response| {
            too_large_names_the_limit(response, max_body)
        }));
    let api = api.layer(axum::middleware::from_fn({
        let gate = gate.clone();
        move |request: Request, next: Next| crate::plane::guard(gate.clone(), true, request, next)
    }));
    let assets = crate::dashboard::assets().layer(axum::middleware::from_fn({
        let gate = gate.clone();
        move |request: Request, next: Next| crate::plane::guard(gate.clone(), false, request, next)
    }));
    // Everything else goes to the app's HTTP functions, as deployed now.
    let link = config.trace_link.clone();
    let router = api
        .merge(assets)
        .layer(axum::middleware::map_response(json_errors))
        .fallback(move |request: Request| {
            let functions = functions.read().expect("functions poisoned").clone();
            async move {
                match tower::ServiceExt::oneshot(functions, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        });
    let router = if crate::telemetry::spans_enabled() {
        router.layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                crate::telemetry::traced(link.clone(), request, next)
            },
        ))
    } else {
        router
    };

    // Tests and scripts read this first line to find the port.
    println!("duro listening on http://{address}");
    tracing::info!(
        manifest = %config.manifest.display(),
        database = %config.database,
        "serving {} orchestrations, {} activities, {} entities and {} http functions",
        app.orchestrations.len(),
        app.activities.len(),
        app.entities.len(),
        app.http.len()
    );
    let mut limits = config.http_limits.clone();
    limits.max_connections = crate::listen::fit_connection_cap(limits.max_connections);
    crate::listen::serve(listener, router, limits, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Where compiled code is cached unless told: the user's own cache
/// directory (`$XDG_CACHE_HOME/duro`, else `~/.cache/duro`), which no other
/// user can write, even when the database sits in a shared directory;
/// `.duro-cache` beside the database only where neither is known.
pub fn default_cache_dir(data_dir: &std::path::Path) -> PathBuf {
    let home_cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| std::path::Path::new(dir).is_absolute())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")));
    match home_cache {
        Some(dir) => dir.join("duro"),
        None => data_dir.join(".duro-cache"),
    }
}

/// axum's own 413 (a body past `DefaultBodyLimit`) says nothing of the
/// limit: say it, as JSON.
async fn too_large_names_the_limit(response: Response, limit: usize) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json(&response) {
        return response;
    }
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!(
            "the request body is larger than {limit} bytes (the host's --max-request-bytes)"
        ),
    }
    .into_response()
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Errors that axum produces itself (body too large, undecodable path...)
/// come as plain text; rewrite them into the API's `{"error": ...}` shape so
/// every 4xx/5xx the management API makes is JSON.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError { status, message }.into_response()
}

/// Ctrl-C or SIGTERM. Nothing is lost either way: every acknowledged request
/// is already durable, and unfinished episodes rerun on the next start.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

async fn call_trigger(
    state: &AppState,
    route: &Route,
    params: Vec<(String, String)>,
    mut request: Request,
) -> Response {
    let authorized = state.function_key.as_deref().is_some_and(|key| {
        crate::plane::carries_function_key(request.headers(), request.uri(), key)
    });
    if route.function.auth == AuthLevel::Function && !authorized {
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: format!(
                "`{}` needs the function key (x-functions-key header or code query parameter)",
                route.function.name
            ),
        }
        .into_response();
    }
    let keys: Vec<&str> = [&state.function_key, &state.admin_key]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    crate::plane::strip_for_guest(&mut request, &keys, HOST_HEADER_PREFIXES);
    let name = &route.function.name;
    // The body is read whole before a guest slot is taken, within the
    // call's budget: a slow client holds neither a slot nor a guest.
    let request = match read_body(request, state.trigger_budget, state.max_body).await {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(_slot) = state.calls.clone().try_acquire_owned() else {
        return ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "`{name}` is not called: {MAX_CONCURRENT_CALLS} calls are under way; try again"
            ),
        }
        .into_response();
    };
    let trace = crate::telemetry::request_trace(request.extensions(), request.headers());
    let call = state.triggers.handle(
        &route.digest,
        name,
        &params,
        &route.function.variables.0,
        request,
        trace,
    );
    // The epoch deadline stops a guest computing in wasm at the budget; the
    // wall clock, a little later, ends a call that waits outside wasm.
    let wall_clock = state.trigger_budget + state.trigger_budget / 2;
    let Ok(answer) = tokio::time::timeout(wall_clock, call).await else {
        tracing::warn!(function = %name, "no answer within {wall_clock:?}");
        return ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!("function `{name}` did not answer within {wall_clock:?}"),
        }
        .into_response();
    };
    match answer {
        Ok(response) => response.map(axum::body::Body::new).into_response(),
        Err(e) => {
            // The guest's trap text is for the operator, not for whoever
            // called the route: it is logged under an id the answer names.
            let incident = crate::api::incident_id();
            tracing::warn!(function = %name, %incident, "trigger failed: {e:#}");
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!(
                    "function `{name}` failed; the host's log has the cause under incident {incident}"
                ),
            }
            .into_response()
        }
    }
}

/// Headers through which the host speaks to guests (the function's name,
/// route parameters): whatever a client sent under these names is dropped.
const HOST_HEADER_PREFIXES: &[&str] = &[
    crate::trigger::FUNCTION_HEADER,
    crate::trigger::PARAM_PREFIX,
    crate::trigger::PARAMS_HEADER,
];

/// The request with its whole body read, within `deadline` and `limit`
/// bytes; else the 4xx that says which limit it broke.
async fn read_body(
    request: Request,
    deadline: Duration,
    limit: usize,
) -> Result<Request, ApiError> {
    use http_body_util::BodyExt as _;
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!(
            "the request body is larger than {limit} bytes (the host's --max-request-bytes)"
        ),
    };
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(deadline, limited).await {
        Err(_) => Err(ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("the request body did not arrive within {deadline:?}"),
        }),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "the request body could not be read: {e}"
        ))),
        Ok(Ok(body)) => Ok(Request::from_parts(
            parts,
            axum::body::Body::from(body.to_bytes()),
        )),
    }
}
