//! Lead lifecycles driven through the real gRPC API: every event type, the
//! funnel's paths (won, rejected and re-qualified, lost straight from
//! capture, sales-sourced), personal data in every field that takes it.

use leadger_proto::leads::v1 as pb;
use pb::lead_command_service_client::LeadCommandServiceClient;
use tonic::Status;
use tonic::transport::Channel;

/// Personal data each lifecycle sends; none of it may appear outside the
/// encrypted log (on NATS, in logs).
pub const PERSONAL_MARKERS: [&str; 5] = ["Lovelace", "+44 20 7946", "secret-note", "private-comment", "@example.org"];

/// The email of lead number `n`.
pub fn email(n: usize) -> String {
    format!("lead{n}@example.org")
}

fn capture_request(n: usize) -> pb::CaptureLeadRequest {
    pb::CaptureLeadRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        email: email(n),
        name: "Ada Lovelace".to_string(),
        company: "Analytical Engines Ltd".to_string(),
        phone: "+44 20 7946 0000".to_string(),
        source: ["web", "webinar", "partner"][n % 3].to_string(),
        campaign: "spring-launch".to_string(),
        persona: "cto".to_string(),
        ..Default::default()
    }
}

/// Captures lead `n`; returns its id.
pub async fn capture(commands: &mut LeadCommandServiceClient<Channel>, n: usize) -> Result<String, Status> {
    let result = commands.capture_lead(capture_request(n)).await?.into_inner().result;
    Ok(result.map(|r| r.lead_id).unwrap_or_default())
}

/// Runs lifecycle number `n` (its path chosen by `n % 5`); returns how many
/// events it appended.
pub async fn lifecycle(commands: &mut LeadCommandServiceClient<Channel>, n: usize) -> Result<u64, Status> {
    let lead_id = capture(commands, n).await?;
    let id = || lead_id.clone();
    let qualify = |assignee: &str| pb::QualifyLeadRequest {
        lead_id: id(),
        score: Some(70),
        note: "secret-note: asked for a demo".to_string(),
        assignee: assignee.to_string(),
        ..Default::default()
    };
    let accept = pb::AcceptLeadRequest { lead_id: id(), owner: "ae-berlin".to_string(), ..Default::default() };
    let feedback = pb::RecordFeedbackRequest {
        lead_id: id(),
        rating: 4,
        reason_codes: vec!["good-fit".to_string()],
        comment: "private-comment: great call".to_string(),
        ..Default::default()
    };
    let lost = pb::CloseLeadRequest {
        lead_id: id(),
        outcome: pb::Outcome::Lost as i32,
        lost_reason: "no-budget".to_string(),
        note: "secret-note: budget frozen".to_string(),
        ..Default::default()
    };
    match n % 5 {
        0 => {
            commands.qualify_lead(qualify("sdr-1")).await?;
            commands.accept_lead(accept).await?;
            commands
                .close_lead(pb::CloseLeadRequest {
                    lead_id: id(),
                    outcome: pb::Outcome::Won as i32,
                    amount_minor: 1_250_000,
                    currency: "EUR".to_string(),
                    ..Default::default()
                })
                .await?;
            commands.record_feedback(feedback).await?;
            Ok(5)
        }
        1 => {
            commands.qualify_lead(qualify("")).await?;
            commands
                .reject_lead(pb::RejectLeadRequest {
                    lead_id: id(),
                    reason: "not-ready".to_string(),
                    note: "secret-note: call back in Q3".to_string(),
                    ..Default::default()
                })
                .await?;
            commands.qualify_lead(qualify("sdr-2")).await?;
            commands
                .assign_lead(pb::AssignLeadRequest {
                    lead_id: id(),
                    assignee: "sdr-3".to_string(),
                    ..Default::default()
                })
                .await?;
            Ok(5)
        }
        2 => {
            commands.close_lead(lost).await?;
            Ok(2)
        }
        3 => {
            commands.accept_lead(accept).await?;
            commands.close_lead(lost).await?;
            commands.record_feedback(feedback).await?;
            Ok(4)
        }
        _ => Ok(1),
    }
}

/// Runs lifecycles `range` on `clients` concurrent connections; returns the
/// number of events appended. Panics on any failed command.
pub async fn run_lifecycles(channel: Channel, range: std::ops::Range<usize>, clients: usize) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let mut commands = LeadCommandServiceClient::new(channel.clone());
        let range = range.clone();
        tasks.spawn(async move {
            let mut events = 0;
            for n in range.skip(client).step_by(clients) {
                events += lifecycle(&mut commands, n).await.unwrap_or_else(|s| panic!("lifecycle {n}: {s:?}"));
            }
            events
        });
    }
    tasks.join_all().await.into_iter().sum()
}

/// An SLA policy with every field set: 8 working hours to answer, 20
/// working days to close, Mon-Fri 09:00-17:00 in Berlin with two holidays,
/// monthly goals, a review date, effective from 2027-01-01.
pub fn berlin_sla_policy() -> pb::SlaPolicy {
    pb::SlaPolicy {
        accept_within: Some(prost_types::Duration { seconds: 8 * 3600, nanos: 0 }),
        close_within: Some(prost_types::Duration { seconds: 20 * 8 * 3600, nanos: 0 }),
        mql_target: Some(120),
        mql_to_sql_rate_target: Some(0.6),
        won_amount_target: Some(pb::CurrencyAmount { currency: "EUR".into(), amount_minor: 5_000_000 }),
        review_by: "2027-03-31".into(),
        calendar: Some(pb::WorkingCalendar {
            time_zone: "Europe/Berlin".into(),
            working_days: vec![1, 2, 3, 4, 5],
            opens: "09:00".into(),
            closes: "17:00".into(),
            holidays: vec!["2026-12-25".into(), "2026-12-26".into()],
        }),
        effective_from: Some(prost_types::Timestamp { seconds: 1_798_761_600, nanos: 0 }),
    }
}
