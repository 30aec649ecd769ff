//! The span of a command RPC and the trace context its event keeps.
//!
//! Each command runs in a span named after its RPC (`CaptureLead`, …) with
//! the lead, request and client ids and its outcome. A `traceparent` in the
//! request metadata makes the span a child of the caller's, through the
//! global propagator (the binary installs W3C Trace Context when it exports
//! traces; without it nothing is extracted). The event stores the span's own
//! context, so readers of the log continue the trace as children of the
//! command; when no traces are exported, it stores the caller's
//! `traceparent` as it came.

use leadger_store::TraceContext;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use tonic::Status;
use tonic::metadata::{KeyRef, MetadataMap};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C Trace Context metadata keys.
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Request metadata as an OpenTelemetry carrier (ASCII values only).
struct MetadataCarrier<'a>(&'a MetadataMap);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The span of command `rpc`, a child of the caller's span when `metadata`
/// carries its context. The ids are recorded once the request validated.
pub(crate) fn command_span(rpc: &'static str, metadata: &MetadataMap) -> Span {
    let span = tracing::info_span!(
        "command",
        otel.name = rpc,
        otel.kind = "server",
        otel.status_code = Empty,
        lead_id = Empty,
        request_id = Empty,
        client_id = Empty,
        version = Empty,
        position = Empty,
        replayed = Empty,
        error_code = Empty,
    );
    let remote =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&MetadataCarrier(metadata)));
    if remote.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, where there is no
        // span to parent: the caller's context is then kept as it came.
        let _ = span.set_parent(remote);
    }
    span
}

/// The trace context an event of the command in `span` stores.
pub(crate) fn trace_context(span: &Span, metadata: &MetadataMap) -> Option<TraceContext> {
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        let traceparent = format!("00-{}-{}-{:02x}", own.trace_id(), own.span_id(), own.trace_flags().to_u8());
        let tracestate = own.trace_state().header();
        return TraceContext::parse(&traceparent, Some(tracestate.as_str()));
    }
    let text = |key| metadata.get(key).and_then(|value| value.to_str().ok());
    TraceContext::parse(text(TRACEPARENT_HEADER)?, text(TRACESTATE_HEADER))
}

/// Records how the command ended: its `(version, position)` or the status
/// it was refused with.
pub(crate) fn record_outcome(span: &Span, outcome: Result<(u64, u64), &Status>) {
    match outcome {
        Ok((version, position)) => {
            span.record("version", version);
            span.record("position", position);
        }
        Err(status) => {
            span.record("error_code", format!("{:?}", status.code()));
            span.record("otel.status_code", "error");
        }
    }
}
