//! `POST /api/fan-out/{count}` fans out `count` activities (at most 1000)
//! and answers `202` with the URLs to follow the instance.

use duro_http::{DurableClient, Request, Response};
use serde_json::json;

fn start(req: &Request, client: &DurableClient) -> Response {
    let count = req.param("count").unwrap_or_default();
    let Some(count) = count.parse::<u32>().ok().filter(|n| (1..=1000).contains(n)) else {
        let error = format!("count must be a number from 1 to 1000, not `{count}`");
        return Response::json(400, &json!({ "error": error }));
    };
    match client.start_new("FanOutFanIn", None, &count) {
        Ok(id) => client.create_check_status_response(req, &id),
        Err(e) => Response::error(&e),
    }
}

duro_http::export_http_functions! {
    "StartFanOut" => start,
}
