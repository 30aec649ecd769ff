//! Wiring of one gRPC server: command, query and analytics services, health, reflection,
//! TLS, authentication, the request size limit and graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use leadger_proto::leads::v1::lead_analytics_service_server::LeadAnalyticsServiceServer;
use leadger_proto::leads::v1::lead_command_service_server::LeadCommandServiceServer;
use leadger_proto::leads::v1::lead_query_service_server::LeadQueryServiceServer;
use leadger_store::committer::Clock;
use leadger_store::{Agreements, CommitterConfig, EventLog, JourneyStore, StoreError, Vault, spawn_committer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::analytics_service::AnalyticsService;
use crate::auth::{AuthLayer, Authenticator};
use crate::command_service::CommandService;
use crate::limits::RequestSizeLayer;
use crate::metrics::RpcMetricsLayer;
use crate::query_service::QueryService;

#[derive(Clone)]
pub struct ServerConfig {
    /// Largest request accepted; larger ones get `RESOURCE_EXHAUSTED`.
    pub max_request_bytes: usize,
    pub committer: CommitterConfig,
    pub clock: Clock,
    /// TLS (and, with a client CA, mutual TLS); plain TCP when `None`.
    pub tls: Option<ServerTlsConfig>,
    pub authenticator: Arc<Authenticator>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
            committer: CommitterConfig::default(),
            clock: leadger_store::committer::system_clock(),
            tls: None,
            authenticator: Arc::new(Authenticator::Open),
        }
    }
}

/// Work that runs beside the gRPC services in the same process (the NATS
/// relay, projectors): started with the log's commit notifications (the last
/// committed position) and a flag that turns true at shutdown.
pub type Companion = Box<dyn FnOnce(watch::Receiver<u64>, watch::Receiver<bool>) -> JoinHandle<()> + Send>;

/// A service name reported by the gRPC health service, serving while the
/// watched flag is true (e.g. `leadger.relay` while the relay can publish).
pub struct HealthCheck {
    pub service: &'static str,
    pub serving: watch::Receiver<bool>,
}

/// Companions and their health checks; none by default.
#[derive(Default)]
pub struct Background {
    pub companions: Vec<Companion>,
    pub health_checks: Vec<HealthCheck>,
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// commands finish (ending live log followers), drains the committer and
/// returns.
pub async fn serve<L: EventLog + JourneyStore + Agreements>(
    log: Arc<L>,
    vault: Arc<Vault>,
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeFailure> {
    serve_with(log, vault, listener, config, Background::default(), shutdown).await
}

/// [`serve`], with companions running beside the services until shutdown.
pub async fn serve_with<L: EventLog + JourneyStore + Agreements>(
    log: Arc<L>,
    vault: Arc<Vault>,
    listener: TcpListener,
    config: ServerConfig,
    background: Background,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeFailure> {
    let head = log.head_position().await.map_err(ServeFailure::Store)?;
    let (gateway, committer) =
        spawn_committer(log.clone(), vault.clone(), config.clock.clone(), config.committer, head);
    let (stopping_tx, stopping) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LeadCommandServiceServer<CommandService<L>>>().await;
    health.set_serving::<LeadQueryServiceServer<QueryService<L>>>().await;
    health.set_serving::<LeadAnalyticsServiceServer<AnalyticsService<L>>>().await;
    for check in background.health_checks {
        tokio::spawn(report_health(health.clone(), check, stopping.clone()));
    }
    let companions: Vec<JoinHandle<()>> =
        background.companions.into_iter().map(|start| start(gateway.committed(), stopping.clone())).collect();
    let reflection_v1 = reflection().build_v1().map_err(|e| ServeFailure::Reflection(e.to_string()))?;
    // grpcurl before 1.8.8 and many other tools still ask v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| ServeFailure::Reflection(e.to_string()))?;
    let limit = config.max_request_bytes;
    let commands =
        LeadCommandServiceServer::new(CommandService::new(gateway.clone(), log.clone(), config.clock.clone()))
            .max_decoding_message_size(limit);
    let analytics = LeadAnalyticsServiceServer::new(AnalyticsService::new(log.clone(), config.clock.clone()))
        .max_decoding_message_size(limit);
    let queries = LeadQueryServiceServer::new(QueryService::new(log, vault, gateway.committed(), stopping))
        .max_decoding_message_size(limit);
    drop(gateway);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        health.set_not_serving::<LeadCommandServiceServer<CommandService<L>>>().await;
        health.set_not_serving::<LeadQueryServiceServer<QueryService<L>>>().await;
        health.set_not_serving::<LeadAnalyticsServiceServer<AnalyticsService<L>>>().await;
        let _ = stopping_tx.send(true);
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = config.tls {
        builder = builder.tls_config(tls).map_err(|e| ServeFailure::Tls(e.to_string()))?;
    }
    builder
        .layer(RpcMetricsLayer)
        .layer(RequestSizeLayer { max_request_bytes: limit })
        .layer(AuthLayer { authenticator: config.authenticator })
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(commands)
        .add_service(queries)
        .add_service(analytics)
        .serve_with_incoming_shutdown(incoming, signal)
        .await
        .map_err(|e| ServeFailure::Transport(e.to_string()))?;
    committer.await.map_err(|e| ServeFailure::Committer(e.to_string()))?;
    for companion in companions {
        if let Err(error) = companion.await {
            tracing::error!(%error, "a background task failed");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Mirrors a health check into the health service until shutdown.
async fn report_health(health: HealthReporter, mut check: HealthCheck, mut stopping: watch::Receiver<bool>) {
    loop {
        let status = if *check.serving.borrow_and_update() && !*stopping.borrow() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status(check.service, status).await;
        let stopped = tokio::select! {
            changed = check.serving.changed() => changed.is_err(),
            _ = stopping.wait_for(|stop| *stop) => true,
        };
        if stopped {
            health.set_service_status(check.service, ServingStatus::NotServing).await;
            break;
        }
    }
}

/// Reflection over leadger's API, health and the `google.rpc` error details.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(leadger_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeFailure {
    #[error("read the log head: {0}")]
    Store(StoreError),
    #[error("build the reflection service: {0}")]
    Reflection(String),
    #[error("configure TLS: {0}")]
    Tls(String),
    #[error("serve gRPC: {0}")]
    Transport(String),
    #[error("the committer task failed: {0}")]
    Committer(String),
}
