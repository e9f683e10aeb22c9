//! Requests and responses: reading a `wasi:http` request into a plain value,
//! and writing a plain response back.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::client::{ClientError, DurableClient};

/// Header through which the host names the function a request is for.
const FUNCTION_HEADER: &str = "duro-function";
/// Header through which the host passes every route parameter, names as
/// the route spells them, form-encoded.
const PARAMS_HEADER: &str = "duro-params";
/// Prefix of the headers through which older hosts pass route parameters
/// (names lower-cased).
const PARAM_PREFIX: &str = "duro-param-";

/// An incoming HTTP request, read whole.
///
/// ```no_run
/// # fn f(req: &duro_http::Request) {
/// let input = req.param("input");
/// let verbose = req.query("verbose").is_some();
/// # let _ = (input, verbose); }
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    params: HashMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    /// The method, upper case (`GET`, `POST`...).
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// let is_write = req.method() != "GET";
    /// # let _ = is_write;
    /// # }
    /// ```
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, without the query, as sent (not percent-decoded).
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// let under_api = req.path().starts_with("/api/");
    /// # let _ = under_api;
    /// # }
    /// ```
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A route parameter (percent-decoded), e.g. `input` for the route
    /// `/api/start/{input}`.
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// let input = req.param("input").unwrap_or_default();
    /// # let _ = input;
    /// # }
    /// ```
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Every route parameter (percent-decoded), names as the route spells
    /// them, in no particular order.
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// for (name, value) in req.params() {
    ///     println!("{name} = {value}");
    /// }
    /// # }
    /// ```
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Every header, in the order received (names as the host passes them,
    /// lower case).
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// let cookies = req.headers().filter(|(name, _)| *name == "cookie").count();
    /// # let _ = cookies;
    /// # }
    /// ```
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The first query parameter with this name, percent-decoded.
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// let page: u32 = req.query("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    /// # let _ = page;
    /// # }
    /// ```
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first header with this name (ASCII case-insensitive).
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// let json = req.header("content-type") == Some("application/json");
    /// # let _ = json;
    /// # }
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body bytes.
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// let size = req.body().len();
    /// # let _ = size;
    /// # }
    /// ```
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body parsed as JSON.
    ///
    /// ```no_run
    /// # fn f(req: &duro_http::Request) {
    /// let order: serde_json::Value = req.json().unwrap_or_default();
    /// # let _ = order;
    /// # }
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// An HTTP response to send back.
///
/// ```
/// let ok = duro_http::Response::json(200, &serde_json::json!({ "ok": true }));
/// let missing = duro_http::Response::json(404, &serde_json::json!({ "error": "no such order" }))
///     .with_header("cache-control", "no-store");
/// # let _ = (ok, missing);
/// ```
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    ///
    /// ```
    /// let r = duro_http::Response::json(201, &serde_json::json!({ "id": 1 }));
    /// assert_eq!(r.status(), 201);
    /// ```
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
        }
    }

    /// A plain-text response.
    ///
    /// ```
    /// let r = duro_http::Response::text(200, "pong");
    /// assert_eq!(r.status(), 200);
    /// ```
    pub fn text(status: u16, text: &str) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: text.as_bytes().to_vec(),
        }
    }

    /// The JSON error response that fits a client error (404, 409, 410, 400, 500).
    ///
    /// ```
    /// let e = duro_http::ClientError::NotFound("no instance with id `x`".into());
    /// assert_eq!(duro_http::Response::error(&e).status(), 404);
    /// ```
    pub fn error(error: &ClientError) -> Self {
        Response::json(
            error.http_status(),
            &serde_json::json!({ "error": error.to_string() }),
        )
    }

    /// Add a header.
    ///
    /// ```
    /// let r = duro_http::Response::text(200, "ok").with_header("cache-control", "no-store");
    /// # let _ = r;
    /// ```
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The status code.
    ///
    /// ```
    /// assert_eq!(duro_http::Response::text(418, "teapot").status(), 418);
    /// ```
    pub fn status(&self) -> u16 {
        self.status
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.to_uppercase(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_request(request: IncomingRequest) -> Request {
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
    let (path, query) = match path_with_query.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (path_with_query, String::new()),
    };
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        })
        .collect();
    let mut headers = Vec::new();
    let mut params = HashMap::new();
    let mut legacy_params = HashMap::new();
    let mut encoded_params = None;
    for (name, value) in request.headers().entries() {
        let value = String::from_utf8_lossy(&value).into_owned();
        if name == PARAMS_HEADER {
            encoded_params = Some(value.clone());
        } else if let Some(param) = name.strip_prefix(PARAM_PREFIX) {
            legacy_params.insert(param.to_string(), value.clone());
        }
        headers.push((name, value));
    }
    match encoded_params {
        Some(encoded) => {
            for pair in encoded.split('&').filter(|pair| !pair.is_empty()) {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                params.insert(percent_decode(name), percent_decode(value));
            }
        }
        None => params = legacy_params,
    }
    let mut body = Vec::new();
    if let Ok(incoming) = request.consume()
        && let Ok(stream) = incoming.stream()
    {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            body.extend_from_slice(&chunk);
        }
    }
    Request {
        method: method_name(&request.method()),
        path,
        query,
        headers,
        params,
        body,
    }
}

fn write_response(out: ResponseOutparam, response: Response) {
    let entries: Vec<(String, Vec<u8>)> = response
        .headers
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let fields = Fields::from_list(&entries).unwrap_or_else(|_| Fields::new());
    let outgoing = OutgoingResponse::new(fields);
    let _ = outgoing.set_status_code(response.status);
    let body = outgoing.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(outgoing));
    if let Ok(stream) = body.write() {
        for chunk in response.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

/// The body of the `incoming-handler.handle` export: read the request, pick
/// the function the host named, run it, write its response.
pub fn handle(
    request: IncomingRequest,
    out: ResponseOutparam,
    dispatch: impl FnOnce(&str, &Request, &DurableClient) -> Option<Response>,
) {
    let request = read_request(request);
    let function = request
        .header(FUNCTION_HEADER)
        .unwrap_or_default()
        .to_string();
    let response = dispatch(&function, &request, &DurableClient::new()).unwrap_or_else(|| {
        Response::json(
            404,
            &serde_json::json!({
                "error": format!("this component has no HTTP function named `{function}`")
            }),
        )
    });
    write_response(out, response);
}
