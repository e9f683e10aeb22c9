//! The order example's activities: `Charge` posts the charge to the payment
//! service over HTTPS with the secret `payment_key` as a bearer token, and
//! an idempotency key made of the instance and the call, so that a retried
//! attempt never charges twice; `Notify` posts the outcome to `notify_url`.
//! Both read their endpoints from variables (`duro.toml`'s `[variables]`).

use duro_sdk::{Error, Result, activity_info, variable};
use serde_json::{Value, json};

/// Charge `{"id", "amount"}`: the payment service's JSON answer.
fn charge(order: Value) -> Result<Value> {
    let base = variable("payment_url").ok_or_else(|| Error::msg("payment_url is not set"))?;
    let key = variable("payment_key").ok_or_else(|| Error::msg("payment_key is not set"))?;
    let info = activity_info().ok_or_else(|| Error::msg("not run as an activity"))?;
    let idempotency = format!("{}-{}", info.instance_id, info.task);
    let body = json!({ "order": order["id"], "amount": order["amount"] });
    let (status, answer) = post(
        &format!("{}/charges", base.trim_end_matches('/')),
        &[
            ("authorization", format!("Bearer {key}")),
            ("idempotency-key", idempotency),
        ],
        &body,
    )?;
    if !(200..300).contains(&status) {
        // An error is retried by the orchestration's policy.
        return Err(Error::msg(format!(
            "the payment service answered {status}: {answer}"
        )));
    }
    serde_json::from_str(&answer)
        .map_err(|e| Error::msg(format!("the payment answer is not JSON: {e}")))
}

/// Post `{"order", "outcome"}` to `notify_url`: the status it answered.
fn notify(message: Value) -> Result<Value> {
    let url = variable("notify_url").ok_or_else(|| Error::msg("notify_url is not set"))?;
    let (status, _) = post(&url, &[], &message)?;
    if !(200..300).contains(&status) {
        return Err(Error::msg(format!(
            "the notification service answered {status}"
        )));
    }
    Ok(json!({ "status": status }))
}

/// POST `body` as JSON to `url` (`https://` or `http://`) through
/// `wasi:http/outgoing-handler`: the status and the body as text. The host
/// lets it reach only the activity's `allowed_hosts`, and checks the
/// server's certificate.
fn post(url: &str, headers: &[(&str, String)], body: &Value) -> Result<(u16, String)> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(Error::msg(format!("{url}: not an http(s) URL")));
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
    let mut entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    entries.push(("content-type".into(), b"application/json".to_vec()));
    let fields = Fields::from_list(&entries).map_err(|e| Error::msg(format!("headers: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let _ = request.set_method(&Method::Post);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let outgoing = request.body().map_err(|()| Error::msg("no request body"))?;
    {
        let stream = outgoing
            .write()
            .map_err(|()| Error::msg("no body stream"))?;
        stream
            .blocking_write_and_flush(body.to_string().as_bytes())
            .map_err(|e| Error::msg(format!("writing the request: {e:?}")))?;
    }
    let pending = outgoing_handler::handle(request, None)
        .map_err(|e| Error::msg(format!("request refused: {e:?}")))?;
    OutgoingBody::finish(outgoing, None).map_err(|e| Error::msg(format!("sending: {e:?}")))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| Error::msg("no response"))?
        .map_err(|()| Error::msg("response taken twice"))?
        .map_err(|e| Error::msg(format!("request failed: {e:?}")))?;
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| Error::msg("body taken twice"))?;
    let stream = incoming
        .stream()
        .map_err(|()| Error::msg("no body stream"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes.extend(chunk),
            Err(wasi::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(Error::msg(format!("reading the answer: {e:?}"))),
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

duro_sdk::export_activities! {
    "Charge" => charge,
    "Notify" => notify,
}
