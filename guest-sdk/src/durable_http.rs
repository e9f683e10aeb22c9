//! Durable HTTP from orchestrations: `ctx.call_http` runs the request as a
//! host activity and records the response in the history.

use serde::{Deserialize, Serialize};

/// An HTTP request for [`OrchestrationContext::call_http`](crate::OrchestrationContext::call_http).
///
/// ```
/// let request = duro_sdk::HttpRequest::post("http://127.0.0.1:8080/jobs", "{}")
///     .header("content-type", "application/json")
///     .poll_async();
/// assert_eq!(request.method, "POST");
/// assert!(request.poll_async);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// An absolute `http://` URL; its host must be among the orchestration's
    /// `allowed_hosts` in the manifest.
    pub url: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    pub body: Option<String>,
    /// Follow `202 Accepted` + `Location` (waiting `Retry-After` seconds,
    /// 1 by default) with GETs until another status comes.
    pub poll_async: bool,
}

impl HttpRequest {
    /// A GET of `url`.
    ///
    /// ```
    /// assert_eq!(duro_sdk::HttpRequest::get("http://h/x").method, "GET");
    /// ```
    pub fn get(url: &str) -> Self {
        HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            poll_async: false,
        }
    }

    /// A POST of `body` to `url`.
    ///
    /// ```
    /// let request = duro_sdk::HttpRequest::post("http://h/x", "hi");
    /// assert_eq!(request.body.as_deref(), Some("hi"));
    /// ```
    pub fn post(url: &str, body: &str) -> Self {
        HttpRequest {
            method: "POST".into(),
            body: Some(body.into()),
            ..HttpRequest::get(url)
        }
    }

    /// Add a header.
    ///
    /// ```
    /// let request = duro_sdk::HttpRequest::get("http://h/x").header("accept", "text/plain");
    /// assert_eq!(request.headers, [("accept".to_string(), "text/plain".to_string())]);
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Follow the `202` + `Location` polling pattern.
    ///
    /// ```
    /// assert!(duro_sdk::HttpRequest::get("http://h/x").poll_async().poll_async);
    /// ```
    pub fn poll_async(mut self) -> Self {
        self.poll_async = true;
        self
    }
}

/// The response of [`OrchestrationContext::call_http`](crate::OrchestrationContext::call_http).
///
/// ```
/// let response = duro_sdk::HttpResponse { status: 200, headers: vec![], body: "ok".into() };
/// assert!(response.is_success());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl HttpResponse {
    /// True for a 2xx status.
    ///
    /// ```
    /// let response = duro_sdk::HttpResponse { status: 404, headers: vec![], body: String::new() };
    /// assert!(!response.is_success());
    /// ```
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}
