//! Logs and traces: the log on stderr, a span per HTTP request in the W3C
//! trace its `traceparent` names, and (with `--otlp-endpoint`) every span
//! exported to an OpenTelemetry collector over OTLP/HTTP.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::{
    SpanContext, TraceContextExt as _, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::trace::{FieldsOnly, TraceContext, TraceLink};

/// What `init` set up; `shutdown` flushes the spans not exported yet.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// How the host's spans join W3C traces.
    pub link: Arc<dyn TraceLink>,
}

impl Telemetry {
    /// Export what is left (at most a few seconds).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

/// The spans duro makes: requests, episodes, commits, activities. They are
/// at debug level, so that a host that neither exports nor logs at debug
/// does not make them at all.
fn duro_targets() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_target("duro", tracing::Level::DEBUG)
        .with_target("duro_wasm", tracing::Level::DEBUG)
}

/// Install the global subscriber: the log on stderr (filtered by
/// `DURO_LOG`, default `info`), and with an endpoint, OTLP/HTTP export of
/// duro's spans in batches.
pub fn init(otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("DURO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry().with(log).init();
        return Ok(Telemetry {
            provider: None,
            link: Arc::new(FieldsOnly),
        });
    };
    let provider = otlp_provider(endpoint)?;
    let tracer = provider.tracer("duro");
    tracing_subscriber::registry()
        .with(log)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(duro_targets()),
        )
        .init();
    Ok(Telemetry {
        provider: Some(provider),
        link: Arc::new(OpenTelemetryLink),
    })
}

/// A tracer provider exporting in batches to `endpoint` (`http://host:port`,
/// `/v1/traces` added when it has no path).
pub fn otlp_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let uri: axum::http::Uri = endpoint
        .parse()
        .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        anyhow::bail!(
            "--otlp-endpoint {endpoint:?}: expected http://host:port (OTLP over HTTP; no TLS)"
        );
    }
    let url = if uri.path() == "/" || uri.path().is_empty() {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_string()
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(PlainHttp)
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(5))
        .build()
        .context("the OTLP exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("duro")
                .build(),
        )
        .build())
}

/// Joins a span to a W3C trace through the OpenTelemetry layer.
#[derive(Debug)]
pub struct OpenTelemetryLink;

impl TraceLink for OpenTelemetryLink {
    fn link(&self, span: &tracing::Span, parent: &TraceContext) -> TraceContext {
        let remote = SpanContext::new(
            parent.trace_id.into(),
            parent.span_id.into(),
            if parent.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        let own = span.context().span().span_context().clone();
        if own.is_valid() {
            TraceContext {
                trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
                span_id: u64::from_be_bytes(own.span_id().to_bytes()),
                sampled: own.is_sampled(),
            }
        } else {
            parent.child()
        }
    }
}

/// The trace an HTTP request runs in: its own span's context, which the
/// handlers hand to the instances they start.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace(pub TraceContext);

/// Whether duro's spans are made (exported, or logged at debug level). The
/// filters are fixed at start, so `serve` asks once: without spans, no
/// request goes through `traced` (which costs several percent of
/// throughput) and instances join their caller's `traceparent` directly.
pub fn spans_enabled() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

/// The trace the work a request starts joins: the request's span (when
/// `traced` made one), else the `traceparent` the caller sent, else none.
pub fn request_trace(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
) -> Option<TraceContext> {
    match extensions.get::<RequestTrace>() {
        Some(RequestTrace(trace)) => Some(*trace),
        None => caller_trace(headers),
    }
}

/// The valid `traceparent` a caller sent, if any.
fn caller_trace(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
}

/// Extractor: [`request_trace`] for a handler that starts instances.
pub struct StartTrace(pub Option<TraceContext>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for StartTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(StartTrace(request_trace(&parts.extensions, &parts.headers)))
    }
}

/// Middleware: a span per request, child of the request's `traceparent`
/// (a new trace without one); the response says the span's `traceparent`.
pub async fn traced(link: Arc<dyn TraceLink>, mut request: Request, next: Next) -> Response {
    let parent = caller_trace(request.headers()).unwrap_or_else(TraceContext::root);
    let span = tracing::debug_span!(
        "http.request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = %parent.trace_id_hex(),
        status = tracing::field::Empty,
    );
    let own = link.link(&span, &parent);
    request.extensions_mut().insert(RequestTrace(own));
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&own.to_string()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

/// OTLP over plain HTTP/1.1 with std's blocking sockets: the batch exporter
/// runs on a thread of its own, without an async runtime to borrow.
#[derive(Debug, Clone, Copy)]
struct PlainHttp;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for PlainHttp {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let uri = request.uri().clone();
        let authority = uri
            .authority()
            .ok_or("no host in the OTLP endpoint")?
            .as_str();
        let address = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let timeout = Duration::from_secs(5);
        let target = std::net::ToSocketAddrs::to_socket_addrs(&address)?
            .next()
            .ok_or("the OTLP endpoint's host has no address")?;
        let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
            request.method(),
            uri.path_and_query().map_or("/", |p| p.as_str()),
            request.body().len()
        );
        for (name, value) in request.headers() {
            if let Ok(value) = value.to_str() {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(request.body())?;
        let mut raw = Vec::new();
        stream.take(4 << 20).read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("the OTLP endpoint's answer has no header end")?;
        let status: u16 = String::from_utf8_lossy(&raw[..split])
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("the OTLP endpoint's answer has no status")?;
        Ok(opentelemetry_http::Response::builder()
            .status(status)
            .body(opentelemetry_http::Bytes::copy_from_slice(
                &raw[split + 4..],
            ))?)
    }
}
