//! The gRPC adapter: `leads.v1` over tonic.
//!
//! Requests are validated into domain commands here ([`request`]), submitted
//! to the store's group committer, and answered from its outcome. Protobuf
//! types stop at this crate's edge: the domain and the store never see them.
//! [`error::status`] is the one place where a refusal becomes a gRPC status.
//! The analytics service answers from the journey read model that the
//! projector keeps; the math is the domain's (`leadger_domain::journey`).

mod analytics_service;
pub mod auth;
mod command_service;
pub mod error;
mod limits;
mod metrics;
mod present;
mod query_service;
mod request;
mod server;
mod trace;

pub use auth::{Authenticator, Caller, Credentials};
pub use command_service::{CLIENT_ID_HEADER, CORRELATION_ID_HEADER};
pub use server::{Background, Companion, HealthCheck, ServeFailure, ServerConfig, serve, serve_with};
