//! Traces: a request's W3C `traceparent` reaches the spans of the episodes
//! and activities of the instance it started, and `--otlp-endpoint` exports
//! them over OTLP/HTTP (to a collector this test runs on loopback); and
//! `DURO_PERFMAP=1` names the guests' compiled functions for `perf`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use crate::host::Host;

const API: &str = "/runtime/webhooks/durabletask";

/// An OTLP/HTTP collector on loopback: keeps every export request's body.
fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            // Read the head, then as much body as Content-Length says.
            let body = loop {
                let Ok(n) = stream.read(&mut buf) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                raw.extend_from_slice(&buf[..n]);
                let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    assert!(head.starts_with("post /v1/traces "), "{head}");
                    break Some(raw[end + 4..end + 4 + length].to_vec());
                }
            };
            if let Some(body) = body {
                kept.lock().unwrap().push(body);
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (endpoint, bodies)
}

/// (span name, trace id, parent span id) of every span exported so far.
fn exported(bodies: &Mutex<Vec<Vec<u8>>>) -> Vec<(String, String, String)> {
    let mut spans = Vec::new();
    for body in bodies.lock().unwrap().iter() {
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((span.name, hex(&span.trace_id), hex(&span.parent_span_id)));
                }
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_requests_trace_reaches_its_episodes_and_activities_over_otlp() {
    let (endpoint, bodies) = collector();
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::activities::activity_manifest(dir.path());
    let host = Host::start_with_env(
        &manifest,
        &dir.path().join("duro.db"),
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        &["--otlp-endpoint", &endpoint],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let started = host.request(
        "POST",
        &format!("{API}/orchestrators/Chain/traced"),
        Some("10"),
        &[("traceparent", &format!("00-{trace}-{caller_span}-01"))],
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let answered = started.header("traceparent").expect("a traceparent answer");
    assert!(answered.starts_with(&format!("00-{trace}-")), "{answered}");
    let request_span = answered.split('-').nth(2).unwrap().to_string();
    assert_ne!(request_span, caller_span);
    let done = host.poll(&format!("{API}/instances/traced"), |r| r.status == 200);
    assert_eq!(done.json()["output"], 16);
    // A request without one starts a trace of its own.
    let other = host.get(&format!("{API}/instances/traced"));
    let other_trace = other
        .header("traceparent")
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_string();
    assert_ne!(other_trace, trace);

    let deadline = Instant::now() + crate::support::PATIENCE;
    // Spans named `name` in the trace `in_trace`.
    let count = |spans: &[(String, String, String)], name: &str, in_trace: &str| {
        spans
            .iter()
            .filter(|(n, t, _)| n == name && t == in_trace)
            .count()
    };
    let wanted = |spans: &[(String, String, String)], name: &str| count(spans, name, trace);
    let spans = loop {
        let spans = exported(&bodies);
        // Chain: three activities, so at least four episodes and commits.
        if wanted(&spans, "activity") >= 3
            && wanted(&spans, "episode") >= 4
            && wanted(&spans, "commit") >= 4
            && count(&spans, "http.request", &other_trace) >= 1
            || Instant::now() > deadline
        {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let request = spans
        .iter()
        .find(|(n, t, _)| n == "http.request" && t == trace)
        .unwrap_or_else(|| panic!("no request span in {spans:?}"));
    assert_eq!(
        request.2, caller_span,
        "the request span's parent is the caller's"
    );
    assert!(wanted(&spans, "episode") >= 4, "{spans:?}");
    assert!(wanted(&spans, "commit") >= 4, "{spans:?}");
    assert_eq!(wanted(&spans, "activity"), 3, "{spans:?}");
    // The instance's work hangs off the request that started it.
    assert!(
        spans
            .iter()
            .filter(|(n, t, _)| n == "episode" && t == trace)
            .all(|(_, _, parent)| *parent == request_span),
        "{spans:?}"
    );
    assert!(
        count(&spans, "http.request", &other_trace) >= 1,
        "{spans:?}"
    );
}

/// With `DURO_PERFMAP=1` the host writes `/tmp/perf-<pid>.map`, which names
/// the compiled functions of the guests it loaded (the SDK's step among
/// them), so `perf report` can attribute guest time.
#[test]
fn a_perf_map_names_the_guests_functions() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with_env(
        &manifest,
        &dir.path().join("duro.db"),
        &[("DURO_PERFMAP", "1")],
        &[],
    );
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", host.pid()));
    let started = host.post(&format!("{API}/orchestrators/Workflow/mapped"), "\"m\"");
    assert_eq!(started.status, 202, "{}", started.body);
    host.poll(&format!("{API}/instances/mapped"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    let text = std::fs::read_to_string(&map).unwrap_or_default();
    host.kill();
    let _ = std::fs::remove_file(&map);
    assert!(
        text.lines()
            .any(|line| line.contains("duro_sdk::runtime::step")),
        "no guest function named in {}: {} lines",
        map.display(),
        text.lines().count()
    );
}
