//! Deciding a batch of commands under the append lock, without I/O.
//!
//! A backend loads a [`Snapshot`] of everything the batch touches (lead
//! heads, open emails, external refs, idempotency receipts, data keys) after
//! taking the append lock, hands it to [`plan`], and writes the returned
//! [`Plan`] in the same transaction. Commands are decided one after the other
//! on the snapshot as the earlier ones changed it, so several commands on one
//! lead in one batch see each other, and a refused command is simply left out:
//! it fails alone and never aborts its batch.

use std::collections::{HashMap, HashSet};

use leadger_domain::{Action, Lead, LeadEventKind, LeadId, Stage, Timestamp, decide, evolve};
use uuid::Uuid;

use crate::vault::{DataKey, Vault};
use crate::{CommandError, CommandOutcome, EventMetadata, PendingCommand, StoreError, codec};

/// A lead's current state as the `leads` table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadHead {
    pub lead: Lead,
    /// Empty once the lead is erased: the address may be captured again.
    pub email_index: String,
    pub external_ref: Option<String>,
}

/// An idempotency receipt: the original result of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub request_hash: String,
    pub outcome: CommandOutcome,
}

/// What a batch reads before it decides.
#[derive(Debug, Default)]
pub(crate) struct BatchKeys {
    pub lead_ids: Vec<LeadId>,
    /// Per command of the batch: the email index of a capture.
    pub capture_email_indexes: Vec<Option<String>>,
    pub external_refs: Vec<String>,
    pub receipt_keys: Vec<(String, String)>,
    /// Existing leads whose commands carry personal text to seal.
    pub key_leads: Vec<LeadId>,
}

impl BatchKeys {
    pub fn of(batch: &[&PendingCommand], vault: &Vault) -> Self {
        let mut keys = Self::default();
        let mut seen = HashSet::new();
        for pending in batch {
            let command = &pending.command;
            if seen.insert(command.lead_id) {
                keys.lead_ids.push(command.lead_id);
            }
            if let Some(request_id) = &pending.origin.request_id {
                keys.receipt_keys.push((pending.origin.client_id.clone(), request_id.clone()));
            }
            let mut email_index = None;
            match &command.action {
                Action::Capture(details) => {
                    email_index = Some(vault.email_index(&details.email));
                    if let Some(external_ref) = &details.external_ref {
                        keys.external_refs.push(external_ref.as_str().to_string());
                    }
                }
                action if carries_personal_text(action) => keys.key_leads.push(command.lead_id),
                _ => {}
            }
            keys.capture_email_indexes.push(email_index);
        }
        keys
    }

    /// The email indexes of the batch's captures, to look up open leads by.
    pub fn email_indexes(&self) -> Vec<String> {
        self.capture_email_indexes.iter().flatten().cloned().collect()
    }
}

fn carries_personal_text(action: &Action) -> bool {
    match action {
        Action::Capture(_) => true,
        Action::Qualify(q) => q.note.is_some(),
        Action::Reject(r) => r.note.is_some(),
        Action::Close(c) => c.note.is_some(),
        Action::RecordFeedback(f) => f.comment.is_some(),
        Action::Assign { .. } | Action::Accept { .. } | Action::Erase { .. } => false,
    }
}

/// The state a batch is decided on, read under the append lock.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub last_position: u64,
    pub heads: HashMap<LeadId, LeadHead>,
    /// Email index → the open (not WON/LOST) lead that has it.
    pub open_emails: HashMap<String, LeadId>,
    pub external_refs: HashMap<String, LeadId>,
    pub receipts: HashMap<(String, String), Receipt>,
    pub wrapped_keys: HashMap<LeadId, String>,
}

/// An event row ready to insert.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub position: u64,
    pub event_id: Uuid,
    pub lead_id: LeadId,
    pub version: u64,
    pub event_type: String,
    pub payload: String,
    pub metadata: String,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) struct NewReceipt {
    pub client_id: String,
    pub request_id: String,
    pub receipt: Receipt,
}

/// What a batch writes, and what each command is answered.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub outcomes: Vec<Result<CommandOutcome, CommandError>>,
    pub events: Vec<NewEvent>,
    /// The final head of every lead the batch changed.
    pub heads: Vec<(LeadId, LeadHead)>,
    pub new_keys: Vec<(LeadId, String)>,
    /// Leads erased by the batch: their wrapped keys are deleted with the
    /// batch's events (a lead captured and erased in one batch is not here:
    /// its key is simply never written).
    pub erased_keys: Vec<LeadId>,
    pub receipts: Vec<NewReceipt>,
}

impl Plan {
    pub fn last_position(&self) -> Option<u64> {
        self.events.last().map(|e| e.position)
    }
}

/// Decides every command of the batch in order on the snapshot.
pub(crate) fn plan(
    batch: &[&PendingCommand],
    keys: &BatchKeys,
    mut snapshot: Snapshot,
    now: Timestamp,
    vault: &Vault,
) -> Result<Plan, StoreError> {
    let mut plan = Plan::default();
    let mut next_position = snapshot.last_position + 1;
    let mut data_keys: HashMap<LeadId, DataKey> = HashMap::new();
    let mut changed: Vec<LeadId> = Vec::new();
    for (pending, email_index) in batch.iter().zip(&keys.capture_email_indexes) {
        let decided = Decided { snapshot: &mut snapshot, data_keys: &mut data_keys, plan: &mut plan };
        let outcome = plan_one(pending, email_index.as_deref(), decided, &mut next_position, now, vault)?;
        if let Ok(outcome) = &outcome
            && !outcome.replayed
            && !changed.contains(&outcome.lead_id)
        {
            changed.push(outcome.lead_id);
        }
        plan.outcomes.push(outcome);
    }
    plan.heads =
        changed.into_iter().filter_map(|lead_id| snapshot.heads.remove(&lead_id).map(|head| (lead_id, head))).collect();
    Ok(plan)
}

/// What the commands decided so far have changed.
struct Decided<'a> {
    snapshot: &'a mut Snapshot,
    data_keys: &'a mut HashMap<LeadId, DataKey>,
    plan: &'a mut Plan,
}

/// `Err` only for a store failure that must abort the whole batch.
/// `email_index` is the capture's, computed once by [`BatchKeys::of`].
fn plan_one(
    pending: &PendingCommand,
    email_index: Option<&str>,
    decided: Decided<'_>,
    next_position: &mut u64,
    now: Timestamp,
    vault: &Vault,
) -> Result<Result<CommandOutcome, CommandError>, StoreError> {
    let Decided { snapshot, data_keys, plan } = decided;
    let command = &pending.command;
    let origin = &pending.origin;
    let receipt_key = origin.request_id.as_ref().map(|request_id| (origin.client_id.clone(), request_id.clone()));
    if let Some(key) = &receipt_key
        && let Some(receipt) = snapshot.receipts.get(key)
    {
        return Ok(if receipt.request_hash == origin.request_hash {
            Ok(CommandOutcome { replayed: true, ..receipt.outcome })
        } else {
            Err(CommandError::RequestIdReused { request_id: key.1.clone() })
        });
    }
    let head = snapshot.heads.get(&command.lead_id);
    if let Err(refusal) = origin.roles.permit(command.action.kind(), head.map(|h| h.lead.stage)) {
        return Ok(Err(refusal.into()));
    }
    let event = match decide(head.map(|h| &h.lead), command, now) {
        Ok(event) => event,
        Err(refusal) => return Ok(Err(refusal.into())),
    };
    let lead_id = command.lead_id;
    let mut new_wrapped_key: Option<String> = None;
    let new_head = match (&event.kind, head) {
        (LeadEventKind::Captured(details), _) => {
            let email_index = email_index.map_or_else(|| vault.email_index(&details.email), str::to_string);
            if let Some(existing) = snapshot.open_emails.get(&email_index) {
                return Ok(Err(CommandError::EmailTaken { existing: *existing }));
            }
            let external_ref = details.external_ref.as_ref().map(|r| r.as_str().to_string());
            if let Some(existing) = external_ref.as_ref().and_then(|r| snapshot.external_refs.get(r)) {
                return Ok(Err(CommandError::ExternalRefTaken { existing: *existing }));
            }
            let (key, wrapped) = vault.new_data_key(lead_id);
            data_keys.insert(lead_id, key);
            new_wrapped_key = Some(wrapped);
            LeadHead { lead: evolve(None, &event), email_index, external_ref }
        }
        (LeadEventKind::Erased { .. }, Some(head)) => LeadHead {
            lead: evolve(Some(head.lead.clone()), &event),
            email_index: String::new(),
            external_ref: head.external_ref.clone(),
        },
        (_, Some(head)) => LeadHead { lead: evolve(Some(head.lead.clone()), &event), ..head.clone() },
        (_, None) => unreachable!("decide refuses every command but capture on a missing lead"),
    };
    // A lead whose key does not unwrap (a KEK mismatch, a damaged row) fails
    // its own command, not the batch. Nothing of this command is planned yet.
    let key = if carries_personal_text(&command.action) {
        Some(match data_keys.get(&lead_id) {
            Some(key) => key.clone(),
            None => {
                let key = match snapshot.wrapped_keys.get(&lead_id) {
                    Some(wrapped) => match vault.unwrap_key(lead_id, wrapped) {
                        Ok(key) => key,
                        Err(error) => {
                            tracing::error!(%error, "unwrap the data key of a lead");
                            return Ok(Err(CommandError::Internal(error.to_string())));
                        }
                    },
                    // The lead was erased: what it says now is sealed under a
                    // key that is thrown away, so it is unreadable from the start.
                    None => vault.new_data_key(lead_id).0,
                };
                data_keys.insert(lead_id, key.clone());
                key
            }
        })
    } else {
        None
    };
    let payload = match codec::encode(&event.kind, key.as_ref()) {
        Ok(payload) => payload,
        Err(error) => return Ok(Err(CommandError::Internal(error.to_string()))),
    };
    if let Some(wrapped) = new_wrapped_key {
        plan.new_keys.push((lead_id, wrapped));
    }
    let previous_email_index = head.map(|h| h.email_index.clone());
    if matches!(event.kind, LeadEventKind::Erased { .. }) {
        data_keys.remove(&lead_id);
        snapshot.wrapped_keys.remove(&lead_id);
        let unwritten = plan.new_keys.len();
        plan.new_keys.retain(|(id, _)| *id != lead_id);
        if plan.new_keys.len() == unwritten {
            plan.erased_keys.push(lead_id);
        }
    }
    let position = *next_position;
    *next_position += 1;
    let outcome = CommandOutcome {
        lead_id,
        version: new_head.lead.version,
        position,
        stage: new_head.lead.stage,
        replayed: false,
    };
    plan.events.push(NewEvent {
        position,
        event_id: Uuid::now_v7(),
        lead_id,
        version: new_head.lead.version,
        event_type: codec::event_type(&event.kind),
        payload,
        metadata: EventMetadata::of(origin).to_json(),
        occurred_at: event.occurred_at,
        recorded_at: now,
    });
    if new_head.lead.erased {
        if let Some(index) = previous_email_index
            && snapshot.open_emails.get(&index) == Some(&lead_id)
        {
            snapshot.open_emails.remove(&index);
        }
    } else if matches!(new_head.lead.stage, Stage::Won | Stage::Lost) {
        if snapshot.open_emails.get(&new_head.email_index) == Some(&lead_id) {
            snapshot.open_emails.remove(&new_head.email_index);
        }
    } else {
        snapshot.open_emails.insert(new_head.email_index.clone(), lead_id);
    }
    if let Some(external_ref) = &new_head.external_ref {
        snapshot.external_refs.insert(external_ref.clone(), lead_id);
    }
    snapshot.heads.insert(lead_id, new_head);
    if let Some((client_id, request_id)) = receipt_key {
        let receipt = Receipt { request_hash: origin.request_hash.clone(), outcome };
        snapshot.receipts.insert((client_id.clone(), request_id.clone()), receipt.clone());
        plan.receipts.push(NewReceipt { client_id, request_id, receipt });
    }
    Ok(Ok(outcome))
}

#[cfg(test)]
mod tests {
    use leadger_domain::{Command, Email, Label, LeadDetails, Note, Qualification};

    use super::*;
    use crate::Origin;

    fn pending(lead_id: LeadId, action: Action) -> PendingCommand {
        PendingCommand {
            command: Command { lead_id, expected_version: None, occurred_at: None, action },
            origin: Origin {
                client_id: "test".into(),
                request_id: None,
                request_hash: String::new(),
                correlation_id: None,
                roles: leadger_domain::Roles::ALL,
                trace: None,
            },
        }
    }

    /// A lead whose data key does not unwrap fails alone, and the commands
    /// after it still get the next positions, with no hole.
    #[test]
    fn a_lead_with_a_broken_key_fails_alone_without_a_position_gap() {
        let vault = Vault::from_key([1; 32]);
        let now = Timestamp::from_micros(1_000_000).expect("in range");
        let broken = LeadId::from_uuid(Uuid::from_u128(1));
        let fresh = LeadId::from_uuid(Uuid::from_u128(2));
        let head = LeadHead {
            lead: Lead {
                stage: Stage::Captured,
                version: 1,
                seen_by_sales: false,
                last_occurred_at: now,
                assignee: None,
                owner: None,
                erased: false,
            },
            email_index: "x".into(),
            external_ref: None,
        };
        let mut snapshot = Snapshot { last_position: 41, ..Snapshot::default() };
        snapshot.heads.insert(broken, head);
        snapshot.wrapped_keys.insert(broken, "not a wrapped key".into());
        let qualify = pending(
            broken,
            Action::Qualify(Qualification {
                score: None,
                note: Note::parse_optional("note", "call back").expect("valid"),
                assignee: None,
            }),
        );
        let capture = pending(
            fresh,
            Action::Capture(LeadDetails {
                email: Email::parse("email", "a@b.co").expect("valid"),
                name: Label::parse_optional("name", "A").expect("valid"),
                company: None,
                phone: None,
                source: None,
                campaign: None,
                persona: None,
                external_ref: None,
            }),
        );
        let batch = [&qualify, &capture];
        let plan = plan(&batch, &BatchKeys::of(&batch, &vault), snapshot, now, &vault).expect("the batch is planned");
        assert!(matches!(plan.outcomes[0], Err(CommandError::Internal(_))));
        let captured = plan.outcomes[1].as_ref().expect("the capture goes through");
        assert_eq!(captured.position, 42);
        assert_eq!(plan.events.iter().map(|e| e.position).collect::<Vec<_>>(), [42]);
        assert_eq!(plan.new_keys.len(), 1);
        assert_eq!(plan.heads.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [fresh]);
    }
}
