//! `POST /api/approvals` (body `{"timeout_ms"}`) starts an approval and
//! answers `202` with the URLs to follow it; `POST
//! /api/approvals/{id}/approve` or `/reject` gives the person's answer.

use duro_http::{DurableClient, Request, Response};
use serde_json::{Value, json};

fn start(req: &Request, client: &DurableClient) -> Response {
    let request: Value = req.json().unwrap_or(Value::Null);
    match client.start_new("Approval", None, &request) {
        Ok(id) => client.create_check_status_response(req, &id),
        Err(e) => Response::error(&e),
    }
}

fn decide(req: &Request, client: &DurableClient) -> Response {
    let id = req.param("id").unwrap_or_default();
    let approved = match req.param("decision") {
        Some("approve") => true,
        Some("reject") => false,
        other => {
            let error = format!("the decision is approve or reject, not {other:?}");
            return Response::json(400, &json!({ "error": error }));
        }
    };
    match client.raise_event(id, "Approve", &approved) {
        Ok(()) => Response::json(202, &json!({ "id": id, "approved": approved })),
        Err(e) => Response::error(&e),
    }
}

duro_http::export_http_functions! {
    "StartApproval" => start,
    "Decide" => decide,
}
