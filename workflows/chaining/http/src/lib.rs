//! `POST /api/chaining` starts the chain (the body, if any, is the list of
//! cities) and answers `202` with the URLs to follow it.

use duro_http::{DurableClient, Request, Response};
use serde_json::Value;

fn start(req: &Request, client: &DurableClient) -> Response {
    let cities: Value = req.json().unwrap_or(Value::Null);
    match client.start_new("Chaining", None, &cities) {
        Ok(id) => client.create_check_status_response(req, &id),
        Err(e) => Response::error(&e),
    }
}

duro_http::export_http_functions! {
    "StartChaining" => start,
}
