//! `LeadQueryService`: a lead with its history, the log in position order
//! (optionally followed live), and lead search.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use leadger_domain::{Email, LeadId, LeadProfile, Stage, ValidationError};
use leadger_proto::leads::v1 as pb;
use leadger_proto::leads::v1::lead_query_service_server::LeadQueryService;
use leadger_store::codec::{self, PublicEvent};
use leadger_store::{DataKey, EventLog, LeadQuery, RecordedEvent, Vault};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{invalid_argument, read_status};
use crate::present::{self, PersonalData};

const READ_PAGE: u32 = 512;
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;
/// How often a follower re-reads when no wake-up came (another process may
/// have appended while a notification was lost).
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub(crate) struct QueryService<L> {
    log: Arc<L>,
    vault: Arc<Vault>,
    committed: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

impl<L: EventLog> QueryService<L> {
    pub fn new(
        log: Arc<L>,
        vault: Arc<Vault>,
        committed: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { log, vault, committed, shutdown }
    }
}

/// Unwraps data keys for the leads of a page of events, keeping them for the
/// next pages of the same stream.
struct KeyRing<'a, L> {
    log: &'a L,
    vault: &'a Vault,
    keys: HashMap<LeadId, Option<DataKey>>,
}

impl<L: EventLog> KeyRing<'_, L> {
    async fn load(&mut self, events: &[RecordedEvent]) -> Result<(), Status> {
        if self.keys.len() > 100_000 {
            self.keys.clear();
        }
        let mut missing: Vec<LeadId> =
            events.iter().map(|e| e.lead_id).filter(|id| !self.keys.contains_key(id)).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let wrapped = self.log.wrapped_keys(&missing).await.map_err(|e| read_status(&e))?;
        for lead in missing {
            let key = match wrapped.get(&lead) {
                Some(wrapped) => Some(self.vault.unwrap_key(lead, wrapped).map_err(|e| {
                    tracing::error!(error = %e, "unwrap data key");
                    Status::internal(e.to_string())
                })?),
                None => None,
            };
            self.keys.insert(lead, key);
        }
        Ok(())
    }

    fn present(&self, recorded: &RecordedEvent, personal: PersonalData) -> Result<pb::LeadEvent, Status> {
        let decode_failed = |e: leadger_store::codec::CodecError| {
            tracing::error!(error = %e, position = recorded.position, "decode event");
            Status::internal(format!("decode event at position {}: {e}", recorded.position))
        };
        match self.keys.get(&recorded.lead_id).and_then(Option::as_ref) {
            Some(key) => {
                let decoded = recorded.decode(key).map_err(decode_failed)?;
                Ok(present::event(recorded, Some(&decoded), personal))
            }
            // An erased lead: what can be read without its key, or the
            // envelope alone, so one unreadable payload never ends the stream.
            None => Ok(match public_view(recorded) {
                Ok(public) => present::erased_event(recorded, &public),
                Err(error) => {
                    tracing::warn!(%error, position = recorded.position, "read an event without its lead's key");
                    present::event(recorded, None, personal)
                }
            }),
        }
    }
}

fn public_view(recorded: &RecordedEvent) -> Result<PublicEvent, leadger_store::codec::CodecError> {
    codec::public_event(&recorded.event_type, recorded.schema_version, &recorded.payload)
}

/// A lead whose data key was destroyed: its stage, history and business
/// attributes, read as the public view reads them; no personal field.
fn erased_lead(lead_id: LeadId, stream: &[RecordedEvent]) -> Result<pb::GetLeadResponse, Status> {
    let mut lead = pb::Lead { lead_id: lead_id.to_string(), erased: true, ..Default::default() };
    let mut events = Vec::with_capacity(stream.len());
    for recorded in stream {
        let public = public_view(recorded).map_err(|e| {
            tracing::error!(error = %e, %lead_id, "decode the stream of an erased lead");
            Status::internal(format!("decode the events of lead {lead_id}: {e}"))
        })?;
        let text = |name: &str| public.attributes.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        if let Some(stage) = public.stage.and_then(Stage::parse) {
            lead.stage = present::stage(stage) as i32;
        }
        match public.type_name {
            "LeadCaptured" => {
                lead.company = text("company");
                lead.source = text("source");
                lead.campaign = text("campaign");
                lead.persona = text("persona");
                lead.external_ref = text("external_ref");
                lead.captured_at = Some(present::timestamp(recorded.occurred_at));
            }
            "LeadQualified" => {
                let score = public.attributes.get("score").and_then(|s| s.as_i64()).and_then(|s| i32::try_from(s).ok());
                lead.score = score.or(lead.score);
                lead.assignee = text("assignee");
            }
            "LeadAssigned" => lead.assignee = text("assignee"),
            "LeadAccepted" => lead.owner = text("owner"),
            "LeadErased" => lead.erased_at = Some(present::timestamp(recorded.occurred_at)),
            _ => {}
        }
        lead.version = recorded.version;
        let last = lead.last_event_at.get_or_insert(present::timestamp(recorded.occurred_at));
        if (last.seconds, last.nanos) < (recorded.occurred_at.unix_seconds(), recorded.occurred_at.subsec_nanos()) {
            *last = present::timestamp(recorded.occurred_at);
        }
        events.push(present::erased_event(recorded, &public));
    }
    Ok(pb::GetLeadResponse { lead: Some(lead), events })
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::ReadLogResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<L: EventLog> LeadQueryService for QueryService<L> {
    async fn get_lead(&self, request: Request<pb::GetLeadRequest>) -> Result<Response<pb::GetLeadResponse>, Status> {
        let lead_id = LeadId::parse("lead_id", &request.get_ref().lead_id).map_err(|v| invalid_argument(vec![v]))?;
        let stream = self.log.lead_stream(lead_id).await.map_err(|e| read_status(&e))?;
        let Some(first) = stream.first() else {
            return Err(Status::not_found(format!("lead {lead_id} does not exist")));
        };
        let mut ring = KeyRing { log: &*self.log, vault: &self.vault, keys: HashMap::new() };
        ring.load(&stream).await?;
        let Some(Some(key)) = ring.keys.get(&lead_id) else {
            return erased_lead(lead_id, &stream).map(Response::new);
        };
        let decoded = stream.iter().map(|e| e.decode(key)).collect::<Result<Vec<_>, _>>().map_err(|e| {
            tracing::error!(error = %e, %lead_id, "decode lead stream");
            Status::internal(format!("decode the events of lead {lead_id}: {e}"))
        })?;
        let profile = LeadProfile::replay(&decoded)
            .ok_or_else(|| Status::internal(format!("the stream of lead {lead_id} does not start with a capture")))?;
        let events = stream
            .iter()
            .zip(&decoded)
            .map(|(recorded, event)| present::event(recorded, Some(event), PersonalData::Include))
            .collect();
        Ok(Response::new(pb::GetLeadResponse {
            lead: Some(present::lead(lead_id, &profile, first.occurred_at)),
            events,
        }))
    }

    type ReadLogStream = LogStream;

    async fn read_log(&self, request: Request<pb::ReadLogRequest>) -> Result<Response<LogStream>, Status> {
        let pb::ReadLogRequest { from_position, follow } = request.into_inner();
        let (tx, rx) = mpsc::channel(READ_PAGE as usize);
        let log = self.log.clone();
        let vault = self.vault.clone();
        let mut committed = self.committed.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut ring = KeyRing { log: &*log, vault: &vault, keys: HashMap::new() };
            let mut next = from_position.max(1);
            loop {
                committed.mark_unchanged();
                let page = match log.read_log(next, READ_PAGE).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = tx.send(Err(read_status(&error))).await;
                        return;
                    }
                };
                if let Err(status) = ring.load(&page).await {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                for recorded in &page {
                    let item = ring
                        .present(recorded, PersonalData::Redact)
                        .map(|event| pb::ReadLogResponse { event: Some(event) });
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                    next = recorded.position + 1;
                }
                if page.len() as u32 == READ_PAGE {
                    continue;
                }
                if !follow || *shutdown.borrow() {
                    return;
                }
                tokio::select! {
                    _ = committed.changed() => {}
                    _ = shutdown.changed() => return,
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn find_leads(
        &self,
        request: Request<pb::FindLeadsRequest>,
    ) -> Result<Response<pb::FindLeadsResponse>, Status> {
        let r = request.into_inner();
        let mut violations = Vec::new();
        let optional = |text: &str| (!text.is_empty()).then(|| text.to_string());
        let email_index = match r.email.is_empty() {
            true => None,
            false => match Email::parse("email", &r.email) {
                Ok(email) => Some(self.vault.email_index(&email)),
                Err(v) => {
                    violations.push(v);
                    None
                }
            },
        };
        let stage = match pb::Stage::try_from(r.stage) {
            Ok(pb::Stage::Unspecified) => None,
            Ok(stage) => Stage::parse(stage.as_str_name().trim_start_matches("STAGE_")),
            Err(_) => {
                violations.push(ValidationError::new("stage", format!("unknown value {}", r.stage)));
                None
            }
        };
        let limit = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size < 0 => {
                violations.push(ValidationError::new("page_size", "must not be negative"));
                0
            }
            size => (size as u32).min(MAX_PAGE_SIZE),
        };
        let after = match r.page_token.is_empty() {
            true => None,
            false => match LeadId::parse("page_token", &r.page_token) {
                Ok(id) => Some(id),
                Err(_) => {
                    violations
                        .push(ValidationError::new("page_token", "is not a token from a previous FindLeads response"));
                    None
                }
            },
        };
        if !violations.is_empty() {
            return Err(invalid_argument(violations));
        }
        let query = LeadQuery {
            email_index,
            external_ref: optional(&r.external_ref),
            stage,
            assignee: optional(&r.assignee),
            owner: optional(&r.owner),
            after,
            limit: limit + 1,
        };
        let mut found = self.log.find_leads(&query).await.map_err(|e| read_status(&e))?;
        let more = found.len() > limit as usize;
        found.truncate(limit as usize);
        let next_page_token = match (more, found.last()) {
            (true, Some(last)) => last.lead_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::FindLeadsResponse {
            leads: found.iter().map(present::summary).collect(),
            next_page_token,
        }))
    }
}
