//! Logs and traces: the `tracing` subscriber every command installs and,
//! with `--otlp-endpoint`, the export of spans to an OpenTelemetry collector
//! over OTLP/gRPC.
//!
//! Logs go to stderr at the level `RUST_LOG` names (else the command's
//! default), as text or JSON. Traces are leadger's own spans at `info` and
//! above whatever `RUST_LOG` says: the log level decides what is printed,
//! not what is traced. Exporting also installs W3C Trace Context as the
//! global propagator, so a `traceparent` in gRPC metadata makes a command's
//! span a child of the caller's (see `leadger_grpc`'s `trace` module).

use anyhow::Context;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::LogFormat;

/// Keeps traces flowing to the collector; dropping it exports the spans
/// still queued (for at most 5 s), so hold it until the command returns.
pub struct Telemetry {
    export: Option<SpanExport>,
}

/// The batch exporter and the runtime its tonic client lives on: commands
/// run on runtimes of their own that end before the last spans are sent.
struct SpanExport {
    provider: SdkTracerProvider,
    runtime: tokio::runtime::Runtime,
}

/// Installs the subscriber: logs on stderr in `format` (level from RUST_LOG,
/// else `default_level`) and, with `otlp_endpoint`, spans exported as
/// `service_name` (`leadger-serve`, `leadger-relay`, …).
pub fn init(
    format: LogFormat,
    default_level: &str,
    otlp_endpoint: Option<&str>,
    service_name: &str,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs.json().with_filter(filter).boxed(),
        LogFormat::Text => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter(filter).boxed()
        }
    };
    let export = otlp_endpoint.map(|endpoint| SpanExport::start(endpoint, service_name)).transpose()?;
    let traces = export.as_ref().map(|export| {
        tracing_opentelemetry::layer()
            .with_tracer(export.provider.tracer("leadger"))
            .with_filter(Targets::new().with_target("leadger", Level::INFO))
    });
    tracing_subscriber::registry().with(logs).with(traces).try_init().context("install the tracing subscriber")?;
    Ok(Telemetry { export })
}

impl SpanExport {
    fn start(endpoint: &str, service_name: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .context("start the runtime of the OTLP exporter")?;
        // The exporter's channel spawns its connection onto the runtime it
        // is built in.
        let exporter = {
            let _runtime = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .with_context(|| format!("--otlp-endpoint {endpoint}: build the OTLP/gRPC span exporter"))?
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service_name.to_string()).build())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Self { provider, runtime })
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let Some(export) = self.export.take() else { return };
        if let Err(error) = export.provider.shutdown() {
            tracing::warn!(%error, "export the last spans over OTLP");
        }
        export.runtime.shutdown_background();
    }
}
