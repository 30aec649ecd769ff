//! Tracing end to end, with the real `leadger serve` process: a command's
//! W3C trace context goes from its gRPC metadata into its event's metadata
//! and onto the event's NATS message (a real `nats-server`), and with
//! `--otlp-endpoint` the command's span reaches a real OTLP/gRPC receiver
//! (the OpenTelemetry collector protocol, served here with
//! `opentelemetry-proto`'s generated server) as a child of the caller's span.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leadger_tests::nats::{NatsServer, StreamedEvent, stream_messages, wait_for_stream_length};
use leadger_tests::{Backend, ServerProcess, TestDatabase, leadger_binary, pb};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use pb::lead_command_service_client::LeadCommandServiceClient;
use tokio::net::TcpListener;

/// A caller's span: a fresh trace id and span id, sampled.
struct CallerSpan {
    trace_id: String,
    span_id: String,
}

impl CallerSpan {
    fn new() -> Self {
        let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        Self { trace_id: uuid::Uuid::new_v4().simple().to_string(), span_id }
    }

    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// A `traceparent` split into (trace id, parent id), checked for the W3C form.
fn parts(traceparent: &str) -> (String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert!(
        fields.len() == 4 && fields[0] == "00" && fields[1].len() == 32 && fields[2].len() == 16,
        "not a W3C traceparent: {traceparent:?}"
    );
    (fields[1].to_string(), fields[2].to_string())
}

/// `leadger serve` on a fresh SQLite log, relaying to `nats`, plus `extra`.
async fn serve(database: &TestDatabase, nats: &NatsServer, extra: &[&str]) -> ServerProcess {
    let kek = database.kek_file.display().to_string();
    let nats_url = nats.url();
    let mut args = vec!["--database-url", database.url.as_str(), "--kek-file", kek.as_str(), "--nats-url", &nats_url];
    args.extend_from_slice(extra);
    ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("start leadger serve")
}

fn capture_request(email: &str, request_id: &str) -> pb::CaptureLeadRequest {
    pb::CaptureLeadRequest {
        request_id: request_id.to_string(),
        email: email.to_string(),
        source: "web".to_string(),
        ..Default::default()
    }
}

/// `message` with these metadata entries.
fn with_metadata<T>(message: T, metadata: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().expect("ASCII metadata"));
    }
    request
}

/// The event stream once it holds `count` messages.
async fn nats_messages(nats: &NatsServer, count: u64) -> Vec<StreamedEvent> {
    let js = nats.jetstream().await;
    wait_for_stream_length(&js, count, Duration::from_secs(20)).await.expect("the relay publishes the events");
    stream_messages(&js).await
}

/// Without trace export the server keeps the caller's context as it came:
/// a valid `traceparent` (and its `tracestate`) is stored with the event and
/// put on its NATS message; a malformed one is ignored, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_context_reaches_the_event_and_its_nats_message() {
    let nats = NatsServer::start().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = serve(&database, &nats, &[]).await;
    let mut commands = LeadCommandServiceClient::new(leadger_tests::connect(server.addr).await);

    let caller = CallerSpan::new();
    let traceparent = caller.traceparent();
    let traced = with_metadata(
        capture_request("traced@example.com", "traced-1"),
        &[("traceparent", &traceparent), ("tracestate", "vendor=opaque-42")],
    );
    commands.capture_lead(traced).await.expect("capture with a trace");
    let malformed = with_metadata(
        capture_request("malformed@example.com", "malformed-1"),
        &[("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
    );
    commands.capture_lead(malformed).await.expect("a malformed traceparent does not refuse the command");
    commands.capture_lead(capture_request("untraced@example.com", "untraced-1")).await.expect("capture");

    let log = leadger_tests::read_whole_log(server.addr).await;
    let traceparents: Vec<&str> = log.iter().map(|event| event.traceparent.as_str()).collect();
    assert_eq!(traceparents, [traceparent.as_str(), "", ""], "the log's traceparents");

    let messages = nats_messages(&nats, 3).await;
    let traced = &messages[0];
    assert_eq!(traced.position(), 1);
    for name in ["traceparent", "ce-traceparent"] {
        assert_eq!(traced.header(name), Some(traceparent.as_str()), "{name} of the traced event");
    }
    for name in ["tracestate", "ce-tracestate"] {
        assert_eq!(traced.header(name), Some("vendor=opaque-42"), "{name} of the traced event");
    }
    for untraced in &messages[1..] {
        assert_eq!(untraced.header("traceparent"), None, "at position {}", untraced.position());
        assert_eq!(untraced.header("ce-traceparent"), None, "at position {}", untraced.position());
    }
}

/// One span as the receiver got it, with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service_name: String,
    span: Span,
}

impl ReceivedSpan {
    fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value {
        AnyValue { value: Some(any_value::Value::StringValue(text)) } => Some(text.clone()),
        AnyValue { value: Some(any_value::Value::IntValue(number)) } => Some(number.to_string()),
        AnyValue { value: Some(any_value::Value::BoolValue(flag)) } => Some(flag.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The trace service of an OpenTelemetry collector: keeps what it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("spans lock");
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            let service_name = attribute(&resource.attributes, "service.name").unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(ReceivedSpan { service_name: service_name.clone(), span });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A real OTLP/gRPC receiver on a free port; stopped on drop.
struct OtlpReceiver {
    addr: SocketAddr,
    collector: Collector,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl OtlpReceiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self { addr, collector, task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The span named `name`, waiting for it until `deadline` from now.
    async fn span_named(&self, name: &str, deadline: Duration) -> ReceivedSpan {
        let until = Instant::now() + deadline;
        loop {
            let found = self.collector.spans.lock().expect("spans lock").iter().find(|s| s.span.name == name).cloned();
            if let Some(span) = found {
                return span;
            }
            if Instant::now() > until {
                let names: Vec<String> =
                    self.collector.spans.lock().expect("spans lock").iter().map(|s| s.span.name.clone()).collect();
                panic!("no span named {name:?} was exported within {deadline:?}; got {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// With `--otlp-endpoint`, each command's span is exported (flushed at
/// SIGTERM, even with RUST_LOG=warn) named after its RPC, with the ids and
/// the outcome, as a server-side child of the caller's span; the event and
/// its NATS message carry the command span's own context, so consumers
/// continue the trace under the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_otlp_the_command_span_is_exported_as_a_child_of_the_callers_span() {
    let receiver = OtlpReceiver::start().await;
    let nats = NatsServer::start().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let endpoint = receiver.endpoint();
    let server = serve(&database, &nats, &["--otlp-endpoint", &endpoint]).await;
    let mut commands = LeadCommandServiceClient::new(leadger_tests::connect(server.addr).await);

    let caller = CallerSpan::new();
    let traceparent = caller.traceparent();
    let metadata = [("traceparent", traceparent.as_str()), ("x-client-id", "crm-eu")];
    let captured = commands
        .capture_lead(with_metadata(capture_request("otlp@example.com", "otlp-capture-1"), &metadata))
        .await
        .expect("capture")
        .into_inner()
        .result
        .expect("a result");
    let unknown_lead = uuid::Uuid::now_v7().to_string();
    let accept =
        pb::AcceptLeadRequest { request_id: "otlp-accept-1".into(), lead_id: unknown_lead, ..Default::default() };
    let refusal = commands.accept_lead(with_metadata(accept, &metadata)).await.expect_err("the lead does not exist");

    let log = leadger_tests::read_whole_log(server.addr).await;
    assert_eq!(log.len(), 1);
    let (stored_trace, stored_parent) = parts(&log[0].traceparent);
    assert_eq!(stored_trace, caller.trace_id, "the event continues the caller's trace");
    assert_ne!(stored_parent, caller.span_id, "the event's parent is the command's span, not the caller's");
    let messages = nats_messages(&nats, 1).await;
    assert_eq!(messages[0].header("traceparent"), Some(log[0].traceparent.as_str()));
    assert_eq!(messages[0].header("ce-traceparent"), Some(log[0].traceparent.as_str()));

    let status = server.terminate().await.expect("leadger exits after SIGTERM");
    assert!(status.success(), "leadger serve exited with {status}");

    let capture = receiver.span_named("CaptureLead", Duration::from_secs(5)).await;
    assert_eq!(capture.service_name, "leadger-serve");
    assert_eq!(hex(&capture.span.trace_id), caller.trace_id, "the caller's trace");
    assert_eq!(hex(&capture.span.parent_span_id), caller.span_id, "a child of the caller's span");
    assert_eq!(hex(&capture.span.span_id), stored_parent, "the span the event names as its parent");
    assert_eq!(capture.span.kind, span::SpanKind::Server as i32);
    assert_eq!(capture.attribute("lead_id").as_deref(), Some(captured.lead_id.as_str()));
    assert_eq!(capture.attribute("request_id").as_deref(), Some("otlp-capture-1"));
    assert_eq!(capture.attribute("client_id").as_deref(), Some("crm-eu"));
    assert_eq!(capture.attribute("version").as_deref(), Some("1"));
    assert_eq!(capture.attribute("position").as_deref(), Some(captured.position.to_string().as_str()));
    assert_eq!(capture.attribute("error_code"), None);

    let refused = receiver.span_named("AcceptLead", Duration::from_secs(5)).await;
    assert_eq!(hex(&refused.span.trace_id), caller.trace_id);
    assert_eq!(refused.attribute("request_id").as_deref(), Some("otlp-accept-1"));
    assert_eq!(refused.attribute("error_code"), Some(format!("{:?}", refusal.code())));
    let refused_status = refused.span.status.clone().unwrap_or_default();
    assert_eq!(refused_status.code, status::StatusCode::Error as i32, "a refused command's span is an error");
}
