//! The read models against an oracle: random lead histories over 90 days of
//! business time go in through the gRPC API; every funnel, conversion and
//! lead-quality figure that comes out must equal what this file computes
//! naively from the list of what it sent (code written for the test alone:
//! it calls neither the projector nor the domain's read-model math). Then a
//! rebuild, and a projector killed mid-way, must give the same answers.

use std::collections::BTreeMap;
use std::time::Duration;

use leadger_tests::{Backend, Rng, ServerProcess, TestDatabase, TestServer, leadger_binary, pb};
use pb::lead_analytics_service_client::LeadAnalyticsServiceClient;
use pb::lead_command_service_client::LeadCommandServiceClient;
use tonic::transport::Channel;

const DAY_US: i64 = 86_400_000_000;

/// Test-data helpers on the harness's seeded generator.
trait Draw {
    fn chance(&mut self, percent: u64) -> bool;
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str;
}

impl Draw for Rng {
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.below(options.len() as u64) as usize]
    }
}

#[derive(Debug, Clone)]
enum Sent {
    Captured,
    Qualified,
    Assigned,
    Accepted { owner: String },
    Rejected { reason: String },
    Won { amount: Option<(i64, String)> },
    Lost { reason: String },
    Feedback { rating: u8 },
}

/// One lead as the test sent it.
#[derive(Debug, Clone)]
struct SentLead {
    source: String,
    campaign: String,
    persona: String,
    events: Vec<(i64, Sent)>,
}

/// The stage each step moves the lead to, if it moves it (test's own table).
fn entered(sent: &Sent) -> Option<i32> {
    use pb::Stage as S;
    Some(match sent {
        Sent::Captured => S::Captured,
        Sent::Qualified => S::Mql,
        Sent::Accepted { .. } => S::Sql,
        Sent::Rejected { .. } => S::Rejected,
        Sent::Won { .. } => S::Won,
        Sent::Lost { .. } => S::Lost,
        Sent::Assigned | Sent::Feedback { .. } => return None,
    } as i32)
}

/// A random lifecycle from `start_us` to before `end_us`; times only grow.
fn random_lead(rng: &mut Rng, start_us: i64, end_us: i64) -> SentLead {
    let mut lead = SentLead {
        source: rng.pick(&["web", "webinar", "partner", ""]).to_string(),
        campaign: rng.pick(&["spring", "autumn", ""]).to_string(),
        persona: rng.pick(&["cto", "cfo", "", "dev"]).to_string(),
        events: vec![(start_us, Sent::Captured)],
    };
    let mut at = start_us;
    let mut stage = pb::Stage::Captured;
    let mut seen_by_sales = false;
    loop {
        at += 1 + rng.below(3 * DAY_US as u64) as i64;
        if at >= end_us {
            break;
        }
        let step = match stage {
            pb::Stage::Captured => match rng.below(10) {
                0..=4 => Sent::Qualified,
                5 => Sent::Accepted { owner: rng.pick(&["ae-berlin", "ae-paris"]).to_string() },
                6 => Sent::Lost { reason: rng.pick(&["no-budget", "spam"]).to_string() },
                _ => break,
            },
            pb::Stage::Mql => match rng.below(10) {
                0 => Sent::Assigned,
                1..=4 => Sent::Accepted { owner: rng.pick(&["ae-berlin", "ae-paris"]).to_string() },
                5..=7 => Sent::Rejected { reason: rng.pick(&["not-ready", "bad-fit"]).to_string() },
                8 => Sent::Lost { reason: "no-budget".to_string() },
                _ => break,
            },
            pb::Stage::Sql => match rng.below(10) {
                0..=3 => Sent::Won {
                    amount: rng.chance(80).then(|| (1 + rng.below(5_000_000) as i64, rng.pick(&["EUR", "USD"]).into())),
                },
                4..=7 => Sent::Lost { reason: rng.pick(&["chose-competitor", "no-budget"]).to_string() },
                _ => break,
            },
            pb::Stage::Rejected => match rng.below(10) {
                0..=4 => Sent::Qualified,
                5..=6 => Sent::Lost { reason: "gave-up".to_string() },
                _ => break,
            },
            _ => {
                if seen_by_sales && rng.chance(50) && at < end_us {
                    lead.events.push((at, Sent::Feedback { rating: 1 + rng.below(5) as u8 }));
                }
                break;
            }
        };
        if let Some(next) = entered(&step) {
            stage = pb::Stage::try_from(next).expect("a stage");
        }
        seen_by_sales |= matches!(stage, pb::Stage::Mql | pb::Stage::Sql);
        lead.events.push((at, step));
        if seen_by_sales && !matches!(stage, pb::Stage::Won | pb::Stage::Lost) && rng.chance(15) {
            at += 1 + rng.below(DAY_US as u64) as i64;
            if at >= end_us {
                break;
            }
            lead.events.push((at, Sent::Feedback { rating: 1 + rng.below(5) as u8 }));
        }
    }
    lead
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Sends lead number `n`'s history; returns the last position.
async fn send(commands: &mut LeadCommandServiceClient<Channel>, n: usize, lead: &SentLead) -> u64 {
    let mut lead_id = String::new();
    let mut position = 0;
    for (at, step) in &lead.events {
        let occurred_at = Some(timestamp(*at));
        let id = lead_id.clone();
        let result: Result<Option<pb::CommandResult>, tonic::Status> = match step {
            Sent::Captured => commands
                .capture_lead(pb::CaptureLeadRequest {
                    email: format!("oracle{n}@example.org"),
                    source: lead.source.clone(),
                    campaign: lead.campaign.clone(),
                    persona: lead.persona.clone(),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().result),
            Sent::Qualified => commands
                .qualify_lead(pb::QualifyLeadRequest { lead_id: id, occurred_at, ..Default::default() })
                .await
                .map(|r| r.into_inner().result),
            Sent::Assigned => commands
                .assign_lead(pb::AssignLeadRequest {
                    lead_id: id,
                    assignee: "sdr-1".into(),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().result),
            Sent::Accepted { owner } => commands
                .accept_lead(pb::AcceptLeadRequest {
                    lead_id: id,
                    owner: owner.clone(),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().result),
            Sent::Rejected { reason } => commands
                .reject_lead(pb::RejectLeadRequest {
                    lead_id: id,
                    reason: reason.clone(),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().result),
            Sent::Won { amount } => commands
                .close_lead(pb::CloseLeadRequest {
                    lead_id: id,
                    outcome: pb::Outcome::Won as i32,
                    amount_minor: amount.as_ref().map_or(0, |(a, _)| *a),
                    currency: amount.as_ref().map_or(String::new(), |(_, c)| c.clone()),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().result),
            Sent::Lost { reason } => commands
                .close_lead(pb::CloseLeadRequest {
                    lead_id: id,
                    outcome: pb::Outcome::Lost as i32,
                    lost_reason: reason.clone(),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().result),
            Sent::Feedback { rating } => commands
                .record_feedback(pb::RecordFeedbackRequest {
                    lead_id: id,
                    rating: i32::from(*rating),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().result),
        };
        let result = result.unwrap_or_else(|status| panic!("lead {n}, {step:?}: {status:?}")).expect("a result");
        lead_id = result.lead_id;
        position = position.max(result.position);
    }
    position
}

/// Generates `count` leads over 90 days ending 5 days ago and sends them on
/// 8 connections; returns the leads and the last position.
async fn load(channel: Channel, count: usize, seed: u64) -> (Vec<SentLead>, i64, u64) {
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as i64;
    let base = now_us - 100 * DAY_US;
    let mut rng = Rng(seed);
    let leads: Vec<SentLead> = (0..count)
        .map(|_| {
            let start = base + rng.below(90 * DAY_US as u64) as i64;
            random_lead(&mut rng, start, now_us - DAY_US)
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..8 {
        let mut commands = LeadCommandServiceClient::new(channel.clone());
        let mine: Vec<(usize, SentLead)> = leads.iter().cloned().enumerate().skip(client).step_by(8).collect();
        tasks.spawn(async move {
            let mut last = 0;
            for (n, lead) in &mine {
                last = last.max(send(&mut commands, *n, lead).await);
            }
            last
        });
    }
    let last = tasks.join_all().await.into_iter().max().unwrap_or(0);
    (leads, base, last)
}

// ---- The oracle: each figure straight from the definitions ----

fn key(lead: &SentLead, group_by: pb::GroupBy) -> String {
    match group_by {
        pb::GroupBy::Unspecified => String::new(),
        pb::GroupBy::Source => lead.source.clone(),
        pb::GroupBy::Campaign => lead.campaign.clone(),
        pb::GroupBy::Persona => lead.persona.clone(),
        pb::GroupBy::Owner => lead
            .events
            .iter()
            .rev()
            .find_map(|(_, s)| match s {
                Sent::Accepted { owner } => Some(owner.clone()),
                _ => None,
            })
            .unwrap_or_default(),
    }
}

/// (stage, time) of every stage entry.
fn entries(lead: &SentLead) -> Vec<(i32, i64)> {
    lead.events.iter().filter_map(|(at, s)| entered(s).map(|stage| (stage, *at))).collect()
}

const STAGES: [pb::Stage; 6] =
    [pb::Stage::Captured, pb::Stage::Mql, pb::Stage::Sql, pb::Stage::Rejected, pb::Stage::Won, pb::Stage::Lost];

fn inside(at: i64, window: (i64, i64)) -> bool {
    window.0 <= at && at < window.1
}

fn oracle_funnel(leads: &[SentLead], window: (i64, i64), group_by: pb::GroupBy) -> Vec<pb::FunnelGroup> {
    let mut groups: BTreeMap<String, [[u64; 6]; 3]> = BTreeMap::new();
    for lead in leads {
        let counts = groups.entry(key(lead, group_by)).or_default();
        let entries = entries(lead);
        let now = entries.last().expect("a capture").0;
        let captured_at = entries[0].1;
        for (i, stage) in STAGES.iter().enumerate() {
            let stage = *stage as i32;
            if now == stage {
                counts[0][i] += 1;
            }
            if entries.iter().any(|(s, at)| *s == stage && inside(*at, window)) {
                counts[1][i] += 1;
            }
            if inside(captured_at, window) && entries.iter().any(|(s, _)| *s == stage) {
                counts[2][i] += 1;
            }
        }
    }
    let row = |c: &[u64; 6]| {
        STAGES.iter().zip(c).map(|(s, n)| pb::StageCount { stage: *s as i32, leads: *n }).collect::<Vec<_>>()
    };
    groups
        .into_iter()
        .map(|(key, c)| pb::FunnelGroup { key, current: row(&c[0]), period: row(&c[1]), cohort: row(&c[2]) })
        .collect()
}

/// Nearest rank, the test's own.
fn summary(mut micros: Vec<i64>) -> Option<pb::DurationSummary> {
    micros.sort();
    let pick = |p: usize| {
        if micros.is_empty() {
            return None;
        }
        let rank = (p * micros.len()).div_ceil(100).max(1);
        Some(micros[rank - 1] as f64 / 1_000_000.0)
    };
    Some(pb::DurationSummary { samples: micros.len() as u64, median_seconds: pick(50), p90_seconds: pick(90) })
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    if b == 0 { None } else { Some(a as f64 / b as f64) }
}

fn oracle_conversion(leads: &[SentLead], window: (i64, i64), group_by: pb::GroupBy) -> Vec<pb::ConversionGroup> {
    let mut groups: BTreeMap<String, Vec<&SentLead>> = BTreeMap::new();
    for lead in leads.iter().filter(|l| inside(l.events[0].0, window)) {
        groups.entry(key(lead, group_by)).or_default().push(lead);
    }
    let (mql, sql, won, lost) =
        (pb::Stage::Mql as i32, pb::Stage::Sql as i32, pb::Stage::Won as i32, pb::Stage::Lost as i32);
    groups
        .into_iter()
        .map(|(key, members)| {
            let mut g = pb::ConversionGroup { key, ..Default::default() };
            let (mut c2m, mut m2s, mut s2w, mut c2w) = (vec![], vec![], vec![], vec![]);
            let mut stays: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
            let mut amounts: BTreeMap<String, i64> = BTreeMap::new();
            for lead in members {
                let e = entries(lead);
                let captured = e[0].1;
                let first = |stage: i32| e.iter().find(|(s, _)| *s == stage).map(|(_, at)| *at);
                let first_mql_index = e.iter().position(|(s, _)| *s == mql);
                let sql_after_mql =
                    first_mql_index.and_then(|i| e[i..].iter().find(|(s, _)| *s == sql).map(|(_, at)| *at));
                g.captured += 1;
                if let Some(m) = first(mql) {
                    g.reached_mql += 1;
                    c2m.push(m - captured);
                }
                if first(sql).is_some() {
                    g.reached_sql += 1;
                }
                if let (Some(m), Some(s)) = (first(mql), sql_after_mql) {
                    g.reached_sql_after_mql += 1;
                    m2s.push(s - m);
                }
                if let Some(w) = first(won) {
                    g.won += 1;
                    c2w.push(w - captured);
                    if let Some(s) = first(sql) {
                        s2w.push(w - s);
                    }
                }
                if first(lost).is_some() {
                    g.lost += 1;
                }
                for (_, step) in &lead.events {
                    if let Sent::Won { amount: Some((a, currency)) } = step {
                        *amounts.entry(currency.clone()).or_default() += a;
                    }
                }
                for pair in e.windows(2) {
                    stays.entry(pair[0].0).or_default().push(pair[1].1 - pair[0].1);
                }
            }
            g.lead_to_mql_rate = ratio(g.reached_mql, g.captured);
            g.mql_to_sql_rate = ratio(g.reached_sql_after_mql, g.reached_mql);
            g.sql_to_won_rate = ratio(g.won, g.reached_sql);
            g.lead_to_won_rate = ratio(g.won, g.captured);
            g.won_amount = amounts
                .into_iter()
                .map(|(currency, amount_minor)| pb::CurrencyAmount { currency, amount_minor })
                .collect();
            g.captured_to_mql = summary(c2m);
            g.mql_to_sql = summary(m2s);
            g.sql_to_won = summary(s2w);
            g.captured_to_won = summary(c2w);
            g.time_in_stage = [pb::Stage::Captured, pb::Stage::Mql, pb::Stage::Sql, pb::Stage::Rejected]
                .iter()
                .map(|s| pb::StageDuration {
                    stage: *s as i32,
                    duration: summary(stays.remove(&(*s as i32)).unwrap_or_default()),
                })
                .collect();
            g
        })
        .collect()
}

fn oracle_quality(leads: &[SentLead], window: (i64, i64), group_by: pb::GroupBy) -> Vec<pb::QualityGroup> {
    let mut groups: BTreeMap<String, pb::QualityGroup> = BTreeMap::new();
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    // Rejection and lost reason counts per group.
    type Reasons = (BTreeMap<String, u64>, BTreeMap<String, u64>);
    let mut reasons: BTreeMap<String, Reasons> = BTreeMap::new();
    for lead in leads.iter().filter(|l| inside(l.events[0].0, window)) {
        let k = key(lead, group_by);
        let g = groups.entry(k.clone()).or_insert_with(|| pb::QualityGroup {
            key: k.clone(),
            rating_histogram: vec![0; 5],
            ..Default::default()
        });
        g.leads += 1;
        let (rejections, losses) = reasons.entry(k.clone()).or_default();
        let mut accepted = false;
        for (_, step) in &lead.events {
            match step {
                Sent::Feedback { rating } => {
                    g.feedback_count += 1;
                    *sums.entry(k.clone()).or_default() += u64::from(*rating);
                    g.rating_histogram[usize::from(*rating) - 1] += 1;
                }
                Sent::Rejected { reason } => *rejections.entry(reason.clone()).or_default() += 1,
                Sent::Lost { reason } => {
                    *losses.entry(reason.clone()).or_default() += 1;
                    g.accepted_lost += u64::from(accepted);
                }
                Sent::Accepted { .. } => accepted = true,
                Sent::Won { .. } => g.accepted_won += 1,
                _ => {}
            }
        }
    }
    groups
        .into_values()
        .map(|mut g| {
            let sum = sums.get(&g.key).copied().unwrap_or(0);
            g.mean_rating = ratio(sum, g.feedback_count);
            g.win_rate = ratio(g.accepted_won, g.accepted_won + g.accepted_lost);
            let (rejections, losses) = reasons.remove(&g.key).unwrap_or_default();
            let list = |m: BTreeMap<String, u64>| {
                m.into_iter().map(|(reason, count)| pb::ReasonCount { reason, count }).collect()
            };
            g.rejection_reasons = list(rejections);
            g.lost_reasons = list(losses);
            g
        })
        .collect()
}

fn filter(window: Option<(i64, i64)>, group_by: pb::GroupBy, min_position: u64) -> Option<pb::AnalyticsFilter> {
    Some(pb::AnalyticsFilter {
        from: window.map(|w| timestamp(w.0)),
        to: window.map(|w| timestamp(w.1)),
        group_by: group_by as i32,
        min_position,
    })
}

/// Every read model, for a few windows and every grouping.
type Answers = Vec<(Vec<pb::FunnelGroup>, Vec<pb::ConversionGroup>, Vec<pb::QualityGroup>)>;

async fn answers(analytics: &mut LeadAnalyticsServiceClient<Channel>, base: i64, min_position: u64) -> Answers {
    let mut all = Vec::new();
    for window in windows(base) {
        for group_by in GROUPINGS {
            let f = filter(window, group_by, min_position);
            let funnel = analytics.get_funnel(pb::GetFunnelRequest { filter: f }).await.expect("funnel").into_inner();
            assert!(funnel.as_of_position >= min_position);
            let conversion = analytics
                .get_conversion_rates(pb::GetConversionRatesRequest { filter: f })
                .await
                .expect("conversion")
                .into_inner();
            let quality = if group_by == pb::GroupBy::Owner {
                Vec::new()
            } else {
                analytics
                    .get_lead_quality(pb::GetLeadQualityRequest { filter: f })
                    .await
                    .expect("quality")
                    .into_inner()
                    .groups
            };
            all.push((funnel.groups, conversion.groups, quality));
        }
    }
    all
}

const GROUPINGS: [pb::GroupBy; 5] =
    [pb::GroupBy::Unspecified, pb::GroupBy::Source, pb::GroupBy::Campaign, pb::GroupBy::Persona, pb::GroupBy::Owner];

fn windows(base: i64) -> [Option<(i64, i64)>; 3] {
    [None, Some((base + 30 * DAY_US, base + 60 * DAY_US)), Some((base + 45 * DAY_US + 12_345, base + 46 * DAY_US))]
}

fn oracle(leads: &[SentLead], base: i64) -> Answers {
    let mut all = Vec::new();
    for window in windows(base) {
        let w = window.unwrap_or((i64::MIN, i64::MAX));
        for group_by in GROUPINGS {
            let quality = if group_by == pb::GroupBy::Owner { Vec::new() } else { oracle_quality(leads, w, group_by) };
            all.push((oracle_funnel(leads, w, group_by), oracle_conversion(leads, w, group_by), quality));
        }
    }
    all
}

fn assert_same(got: &Answers, want: &Answers) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.0, w.0, "funnel, case {i}");
        assert_eq!(g.1, w.1, "conversion, case {i}");
        assert_eq!(g.2, w.2, "lead quality, case {i}");
    }
}

async fn oracle_case(backend: Backend, leads: usize, seed: u64) {
    let server = TestServer::start(backend).await;
    // An agreement event in the log is no lead's journey.
    server
        .commands()
        .await
        .define_sla_policy(pb::DefineSlaPolicyRequest { request_id: "sla".into(), policy: None })
        .await
        .expect("define an SLA policy");
    let (sent, base, last) = load(server.channel().await, leads, seed).await;
    let mut analytics = server.analytics().await;
    let got = answers(&mut analytics, base, last).await;
    let want = oracle(&sent, base);
    assert_same(&got, &want);
    assert!(want[0].0[0].cohort.iter().all(|c| c.leads > 0), "every stage was reached: {:?}", want[0].0[0].cohort);

    // A rebuild gives the same answers.
    let output = tokio::process::Command::new(leadger_binary!())
        .args(["project", "--rebuild", "--database-url", &server.database.url])
        .output()
        .await
        .expect("run leadger project --rebuild");
    assert!(output.status.success(), "rebuild: {}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("up to position {last}")));
    assert_same(&answers(&mut analytics, base, last).await, &want);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_models_equal_the_oracle_and_a_rebuild() {
    oracle_case(Backend::Sqlite, 1500, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_models_equal_the_oracle_and_a_rebuild() {
    oracle_case(Backend::Postgres, 1000, 11).await;
}

/// `leadger project` on PostgreSQL, killed (SIGKILL) while it catches up
/// and started again: it ends where a rebuild ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_way_ends_equal_to_the_oracle() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let kek = database.kek_file.display().to_string();
    let args = ["--database-url", database.url.as_str(), "--kek-file", kek.as_str(), "--no-projector"];
    let server = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("serve");
    let (sent, base, last) = load(leadger_tests::connect(server.addr).await, 1500, 3).await;
    let log = leadger_store::PostgresLog::connect(&database.url).await.expect("connect");
    use leadger_store::JourneyStore;
    assert_eq!(log.journey_cursor().await.expect("cursor").position, 0, "no projector ran yet");

    let project = |ttl: &'static str| {
        tokio::process::Command::new(leadger_binary!())
            .args(["project", "--database-url", &database.url, "--lease-ttl", ttl])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn leadger project")
    };
    let mut first = project("1s");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let killed_at = loop {
        let position = log.journey_cursor().await.expect("cursor").position;
        if position > 0 {
            first.kill().await.expect("kill the projector");
            break position;
        }
        assert!(tokio::time::Instant::now() < deadline, "the projector never applied a batch");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(killed_at < last, "killed mid-way: at {killed_at} of {last}");
    let _second = project("1s");
    let mut analytics = LeadAnalyticsServiceClient::new(leadger_tests::connect(server.addr).await);
    assert_same(&answers(&mut analytics, base, last).await, &oracle(&sent, base));
}

/// Read-your-writes: a query for a position the model has not reached waits
/// until the deadline, then says so; bad filters name the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_position_waits_up_to_the_deadline_and_filters_are_checked() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (_, _, last) = load(server.channel().await, 20, 5).await;
    let mut analytics = server.analytics().await;
    let fresh = analytics
        .get_funnel(pb::GetFunnelRequest { filter: filter(None, pb::GroupBy::Unspecified, last) })
        .await
        .expect("the model reaches the last write")
        .into_inner();
    assert_eq!(fresh.as_of_position, last);
    assert!(fresh.as_of_time.is_some());

    let mut request =
        tonic::Request::new(pb::GetFunnelRequest { filter: filter(None, pb::GroupBy::Unspecified, last + 1) });
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = analytics.get_funnel(request).await.expect_err("position never reached");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered near the deadline: {:?}", started.elapsed());

    let backwards =
        Some(pb::AnalyticsFilter { from: Some(timestamp(10)), to: Some(timestamp(5)), ..Default::default() });
    let status = analytics.get_funnel(pb::GetFunnelRequest { filter: backwards }).await.expect_err("to < from");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("filter.to"), "{}", status.message());
    let unknown = Some(pb::AnalyticsFilter { group_by: 99, ..Default::default() });
    let status =
        analytics.get_conversion_rates(pb::GetConversionRatesRequest { filter: unknown }).await.expect_err("99");
    assert!(status.message().contains("filter.group_by"), "{}", status.message());
    let by_owner = filter(None, pb::GroupBy::Owner, 0);
    let status = analytics.get_lead_quality(pb::GetLeadQualityRequest { filter: by_owner }).await.expect_err("owner");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

/// A batch applied twice (a redelivery, or a second writer with the same
/// events) is refused by the cursor check and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applied_twice_changes_nothing() {
    use leadger_store::{EventLog, JourneyScope, JourneyStore};
    let server = TestServer::start(Backend::Postgres).await;
    let (_, _, last) = load(server.channel().await, 50, 9).await;
    let mut analytics = server.analytics().await;
    analytics
        .get_funnel(pb::GetFunnelRequest { filter: filter(None, pb::GroupBy::Unspecified, last) })
        .await
        .expect("caught up");
    let log = leadger_store::PostgresLog::connect(&server.database.url).await.expect("connect");
    let before = log.read_journeys(JourneyScope::All).await.expect("journeys");
    let cursor = log.journey_cursor().await.expect("cursor");
    assert_eq!(cursor.position, last);

    // Replay the last 10 events as the projector would have from position
    // last - 10: its cursor check fails, and nothing is written.
    let stale = leadger_store::JourneyCursor { position: last - 10, ..cursor };
    let events = log.read_log(last - 9, 10).await.expect("events");
    let mut journeys: std::collections::HashMap<_, _> = log
        .load_journeys(cursor.generation, &events.iter().map(|e| e.lead_id).collect::<Vec<_>>())
        .await
        .expect("load")
        .into_iter()
        .map(|j| (j.lead_id, j))
        .collect();
    leadger_projector::fold(&mut journeys, &events);
    let replayed: Vec<_> = journeys.into_values().collect();
    assert!(!log.save_journeys(stale, last, &replayed).await.expect("save"), "a stale batch is refused");
    let after = log.read_journeys(JourneyScope::All).await.expect("journeys");
    assert_eq!(after.position, before.position);
    let ids = |s: &leadger_store::JourneySnapshot| {
        let mut v: Vec<_> =
            s.journeys.iter().map(|j| (j.lead_id.as_uuid(), j.entries.len(), j.ratings.len())).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&after), ids(&before), "no journey changed");

    // The breach notifier's scope: exactly the leads in MQL or SQL now.
    let awaiting = log.read_journeys(JourneyScope::AwaitingSales).await.expect("awaiting sales");
    let mut want: Vec<_> = before
        .journeys
        .iter()
        .filter(|j| matches!(j.stage(), leadger_domain::Stage::Mql | leadger_domain::Stage::Sql))
        .map(|j| j.lead_id)
        .collect();
    let mut got: Vec<_> = awaiting.journeys.iter().map(|j| j.lead_id).collect();
    want.sort();
    got.sort();
    assert!(!want.is_empty() && want.len() < before.journeys.len(), "a mixed sample");
    assert_eq!(got, want);
    server.stop().await;
}
