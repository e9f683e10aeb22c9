//! Activities: components of the `activity` world, instantiated per attempt
//! with the real WASI clocks and randomness, outbound HTTP (plain `http://`)
//! to the hosts the manifest allows for the activity and nowhere else, no
//! files, sockets or environment, under a time budget and the guest memory
//! limit.

use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::engine::{Engine, MAX_GUEST_MEMORY, budget_ticks, guest_limits_of};
use crate::replay::{HostTrouble, is_host_trouble};

mod bindings {
    wasmtime::component::bindgen!({
        world: "activity",
        path: "../../guest-sdk/wit",
        exports: { default: async },
    });
}

use bindings::{Activity, ActivityPre};

pub use bindings::exports::duro::workflow::activities::ActivityInfo;

/// Runs activities from prepared components.
pub struct ActivityHost {
    engine: Engine,
    /// The TLS client of activities' HTTPS requests.
    tls: crate::tls::TlsClient,
    linker: Linker<ActivityState>,
    pres: crate::engine::Prepared<ActivityPre<ActivityState>>,
}

impl ActivityHost {
    /// Forget the prepared components whose digest `keep` does not hold.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        self.pres.retain(keep);
    }

    /// A host for activity components on `engine`, whose HTTPS requests
    /// go through `tls`.
    pub fn new(engine: Engine, tls: crate::tls::TlsClient) -> anyhow::Result<Self> {
        let mut linker = Linker::new(engine.wasmtime());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |s: &mut ActivityState| {
            wasmtime_wasi_config::WasiConfig::from(&s.config)
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(ActivityHost {
            engine,
            tls,
            linker,
            pres: Default::default(),
        })
    }

    /// Check that a component is an activity component, and keep it ready.
    pub fn prepare(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let prepared = self.pres.get_or_prepare(digest, || {
            self.linker
                .instantiate_pre(component)
                .and_then(ActivityPre::new)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "it is not a duro activity component (the `activity` world, \
                         importing only WASI): {e:?}"
                    )
                })
        });
        prepared.map(drop)
    }

    /// One attempt of activity `name` of component `digest`, stopped after
    /// its budget (`options.timeout`, else `default_budget`) computing or
    /// 1.5 x that waiting, its memory capped by `options`: its output or
    /// its error (a trap or a budget overrun is the attempt's error), or
    /// host trouble (the attempt did not run and is not counted).
    pub async fn run(
        &self,
        digest: &str,
        options: &ActivityOptions,
        default_budget: Duration,
        name: &str,
        input: &str,
        info: &ActivityInfo,
    ) -> Result<Result<String, String>, HostTrouble> {
        let budget = options.timeout.unwrap_or(default_budget);
        let pre = self
            .pres
            .get(digest)
            .ok_or_else(|| HostTrouble(format!("activity component {digest} is not prepared")))?;
        let state = ActivityState {
            wasi: WasiCtx::builder()
                .allow_ip_name_lookup(false)
                .allow_tcp(false)
                .allow_udp(false)
                .build(),
            table: ResourceTable::new(),
            limits: guest_limits_of(options.max_memory.unwrap_or(MAX_GUEST_MEMORY)),
            http: WasiHttpCtx::new(),
            hooks: OutboundHttp {
                allowed: options.allowed_hosts.clone(),
                tls: self.tls.clone(),
                budget,
            },
            config: options.variables.iter().cloned().collect(),
        };
        let mut store = Store::new(self.engine.wasmtime(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(budget_ticks(budget));
        let guest: Activity = match pre.instantiate_async(&mut store).await {
            Ok(guest) => guest,
            Err(e) if is_host_trouble(&e) => {
                return Err(HostTrouble(format!(
                    "the activity could not be instantiated: {e:#}"
                )));
            }
            Err(e) => {
                return Ok(Err(format!(
                    "the activity could not be instantiated: {e:#}"
                )));
            }
        };
        // The epoch stops a guest computing; the wall clock one that waits
        // outside wasm.
        let input = input.to_string();
        let call = guest
            .duro_workflow_activities()
            .call_run(&mut store, name, &input, info);
        let wall_clock = budget + budget / 2;
        let outcome = match tokio::time::timeout(wall_clock, call).await {
            Err(_) => Err(format!("the activity did not finish within {wall_clock:?}")),
            Ok(Err(trap)) => Err({
                self.engine.count_trap(&trap, "activity");
                match trap.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => {
                        format!("the activity ran for more than {budget:?} and was stopped")
                    }
                    _ => format!("the activity trapped: {trap:?}"),
                }
            }),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Ok(Ok(output))) => match serde_json::from_str::<serde_json::Value>(&output) {
                Ok(_) => Ok(output),
                Err(e) => Err(format!("the activity's output {output:?} is not JSON: {e}")),
            },
        };
        // Whatever the attempt returns is recorded in a history: a secret
        // it carries (an echoed header, an error quoting a request) is not.
        Ok(match outcome {
            Ok(output) => Ok(redact(output, &options.secrets)),
            Err(error) => Err(redact(error, &options.secrets)),
        })
    }
}

/// `text` with every occurrence of each secret replaced by `***` (secrets
/// shorter than 4 characters are left: they would redact ordinary text).
pub fn redact(mut text: String, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

/// How the attempts of one activity run: the manifest's `[[activity]]`
/// limits and allowlist.
#[derive(Clone, Default)]
pub struct ActivityOptions {
    /// One attempt's budget, if not the runtime's default.
    pub timeout: Option<Duration>,
    /// The largest linear memory an attempt may grow to, if less than
    /// [`MAX_GUEST_MEMORY`].
    pub max_memory: Option<usize>,
    /// Where it may send HTTP requests (nowhere by default).
    pub allowed_hosts: Vec<AllowedHost>,
    /// The variables it may read (`wasi:config/store`), with their values.
    pub variables: Vec<(String, String)>,
    /// The values of the secret ones among them: redacted from what an
    /// attempt returns, and never logged.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for ActivityOptions {
    /// Variable names only: their values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityOptions")
            .field("timeout", &self.timeout)
            .field("max_memory", &self.max_memory)
            .field("allowed_hosts", &self.allowed_hosts)
            .field(
                "variables",
                &self
                    .variables
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The store data of one activity attempt.
pub struct ActivityState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    http: WasiHttpCtx,
    hooks: OutboundHttp,
    /// The variables this activity may read.
    config: wasmtime_wasi_config::WasiConfigVariables,
}

impl WasiHttpView for ActivityState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// One entry of an activity's `allowed_hosts`: `http://host[:port]` or
/// `https://host[:port]` (port 80 or 443 when left out), where the host may
/// be `*` (any) or `*.example.com` (any name under it), and the port `*`.
/// A scheme allows itself only: `https://` does not allow `http://`.
///
/// ```
/// use duro_wasm::activity::AllowedHost;
/// let local: AllowedHost = "http://127.0.0.1:*".parse().unwrap();
/// assert!(local.allows("http", "127.0.0.1", 8080));
/// assert!(!local.allows("http", "localhost", 8080));
/// let api: AllowedHost = "https://*.example.com".parse().unwrap();
/// assert!(api.allows("https", "pay.example.com", 443));
/// assert!(!api.allows("https", "example.com", 443));
/// assert!(!api.allows("http", "pay.example.com", 443));
/// assert!(!api.allows("https", "pay.example.com", 8443));
/// assert!("ftp://example.com".parse::<AllowedHost>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    https: bool,
    host: HostPattern,
    port: Option<u16>,
}

/// Which host names an [`AllowedHost`] covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any.
    Any,
    /// One name, lower case.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Under(String),
}

impl std::str::FromStr for AllowedHost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "`{text}`: expected http://host[:port] or https://host[:port]"
            ));
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "`{text}`: expected scheme://host[:port], * for any host or port"
            ));
        }
        let port = match port {
            None => Some(if https { 443 } else { 80 }),
            Some("*") => None,
            Some(port) => Some(
                port.parse()
                    .map_err(|_| format!("`{text}`: `{port}` is not a port"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(format!("`{text}`: expected *.domain"));
            }
            HostPattern::Under(format!(".{domain}"))
        } else if host.contains('*') {
            return Err(format!(
                "`{text}`: a wildcard is `*` or `*.domain`, not part of a name"
            ));
        } else {
            HostPattern::Exact(host)
        };
        Ok(AllowedHost { https, host, port })
    }
}

impl AllowedHost {
    /// Whether a request to `scheme://host:port` fits this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_fits = if self.https {
            scheme.eq_ignore_ascii_case("https")
        } else {
            scheme.eq_ignore_ascii_case("http")
        };
        let host = host.to_ascii_lowercase();
        let host_fits = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(name) => *name == host,
            HostPattern::Under(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        };
        scheme_fits && host_fits && self.port.is_none_or(|p| p == port)
    }
}

/// Why an outbound request got no response.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The TLS handshake failed: the cause (unknown issuer, wrong name,
    /// expired...).
    Tls(String),
    /// No answer within a deadline.
    TimedOut(String),
    /// No allowed host admits `scheme://host:port`.
    Denied(String),
    /// The URI cannot be sent.
    BadUri(String),
    /// The host could not be reached.
    Unreachable(String),
    /// The exchange failed.
    Failed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied(target) => write!(f, "{target} is not among the allowed hosts"),
            Refusal::BadUri(why)
            | Refusal::Unreachable(why)
            | Refusal::Failed(why)
            | Refusal::Tls(why)
            | Refusal::TimedOut(why) => f.write_str(why),
        }
    }
}

/// How long an outbound request may wait, at most (a guest may ask for
/// less through `wasi:http`'s request options).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// To connect, TLS handshake included.
    pub connect: Duration,
    /// From the request sent to the response's head.
    pub first_byte: Duration,
}

/// Longest wait between two parts of an outbound answer's body.
pub(crate) const MAX_BETWEEN_BYTES: Duration = Duration::from_secs(30);

/// Longest connect (and TLS handshake) an outbound request may take.
pub(crate) const MAX_CONNECT: Duration = Duration::from_secs(10);

/// Send `request` (its URI absolute) over a fresh connection, if one of
/// `allowed` admits its scheme, host and port: plain HTTP/1.1 for `http`,
/// TLS (`tls`) for `https`, HTTP/2 when the server chooses it. Redirects
/// are not followed. The one outbound path of activities and of
/// `ctx.call_http`.
pub(crate) async fn send_to_allowed<B>(
    request: http::Request<B>,
    allowed: &[AllowedHost],
    tls: &crate::tls::TlsClient,
    deadlines: Deadlines,
) -> Result<http::Response<hyper::body::Incoming>, Refusal>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let uri = request.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
    let https = match scheme.as_str() {
        "http" => false,
        "https" => true,
        other => {
            return Err(Refusal::BadUri(format!(
                "{uri}: scheme {other} is not http or https"
            )));
        }
    };
    let host = uri.host().unwrap_or_default().to_string();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    if !allowed.iter().any(|a| a.allows(&scheme, &host, port)) {
        return Err(Refusal::Denied(format!("{scheme}://{host}:{port}")));
    }
    let connecting = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Refusal::Unreachable(format!("cannot connect to {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let (stream, h2) = tls.connect(&host, tcp).await.map_err(Refusal::Tls)?;
            Ok(Connection::Tls(Box::new(stream), h2))
        } else {
            Ok(Connection::Plain(tcp))
        }
    };
    let connection = tokio::time::timeout(deadlines.connect, connecting)
        .await
        .map_err(|_| {
            Refusal::TimedOut(format!(
                "connecting to {host}:{port} took longer than {:?}",
                deadlines.connect
            ))
        })??;
    let (mut parts, body) = request.into_parts();
    let h2 = matches!(connection, Connection::Tls(_, true));
    if h2 {
        // HTTP/2 names the authority in the request itself.
        parts.headers.remove(http::header::HOST);
    } else {
        // Origin form on the request line, as HTTP/1.1 servers expect, and
        // the authority in `Host` if the request has none.
        if !parts.headers.contains_key(http::header::HOST)
            && let Some(authority) = uri.authority()
            && let Ok(value) = authority.as_str().parse()
        {
            parts.headers.insert(http::header::HOST, value);
        }
        parts.uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| Refusal::BadUri(format!("{uri}: {e}")))?;
    }
    let request = http::Request::from_parts(parts, body);
    let sending = async {
        match connection {
            Connection::Plain(tcp) => over_http1(tcp, request).await,
            Connection::Tls(stream, false) => over_http1(*stream, request).await,
            Connection::Tls(stream, true) => over_http2(*stream, request).await,
        }
    };
    tokio::time::timeout(deadlines.first_byte, sending)
        .await
        .map_err(|_| {
            Refusal::TimedOut(format!(
                "{host}:{port} sent no answer within {:?}",
                deadlines.first_byte
            ))
        })?
}

/// A connection to an allowed host.
enum Connection {
    Plain(tokio::net::TcpStream),
    /// TLS, and whether the server chose HTTP/2.
    Tls(
        Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        bool,
    ),
}

async fn over_http1<I, B>(
    io: I,
    request: http::Request<B>,
) -> Result<http::Response<hyper::body::Incoming>, Refusal>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| Refusal::Failed(e.to_string()))?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| Refusal::Failed(e.to_string()))
}

async fn over_http2<I, B>(
    io: I,
    request: http::Request<B>,
) -> Result<http::Response<hyper::body::Incoming>, Refusal>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .map_err(|e| Refusal::Failed(e.to_string()))?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| Refusal::Failed(e.to_string()))
}

/// Outbound HTTP of an activity: to its allowed hosts, HTTP or HTTPS.
struct OutboundHttp {
    allowed: Vec<AllowedHost>,
    tls: crate::tls::TlsClient,
    /// The attempt's budget: no wait of a request is longer.
    budget: Duration,
}

type SendResult = Result<
    (
        http::Response<wasmtime_wasi_http::WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        use wasmtime_wasi_http::Error;
        let allowed = self.allowed.clone();
        let tls = self.tls.clone();
        // The guest may ask for shorter waits, never longer ones.
        let asked = options.unwrap_or_default();
        let deadlines = Deadlines {
            connect: asked
                .connect_timeout
                .unwrap_or(MAX_CONNECT)
                .min(MAX_CONNECT)
                .min(self.budget),
            first_byte: asked
                .first_byte_timeout
                .unwrap_or(self.budget)
                .min(self.budget),
        };
        let between_bytes = asked
            .between_bytes_timeout
            .unwrap_or(MAX_BETWEEN_BYTES)
            .min(MAX_BETWEEN_BYTES)
            .min(self.budget);
        Box::new(async move {
            let response = send_to_allowed(request, &allowed, &tls, deadlines)
                .await
                .map_err(|refusal| match refusal {
                    Refusal::Denied(target) => {
                        tracing::warn!("activity request to {target} denied");
                        Error::HttpRequestDenied
                    }
                    Refusal::BadUri(_) => Error::HttpRequestUriInvalid,
                    Refusal::Unreachable(_) => Error::ConnectionRefused,
                    Refusal::Failed(_) => Error::ConnectionTerminated,
                    Refusal::TimedOut(_) => Error::ConnectionTimeout,
                    // The cause (unknown issuer, wrong name, expired...) is
                    // what the activity needs to see.
                    Refusal::Tls(cause) => Error::InternalError(Some(cause)),
                })?;
            // A server that stops sending its answer is cut off.
            let response = response.map(|body| {
                let body = crate::stall::StallDeadline::new(body, between_bytes);
                http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(body, |e| {
                    if e.is::<crate::stall::BodyStalled>() {
                        Error::ConnectionReadTimeout
                    } else {
                        Error::ConnectionTerminated
                    }
                }))
            });
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

impl WasiView for ActivityState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
