//! The NATS adapter: publishes leadger's event log to JetStream.
//!
//! - [`relay`]: reads the SQL log by position and publishes every event
//!   exactly once, in order, fenced by JetStream's expected sequence.
//! - [`cloudevent`]: the message format — CloudEvents 1.0 in NATS binary
//!   mode, without personal data.
//! - [`stream`]: the stream's configuration, provisioned at start-up.
//! - [`connection`]: how to reach NATS (URL, credentials, token, TLS).
//! - [`breach`]: SLA-breach notifications on their own stream, derived
//!   from the read model.

pub mod breach;
pub mod cloudevent;
pub mod connection;
pub mod relay;
pub mod stream;

pub use breach::{BreachConfig, run_breach_notifier};
pub use connection::NatsConnection;
pub use relay::{RelayConfig, RelayState, RelayStatus, run_relay};
pub use stream::StreamSettings;
