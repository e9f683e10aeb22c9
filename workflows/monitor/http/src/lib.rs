//! `POST /api/monitors` with `{"url", "interval_ms"}` starts a monitor and
//! answers `202` with the URLs to follow it (its custom status shows the
//! polls so far).

use duro_http::{DurableClient, Request, Response};
use serde_json::{Value, json};

fn start(req: &Request, client: &DurableClient) -> Response {
    let spec: Value = req.json().unwrap_or(Value::Null);
    if !spec["url"]
        .as_str()
        .is_some_and(|url| url.starts_with("http://"))
    {
        let error = "the body must be {\"url\": \"http://...\", \"interval_ms\": n}";
        return Response::json(400, &json!({ "error": error }));
    }
    match client.start_new("Monitor", None, &spec) {
        Ok(id) => client.create_check_status_response(req, &id),
        Err(e) => Response::error(&e),
    }
}

duro_http::export_http_functions! {
    "StartMonitor" => start,
}
