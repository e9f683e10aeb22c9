//! The two planes' gates. The management plane (the management API, deploy,
//! the dashboard, `/metrics`, `openapi.json`) opens to the admin key only,
//! answers only to the host's own names, takes state-changing requests
//! only as same-site JSON, and sends headers that keep its pages out of
//! frames; the app plane's routes open to function keys. Neither kind of
//! key, nor the host's own route headers as a client sent them, reaches a
//! guest.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// The header through which the admin key may also travel (besides
/// `Authorization: Bearer`, and the `x-functions-key` header or `code`
/// query parameter that Durable Functions' clients use for its system key).
pub const ADMIN_KEY_HEADER: &str = "x-duro-admin-key";
/// Durable Functions' key header, for function keys (and the admin key).
pub const FUNCTION_KEY_HEADER: &str = "x-functions-key";
/// Durable Functions' key query parameter.
pub const KEY_PARAMETER: &str = "code";

/// What the management plane's gate admits, fixed when `duro serve`
/// starts.
#[derive(Debug, Clone)]
pub struct Gate {
    admin_key: Option<Arc<str>>,
    /// The listener's address: an IP literal equal to it is one of its names.
    listen: SocketAddr,
    /// The configured public base URL, without a trailing `/`.
    public_base: Option<String>,
    /// `scheme://host[:port]` of the public base URL.
    public_origin: Option<String>,
    /// The host name of the public base URL, lower case, without port.
    public_host: Option<String>,
    /// Origins besides the host's own that may send state-changing requests.
    allowed_origins: Vec<String>,
}

/// The base of the links the management API hands out (`Location`,
/// `statusQueryGetUri`, ...): the configured public URL, else the
/// listener's own address. A request extension set by [`Gate::check`].
#[derive(Debug, Clone)]
pub struct PublicBase(pub String);

impl Gate {
    /// The gate of a host listening on `listen`. Without an admin key the
    /// listener must be a loopback address: that is checked here, before
    /// the socket is bound.
    pub fn new(
        admin_key: Option<String>,
        listen: SocketAddr,
        public_url: Option<&str>,
        allowed_origins: &[String],
    ) -> anyhow::Result<Gate> {
        if admin_key.is_none() && !listen.ip().is_loopback() {
            anyhow::bail!(
                "--listen {listen} is not a loopback address, and without an admin key the \
                 management API (deploy included) would be open to the network: set one with \
                 --admin-key or DURO_ADMIN_KEY (clients send it as `Authorization: Bearer KEY`), \
                 or listen on 127.0.0.1"
            );
        }
        if admin_key.as_deref().is_some_and(str::is_empty) {
            anyhow::bail!("the admin key is empty: --admin-key or DURO_ADMIN_KEY needs a value");
        }
        let (public_base, public_origin, public_host) = match public_url {
            None => (None, None, None),
            Some(url) => {
                let (origin, host) = parse_origin(url).map_err(|why| {
                    anyhow::anyhow!(
                        "--public-url {url:?}: {why} (expected http(s)://host[:port][/path])"
                    )
                })?;
                let base = url.trim_end_matches('/').to_string();
                (Some(base), Some(origin), Some(host))
            }
        };
        let mut origins = Vec::new();
        for origin in allowed_origins {
            let (normalized, _) = parse_origin(origin)
                .map_err(|why| anyhow::anyhow!("--allowed-origin {origin:?}: {why}"))?;
            origins.push(normalized);
        }
        Ok(Gate {
            admin_key: admin_key.map(Into::into),
            listen,
            public_base,
            public_origin,
            public_host,
            allowed_origins: origins,
        })
    }

    /// The gate of the listener actually bound at `address` (the port
    /// known): links name it.
    pub fn bound_to(self, address: SocketAddr) -> Gate {
        Gate {
            listen: address,
            ..self
        }
    }

    /// Admit a request to the management plane, or say why not. `needs_key`
    /// is false for the dashboard's script and style, which are code, not
    /// data.
    pub fn check(&self, request: &mut Request, needs_key: bool) -> Result<(), ApiError> {
        let host = self.checked_host(request.headers())?;
        if needs_key
            && let Some(key) = &self.admin_key
            && !carries_admin_key(request.headers(), request.uri(), key)
        {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "the management API needs the admin key (`Authorization: Bearer KEY`, \
                          the x-duro-admin-key header, or Durable Functions' x-functions-key \
                          header or code query parameter); a function key does not open it"
                    .into(),
            });
        }
        if !matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        ) {
            self.check_write(request.headers(), &host)?;
        }
        let base = match &self.public_base {
            Some(base) => base.clone(),
            None if self.listen.ip().is_unspecified() => format!("http://{host}"),
            None => format!("http://{}", self.listen),
        };
        request.extensions_mut().insert(PublicBase(base));
        Ok(())
    }

    /// The request's `Host`, if it is one of this host's names: a loopback
    /// name, the listener's address, the public URL's host. Any other name
    /// is how a DNS-rebinding page reaches a loopback listener.
    fn checked_host(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let refuse = |what: String| ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "{what}: the management API answers only to this host's own names \
                 (localhost, a loopback or the listener's address, or the --public-url host)"
            ),
        };
        let Some(value) = headers.get(header::HOST) else {
            return Err(refuse("the request has no Host header".into()));
        };
        let text = value
            .to_str()
            .map_err(|_| refuse("the Host header is not text".into()))?;
        let name = host_name(text).ok_or_else(|| refuse(format!("Host {text:?} is malformed")))?;
        let own = match name.parse::<IpAddr>() {
            Ok(ip) => {
                ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified()
            }
            Err(_) => name == "localhost" || self.public_host.as_deref() == Some(name.as_str()),
        };
        if own {
            Ok(text.to_string())
        } else {
            Err(refuse(format!(
                "Host {text:?} is not one of this host's names"
            )))
        }
    }

    /// A state-changing request must come from this host's own pages (or a
    /// configured origin) and carry JSON or nothing: a cross-site form or
    /// `text/plain` fetch, which browsers send without asking, is refused.
    fn check_write(&self, headers: &HeaderMap, host: &str) -> Result<(), ApiError> {
        let forbidden = |message: String| ApiError {
            status: StatusCode::FORBIDDEN,
            message,
        };
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("(not text)");
            let own = [format!("http://{host}"), format!("https://{host}")];
            let allowed = own.iter().any(|o| o.eq_ignore_ascii_case(origin))
                || parse_origin(origin).is_ok_and(|(normalized, _)| {
                    self.allowed_origins.contains(&normalized)
                        || self.public_origin.as_ref() == Some(&normalized)
                });
            if !allowed {
                return Err(forbidden(format!(
                    "Origin {origin:?} may not change state here: only the host's own pages \
                     and --allowed-origin origins may"
                )));
            }
        } else if headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes() == b"cross-site")
        {
            return Err(forbidden(
                "a cross-site request may not change state here".into(),
            ));
        }
        let empty = headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|n| n.as_bytes() == b"0")
            || (!headers.contains_key(header::CONTENT_LENGTH)
                && !headers.contains_key(header::TRANSFER_ENCODING));
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
        if !empty && !json {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: "a request that changes state must send its body as \
                          `Content-Type: application/json` (or send no body)"
                    .into(),
            });
        }
        Ok(())
    }
}

/// `scheme://host[:port]` (lower case, default port dropped) and the host
/// name of an origin or URL.
fn parse_origin(text: &str) -> Result<(String, String), String> {
    let uri: Uri = text.parse().map_err(|e| format!("not a URL ({e})"))?;
    let scheme = uri
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .ok_or("no scheme")?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme} is not http or https"));
    }
    let authority = uri.authority().ok_or("no host")?;
    let host = authority.host().to_ascii_lowercase();
    let default_port = if scheme == "https" { 443 } else { 80 };
    let origin = match authority.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((origin, host))
}

/// The name in a `Host` header value (lower case, without port or IPv6
/// brackets), or `None` if it is not one.
fn host_name(value: &str) -> Option<String> {
    let authority: axum::http::uri::Authority = value.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// True if the request carries the admin key: `Authorization: Bearer`, the
/// x-duro-admin-key header, or Durable Functions' system-key places.
fn carries_admin_key(headers: &HeaderMap, uri: &Uri, key: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_key(given.trim().as_bytes(), key.as_bytes()));
    bearer
        || [ADMIN_KEY_HEADER, FUNCTION_KEY_HEADER].iter().any(|name| {
            headers
                .get(*name)
                .is_some_and(|v| same_key(v.as_bytes(), key.as_bytes()))
        })
        || carries_key_parameter(uri, key)
}

/// True if the request carries the function `key` in the `x-functions-key`
/// header or the (percent-decoded) `code` query parameter.
pub fn carries_function_key(headers: &HeaderMap, uri: &Uri, key: &str) -> bool {
    headers
        .get(FUNCTION_KEY_HEADER)
        .is_some_and(|v| same_key(v.as_bytes(), key.as_bytes()))
        || carries_key_parameter(uri, key)
}

fn carries_key_parameter(uri: &Uri, key: &str) -> bool {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .any(|(name, value)| name == KEY_PARAMETER && same_key(value.as_bytes(), key.as_bytes()))
}

/// Compare two keys in time that depends only on their lengths, so that a
/// client cannot find the key byte by byte from how fast it is refused.
fn same_key(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len()
        && given
            .iter()
            .zip(key)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// Remove from a request bound for a guest every key it carries (the key
/// headers, `Authorization` carrying `keys`, and `code` query parameters
/// equal to one of `keys`), and every header through which the host itself
/// speaks to guests (`prefixes`), so that a client cannot forge them.
pub fn strip_for_guest(request: &mut Request, keys: &[&str], prefixes: &[&str]) {
    let headers = request.headers_mut();
    headers.remove(FUNCTION_KEY_HEADER);
    headers.remove(ADMIN_KEY_HEADER);
    let carries = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| {
            keys.iter()
                .any(|k| same_key(given.trim().as_bytes(), k.as_bytes()))
        });
    if carries {
        headers.remove(header::AUTHORIZATION);
    }
    let forged: Vec<_> = headers
        .keys()
        .filter(|name| prefixes.iter().any(|p| name.as_str().starts_with(p)))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
    let uri = request.uri();
    if let Some(query) = uri.query() {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let keep: Vec<&(String, String)> = pairs
            .iter()
            .filter(|(name, value)| {
                !(name == KEY_PARAMETER
                    && keys
                        .iter()
                        .any(|k| same_key(value.as_bytes(), k.as_bytes())))
            })
            .collect();
        if keep.len() != pairs.len() {
            let mut path_and_query = uri.path().to_string();
            if !keep.is_empty() {
                let mut query = form_urlencoded::Serializer::new(String::new());
                for (name, value) in keep {
                    query.append_pair(name, value);
                }
                path_and_query.push('?');
                path_and_query.push_str(&query.finish());
            }
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = path_and_query.parse().ok();
            if let Ok(stripped) = Uri::from_parts(parts) {
                *request.uri_mut() = stripped;
            }
        }
    }
}

/// Headers on every management-plane answer: its pages run only their
/// own script, are never framed, never sniffed, and never tell another
/// site their URL (which may carry the key as `?code=`).
pub fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The management plane's middleware: the gate, then the route, with the
/// hardening headers on whatever comes back.
pub async fn guard(gate: Arc<Gate>, needs_key: bool, mut request: Request, next: Next) -> Response {
    let mut response = match gate.check(&mut request, needs_key) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    };
    harden(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(admin_key: Option<&str>, listen: &str) -> Gate {
        Gate::new(
            admin_key.map(String::from),
            listen.parse().unwrap(),
            Some("https://duro.example.com/"),
            &["https://ops.example.com".into()],
        )
        .unwrap()
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = axum::http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn without_an_admin_key_only_a_loopback_listener_may_start() {
        assert!(Gate::new(None, "127.0.0.1:7071".parse().unwrap(), None, &[]).is_ok());
        assert!(Gate::new(None, "[::1]:7071".parse().unwrap(), None, &[]).is_ok());
        let refused = Gate::new(None, "0.0.0.0:7071".parse().unwrap(), None, &[]).unwrap_err();
        assert!(refused.to_string().contains("--admin-key"), "{refused}");
        assert!(Gate::new(Some("k".into()), "0.0.0.0:7071".parse().unwrap(), None, &[]).is_ok());
    }

    #[test]
    fn only_the_hosts_own_names_are_admitted() {
        let gate = gate(None, "127.0.0.1:7071");
        for host in [
            "localhost:7071",
            "LOCALHOST",
            "127.0.0.1:7071",
            "127.0.0.2",
            "[::1]:7071",
            "duro.example.com",
            "duro.example.com:8443",
        ] {
            let mut r = request("GET", "/x", &[("host", host)]);
            assert!(gate.check(&mut r, true).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "user@localhost",
            "",
        ] {
            let mut r = request("GET", "/x", &[("host", host)]);
            let refused = gate.check(&mut r, true).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{host}");
        }
        let mut no_host = request("GET", "/x", &[]);
        assert!(gate.check(&mut no_host, true).is_err());
    }

    #[test]
    fn writes_need_json_or_nothing_and_a_same_site_origin() {
        let gate = gate(None, "127.0.0.1:7071");
        let host = ("host", "127.0.0.1:7071");
        let ok = |headers: &[(&str, &str)]| {
            let mut all = vec![host];
            all.extend_from_slice(headers);
            gate.check(&mut request("POST", "/x", &all), true)
        };
        assert!(
            ok(&[
                ("content-type", "application/json"),
                ("content-length", "2")
            ])
            .is_ok()
        );
        assert!(ok(&[("content-length", "0")]).is_ok());
        assert!(ok(&[]).is_ok());
        assert!(ok(&[("origin", "http://127.0.0.1:7071")]).is_ok());
        assert!(ok(&[("origin", "https://ops.example.com")]).is_ok());
        assert!(ok(&[("origin", "https://duro.example.com")]).is_ok());
        let plain = ok(&[("content-type", "text/plain"), ("content-length", "2")]).unwrap_err();
        assert_eq!(plain.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let form = ok(&[("transfer-encoding", "chunked")]).unwrap_err();
        assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        for origin in ["https://evil.example", "null", "http://127.0.0.1:9999"] {
            let refused = ok(&[("origin", origin)]).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{origin}");
        }
        assert!(ok(&[("sec-fetch-site", "cross-site")]).is_err());
        // Reads are not writes.
        let mut get = request("GET", "/x", &[host, ("origin", "https://evil.example")]);
        assert!(gate.check(&mut get, true).is_ok());
    }

    #[test]
    fn the_admin_key_opens_the_plane_and_nothing_else_does() {
        let gate = gate(Some("adm1n"), "0.0.0.0:7071");
        let host = ("host", "10.1.2.3:7071");
        let admitted = |headers: &[(&str, &str)], uri: &str| {
            let mut all = vec![host];
            all.extend_from_slice(headers);
            gate.check(&mut request("GET", uri, &all), true).is_ok()
        };
        assert!(admitted(&[("authorization", "Bearer adm1n")], "/x"));
        assert!(admitted(&[("x-duro-admin-key", "adm1n")], "/x"));
        assert!(admitted(&[("x-functions-key", "adm1n")], "/x"));
        assert!(admitted(&[], "/x?code=adm1n"));
        assert!(!admitted(&[], "/x"));
        assert!(!admitted(
            &[("x-functions-key", "fn-key")],
            "/x?code=fn-key"
        ));
        assert!(!admitted(&[("authorization", "Bearer adm1")], "/x"));
        // The dashboard's code is open; its data is not.
        assert!(
            gate.check(&mut request("GET", "/x", &[host]), false)
                .is_ok()
        );
    }

    #[test]
    fn links_come_from_the_public_url_or_the_listener() {
        let mut r = request("GET", "/x", &[("host", "localhost:7071")]);
        gate(None, "127.0.0.1:7071").check(&mut r, true).unwrap();
        assert_eq!(
            r.extensions().get::<PublicBase>().unwrap().0,
            "https://duro.example.com"
        );
        let plain = Gate::new(None, "127.0.0.1:7071".parse().unwrap(), None, &[]).unwrap();
        let mut r = request("GET", "/x", &[("host", "localhost:7071")]);
        plain.check(&mut r, true).unwrap();
        assert_eq!(
            r.extensions().get::<PublicBase>().unwrap().0,
            "http://127.0.0.1:7071"
        );
    }

    #[test]
    fn keys_and_host_headers_never_reach_a_guest() {
        let mut r = request(
            "GET",
            "/api/x?a=1&code=k%2By&code=mine&b=2",
            &[
                ("x-functions-key", "k+y"),
                ("authorization", "Bearer adm1n"),
                ("duro-param-input", "forged"),
                ("Duro-Params", "input=forged"),
                ("accept", "*/*"),
            ],
        );
        strip_for_guest(&mut r, &["k+y", "adm1n"], &["duro-param"]);
        assert_eq!(r.uri().query(), Some("a=1&code=mine&b=2"));
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
        // Someone else's bearer token is the guest's business.
        let mut r = request(
            "GET",
            "/api/x?code=k",
            &[("authorization", "Bearer theirs")],
        );
        strip_for_guest(&mut r, &["k"], &[]);
        assert!(r.headers().contains_key("authorization"));
        assert_eq!(r.uri().query(), None);
        assert_eq!(r.uri().path(), "/api/x");
    }
}
