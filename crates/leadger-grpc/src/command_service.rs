//! `LeadCommandService`: validate, submit to the group committer, answer
//! only once the event is durable. Each command runs in its own span
//! ([`trace`](crate::trace)).

use leadger_proto::leads::v1 as pb;
use leadger_proto::leads::v1::lead_command_service_server::LeadCommandService;
use std::sync::Arc;

use leadger_store::committer::Clock;
use leadger_store::{Agreements, CommandGateway, Origin, PendingCommand};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span};

use crate::auth::Caller;
use crate::error::{invalid_argument, read_status, status};
use crate::present;
use crate::request::{self, ValidCommand};
use crate::trace;
use leadger_domain::{Roles, ValidationError};

/// Metadata key naming the calling client on a server without credentials;
/// idempotency keys are scoped to it.
pub const CLIENT_ID_HEADER: &str = "x-client-id";
/// Metadata key carrying a correlation id across systems.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";
const ANONYMOUS_CLIENT: &str = "anonymous";

pub(crate) struct CommandService<L> {
    gateway: CommandGateway,
    /// Agreement events (the SLA policy) are appended directly, not through
    /// the lead committer.
    log: Arc<L>,
    clock: Clock,
}

/// Who sent `message` (of `rpc`, running in `span`) and the keys that make
/// a retry safe.
fn origin<M: Message>(
    rpc: &'static str,
    request: &Request<M>,
    request_id: Option<String>,
    span: &Span,
) -> Result<Origin, Status> {
    // Authenticated callers are who their credentials say; on an open server
    // the client names itself.
    let (client_id, roles) = match request.extensions().get::<Caller>() {
        Some(caller) => (caller.client_id.clone(), caller.roles),
        None => (
            metadata_text(request.metadata(), CLIENT_ID_HEADER)?.unwrap_or_else(|| ANONYMOUS_CLIENT.to_string()),
            Roles::ALL,
        ),
    };
    let correlation_id = metadata_text(request.metadata(), CORRELATION_ID_HEADER)?.or_else(|| request_id.clone());
    // The request as sent: before the server fills in defaults.
    let request_hash = hex::encode(
        Sha256::new().chain_update(rpc).chain_update([0]).chain_update(request.get_ref().encode_to_vec()).finalize(),
    );
    span.record("client_id", client_id.as_str());
    if let Some(request_id) = &request_id {
        span.record("request_id", request_id.as_str());
    }
    let trace = trace::trace_context(span, request.metadata());
    Ok(Origin { client_id, request_id, request_hash, correlation_id, roles, trace })
}

impl<L: Agreements> CommandService<L> {
    pub fn new(gateway: CommandGateway, log: Arc<L>, clock: Clock) -> Self {
        Self { gateway, log, clock }
    }

    async fn handle<M: Message>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        validate: fn(&M) -> Result<ValidCommand, Status>,
    ) -> Result<pb::CommandResult, Status> {
        let span = trace::command_span(rpc, request.metadata());
        let result = self.submit(rpc, request, validate, &span).instrument(span.clone()).await;
        trace::record_outcome(&span, result.as_ref().map(|r| (r.version, r.position)));
        result
    }

    async fn submit<M: Message>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        validate: fn(&M) -> Result<ValidCommand, Status>,
        span: &Span,
    ) -> Result<pb::CommandResult, Status> {
        let valid = validate(request.get_ref())?;
        let lead_id = valid.command.lead_id;
        span.record("lead_id", tracing::field::display(lead_id));
        let pending = PendingCommand { origin: origin(rpc, &request, valid.request_id, span)?, command: valid.command };
        match self.gateway.submit(pending).await {
            Ok(outcome) => {
                span.record("replayed", outcome.replayed);
                tracing::debug!("command applied");
                Ok(present::command_result(&outcome))
            }
            Err(refusal) => {
                tracing::debug!(%refusal, "command refused");
                Err(status(&refusal))
            }
        }
    }

    /// Appends a new SLA policy version; its `(version, position)`.
    async fn record_sla_policy(
        &self,
        request: Request<pb::DefineSlaPolicyRequest>,
        span: &Span,
    ) -> Result<(u64, u64), Status> {
        let now = (self.clock)();
        let (policy, request_id) = request::sla_policy(request.get_ref(), now)?;
        let origin = origin("DefineSlaPolicy", &request, request_id, span)?;
        let outcome = self.log.define_sla_policy(&policy, &origin, now).await.map_err(|e| read_status(&e))?;
        tracing::info!(version = outcome.version, position = outcome.position, "SLA policy defined");
        Ok((outcome.version, outcome.position))
    }
}

/// A text metadata value, at most 128 visible ASCII characters.
fn metadata_text(metadata: &MetadataMap, key: &str) -> Result<Option<String>, Status> {
    let Some(value) = metadata.get(key) else { return Ok(None) };
    match value.to_str() {
        Ok(text) if !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(text.to_string()))
        }
        _ => Err(invalid_argument(vec![ValidationError::new(
            format!("metadata {key}"),
            "must be 1 to 128 visible ASCII characters",
        )])),
    }
}

#[tonic::async_trait]
impl<L: Agreements> LeadCommandService for CommandService<L> {
    async fn capture_lead(
        &self,
        request: Request<pb::CaptureLeadRequest>,
    ) -> Result<Response<pb::CaptureLeadResponse>, Status> {
        let result = self.handle("CaptureLead", request, request::capture).await?;
        Ok(Response::new(pb::CaptureLeadResponse { result: Some(result) }))
    }

    async fn qualify_lead(
        &self,
        request: Request<pb::QualifyLeadRequest>,
    ) -> Result<Response<pb::QualifyLeadResponse>, Status> {
        let result = self.handle("QualifyLead", request, request::qualify).await?;
        Ok(Response::new(pb::QualifyLeadResponse { result: Some(result) }))
    }

    async fn assign_lead(
        &self,
        request: Request<pb::AssignLeadRequest>,
    ) -> Result<Response<pb::AssignLeadResponse>, Status> {
        let result = self.handle("AssignLead", request, request::assign).await?;
        Ok(Response::new(pb::AssignLeadResponse { result: Some(result) }))
    }

    async fn accept_lead(
        &self,
        request: Request<pb::AcceptLeadRequest>,
    ) -> Result<Response<pb::AcceptLeadResponse>, Status> {
        let result = self.handle("AcceptLead", request, request::accept).await?;
        Ok(Response::new(pb::AcceptLeadResponse { result: Some(result) }))
    }

    async fn reject_lead(
        &self,
        request: Request<pb::RejectLeadRequest>,
    ) -> Result<Response<pb::RejectLeadResponse>, Status> {
        let result = self.handle("RejectLead", request, request::reject).await?;
        Ok(Response::new(pb::RejectLeadResponse { result: Some(result) }))
    }

    async fn close_lead(
        &self,
        request: Request<pb::CloseLeadRequest>,
    ) -> Result<Response<pb::CloseLeadResponse>, Status> {
        let result = self.handle("CloseLead", request, request::close).await?;
        Ok(Response::new(pb::CloseLeadResponse { result: Some(result) }))
    }

    async fn record_feedback(
        &self,
        request: Request<pb::RecordFeedbackRequest>,
    ) -> Result<Response<pb::RecordFeedbackResponse>, Status> {
        let result = self.handle("RecordFeedback", request, request::record_feedback).await?;
        Ok(Response::new(pb::RecordFeedbackResponse { result: Some(result) }))
    }

    async fn erase_lead(
        &self,
        request: Request<pb::EraseLeadRequest>,
    ) -> Result<Response<pb::EraseLeadResponse>, Status> {
        let result = self.handle("EraseLead", request, request::erase).await?;
        // No personal data here: the lead id is a random UUID.
        tracing::info!(lead_id = %result.lead_id, position = result.position, "lead erased");
        Ok(Response::new(pb::EraseLeadResponse { result: Some(result) }))
    }

    async fn define_sla_policy(
        &self,
        request: Request<pb::DefineSlaPolicyRequest>,
    ) -> Result<Response<pb::DefineSlaPolicyResponse>, Status> {
        let span = trace::command_span("DefineSlaPolicy", request.metadata());
        let outcome = self.record_sla_policy(request, &span).instrument(span.clone()).await;
        trace::record_outcome(&span, outcome.as_ref().copied());
        let (version, position) = outcome?;
        Ok(Response::new(pb::DefineSlaPolicyResponse { version, position }))
    }
}
