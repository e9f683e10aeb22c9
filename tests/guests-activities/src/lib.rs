//! Activities only the tests use: `Add` sums, `Fail` always fails,
//! `Flaky` fails its first attempts, `Trap` panics, `Allocate` allocates, `Attempt` reports its
//! call and attempt, `Sleep` sleeps, `Fetch` makes an outbound HTTP request.

use duro_sdk::{Error, Result, activity_info};
use serde_json::{Value, json};

fn add(numbers: Vec<i64>) -> Result<i64> {
    Ok(numbers.iter().sum())
}

fn fail(reason: String) -> Result<()> {
    Err(Error::msg(format!("refused: {reason}")))
}

/// Fails attempts up to `failures`, then answers with the attempt number.
fn flaky(failures: u32) -> Result<u32> {
    let attempt = activity_info().map_or(0, |info| info.attempt);
    if attempt <= failures {
        return Err(Error::msg(format!("attempt {attempt} fails on purpose")));
    }
    Ok(attempt)
}

/// Allocates and touches `mib` MiB; answers how many bytes it touched.
fn allocate(mib: usize) -> Result<usize> {
    let block = std::hint::black_box(vec![1u8; mib << 20]);
    Ok(block.iter().map(|&b| b as usize).sum())
}

fn trap(_: Value) -> Result<()> {
    panic!("deliberate panic in an activity");
}

/// Sleeps `millis` (a real sleep: activities see the real clock).
fn sleep(millis: u64) -> Result<u64> {
    std::thread::sleep(std::time::Duration::from_millis(millis));
    Ok(millis)
}

/// The value of the variable named by the input (`null` if it may not
/// read it), as the activity sees it.
fn variable(name: String) -> Result<Value> {
    Ok(json!({ "name": name, "value": duro_sdk::variable(&name) }))
}

/// GETs `http(s)://{authority}{path}` through `wasi:http/outgoing-handler`:
/// `{"status", "body"}`, or the host's refusal as the error.
fn fetch(url: String) -> Result<Value> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, OutgoingRequest, Scheme};
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(Error::msg("only http:// and https:// URLs"));
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let pending = outgoing_handler::handle(request, None)
        .map_err(|e| Error::msg(format!("request refused: {e:?}")))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| Error::msg("no response"))?
        .map_err(|()| Error::msg("response taken twice"))?
        .map_err(|e| Error::msg(format!("request failed: {e:?}")))?;
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| Error::msg("body taken twice"))?;
    let stream = body.stream().map_err(|()| Error::msg("no body stream"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes.extend(chunk),
            Err(wasi::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(Error::msg(format!("reading the body: {e:?}"))),
        }
    }
    Ok(json!({ "status": status, "body": String::from_utf8_lossy(&bytes) }))
}

fn attempt(_: Value) -> Result<Value> {
    let info = activity_info().ok_or_else(|| Error::msg("no activity info"))?;
    Ok(json!({ "instance": info.instance_id, "task": info.task, "attempt": info.attempt }))
}

duro_sdk::export_activities! {
    "Add" => add,
    "Fail" => fail,
    "Flaky" => flaky,
    "Trap" => trap,
    "Allocate" => allocate,
    "Attempt" => attempt,
    "Sleep" => sleep,
    "Fetch" => fetch,
    "Variable" => variable,
}
