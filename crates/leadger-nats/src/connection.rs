//! How leadger reaches NATS: the server URL(s) and the credentials, token or
//! TLS material a deployment configures.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

#[derive(Debug, Clone, Default)]
pub struct NatsConnection {
    /// One URL or a comma-separated list of cluster members.
    pub url: String,
    /// A `.creds` file (JWT and NKey seed) for decentralized auth.
    pub credentials_file: Option<PathBuf>,
    pub token: Option<String>,
    /// CA certificate to verify the server's TLS certificate.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for servers that require mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// The connection's name, as `nats server report connections` shows it.
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("read the NATS credentials file {path}: {source}")]
    Credentials { path: PathBuf, source: std::io::Error },
    #[error("connect to NATS at {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
}

impl NatsConnection {
    /// Connects in the background: the client comes back at once, even while
    /// NATS is unreachable, and reconnects by itself (at most 2 s apart), so
    /// a NATS outage never stops leadger from starting or serving commands.
    pub async fn connect(&self) -> Result<Client, ConnectionError> {
        let mut options = ConnectOptions::new()
            .name(&self.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 250).min(2_000)))
            .event_callback(|event| async move {
                match event {
                    Event::Connected => tracing::info!("connected to NATS"),
                    Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            });
        if let Some(path) = &self.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectionError::Credentials { path: path.clone(), source })?;
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        let urls: Vec<&str> = self.url.split(',').map(str::trim).filter(|url| !url.is_empty()).collect();
        let addresses: Vec<async_nats::ServerAddr> =
            urls.iter().map(|url| url.parse()).collect::<Result<_, _>>().map_err(|e: std::io::Error| {
                ConnectionError::Connect {
                    url: self.url.clone(),
                    source: async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e),
                }
            })?;
        options.connect(addresses).await.map_err(|source| ConnectionError::Connect { url: self.url.clone(), source })
    }
}
