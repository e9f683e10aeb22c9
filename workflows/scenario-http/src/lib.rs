//! The HTTP triggers of the scenario in DESIGN.md, ported from the Durable
//! Functions sample: `Start` starts a `Workflow`, `Check` reports its status
//! and `Stop` raises the event that ends it. Check and Stop find the instance
//! by name and input among those created in the last 20 minutes: one query
//! that the host answers from its index on (input, name, created time), so
//! it costs the same however many instances are stored.
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p scenario-http`;
//! routes are in `workflows/scenario/duro.toml`.

use duro_http::{DurableClient, InstanceQuery, InstanceStatus, Request, Response, RuntimeStatus};
use serde_json::json;

const ORCHESTRATION: &str = "Workflow";
const EVENT: &str = "Workflow";
const WINDOW_MS: u64 = 20 * 60 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `Workflow` instance created within ±20 minutes whose input is `input`.
fn find(client: &DurableClient, input: &str) -> Result<Option<InstanceStatus>, Response> {
    let now = now_ms();
    let query = InstanceQuery {
        created_from: Some(now.saturating_sub(WINDOW_MS)),
        created_to: Some(now + WINDOW_MS),
        runtime_status: vec![
            RuntimeStatus::Pending,
            RuntimeStatus::Running,
            RuntimeStatus::Suspended,
            RuntimeStatus::Completed,
        ],
        name: Some(ORCHESTRATION.into()),
        input: Some(input.into()),
        // The newest match wins when an input was started more than once.
        newest_first: true,
        page_size: Some(1),
        ..Default::default()
    };
    let page = client
        .list_instances(&query)
        .map_err(|e| Response::error(&e))?;
    Ok(page.instances.into_iter().next())
}

fn not_found(input: &str) -> Response {
    Response::json(
        404,
        &json!({ "error": format!("no {ORCHESTRATION} instance with input {input:?} in the last 20 minutes") }),
    )
}

fn start(req: &Request, client: &DurableClient) -> Response {
    let input = req.param("input").unwrap_or_default();
    match client.start_new(ORCHESTRATION, None, &input) {
        Ok(id) => Response::json(200, &json!({ "id": id, "input": input })),
        Err(e) => Response::error(&e),
    }
}

fn check(req: &Request, client: &DurableClient) -> Response {
    let input = req.param("input").unwrap_or_default();
    match find(client, input) {
        Ok(Some(instance)) => Response::json(200, &instance),
        Ok(None) => not_found(input),
        Err(response) => response,
    }
}

fn stop(req: &Request, client: &DurableClient) -> Response {
    let input = req.param("input").unwrap_or_default();
    let instance = match find(client, input) {
        Ok(Some(instance)) => instance,
        Ok(None) => return not_found(input),
        Err(response) => return response,
    };
    match client.raise_event(&instance.instance_id, EVENT, &input) {
        Ok(()) => Response::json(200, &instance),
        Err(e) => Response::error(&e),
    }
}

duro_http::export_http_functions! {
    "Start" => start,
    "Check" => check,
    "Stop" => stop,
}
