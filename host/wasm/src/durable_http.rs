//! The built-in activity behind `ctx.call_http` (Durable Functions'
//! `CallHttpAsync`): one HTTP request from the host, to the hosts the
//! orchestration's manifest entry allows, optionally following the
//! `202 Accepted` + `Location` polling pattern; its response is the
//! activity's output, recorded in the history like any other.

use std::time::Duration;

use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};

use crate::activity::{AllowedHost, Refusal, send_to_allowed};

/// The reserved activity name that `ctx.call_http` calls.
pub const ACTIVITY: &str = "duro:http";

/// Longest body of a response kept.
const MAX_BODY: usize = 4 << 20;

/// A request, as the SDK sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    /// Follow `202` + `Location` with GETs until another status comes.
    #[serde(default)]
    poll_async: bool,
}

/// A response, as the SDK receives it.
#[derive(Debug, Serialize)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// Run one `ctx.call_http` request within `budget`: the response as JSON,
/// or why there is none.
pub async fn call(
    input: &str,
    allowed: &[AllowedHost],
    tls: &crate::tls::TlsClient,
    budget: Duration,
) -> Result<String, String> {
    let request: Request =
        serde_json::from_str(input).map_err(|e| format!("call_http: bad request {input}: {e}"))?;
    let run = async {
        let mut response = send(
            &request.method,
            &request.url,
            &request.headers,
            request.body.clone(),
            (allowed, tls, budget),
        )
        .await?;
        while request.poll_async && response.status == 202 {
            let Some(location) = header(&response, "location") else {
                break;
            };
            let wait = header(&response, "retry-after")
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(Duration::from_secs(1), Duration::from_secs);
            tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
            let url = absolute(&request.url, location);
            response = send("GET", &url, &request.headers, None, (allowed, tls, budget)).await?;
        }
        serde_json::to_string(&response).map_err(|e| e.to_string())
    };
    tokio::time::timeout(budget, run)
        .await
        .map_err(|_| format!("call_http: no final response within {budget:?}"))?
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `location` made absolute against `base` (a path keeps base's origin).
fn absolute(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|at| base[at + 3..].find('/').map(|slash| at + 3 + slash))
        .unwrap_or(base.len());
    format!("{}{location}", &base[..origin_end])
}

async fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<String>,
    (allowed, tls, budget): (&[AllowedHost], &crate::tls::TlsClient, Duration),
) -> Result<Response, String> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            body.unwrap_or_default(),
        )))
        .map_err(|e| format!("call_http: bad request to {url}: {e}"))?;
    let deadlines = crate::activity::Deadlines {
        connect: crate::activity::MAX_CONNECT.min(budget),
        first_byte: budget,
    };
    let response = send_to_allowed(request, allowed, tls, deadlines)
        .await
        .map_err(|refusal| match refusal {
            Refusal::Denied(target) => {
                format!("call_http: {target} is not among the orchestration's allowed_hosts")
            }
            other => format!("call_http: {other}"),
        })?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("call_http: reading the response: {e}"))?
        .to_bytes();
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::absolute;

    #[test]
    fn locations_are_resolved_against_the_request_url() {
        assert_eq!(absolute("http://a:1/x/y", "/s/1"), "http://a:1/s/1");
        assert_eq!(absolute("http://a:1", "/s"), "http://a:1/s");
        assert_eq!(absolute("http://a:1/x", "http://b/s"), "http://b/s");
    }
}
