//! The OpenTelemetry side of tracing, in process: spans linked to a W3C
//! trace context through `OpenTelemetryLink` are exported (to the SDK's
//! in-memory exporter) in that trace, as children of that span, and their
//! own children follow.

use duro::telemetry::OpenTelemetryLink;
use duro::trace::{TraceContext, TraceLink};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

#[test]
fn linked_spans_are_exported_in_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let caller =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let own = tracing::subscriber::with_default(subscriber, || {
        let episode = tracing::info_span!("episode", instance = "i");
        let own = OpenTelemetryLink.link(&episode, &caller);
        let _entered = episode.enter();
        tracing::info_span!("commit").in_scope(|| {});
        own
    });
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
    };
    let (episode, commit) = (find("episode"), find("commit"));
    let trace_id = format!("{:032x}", caller.trace_id);
    assert_eq!(episode.span_context.trace_id().to_string(), trace_id);
    assert_eq!(
        episode.parent_span_id.to_string(),
        format!("{:016x}", caller.span_id)
    );
    // What `link` answered is the span's own context, as a traceparent
    // sent on from it would say.
    assert_eq!(own.trace_id, caller.trace_id);
    assert_eq!(
        episode.span_context.span_id().to_string(),
        format!("{:016x}", own.span_id)
    );
    assert_eq!(commit.span_context.trace_id().to_string(), trace_id);
    assert_eq!(commit.parent_span_id, episode.span_context.span_id());
}
