//! `leadger demo`: the embedded server on a throwaway SQLite file, a quarter
//! of synthetic leads sent through its real gRPC API, and the reports.
//!
//! The leads follow the shape of a real B2B funnel: several sources and
//! campaigns with their own qualification and win rates, sales reps who
//! mostly answer within the SLA and sometimes late, a few MQLs nobody has
//! answered yet (open breaches), won deals with amounts, lost ones with
//! reasons, and feedback on lead quality. Everything is backdated with
//! `occurred_at`, exactly as an import from another CRM would be.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use leadger_grpc::{Background, ServerConfig};
use leadger_proto::leads::v1 as pb;
use leadger_store::{MissingKek, SqliteLog, Vault};
use tokio::net::TcpListener;

use crate::client::{Call, Server, ServerArgs, refused};
use crate::report::{self, GroupBy, WindowArgs};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many leads to capture over the quarter.
    #[arg(long, default_value_t = 600)]
    leads: u32,
    /// Seed of the synthetic data: the same seed gives the same leads and mix
    /// (their times are relative to now).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Also write the HTML report to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Keep serving on --listen after the reports, until ctrl-c, to explore
    /// with `leadger report …` or grpcurl.
    #[arg(long)]
    keep: bool,
    /// Where the demo server listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
/// The synthetic quarter: 13 weeks up to now.
const QUARTER: i64 = 91 * DAY;
/// Commands in flight at once (each lead's own commands go one after another).
const CONCURRENT_LEADS: usize = 32;

struct Source {
    name: &'static str,
    campaigns: &'static [&'static str],
    share: f64,
    qualify: f64,
    accept: f64,
    win: f64,
}

const SOURCES: &[Source] = &[
    Source {
        name: "web",
        campaigns: &["pricing-page", "ebook-forecasting"],
        share: 0.40,
        qualify: 0.45,
        accept: 0.62,
        win: 0.28,
    },
    Source {
        name: "event",
        campaigns: &["saastr-2026", "revops-summit"],
        share: 0.20,
        qualify: 0.55,
        accept: 0.70,
        win: 0.30,
    },
    Source { name: "partner", campaigns: &["partner-referral"], share: 0.15, qualify: 0.70, accept: 0.82, win: 0.42 },
    Source {
        name: "outbound",
        campaigns: &["cold-email-q3", "linkedin-abm"],
        share: 0.25,
        qualify: 0.30,
        accept: 0.55,
        win: 0.20,
    },
];
const REPS: &[&str] = &["ana", "ben", "chloe", "dev"];
const REJECTIONS: &[&str] = &["no-budget", "bad-fit", "duplicate", "wrong-contact"];
const LOST_REASONS: &[&str] = &["price", "competitor", "no-decision", "timing"];
const PERSONAS: &[&str] = &["revops", "sales-leader", "marketing-leader", "founder"];

/// A small deterministic generator (SplitMix64): the demo needs no crypto.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
    fn between(&mut self, low: i64, high: i64) -> i64 {
        low + (self.unit() * (high - low) as f64) as i64
    }
}

/// One lead's life: commands with their business times, in order.
struct Story {
    steps: Vec<(i64, Call)>,
}

fn story(rng: &mut Rng, index: u32, start: i64) -> Story {
    let mut roll = rng.unit();
    let source = SOURCES
        .iter()
        .find(|s| {
            roll -= s.share;
            roll < 0.0
        })
        .unwrap_or(&SOURCES[0]);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&rng.next().to_le_bytes());
    bytes[8..].copy_from_slice(&rng.next().to_le_bytes());
    let lead_id = uuid::Builder::from_random_bytes(bytes).into_uuid().to_string();
    let mut steps = Vec::new();
    let mut t = start + rng.between(0, QUARTER);
    steps.push((
        t,
        Call::Capture(pb::CaptureLeadRequest {
            lead_id: lead_id.clone(),
            email: format!("contact{index}@company{}.example", index % 97),
            name: format!("Contact {index}"),
            company: format!("Company {}", index % 97),
            source: source.name.to_string(),
            campaign: rng.pick(source.campaigns).to_string(),
            persona: rng.pick(PERSONAS).to_string(),
            ..Default::default()
        }),
    ));
    if !rng.chance(source.qualify) {
        return Story { steps };
    }
    t += rng.between(2 * HOUR, 5 * DAY);
    t = in_office_hours(rng, t);
    let rep = rng.pick(REPS).to_string();
    steps.push((
        t,
        Call::Qualify(pb::QualifyLeadRequest {
            lead_id: lead_id.clone(),
            score: Some(rng.between(40, 96) as i32),
            assignee: rep.clone(),
            ..Default::default()
        }),
    ));
    // Sales answers mostly within hours; one in six a day or more late; the
    // newest MQLs may still be waiting (open hand-offs).
    t += if rng.chance(0.17) { rng.between(DAY, 4 * DAY) } else { rng.between(10 * 60, 3 * HOUR) };
    t = in_office_hours(rng, t);
    let accepted = rng.chance(source.accept);
    let rating = |rng: &mut Rng, good: bool| if good { rng.between(3, 6) as i32 } else { rng.between(1, 4) as i32 };
    if accepted {
        steps.push((
            t,
            Call::Accept(pb::AcceptLeadRequest { lead_id: lead_id.clone(), owner: rep, ..Default::default() }),
        ));
    } else {
        let reason = rng.pick(REJECTIONS).to_string();
        steps.push((t, Call::Reject(pb::RejectLeadRequest { lead_id: lead_id.clone(), reason, ..Default::default() })));
        if rng.chance(0.6) {
            t += rng.between(HOUR, DAY);
            let rating = rating(rng, false);
            steps.push((
                t,
                Call::Feedback(pb::RecordFeedbackRequest {
                    lead_id: lead_id.clone(),
                    rating,
                    reason_codes: vec!["poor-fit".to_string()],
                    ..Default::default()
                }),
            ));
        }
        return Story { steps };
    }
    t += rng.between(3 * DAY, 45 * DAY);
    t = in_office_hours(rng, t);
    let won = rng.chance(source.win);
    steps.push((
        t,
        Call::Close(pb::CloseLeadRequest {
            lead_id: lead_id.clone(),
            outcome: if won { pb::Outcome::Won } else { pb::Outcome::Lost } as i32,
            amount_minor: if won { rng.between(50, 600) * 10_000 } else { 0 },
            currency: if won { "EUR".to_string() } else { String::new() },
            lost_reason: if won { String::new() } else { rng.pick(LOST_REASONS).to_string() },
            ..Default::default()
        }),
    ));
    if rng.chance(0.7) {
        t += rng.between(HOUR, 2 * DAY);
        let rating = rating(rng, won);
        let reason = if won { "good-fit" } else { "weak-intent" };
        steps.push((
            t,
            Call::Feedback(pb::RecordFeedbackRequest {
                lead_id,
                rating,
                reason_codes: vec![reason.to_string()],
                ..Default::default()
            }),
        ));
    }
    Story { steps }
}

/// `t`, or the next working moment after it (Mon–Fri 08:00–16:00 UTC, the
/// calendar's office hours in winter): people work in office hours.
fn in_office_hours(rng: &mut Rng, t: i64) -> i64 {
    let mut t = t;
    loop {
        let day = t.div_euclid(DAY);
        let weekday = (day + 3).rem_euclid(7); // 1970-01-01 was a Thursday: 0 = Monday
        let second = t.rem_euclid(DAY);
        if weekday >= 5 {
            t = (day + 1) * DAY + 8 * HOUR + rng.between(0, 2 * HOUR);
        } else if second < 8 * HOUR {
            t = day * DAY + 8 * HOUR + rng.between(0, 2 * HOUR);
        } else if second >= 16 * HOUR {
            t = (day + 1) * DAY + 8 * HOUR + rng.between(0, 2 * HOUR);
        } else {
            return t;
        }
    }
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// Sends one lead's commands in order; returns the last log position.
async fn tell(mut api: Server, story: Story) -> Result<u64, tonic::Status> {
    let mut position = 0;
    for (time, call) in story.steps {
        let result = call.send(&mut api, uuid::Uuid::new_v4().to_string(), at(time)).await?;
        position = position.max(result.map_or(0, |r| r.position));
    }
    Ok(position)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("leadger-demo-").tempdir().context("make a temp dir")?;
    let database = format!("sqlite://{}", dir.path().join("demo.db").display());
    let log = Arc::new(SqliteLog::connect(&database).await.with_context(|| format!("open {database}"))?);
    let (vault, _) = Vault::open(&dir.path().join("demo.kek"), MissingKek::Create)?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let mut background = Background::default();
    background.companions.push(crate::projector_companion(log.clone()));
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(leadger_grpc::serve_with(
        log,
        Arc::new(vault),
        listener,
        ServerConfig::default(),
        background,
        async {
            let _ = stop.await;
        },
    ));
    let client = ServerArgs {
        server: format!("http://{address}"),
        token: None,
        ca_cert: None,
        client_cert: None,
        client_key: None,
        json: false,
    };
    let mut api = client.connect().await?;
    eprintln!("leadger demo: embedded server on {address}, event log {database}");

    let now = jiff::Timestamp::now().as_second();
    let start = now - QUARTER;
    let policy = pb::DefineSlaPolicyRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        policy: Some(pb::SlaPolicy {
            accept_within: Some(prost_types::Duration { seconds: 4 * HOUR, nanos: 0 }),
            close_within: Some(prost_types::Duration { seconds: 30 * 8 * HOUR, nanos: 0 }),
            mql_target: Some(u64::from(args.leads) * 45 / 100 / 3),
            calendar: Some(pb::WorkingCalendar {
                time_zone: "Europe/Berlin".to_string(),
                working_days: vec![1, 2, 3, 4, 5],
                opens: "09:00".to_string(),
                closes: "17:00".to_string(),
                holidays: Vec::new(),
            }),
            effective_from: at(start - DAY),
            ..Default::default()
        }),
    };
    api.commands.define_sla_policy(policy).await.map_err(refused).context("define the SLA policy")?;

    let mut rng = Rng(args.seed);
    let stories: Vec<Story> = (0..args.leads)
        .map(|i| {
            let mut story = story(&mut rng, i, start);
            // What lies in the future has not happened yet.
            story.steps.retain(|(at, _)| *at <= now);
            story
        })
        .collect();
    let commands: usize = stories.iter().map(|s| s.steps.len()).sum();
    eprintln!("sending {commands} commands for {} leads captured over the last 13 weeks …", args.leads);
    let started = Instant::now();
    let sender = api.clone();
    let mut answers = futures_util::stream::iter(stories.into_iter().map(|story| tell(sender.clone(), story)))
        .buffer_unordered(CONCURRENT_LEADS);
    let mut last = 0;
    while let Some(answer) = answers.next().await {
        last = last.max(answer.map_err(refused).context("a demo command was refused")?);
    }
    drop(answers);
    let elapsed = started.elapsed();
    eprintln!(
        "sent {commands} commands in {:.1} s ({:.0} commands/s) through gRPC\n",
        elapsed.as_secs_f64(),
        commands as f64 / elapsed.as_secs_f64().max(1e-9)
    );

    let window = WindowArgs { min_position: last, ..WindowArgs::default() };
    println!("{}", report::fetch_funnel(&mut api, &window, None).await?.text());
    println!("Conversion by source");
    println!("{}", report::fetch_conversion(&mut api, &window, Some(GroupBy::Source)).await?.text());
    println!("SLA (sales answers MQLs within 4 working hours, Mon–Fri 09:00–17:00 Europe/Berlin)");
    println!("{}", report::fetch_sla(&mut api, &window).await?.text());
    println!("Lead quality by source");
    println!("{}", report::fetch_quality(&mut api, &window, Some(GroupBy::Source)).await?.text());
    if let Some(path) = &args.html {
        report::write_html(&mut api, &window, path).await?;
        eprintln!("wrote {}", path.display());
    }
    if args.keep {
        eprintln!("serving on {address} until ctrl-c; try: leadger report funnel --server http://{address}");
        crate::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    server.await.context("the demo server task")?.context("the demo server")?;
    Ok(())
}
