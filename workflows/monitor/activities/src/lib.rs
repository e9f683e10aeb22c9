//! The monitor's poll: one GET through `wasi:http/outgoing-handler`, to a
//! host the manifest allows.

use duro_sdk::{Error, Result};
use wasi::http::types::{Fields, OutgoingRequest, Scheme};

/// GETs an `http://` URL and returns the body.
fn poll(url: String) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::msg(format!("only http:// URLs, not `{url}`")))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
    let pending = wasi::http::outgoing_handler::handle(request, None)
        .map_err(|e| Error::msg(format!("request refused: {e:?}")))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| Error::msg("no response"))?
        .map_err(|()| Error::msg("response taken twice"))?
        .map_err(|e| Error::msg(format!("request failed: {e:?}")))?;
    let body = response.consume().map_err(|()| Error::msg("no body"))?;
    let stream = body.stream().map_err(|()| Error::msg("no body stream"))?;
    let mut bytes = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 << 10) {
        bytes.extend(chunk);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

duro_sdk::export_activities! {
    "Poll" => poll,
}
