//! Prometheus counters and latency histograms of every `leads.v1` call, by
//! RPC and gRPC status code, recorded through the `metrics` facade (the
//! binary installs the exporter; without one, recording costs nothing).
//!
//! Commands (`LeadCommandService`) count in `leadger_commands_total{command,
//! code}` and `leadger_command_duration_seconds{command}`; queries and
//! analytics in `leadger_queries_total{query,code}` and
//! `leadger_query_duration_seconds{query}`. The code is the one the client
//! sees, refusals of authentication and size limits included; a call the
//! client abandons counts as CANCELLED. A streaming RPC (`ReadLog`) counts
//! how it started: its duration ends at the response headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

#[derive(Debug, Clone, Copy)]
pub(crate) struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut pending = Pending { rpc: Rpc::of(request.uri().path()), started: Instant::now() };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // Errors travel in the headers (trailers-only responses); a
            // response without `grpc-status` there is on its way to OK.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())
                .map_or("OK", code_name);
            pending.finish(code);
            Ok(response)
        })
    }
}

/// A call not answered yet: dropped unanswered (the client cancelled or went
/// away), it counts as CANCELLED.
struct Pending {
    rpc: Option<Rpc>,
    started: Instant,
}

impl Pending {
    fn finish(&mut self, code: &'static str) {
        if let Some(rpc) = self.rpc.take() {
            rpc.record(code, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// One `leads.v1` RPC: whether it is a command, and its method name.
struct Rpc {
    command: bool,
    method: &'static str,
}

/// The RPCs of `proto/leads/v1/leads.proto`: labels come from this list, so
/// a caller cannot mint new series by calling made-up paths.
const COMMANDS: &[&str] = &[
    "CaptureLead",
    "QualifyLead",
    "AssignLead",
    "AcceptLead",
    "RejectLead",
    "CloseLead",
    "RecordFeedback",
    "EraseLead",
    "DefineSlaPolicy",
];
const QUERIES: &[&str] = &[
    "GetLead",
    "ReadLog",
    "FindLeads",
    "GetFunnel",
    "GetConversionRates",
    "GetLeadQuality",
    "GetSlaPolicy",
    "ListSlaBreaches",
    "GetSlaReport",
];

impl Rpc {
    fn of(path: &str) -> Option<Self> {
        let (service, method) = path.strip_prefix("/leads.v1.")?.split_once('/')?;
        let known = |methods: &[&'static str]| methods.iter().find(|m| **m == method).copied();
        match service {
            "LeadCommandService" => Some(Self { command: true, method: known(COMMANDS).unwrap_or("unknown") }),
            "LeadQueryService" | "LeadAnalyticsService" => {
                Some(Self { command: false, method: known(QUERIES).unwrap_or("unknown") })
            }
            _ => None,
        }
    }

    fn record(self, code: &'static str, seconds: f64) {
        if self.command {
            metrics::counter!("leadger_commands_total", "command" => self.method, "code" => code).increment(1);
            metrics::histogram!("leadger_command_duration_seconds", "command" => self.method).record(seconds);
        } else {
            metrics::counter!("leadger_queries_total", "query" => self.method, "code" => code).increment(1);
            metrics::histogram!("leadger_query_duration_seconds", "query" => self.method).record(seconds);
        }
    }
}

/// The canonical name of a gRPC status code, as in the gRPC spec.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_leadger_rpcs_are_counted() {
        let rpc = Rpc::of("/leads.v1.LeadCommandService/CaptureLead").expect("a command");
        assert!(rpc.command);
        assert_eq!(rpc.method, "CaptureLead");
        assert!(!Rpc::of("/leads.v1.LeadAnalyticsService/GetFunnel").expect("a query").command);
        assert!(Rpc::of("/grpc.health.v1.Health/Check").is_none());
        assert_eq!(Rpc::of("/leads.v1.LeadCommandService/Made-up-1").expect("a command").method, "unknown");
    }

    #[test]
    fn codes_have_their_spec_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "INVALID_ARGUMENT");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
