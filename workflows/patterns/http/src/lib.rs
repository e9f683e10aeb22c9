//! The HTTP side of the pattern examples: `POST /api/start/{orchestration}`
//! starts any of them with the request body as input and answers like the
//! async HTTP API pattern: `202 Accepted`, the status URL in `Location`,
//! which the client polls until it answers `200` with the output.

use duro_http::{DurableClient, Request, Response};
use serde_json::{Value, json};

fn start(req: &Request, client: &DurableClient) -> Response {
    let name = req.param("orchestration").unwrap_or_default();
    let input: Value = req.json().unwrap_or(Value::Null);
    match client.start_new(&name, None, &input) {
        Ok(id) => {
            let status = format!("/runtime/webhooks/durabletask/instances/{id}");
            Response::json(202, &json!({ "id": id, "statusQueryGetUri": status }))
                .with_header("location", &status)
                .with_header("retry-after", "1")
        }
        Err(e) => Response::error(&e),
    }
}

duro_http::export_http_functions! {
    "Start" => start,
}
