//! HTTP triggers only the tests use: `Echo` answers with everything the SDK
//! parsed from the request, `Panic` traps, `Spin` never returns, `Sleep`
//! waits in the host for a minute, `Schedules` drives the durable client's
//! schedule calls.

use duro_http::{DurableClient, Request, Response};
use serde_json::json;

fn echo(req: &Request, _client: &DurableClient) -> Response {
    Response::json(
        200,
        &json!({
            "method": req.method(),
            "path": req.path(),
            "param": req.param("thing"),
            "params": req.params().collect::<std::collections::BTreeMap<_, _>>(),
            "headers": req.headers().collect::<Vec<_>>(),
            "query": req.query("q"),
            "code": req.query("code"),
            "header": req.header("x-test"),
            "body": req.json::<serde_json::Value>().ok(),
        }),
    )
    .with_header("x-echo", "yes")
}

fn panic(_req: &Request, _client: &DurableClient) -> Response {
    panic!("deliberate panic in a trigger");
}

fn spin(_req: &Request, _client: &DurableClient) -> Response {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Sleeps for a minute outside wasm (in a WASI poll), where no epoch
/// deadline reaches it: only the call's wall-clock deadline ends it.
fn sleep(_req: &Request, _client: &DurableClient) -> Response {
    std::thread::sleep(std::time::Duration::from_secs(60));
    Response::json(200, &json!("woke"))
}

/// The value of the variable `?name=` as the function sees it.
fn variable(req: &Request, _client: &DurableClient) -> Response {
    let name = req.query("name").unwrap_or_default();
    Response::json(
        200,
        &json!({ "name": name, "value": duro_http::variable(name) }),
    )
}

duro_http::export_http_functions! {
    "Echo" => echo,
    "Panic" => panic,
    "Spin" => spin,
    "Sleep" => sleep,
    "Variable" => variable,
    "Schedules" => schedules,
    "Entities" => entities,
}

/// The durable client's entity calls, one per `?op=`: `signal` (`?name=`,
/// `?key=`, `?operation=`, the body is the input), `read` (`?name=`,
/// `?key=`), `list` (`?name=`, `?prefix=`); answers what the call returned,
/// or the error with its status.
fn entities(req: &Request, client: &DurableClient) -> Response {
    let (name, key) = (
        req.query("name").unwrap_or_default(),
        req.query("key").unwrap_or_default(),
    );
    let done = match req.query("op").unwrap_or_default() {
        "signal" => req
            .json::<serde_json::Value>()
            .map_err(|e| duro_http::ClientError::InvalidArgument(e.to_string()))
            .and_then(|input| {
                let operation = req.query("operation").unwrap_or_default();
                client.signal_entity(name, key, operation, &input)
            })
            .map(|()| json!("signaled")),
        "signal_at" => req
            .json::<serde_json::Value>()
            .map_err(|e| duro_http::ClientError::InvalidArgument(e.to_string()))
            .and_then(|input| {
                let operation = req.query("operation").unwrap_or_default();
                let at = req.query("at").and_then(|at| at.parse().ok()).unwrap_or(0);
                client.signal_entity_at(name, key, operation, &input, at)
            })
            .map(|()| json!("signaled")),
        "read" => client
            .read_entity_state(name, key)
            .map(|state| json!(state)),
        "list" => client
            .list_entities(
                Some(name).filter(|n| !n.is_empty()),
                req.query("prefix"),
                None,
                None,
            )
            .map(|page| json!(page)),
        other => return Response::json(404, &json!(format!("no op {other}"))),
    };
    match done {
        Ok(value) => Response::json(200, &value),
        Err(e) => Response::json(e.http_status(), &json!({ "error": e.to_string() })),
    }
}

/// The durable client's schedule calls, one per `?op=`: `create` (the body
/// is the definition), `list`, `get`, `pause`, `resume`, `trigger`,
/// `delete` (`?name=`); answers what the call returned, or the error with
/// its status.
fn schedules(req: &Request, client: &DurableClient) -> Response {
    let name = req.query("name").unwrap_or_default();
    let reason = req.query("reason");
    let done = match req.query("op").unwrap_or_default() {
        "create" => req
            .json::<serde_json::Value>()
            .map_err(|e| duro_http::ClientError::InvalidArgument(e.to_string()))
            .and_then(|definition| client.create_schedule(&definition)),
        "list" => client.list_schedules().map(|all| json!(all)),
        "get" => client.get_schedule(name).map(|found| json!(found)),
        "pause" => client
            .pause_schedule(name, reason)
            .map(|()| json!("paused")),
        "resume" => client
            .resume_schedule(name, reason, false)
            .map(|()| json!("resumed")),
        "trigger" => client.trigger_schedule(name, reason).map(|id| json!(id)),
        "delete" => client.delete_schedule(name).map(|()| json!("deleted")),
        other => return Response::json(404, &json!(format!("no op {other}"))),
    };
    match done {
        Ok(value) => Response::json(200, &value),
        Err(e) => Response::json(e.http_status(), &json!({ "error": e.to_string() })),
    }
}
