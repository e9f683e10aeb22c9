//! `duro serve`: resolve the manifest, register its components, then serve
//! the app's HTTP functions and the management API on one socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};

use crate::api::{self, ApiError};
use crate::engine;
use crate::manifest::{self, AuthLevel, ResolvedHttp};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::trigger::Triggers;

/// Everything `duro serve` needs, from flags and environment.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The SQLite database file.
    pub database: PathBuf,
    /// The app manifest.
    pub manifest: PathBuf,
    /// Key for `auth = "function"` routes.
    pub function_key: Option<String>,
    /// Compiled-code cache (default: `.duro-cache` beside the database).
    pub cache_dir: Option<PathBuf>,
    /// Longest an orchestration step may run.
    pub step_budget: Duration,
    /// Longest an HTTP function call may run.
    pub trigger_budget: Duration,
}

struct Route {
    function: ResolvedHttp,
    digest: String,
}

struct AppState {
    triggers: Triggers,
    function_key: Option<String>,
}

/// Validate everything, then bind and serve until ctrl-c. The first line on
/// stdout names the bound address.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    // Everything that can be wrong with the input is found before binding.
    let app = manifest::load(&config.manifest)?;
    if app.http.iter().any(|h| h.auth == AuthLevel::Function) && config.function_key.is_none() {
        anyhow::bail!(
            "manifest {}: a route has auth = \"function\" but no function key is set \
             (--function-key or DURO_FUNCTION_KEY)",
            config.manifest.display()
        );
    }
    let mut runtime_config = RuntimeConfig::new(&config.database);
    runtime_config.step_budget = config.step_budget;
    let data_dir = config
        .database
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    runtime_config.compile_cache = Some(
        config
            .cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join(".duro-cache")),
    );
    let runtime = Arc::new(Runtime::start(runtime_config).await?);

    let mut by_component: HashMap<PathBuf, Vec<&str>> = HashMap::new();
    for (name, path) in &app.orchestrations {
        by_component.entry(path.clone()).or_default().push(name);
    }
    for (path, names) in &by_component {
        runtime
            .register(app.files[path].clone(), names)
            .await
            .with_context(|| format!("orchestration component {}", path.display()))?;
    }

    let triggers = Triggers::new(
        runtime.engine().clone(),
        runtime.clone(),
        config.trigger_budget,
    )?;
    let mut routes = Vec::new();
    for function in &app.http {
        let bytes = &app.files[&function.component];
        let digest = engine::digest(bytes);
        let component = runtime
            .engine()
            .component(&digest, bytes)
            .with_context(|| format!("http function `{}`", function.name))?;
        triggers.prepare(&digest, &component).with_context(|| {
            format!(
                "http function `{}`: component {}",
                function.name,
                function.component.display()
            )
        })?;
        routes.push(Route {
            function: function.clone(),
            digest,
        });
    }
    let state = Arc::new(AppState {
        triggers,
        function_key: config.function_key.clone(),
    });
    // Only the host's own routes: a guest's error responses are its own.
    let mut router =
        api::router(runtime.clone()).layer(axum::middleware::map_response(json_errors));
    for route in routes {
        let mut filter: Option<MethodFilter> = None;
        for method in &route.function.methods {
            let m = MethodFilter::try_from(method.parse::<axum::http::Method>()?)
                .map_err(|e| anyhow::anyhow!("method {method}: {e}"))?;
            filter = Some(filter.map_or(m, |f| f.or(m)));
        }
        let filter = filter.expect("manifest guarantees a method");
        let route = Arc::new(route);
        let path = route.function.route.clone();
        let state = state.clone();
        router = router.route(
            &path,
            on(
                filter,
                move |params: Result<Path<Vec<(String, String)>>, PathRejection>,
                      request: Request| {
                    let (route, state) = (route.clone(), state.clone());
                    async move {
                        match params {
                            Ok(Path(params)) => call_trigger(&state, &route, params, request).await,
                            Err(rejection) => {
                                ApiError::bad_request(rejection.body_text()).into_response()
                            }
                        }
                    }
                },
            ),
        );
    }
    let router = router
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
        });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // Tests and scripts read this first line to find the port.
    println!("duro listening on http://{address}");
    tracing::info!(
        manifest = %config.manifest.display(),
        database = %config.database.display(),
        "serving {} orchestrations and {} http functions",
        app.orchestrations.len(),
        app.http.len()
    );
    // Small JSON answers: send them now rather than wait for Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// Errors that axum produces itself (body too large, undecodable path...)
/// come as plain text; rewrite them into the API's `{"error": ...}` shape so
/// every 4xx/5xx the management API makes is JSON.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
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
    request: Request,
) -> Response {
    if route.function.auth == AuthLevel::Function && !authorized(state, &request) {
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: format!(
                "`{}` needs the function key (x-functions-key header or code query parameter)",
                route.function.name
            ),
        }
        .into_response();
    }
    match state
        .triggers
        .handle(&route.digest, &route.function.name, &params, request)
        .await
    {
        Ok(response) => response.map(axum::body::Body::new).into_response(),
        Err(e) => {
            tracing::warn!(function = %route.function.name, "trigger failed: {e:#}");
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("function `{}` failed: {e:#}", route.function.name),
            }
            .into_response()
        }
    }
}

fn authorized(state: &AppState, request: &Request) -> bool {
    let Some(key) = &state.function_key else {
        return false;
    };
    let header = request
        .headers()
        .get("x-functions-key")
        .and_then(|v| v.to_str().ok());
    let query = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("code="));
    header == Some(key.as_str()) || query == Some(key.as_str())
}
