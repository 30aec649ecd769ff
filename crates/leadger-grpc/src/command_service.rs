//! `LeadCommandService`: validate, submit to the group committer, answer
//! only once the event is durable.

use leadger_proto::leads::v1 as pb;
use leadger_proto::leads::v1::lead_command_service_server::LeadCommandService;
use leadger_store::{CommandGateway, Origin, PendingCommand};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::error::{invalid_argument, status};
use crate::present;
use crate::request::{self, ValidCommand};
use leadger_domain::ValidationError;

/// Metadata key naming the calling client; idempotency keys are scoped to it.
pub const CLIENT_ID_HEADER: &str = "x-client-id";
/// Metadata key carrying a correlation id across systems.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";
const ANONYMOUS_CLIENT: &str = "anonymous";

pub(crate) struct CommandService {
    gateway: CommandGateway,
}

impl CommandService {
    pub fn new(gateway: CommandGateway) -> Self {
        Self { gateway }
    }

    async fn handle<M: Message>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        validate: fn(&M) -> Result<ValidCommand, Status>,
    ) -> Result<pb::CommandResult, Status> {
        let message = request.get_ref();
        let valid = validate(message)?;
        let client_id =
            metadata_text(request.metadata(), CLIENT_ID_HEADER)?.unwrap_or_else(|| ANONYMOUS_CLIENT.to_string());
        let correlation_id =
            metadata_text(request.metadata(), CORRELATION_ID_HEADER)?.or_else(|| valid.request_id.clone());
        // The request as sent: before the server fills in defaults.
        let request_hash = hex::encode(
            Sha256::new().chain_update(rpc).chain_update([0]).chain_update(message.encode_to_vec()).finalize(),
        );
        let lead_id = valid.command.lead_id;
        let pending = PendingCommand {
            command: valid.command,
            origin: Origin { client_id, request_id: valid.request_id, request_hash, correlation_id },
        };
        let request_id = pending.origin.request_id.clone().unwrap_or_default();
        match self.gateway.submit(pending).await {
            Ok(outcome) => {
                tracing::debug!(rpc, %lead_id, request_id, position = outcome.position, replayed = outcome.replayed, "command applied");
                Ok(present::command_result(&outcome))
            }
            Err(refusal) => {
                tracing::debug!(rpc, %lead_id, request_id, %refusal, "command refused");
                Err(status(&refusal))
            }
        }
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
impl LeadCommandService for CommandService {
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
}
