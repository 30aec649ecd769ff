//! `leadger report …` and the printing of client answers: each report is
//! fetched into a view (a plain serde struct), which `--json` prints as is,
//! the terminal prints as a table (the funnel as bars) and `--html` renders
//! into one self-contained page. The outputs are drawn from the same views,
//! so for the same read-model position they show the same figures.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use leadger_proto::leads::v1 as pb;
use serde::Serialize;

use crate::client::{BreachKind, BreachState, Server, ServerArgs, parse_time, refused};

/// The window and grouping of a report.
#[derive(Debug, Clone, Default, Args)]
pub struct WindowArgs {
    /// Start of the window, inclusive (YYYY-MM-DD or RFC 3339; default: the beginning).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<prost_types::Timestamp>,
    /// End of the window, exclusive (default: no end).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<prost_types::Timestamp>,
    /// Wait until the read models include this log position (as a command
    /// printed it), so a report shows what was just written.
    #[arg(long, default_value_t = 0)]
    pub min_position: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GroupBy {
    Source,
    Campaign,
    Persona,
    /// The owner at acceptance (not for quality).
    Owner,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Leads by stage: now, entered in the window, and how far the window's
    /// captured leads got, with the conversion between stages, as bars.
    Funnel {
        #[command(flatten)]
        window: WindowArgs,
        #[arg(long, value_enum)]
        group_by: Option<GroupBy>,
        /// Also write a self-contained HTML report (funnel, conversion by
        /// source, acceptance rate by month, breaches) to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Conversion rates and times of the leads captured in the window.
    Conversion {
        #[command(flatten)]
        window: WindowArgs,
        #[arg(long, value_enum)]
        group_by: Option<GroupBy>,
    },
    /// SLA compliance of the hand-offs started in the window, and monthly goals.
    Sla {
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Sales' feedback on the quality of the leads captured in the window.
    Quality {
        #[command(flatten)]
        window: WindowArgs,
        #[arg(long, value_enum)]
        group_by: Option<GroupBy>,
    },
}

fn filter(window: &WindowArgs, group_by: Option<GroupBy>) -> pb::AnalyticsFilter {
    let group_by = match group_by {
        None => pb::GroupBy::Unspecified,
        Some(GroupBy::Source) => pb::GroupBy::Source,
        Some(GroupBy::Campaign) => pb::GroupBy::Campaign,
        Some(GroupBy::Persona) => pb::GroupBy::Persona,
        Some(GroupBy::Owner) => pb::GroupBy::Owner,
    };
    pb::AnalyticsFilter {
        from: window.from,
        to: window.to,
        group_by: group_by as i32,
        min_position: window.min_position,
    }
}

pub async fn run(server: &ServerArgs, command: ReportCommand) -> anyhow::Result<()> {
    let mut api = server.connect().await?;
    let json = server.json;
    match command {
        ReportCommand::Funnel { window, group_by, html } => {
            let funnel = fetch_funnel(&mut api, &window, group_by).await?;
            if let Some(path) = html {
                // The page shows the log as of the printed funnel's position, or later.
                let window = WindowArgs { min_position: funnel.as_of_position, ..window.clone() };
                write_html(&mut api, &window, &path).await?;
                eprintln!("wrote {}", path.display());
            }
            if json { print_json(&funnel) } else { print!("{}", funnel.text()) }
        }
        ReportCommand::Conversion { window, group_by } => {
            let conversion = fetch_conversion(&mut api, &window, group_by).await?;
            if json { print_json(&conversion) } else { print!("{}", conversion.text()) }
        }
        ReportCommand::Sla { window } => {
            let sla = fetch_sla(&mut api, &window).await?;
            if json { print_json(&sla) } else { print!("{}", sla.text()) }
        }
        ReportCommand::Quality { window, group_by } => {
            let quality = fetch_quality(&mut api, &window, group_by).await?;
            if json { print_json(&quality) } else { print!("{}", quality.text()) }
        }
    }
    Ok(())
}

/// Writes the HTML report of `window` to `path`.
pub async fn write_html(api: &mut Server, window: &WindowArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let funnel = fetch_funnel(api, window, None).await?;
    // The other parts read the read models at the funnel's position or later.
    let window = WindowArgs { min_position: funnel.as_of_position.max(window.min_position), ..window.clone() };
    let page = Page {
        funnel,
        conversion_by_source: fetch_conversion(api, &window, Some(GroupBy::Source)).await?,
        sla: fetch_sla(api, &window).await?,
        breaches: fetch_breaches(api, &window, None, None, "").await?,
    };
    std::fs::write(path, page.html()).with_context(|| format!("write {}", path.display()))
}

fn print_json(value: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")));
}

pub fn stage_name(stage: i32) -> &'static str {
    match pb::Stage::try_from(stage) {
        Ok(pb::Stage::Captured) => "CAPTURED",
        Ok(pb::Stage::Mql) => "MQL",
        Ok(pb::Stage::Sql) => "SQL",
        Ok(pb::Stage::Rejected) => "REJECTED",
        Ok(pb::Stage::Won) => "WON",
        Ok(pb::Stage::Lost) => "LOST",
        _ => "UNSPECIFIED",
    }
}

// ---- the funnel ----

#[derive(Debug, Serialize)]
pub struct FunnelReport {
    pub as_of_position: u64,
    pub groups: Vec<FunnelView>,
}

#[derive(Debug, Serialize)]
pub struct FunnelView {
    /// The group (source, campaign, …); empty without --group-by.
    pub key: String,
    pub stages: Vec<StageRow>,
    /// Of the window's captured leads: share that reached the next stage.
    pub lead_to_mql: Option<f64>,
    pub mql_to_sql: Option<f64>,
    pub sql_to_won: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct StageRow {
    pub stage: &'static str,
    /// Leads in the stage now.
    pub now: u64,
    /// Leads that entered the stage inside the window.
    pub entered: u64,
    /// Of the leads captured inside the window, those that ever reached the stage.
    pub reached: u64,
}

/// The funnel's stages in order, then the ways out.
const FUNNEL: [pb::Stage; 6] =
    [pb::Stage::Captured, pb::Stage::Mql, pb::Stage::Sql, pb::Stage::Won, pb::Stage::Rejected, pb::Stage::Lost];

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

pub async fn fetch_funnel(
    api: &mut Server,
    window: &WindowArgs,
    group_by: Option<GroupBy>,
) -> anyhow::Result<FunnelReport> {
    let request = pb::GetFunnelRequest { filter: Some(filter(window, group_by)) };
    let response = api.analytics.get_funnel(request).await.map_err(refused)?.into_inner();
    let count = |counts: &[pb::StageCount], stage: pb::Stage| {
        counts.iter().find(|c| c.stage == stage as i32).map_or(0, |c| c.leads)
    };
    let groups = response
        .groups
        .iter()
        .map(|group| {
            let stages: Vec<StageRow> = FUNNEL
                .iter()
                .map(|&stage| StageRow {
                    stage: stage_name(stage as i32),
                    now: count(&group.current, stage),
                    entered: count(&group.period, stage),
                    reached: count(&group.cohort, stage),
                })
                .collect();
            let reached = |stage: pb::Stage| count(&group.cohort, stage);
            FunnelView {
                key: group.key.clone(),
                lead_to_mql: ratio(reached(pb::Stage::Mql), reached(pb::Stage::Captured)),
                mql_to_sql: ratio(reached(pb::Stage::Sql), reached(pb::Stage::Mql)),
                sql_to_won: ratio(reached(pb::Stage::Won), reached(pb::Stage::Sql)),
                stages,
            }
        })
        .collect();
    Ok(FunnelReport { as_of_position: response.as_of_position, groups })
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

impl FunnelReport {
    /// The funnel as bars sized by the leads that reached each stage.
    pub fn text(&self) -> String {
        const WIDTH: f64 = 40.0;
        let mut out = String::new();
        for group in &self.groups {
            let title = if group.key.is_empty() { "all leads".to_string() } else { group.key.clone() };
            let _ = writeln!(
                out,
                "Funnel: {title}   (reached: of the window's captured leads; entered: in the window; now: today)"
            );
            let top = group.stages.first().map_or(0, |s| s.reached).max(1);
            let rates = [group.lead_to_mql, group.mql_to_sql, group.sql_to_won];
            for (i, row) in group.stages.iter().enumerate() {
                if i == 4 {
                    let _ = writeln!(out, "  ways out:");
                }
                let length = ((row.reached as f64 / top as f64) * WIDTH).round() as usize;
                let bar = format!("{}{}", "█".repeat(length), if length == 0 && row.reached > 0 { "▏" } else { "" });
                let _ = write!(
                    out,
                    "  {:<9} {:>7} {:<41} entered {:>6}  now {:>6}",
                    row.stage, row.reached, bar, row.entered, row.now
                );
                if (1..4).contains(&i) {
                    let _ = write!(out, "   {} from {}", percent(rates[i - 1]), group.stages[i - 1].stage);
                }
                out.push('\n');
            }
            out.push('\n');
        }
        let _ = writeln!(out, "as of log position {}", self.as_of_position);
        out
    }
}

// ---- conversion ----

#[derive(Debug, Serialize)]
pub struct ConversionReport {
    pub as_of_position: u64,
    pub groups: Vec<ConversionView>,
}

#[derive(Debug, Serialize)]
pub struct ConversionView {
    pub key: String,
    pub captured: u64,
    pub reached_mql: u64,
    pub reached_sql: u64,
    pub won: u64,
    pub lost: u64,
    pub lead_to_mql_rate: Option<f64>,
    pub mql_to_sql_rate: Option<f64>,
    pub sql_to_won_rate: Option<f64>,
    pub lead_to_won_rate: Option<f64>,
    pub won_amount: Vec<Amount>,
    pub median_days_captured_to_won: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Amount {
    pub currency: String,
    pub amount_minor: i64,
}

fn amounts(amounts: &[pb::CurrencyAmount]) -> Vec<Amount> {
    amounts.iter().map(|a| Amount { currency: a.currency.clone(), amount_minor: a.amount_minor }).collect()
}

fn show_amounts(amounts: &[Amount]) -> String {
    if amounts.is_empty() {
        return "-".to_string();
    }
    let shown: Vec<String> = amounts
        .iter()
        .map(|a| {
            let sign = if a.amount_minor < 0 { "-" } else { "" };
            let units = a.amount_minor.unsigned_abs();
            format!("{} {sign}{}.{:02}", a.currency, units / 100, units % 100)
        })
        .collect();
    shown.join(", ")
}

pub async fn fetch_conversion(
    api: &mut Server,
    window: &WindowArgs,
    group_by: Option<GroupBy>,
) -> anyhow::Result<ConversionReport> {
    let request = pb::GetConversionRatesRequest { filter: Some(filter(window, group_by)) };
    let response = api.analytics.get_conversion_rates(request).await.map_err(refused)?.into_inner();
    let groups = response
        .groups
        .iter()
        .map(|g| ConversionView {
            key: g.key.clone(),
            captured: g.captured,
            reached_mql: g.reached_mql,
            reached_sql: g.reached_sql,
            won: g.won,
            lost: g.lost,
            lead_to_mql_rate: g.lead_to_mql_rate,
            mql_to_sql_rate: g.mql_to_sql_rate,
            sql_to_won_rate: g.sql_to_won_rate,
            lead_to_won_rate: g.lead_to_won_rate,
            won_amount: amounts(&g.won_amount),
            median_days_captured_to_won: g
                .captured_to_won
                .as_ref()
                .and_then(|d| d.median_seconds)
                .map(|s| s / 86_400.0),
        })
        .collect();
    Ok(ConversionReport { as_of_position: response.as_of_position, groups })
}

/// Fixed-width columns: the first left-aligned, the others right-aligned.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            let pad = width - cell.chars().count();
            if i == 0 {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{cell}", " ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn group_name(key: &str) -> String {
    if key.is_empty() { "(all)".to_string() } else { key.to_string() }
}

impl ConversionReport {
    pub fn text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .groups
            .iter()
            .map(|g| {
                vec![
                    group_name(&g.key),
                    g.captured.to_string(),
                    g.reached_mql.to_string(),
                    g.reached_sql.to_string(),
                    g.won.to_string(),
                    g.lost.to_string(),
                    percent(g.lead_to_mql_rate),
                    percent(g.mql_to_sql_rate),
                    percent(g.sql_to_won_rate),
                    percent(g.lead_to_won_rate),
                    g.median_days_captured_to_won.map_or("-".to_string(), |d| format!("{d:.1}")),
                    show_amounts(&g.won_amount),
                ]
            })
            .collect();
        let headers = [
            "group",
            "captured",
            "mql",
            "sql",
            "won",
            "lost",
            "lead→mql",
            "mql→sql",
            "sql→won",
            "lead→won",
            "days to won",
            "won amount",
        ];
        format!("{}as of log position {}\n", table(&headers, &rows), self.as_of_position)
    }
}

// ---- SLA ----

#[derive(Debug, Serialize)]
pub struct SlaReport {
    pub as_of_position: u64,
    pub acceptance: HandoffView,
    pub close: HandoffView,
    pub months: Vec<MonthView>,
    pub review_overdue: bool,
}

#[derive(Debug, Serialize)]
pub struct HandoffView {
    pub started: u64,
    pub within_sla: u64,
    pub resolved_late: u64,
    pub open_breached: u64,
    pub pending: u64,
    pub share_within_sla: Option<f64>,
    pub median_response_working_hours: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct MonthView {
    pub month: String,
    pub mql_count: u64,
    pub mql_target: Option<u64>,
    pub accepted: u64,
    pub ended_acceptance: u64,
    pub acceptance_rate: Option<f64>,
    pub won_amount: Vec<Amount>,
    pub provisional: bool,
}

fn handoff_view(report: Option<&pb::HandoffReport>) -> HandoffView {
    let r = report.cloned().unwrap_or_default();
    HandoffView {
        started: r.started,
        within_sla: r.within_sla,
        resolved_late: r.resolved_late,
        open_breached: r.open_breached,
        pending: r.pending,
        share_within_sla: r.share_within_sla,
        median_response_working_hours: r.response_working.and_then(|t| t.median_seconds).map(|s| s / 3600.0),
    }
}

pub async fn fetch_sla(api: &mut Server, window: &WindowArgs) -> anyhow::Result<SlaReport> {
    let request = pb::GetSlaReportRequest { from: window.from, to: window.to, min_position: window.min_position };
    let r = api.analytics.get_sla_report(request).await.map_err(refused)?.into_inner();
    Ok(SlaReport {
        as_of_position: r.as_of_position,
        acceptance: handoff_view(r.acceptance.as_ref()),
        close: handoff_view(r.close.as_ref()),
        months: r
            .months
            .iter()
            .map(|m| MonthView {
                month: m.month.clone(),
                mql_count: m.mql_count,
                mql_target: m.mql_target,
                accepted: m.accepted,
                ended_acceptance: m.ended_acceptance,
                acceptance_rate: m.acceptance_rate,
                won_amount: amounts(&m.won_amount),
                provisional: m.provisional,
            })
            .collect(),
        review_overdue: r.review_overdue,
    })
}

impl SlaReport {
    pub fn text(&self) -> String {
        let handoff = |name: &str, h: &HandoffView| {
            vec![
                name.to_string(),
                h.started.to_string(),
                h.within_sla.to_string(),
                h.resolved_late.to_string(),
                h.open_breached.to_string(),
                h.pending.to_string(),
                percent(h.share_within_sla),
                h.median_response_working_hours.map_or("-".to_string(), |h| format!("{h:.1}")),
            ]
        };
        let mut out = table(
            &["hand-off", "started", "in time", "late", "open breach", "pending", "in SLA", "median h"],
            &[handoff("MQL → accept/reject", &self.acceptance), handoff("SQL → close", &self.close)],
        );
        out.push('\n');
        let months: Vec<Vec<String>> = self
            .months
            .iter()
            .map(|m| {
                vec![
                    format!("{}{}", m.month, if m.provisional { "*" } else { "" }),
                    m.mql_count.to_string(),
                    m.mql_target.map_or("-".to_string(), |t| t.to_string()),
                    percent(m.acceptance_rate),
                    show_amounts(&m.won_amount),
                ]
            })
            .collect();
        out.push_str(&table(&["month", "MQLs", "MQL target", "accepted", "won amount"], &months));
        if self.months.iter().any(|m| m.provisional) {
            out.push_str("* hand-offs of the month are still pending\n");
        }
        if self.review_overdue {
            out.push_str("the SLA policy in force is past its review date\n");
        }
        let _ = writeln!(out, "as of log position {}", self.as_of_position);
        out
    }
}

// ---- quality ----

#[derive(Debug, Serialize)]
pub struct QualityReport {
    pub as_of_position: u64,
    pub groups: Vec<QualityView>,
}

#[derive(Debug, Serialize)]
pub struct QualityView {
    pub key: String,
    pub leads: u64,
    pub feedback_count: u64,
    pub mean_rating: Option<f64>,
    pub win_rate: Option<f64>,
    pub rejection_reasons: Vec<(String, u64)>,
    pub lost_reasons: Vec<(String, u64)>,
}

pub async fn fetch_quality(
    api: &mut Server,
    window: &WindowArgs,
    group_by: Option<GroupBy>,
) -> anyhow::Result<QualityReport> {
    let request = pb::GetLeadQualityRequest { filter: Some(filter(window, group_by)) };
    let response = api.analytics.get_lead_quality(request).await.map_err(refused)?.into_inner();
    let reasons = |counts: &[pb::ReasonCount]| counts.iter().map(|c| (c.reason.clone(), c.count)).collect();
    let groups = response
        .groups
        .iter()
        .map(|g| QualityView {
            key: g.key.clone(),
            leads: g.leads,
            feedback_count: g.feedback_count,
            mean_rating: g.mean_rating,
            win_rate: g.win_rate,
            rejection_reasons: reasons(&g.rejection_reasons),
            lost_reasons: reasons(&g.lost_reasons),
        })
        .collect();
    Ok(QualityReport { as_of_position: response.as_of_position, groups })
}

impl QualityReport {
    pub fn text(&self) -> String {
        let top = |reasons: &[(String, u64)]| {
            let mut reasons = reasons.to_vec();
            reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let shown: Vec<String> = reasons.iter().take(3).map(|(r, n)| format!("{r} {n}")).collect();
            if shown.is_empty() { "-".to_string() } else { shown.join(", ") }
        };
        let rows: Vec<Vec<String>> = self
            .groups
            .iter()
            .map(|g| {
                vec![
                    group_name(&g.key),
                    g.leads.to_string(),
                    g.feedback_count.to_string(),
                    g.mean_rating.map_or("-".to_string(), |r| format!("{r:.2}")),
                    percent(g.win_rate),
                    top(&g.rejection_reasons),
                    top(&g.lost_reasons),
                ]
            })
            .collect();
        let headers = ["group", "leads", "feedback", "rating", "win rate", "top rejections", "top lost reasons"];
        format!("{}as of log position {}\n", table(&headers, &rows), self.as_of_position)
    }
}

// ---- breaches, leads, policies ----

#[derive(Debug, Serialize)]
pub struct BreachView {
    pub lead_id: String,
    pub kind: &'static str,
    pub state: &'static str,
    pub deadline: String,
    pub overdue_working_hours: f64,
    pub owner: String,
    pub source: String,
    pub campaign: String,
}

/// Every breach matching the filters, all pages.
pub async fn fetch_breaches(
    api: &mut Server,
    window: &WindowArgs,
    kind: Option<BreachKind>,
    state: Option<BreachState>,
    owner: &str,
) -> anyhow::Result<Vec<BreachView>> {
    let kind = match kind {
        None => pb::HandoffKind::Unspecified,
        Some(BreachKind::Acceptance) => pb::HandoffKind::Acceptance,
        Some(BreachKind::Close) => pb::HandoffKind::Close,
    };
    let state = match state {
        None => pb::BreachState::Unspecified,
        Some(BreachState::Open) => pb::BreachState::Open,
        Some(BreachState::Late) => pb::BreachState::ResolvedLate,
    };
    let mut breaches = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListSlaBreachesRequest {
            from: window.from,
            to: window.to,
            kind: kind as i32,
            state: state as i32,
            owner: owner.to_string(),
            page_size: 1000,
            page_token: page_token.clone(),
            min_position: window.min_position,
            ..Default::default()
        };
        let response = api.analytics.list_sla_breaches(request).await.map_err(refused)?.into_inner();
        breaches.extend(response.breaches.into_iter().map(|b| BreachView {
            kind: if b.kind == pb::HandoffKind::Close as i32 { "close" } else { "acceptance" },
            state: if b.state == pb::BreachState::Open as i32 { "open" } else { "late" },
            deadline: b.deadline.map(rfc3339).unwrap_or_default(),
            overdue_working_hours: b.overdue_working_seconds / 3600.0,
            lead_id: b.lead_id,
            owner: b.owner,
            source: b.source,
            campaign: b.campaign,
        }));
        if response.next_page_token.is_empty() {
            return Ok(breaches);
        }
        page_token = response.next_page_token;
    }
}

pub fn print_breaches(json: bool, breaches: &[BreachView]) {
    if json {
        return print_json(&breaches);
    }
    let rows: Vec<Vec<String>> = breaches
        .iter()
        .map(|b| {
            vec![
                b.lead_id.clone(),
                b.kind.to_string(),
                b.state.to_string(),
                b.deadline.clone(),
                format!("{:.1}", b.overdue_working_hours),
                b.owner.clone(),
                b.source.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["lead", "kind", "state", "deadline", "overdue h", "owner", "source"], &rows));
    println!("{} breaches", breaches.len());
}

fn rfc3339(timestamp: prost_types::Timestamp) -> String {
    jiff::Timestamp::new(timestamp.seconds, timestamp.nanos).map(|t| t.to_string()).unwrap_or_default()
}

pub fn print_lead(json: bool, response: &pb::GetLeadResponse) {
    let lead = response.lead.clone().unwrap_or_default();
    let events: Vec<serde_json::Value> = response
        .events
        .iter()
        .map(|e| {
            serde_json::json!({
                "version": e.version,
                "type": e.r#type,
                "occurred_at": e.occurred_at.map(rfc3339),
                "client_id": e.client_id,
            })
        })
        .collect();
    if json {
        return print_json(&serde_json::json!({
            "lead_id": lead.lead_id,
            "stage": stage_name(lead.stage),
            "version": lead.version,
            "email": lead.email,
            "name": lead.name,
            "company": lead.company,
            "source": lead.source,
            "campaign": lead.campaign,
            "score": lead.score,
            "assignee": lead.assignee,
            "owner": lead.owner,
            "erased": lead.erased,
            "events": events,
        }));
    }
    println!("lead {}  stage {}  version {}", lead.lead_id, stage_name(lead.stage), lead.version);
    if lead.erased {
        println!("  personal data erased");
    } else {
        println!("  {} <{}>  {}", lead.name, lead.email, lead.company);
    }
    println!("  source {}  campaign {}  assignee {}  owner {}", lead.source, lead.campaign, lead.assignee, lead.owner);
    let rows: Vec<Vec<String>> = response
        .events
        .iter()
        .map(|e| {
            vec![
                e.version.to_string(),
                e.r#type.clone(),
                e.occurred_at.map(rfc3339).unwrap_or_default(),
                e.client_id.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["version", "event", "occurred at", "by"], &rows));
}

/// Seconds in the largest unit that divides them: 4h, 90m, 45s.
fn duration(seconds: i64) -> String {
    match seconds {
        0 => "0".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub fn print_policies(json: bool, response: &pb::GetSlaPolicyResponse) {
    let seconds = |d: &Option<prost_types::Duration>| d.as_ref().map_or(0, |d| d.seconds);
    let views: Vec<serde_json::Value> = response
        .versions
        .iter()
        .map(|v| {
            let p = v.policy.clone().unwrap_or_default();
            serde_json::json!({
                "version": v.version,
                "accept_within_seconds": seconds(&p.accept_within),
                "close_within_seconds": seconds(&p.close_within),
                "mql_target": p.mql_target,
                "time_zone": p.calendar.as_ref().map(|c| c.time_zone.clone()),
                "effective_from": p.effective_from.map(rfc3339),
            })
        })
        .collect();
    if json {
        return print_json(&views);
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let text = |key: &str| match &v[key] {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                text("version"),
                duration(v["accept_within_seconds"].as_i64().unwrap_or(0)),
                duration(v["close_within_seconds"].as_i64().unwrap_or(0)),
                text("mql_target"),
                text("time_zone"),
                text("effective_from"),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["version", "accept within", "close within", "MQL target", "time zone", "effective from"], &rows)
    );
}

// ---- the HTML page ----

/// What the HTML report shows.
struct Page {
    funnel: FunnelReport,
    conversion_by_source: ConversionReport,
    sla: SlaReport,
    breaches: Vec<BreachView>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn rate_attr(rate: Option<f64>) -> String {
    rate.map_or(String::new(), |r| format!("{r}"))
}

impl Page {
    /// One HTML file with inline CSS and SVG: no script, no fetch, no font.
    /// Every figure an element draws is in its `data-*` attributes too.
    fn html(&self) -> String {
        let mut body = String::new();
        let _ = writeln!(
            body,
            "<h1>leadger report</h1><p class=\"meta\">as of log position {}</p>",
            self.funnel.as_of_position
        );
        // Funnel.
        body.push_str("<section id=\"funnel\"><h2>Funnel</h2>\n");
        for group in &self.funnel.groups {
            let top = group.stages.first().map_or(0, |s| s.reached).max(1) as f64;
            let rows = group.stages.len();
            let _ = writeln!(
                body,
                "<svg class=\"funnel\" viewBox=\"0 0 720 {}\" role=\"img\" aria-label=\"funnel\">",
                rows * 34 + 4
            );
            for (i, row) in group.stages.iter().enumerate() {
                let width = (row.reached as f64 / top * 480.0).max(1.0);
                let y = i * 34 + 2;
                let _ = writeln!(
                    body,
                    "<g class=\"stage\" data-stage=\"{s}\" data-count=\"{c}\" data-now=\"{n}\"><text x=\"0\" y=\"{ty}\">{s}</text><rect x=\"110\" y=\"{y}\" width=\"{width:.1}\" height=\"26\" class=\"bar-{cls}\"/><text x=\"{tx:.1}\" y=\"{ty}\">{c}</text></g>",
                    s = row.stage,
                    c = row.reached,
                    n = row.now,
                    ty = y + 18,
                    cls = if i < 4 { "main" } else { "out" },
                    tx = 118.0 + width,
                );
            }
            body.push_str("</svg>\n");
            let _ = writeln!(
                body,
                "<p class=\"rates\" data-lead-to-mql=\"{}\" data-mql-to-sql=\"{}\" data-sql-to-won=\"{}\">lead → MQL {} · MQL → SQL {} · SQL → won {}</p>",
                rate_attr(group.lead_to_mql),
                rate_attr(group.mql_to_sql),
                rate_attr(group.sql_to_won),
                percent(group.lead_to_mql),
                percent(group.mql_to_sql),
                percent(group.sql_to_won)
            );
        }
        body.push_str("</section>\n");
        // Conversion by source.
        body.push_str("<section id=\"conversion\"><h2>Conversion by source (lead → won)</h2>\n");
        let groups = &self.conversion_by_source.groups;
        let _ = writeln!(
            body,
            "<svg viewBox=\"0 0 720 {}\" role=\"img\" aria-label=\"conversion by source\">",
            groups.len() * 30 + 4
        );
        for (i, g) in groups.iter().enumerate() {
            let rate = g.lead_to_won_rate.unwrap_or(0.0);
            let y = i * 30 + 2;
            let _ = writeln!(
                body,
                "<g class=\"source\" data-source=\"{key}\" data-captured=\"{cap}\" data-won=\"{won}\" data-rate=\"{attr}\"><text x=\"0\" y=\"{ty}\">{key}</text><rect x=\"140\" y=\"{y}\" width=\"{w:.1}\" height=\"22\" class=\"bar-main\"/><text x=\"{tx:.1}\" y=\"{ty}\">{shown} of {cap}</text></g>",
                key = escape(&group_name(&g.key)),
                cap = g.captured,
                won = g.won,
                attr = rate_attr(g.lead_to_won_rate),
                ty = y + 16,
                w = (rate * 440.0).max(1.0),
                tx = 148.0 + (rate * 440.0).max(1.0),
                shown = percent(g.lead_to_won_rate),
            );
        }
        body.push_str("</svg></section>\n");
        // Acceptance rate by month.
        body.push_str(
            "<section id=\"sla\"><h2>Acceptance rate by month (MQLs accepted, of those sales answered)</h2>\n",
        );
        let months = &self.sla.months;
        let _ = writeln!(body, "<svg viewBox=\"0 0 720 220\" role=\"img\" aria-label=\"acceptance rate by month\">");
        let column = if months.is_empty() { 0.0 } else { 700.0 / months.len() as f64 };
        for (i, m) in months.iter().enumerate() {
            let rate = m.acceptance_rate.unwrap_or(0.0);
            let height = rate * 170.0;
            let x = 10.0 + i as f64 * column;
            let _ = writeln!(
                body,
                "<g class=\"month\" data-month=\"{month}\" data-rate=\"{attr}\" data-mql=\"{mql}\"><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{height:.1}\" class=\"bar-main\"/><text x=\"{x:.1}\" y=\"215\">{month}</text><text x=\"{x:.1}\" y=\"{ly:.1}\">{shown}</text></g>",
                month = escape(&m.month),
                attr = rate_attr(m.acceptance_rate),
                mql = m.mql_count,
                y = 190.0 - height,
                w = (column - 12.0).max(4.0),
                ly = 185.0 - height,
                shown = percent(m.acceptance_rate),
            );
        }
        body.push_str("</svg>\n");
        let _ = writeln!(
            body,
            "<p data-acceptance-share=\"{}\" data-close-share=\"{}\">Acceptance in SLA: {} · Close in SLA: {}</p></section>",
            rate_attr(self.sla.acceptance.share_within_sla),
            rate_attr(self.sla.close.share_within_sla),
            percent(self.sla.acceptance.share_within_sla),
            percent(self.sla.close.share_within_sla)
        );
        // Breaches.
        let _ = writeln!(
            body,
            "<section id=\"breaches\"><h2>SLA breaches ({})</h2><table data-count=\"{}\"><tr><th>lead</th><th>kind</th><th>state</th><th>deadline</th><th>overdue h</th><th>owner</th><th>source</th></tr>",
            self.breaches.len(),
            self.breaches.len()
        );
        for b in &self.breaches {
            let _ = writeln!(
                body,
                "<tr class=\"breach\" data-lead-id=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                escape(&b.lead_id),
                escape(&b.lead_id),
                b.kind,
                b.state,
                escape(&b.deadline),
                b.overdue_working_hours,
                escape(&b.owner),
                escape(&b.source)
            );
        }
        body.push_str("</table></section>\n");
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>leadger report</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n"
        )
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:60em}\
h2{margin-top:1.6em;border-bottom:1px solid #ddd}svg{width:100%;height:auto;font-size:14px}\
.bar-main{fill:#3b7dd8}.bar-out{fill:#c8553d}.meta,.rates{color:#555}\
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}";
