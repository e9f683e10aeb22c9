//! The async HTTP API pattern with an API of the app's own: `POST /api/jobs`
//! answers `202 Accepted` at once with `Location: /api/jobs/{id}`;
//! `GET /api/jobs/{id}` answers `202` (with `Retry-After`) while the job
//! runs, then `200` with its result, or `500` with its error.

use duro_http::{DurableClient, Request, Response, RuntimeStatus};
use serde_json::json;

fn submit(req: &Request, client: &DurableClient) -> Response {
    let document = String::from_utf8_lossy(req.body()).into_owned();
    match client.start_new("Job", None, &document) {
        Ok(id) => {
            let location = format!("/api/jobs/{id}");
            Response::json(202, &json!({ "id": id, "status": location }))
                .with_header("location", &location)
                .with_header("retry-after", "1")
        }
        Err(e) => Response::error(&e),
    }
}

fn status(req: &Request, client: &DurableClient) -> Response {
    let id = req.param("id").unwrap_or_default();
    let job = match client.get_status(id) {
        Ok(Some(job)) if job.name == "Job" => job,
        Ok(_) => return Response::json(404, &json!({ "error": format!("no job {id}") })),
        Err(e) => return Response::error(&e),
    };
    match job.runtime_status {
        RuntimeStatus::Completed => Response::json(200, &json!({ "result": job.output })),
        RuntimeStatus::Failed | RuntimeStatus::Terminated => {
            Response::json(500, &json!({ "error": job.output }))
        }
        _ => Response::json(202, &json!({ "status": "running" })).with_header("retry-after", "1"),
    }
}

duro_http::export_http_functions! {
    "SubmitJob" => submit,
    "JobStatus" => status,
}
