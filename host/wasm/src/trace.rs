//! Spans of episodes, commits and activities, joined to the W3C trace of
//! the request that started their instance (kept in `Instance::trace_parent`).

pub use duro_core::trace::TraceContext;

use crate::model::Instance;

/// Makes a span part of a W3C trace. OpenTelemetry export installs one that
/// gives the span that remote parent; without it, spans carry the trace id
/// as a field only.
pub trait TraceLink: Send + Sync + std::fmt::Debug {
    /// Make `span` a child of `parent`; returns the context of `span` itself
    /// (what a `traceparent` sent on from it carries).
    fn link(&self, span: &tracing::Span, parent: &TraceContext) -> TraceContext;
}

/// No exporter: a span's context is a fresh child of its parent.
#[derive(Debug, Default)]
pub struct FieldsOnly;

impl TraceLink for FieldsOnly {
    fn link(&self, _span: &tracing::Span, parent: &TraceContext) -> TraceContext {
        parent.child()
    }
}

/// Put `span` (which has an empty `trace_id` field) in the trace `trace`
/// works out, when the span is made at all: only then is the trace read.
pub fn join(span: &tracing::Span, link: &dyn TraceLink, trace: impl FnOnce() -> TraceContext) {
    if span.is_disabled() {
        return;
    }
    let trace = trace();
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    link.link(span, &trace);
}

/// The trace an instance's work joins: the one it was started in, or (for
/// an instance stored before instances kept one) a new one.
pub fn instance_trace(instance: &Instance) -> TraceContext {
    instance
        .trace_parent
        .as_deref()
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::root)
}
