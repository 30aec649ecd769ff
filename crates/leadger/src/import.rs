//! `leadger import FILE`: history from another CRM, one lifecycle event per
//! line (CSV with a header row, or JSON Lines), sent through the same
//! command API as live traffic, so every line is validated like any command.
//!
//! Columns: `lead` (the lead's id in the other system), `type` (captured,
//! qualified, assigned, accepted, rejected, closed, feedback), `occurred_at`
//! (RFC 3339 or YYYY-MM-DD), and the fields of that event type (see
//! docs/cli.md#import). The leadger lead id is derived from `lead`, and each
//! command's `request_id` from the line's lead, type, time (as a point in
//! time, whatever its spelling) and rank among the lead's lines of that type
//! and time, so a re-run by the same caller applies nothing twice. Each
//! lead's lines go in file order; different leads go in parallel. Rejected
//! lines are listed with the reason at the end; the exit code is 1 when
//! there were any.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use leadger_proto::leads::v1 as pb;

use crate::client::{Call, Server, ServerArgs, minor_units, parse_time};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file: .csv (header row) or .jsonl / .ndjson (one JSON object per line).
    file: PathBuf,
    /// The file's format (default: from its extension).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Leads imported at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

/// Lead ids and request ids of imports live under this UUID v5 namespace.
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c65_6164_6765_7249_6d70_6f72_7400_0001);

/// One line of the file: its number and its fields (empty ones left out).
struct Line {
    number: usize,
    fields: HashMap<String, String>,
}

/// A line turned into a command for a lead.
struct Planned {
    number: usize,
    lead: String,
    call: Call,
    request_id: String,
    occurred_at: prost_types::Timestamp,
}

/// Why a line was not imported.
struct Rejected {
    number: usize,
    reason: String,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<bool> {
    let format = match args.format {
        Some(format) => format,
        None => format_of(&args.file)?,
    };
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let mut rejected = Vec::new();
    let lines = match format {
        Format::Csv => read_csv(&text, &mut rejected)?,
        Format::Jsonl => read_jsonl(&text, &mut rejected),
    };
    // Each lead's lines, in file order.
    let mut leads: BTreeMap<String, Vec<Planned>> = BTreeMap::new();
    let mut ranks = HashMap::new();
    for line in lines {
        match plan(&line, &mut ranks) {
            Ok(planned) => leads.entry(planned.lead.clone()).or_default().push(planned),
            Err(reason) => rejected.push(Rejected { number: line.number, reason }),
        }
    }
    let total: usize = leads.values().map(Vec::len).sum();
    let api = args.server.connect().await?;
    let progress = Progress::new(total + rejected.len());
    progress.advance(rejected.len());
    let started = Instant::now();
    let mut sent = futures_util::stream::iter(leads.into_values().map(|lines| send_lead(api.clone(), lines)))
        .buffer_unordered(args.concurrency.max(1));
    let (mut applied, mut present) = (0, 0);
    while let Some(lead) = sent.next().await {
        applied += lead.applied;
        present += lead.present;
        progress.advance(lead.applied + lead.present + lead.refused.len());
        rejected.extend(lead.refused);
    }
    progress.finish();
    rejected.sort_by_key(|r| r.number);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}: applied {applied} lines, {present} already imported, rejected {} ({elapsed:.1} s)",
        args.file.display(),
        rejected.len()
    );
    for line in &rejected {
        println!("  line {}: {}", line.number, line.reason);
    }
    Ok(rejected.is_empty())
}

fn format_of(path: &Path) -> anyhow::Result<Format> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("jsonl" | "ndjson" | "json") => Ok(Format::Jsonl),
        _ => bail!("{}: give --format csv or --format jsonl (the extension does not say)", path.display()),
    }
}

fn read_csv(text: &str, rejected: &mut Vec<Rejected>) -> anyhow::Result<Vec<Line>> {
    // Flexible: a row with too many or too few fields is that row's error, not the file's.
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(text.as_bytes());
    let headers = reader.headers().context("read the CSV header row")?.clone();
    let mut lines = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let number = error.position().map_or(0, |p| p.line() as usize);
                rejected.push(Rejected { number, reason: format!("not a CSV row: {error}") });
                continue;
            }
        };
        let number = record.position().map_or(0, |p| p.line() as usize);
        if record.len() != headers.len() {
            let reason = format!("{} fields where the header row has {}", record.len(), headers.len());
            rejected.push(Rejected { number, reason });
            continue;
        }
        let fields = headers
            .iter()
            .zip(record.iter())
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        lines.push(Line { number, fields });
    }
    Ok(lines)
}

fn read_jsonl(text: &str, rejected: &mut Vec<Rejected>) -> Vec<Line> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let object = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw) {
            Ok(object) => object,
            Err(error) => {
                rejected.push(Rejected { number, reason: format!("not a JSON object: {error}") });
                continue;
            }
        };
        let mut fields = HashMap::new();
        for (key, value) in object {
            let text = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(text) => text,
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(";"),
                other => other.to_string(),
            };
            fields.insert(key, text);
        }
        lines.push(Line { number, fields });
    }
    lines
}

/// The columns each event type takes, besides lead, type and occurred_at.
fn columns(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "captured" => &["email", "name", "company", "phone", "source", "campaign", "persona"],
        "qualified" => &["score", "note", "assignee"],
        "assigned" => &["assignee"],
        "accepted" => &["owner"],
        "rejected" => &["reason", "note"],
        "closed" => &["outcome", "amount", "currency", "lost_reason", "note"],
        "feedback" => &["rating", "reason_codes", "comment"],
        _ => return None,
    })
}

/// How many lines of a lead had each type and time so far: their rank tells
/// apart two events of one kind at the same time (two date-only assignments).
type Ranks = HashMap<(String, String, i64, i32), u32>;

fn plan(line: &Line, ranks: &mut Ranks) -> Result<Planned, String> {
    let get = |key: &str| line.fields.get(key).cloned().unwrap_or_default();
    let lead = get("lead");
    if lead.is_empty() {
        return Err("lead: required (the lead's id in the system you import from)".to_string());
    }
    let kind = get("type");
    let allowed = columns(&kind).ok_or_else(|| {
        format!("type: {kind:?} is not one of captured, qualified, assigned, accepted, rejected, closed, feedback")
    })?;
    if let Some(unknown) = line
        .fields
        .keys()
        .find(|key| !["lead", "type", "occurred_at"].contains(&key.as_str()) && !allowed.contains(&key.as_str()))
    {
        return Err(format!("{unknown}: not a column of a {kind} line (it takes {})", allowed.join(", ")));
    }
    let occurred_at = parse_time(&get("occurred_at")).map_err(|e| format!("occurred_at: {e}"))?;
    let lead_id = uuid::Uuid::new_v5(&NAMESPACE, format!("lead:{lead}").as_bytes()).to_string();
    let rank = ranks.entry((lead.clone(), kind.clone(), occurred_at.seconds, occurred_at.nanos)).or_insert(0);
    let key = format!("{lead}|{kind}|{}.{:09}|{rank}", occurred_at.seconds, occurred_at.nanos);
    *rank += 1;
    let request_id = uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes()).to_string();
    let number = |key: &str| -> Result<Option<i32>, String> {
        let text = get(key);
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| format!("{key}: {text:?} is not a whole number"))
    };
    let call = match kind.as_str() {
        "captured" => Call::Capture(pb::CaptureLeadRequest {
            lead_id,
            email: get("email"),
            name: get("name"),
            company: get("company"),
            phone: get("phone"),
            source: get("source"),
            campaign: get("campaign"),
            persona: get("persona"),
            external_ref: lead.clone(),
            ..Default::default()
        }),
        "qualified" => Call::Qualify(pb::QualifyLeadRequest {
            lead_id,
            score: number("score")?,
            note: get("note"),
            assignee: get("assignee"),
            ..Default::default()
        }),
        "assigned" => Call::Assign(pb::AssignLeadRequest { lead_id, assignee: get("assignee"), ..Default::default() }),
        "accepted" => Call::Accept(pb::AcceptLeadRequest { lead_id, owner: get("owner"), ..Default::default() }),
        "rejected" => Call::Reject(pb::RejectLeadRequest {
            lead_id,
            reason: get("reason"),
            note: get("note"),
            ..Default::default()
        }),
        "closed" => {
            let outcome = match get("outcome").to_ascii_lowercase().as_str() {
                "won" => pb::Outcome::Won,
                "lost" => pb::Outcome::Lost,
                other => return Err(format!("outcome: {other:?} is not won or lost")),
            };
            let amount = get("amount");
            let amount_minor =
                if amount.is_empty() { 0 } else { minor_units(&amount).map_err(|e| format!("amount: {e}"))? };
            Call::Close(pb::CloseLeadRequest {
                lead_id,
                outcome: outcome as i32,
                amount_minor,
                currency: get("currency"),
                lost_reason: get("lost_reason"),
                note: get("note"),
                ..Default::default()
            })
        }
        _ => Call::Feedback(pb::RecordFeedbackRequest {
            lead_id,
            rating: number("rating")?.ok_or("rating: required (1 to 5)")?,
            reason_codes: get("reason_codes")
                .split([';', ','])
                .map(str::trim)
                .filter(|code| !code.is_empty())
                .map(str::to_string)
                .collect(),
            comment: get("comment"),
            ..Default::default()
        }),
    };
    Ok(Planned { number: line.number, lead, call, request_id, occurred_at })
}

/// What became of one lead's lines.
#[derive(Default)]
struct Sent {
    applied: usize,
    /// Applied by an earlier run: the server answered with the original result.
    present: usize,
    refused: Vec<Rejected>,
}

/// Sends one lead's lines in order.
async fn send_lead(mut api: Server, lines: Vec<Planned>) -> Sent {
    let mut sent = Sent::default();
    for line in lines {
        match line.call.send(&mut api, line.request_id, Some(line.occurred_at)).await {
            Ok(result) if result.as_ref().is_some_and(|r| r.replayed) => sent.present += 1,
            Ok(_) => sent.applied += 1,
            Err(status) => {
                let mut reason = format!("{:?}: {}", status.code(), status.message());
                if status.code() == tonic::Code::NotFound {
                    reason.push_str(" (was the lead's captured line imported?)");
                }
                sent.refused.push(Rejected { number: line.number, reason: format!("{} (lead {})", reason, line.lead) });
            }
        }
    }
    sent
}

/// A progress line on stderr while it is a terminal.
struct Progress {
    total: usize,
    done: std::cell::Cell<usize>,
    shown: std::cell::Cell<Instant>,
    on: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        let on = std::io::stderr().is_terminal();
        Self { total, done: 0.into(), shown: (Instant::now() - Duration::from_secs(1)).into(), on }
    }

    fn advance(&self, lines: usize) {
        self.done.set(self.done.get() + lines);
        if self.on && self.shown.get().elapsed() >= Duration::from_millis(200) {
            self.shown.set(Instant::now());
            self.draw();
        }
    }

    fn draw(&self) {
        const WIDTH: usize = 30;
        let done = self.done.get().min(self.total);
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        eprint!("\r[{}{}] {done}/{} lines", "#".repeat(filled), "-".repeat(WIDTH - filled), self.total);
    }

    fn finish(&self) {
        if self.on {
            self.draw();
            eprintln!();
        }
    }
}
