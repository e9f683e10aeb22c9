//! The web dashboard: a page and its script and style, embedded in the
//! binary and served at `/dashboard` (behind the admin key like the
//! management API, whose routes it calls).

use axum::http::{Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The dashboard's page, which the admin key guards when the host has one
/// (open it as `/dashboard/?code=KEY`; its script sends the key to the API).
pub fn page() -> axum::Router {
    axum::Router::new()
        .route(
            "/dashboard",
            get(|uri: Uri| async move {
                let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                Redirect::permanent(&format!("/dashboard/{query}"))
            }),
        )
        .route("/dashboard/", get(|| async { asset("text/html", INDEX) }))
}

/// The page's script and style: code, no data, open to all.
pub fn assets() -> axum::Router {
    axum::Router::new()
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                format!("{content_type}; charset=utf-8"),
            ),
            // A redeployed host serves its own version at once.
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        body,
    )
        .into_response()
}
