//! The client subcommands for people: `leadger lead …`, `leadger sla …` and
//! `leadger report …` call a running server over gRPC and print human
//! tables, or JSON with `--json`. Each command sends a fresh `request_id`
//! unless `--request-id` gives one, so a retried command with the same id is
//! applied once.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use leadger_proto::leads::v1 as pb;
use pb::lead_analytics_service_client::LeadAnalyticsServiceClient;
use pb::lead_command_service_client::LeadCommandServiceClient;
use pb::lead_query_service_client::LeadQueryServiceClient;
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::report;

/// Where the server is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server: http://HOST:PORT, or https://… for TLS.
    #[arg(long, env = "LEADGER_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    pub server: String,
    /// Bearer token of this caller (see `leadger token generate`).
    #[arg(long, env = "LEADGER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM CA certificate that signed the server's TLS certificate (required for https://).
    #[arg(long, env = "LEADGER_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, env = "LEADGER_CLIENT_CERT", requires = "client_key", global = true)]
    pub client_cert: Option<PathBuf>,
    /// PEM key of --client-cert.
    #[arg(long, env = "LEADGER_CLIENT_KEY", requires = "client_cert", global = true)]
    pub client_key: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// Connected stubs of the three services.
#[derive(Clone)]
pub struct Server {
    pub commands: LeadCommandServiceClient<Authed>,
    pub queries: LeadQueryServiceClient<Authed>,
    pub analytics: LeadAnalyticsServiceClient<Authed>,
}

impl ServerArgs {
    pub async fn connect(&self) -> anyhow::Result<Server> {
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .with_context(|| format!("--server {:?} is not a URL such as http://127.0.0.1:50051", self.server))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        if self.server.starts_with("https://") && self.ca_cert.is_none() {
            bail!(
                "--server {} uses TLS: give --ca-cert (LEADGER_CA_CERT), the CA that signed the server's certificate",
                self.server
            );
        }
        if self.server.starts_with("https://") || self.ca_cert.is_some() {
            let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("read {}", path.display()));
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).context("configure TLS")?;
        }
        let channel = endpoint.connect().await.with_context(|| format!("connect to {}", self.server))?;
        let token = match &self.token {
            Some(token) => Some(format!("Bearer {token}").parse().context("--token is not valid ASCII")?),
            None => None,
        };
        let bearer = Bearer(token);
        Ok(Server {
            commands: LeadCommandServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            queries: LeadQueryServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            analytics: LeadAnalyticsServiceClient::with_interceptor(channel, bearer),
        })
    }
}

/// What every command takes besides its own fields.
#[derive(Debug, Clone, Args)]
pub struct CommandArgs {
    /// Idempotency key: the same id applies the command once (default: new).
    #[arg(long)]
    request_id: Option<String>,
    /// When it happened (RFC 3339 or YYYY-MM-DD; default: now), for history.
    #[arg(long, value_parser = parse_time)]
    occurred_at: Option<prost_types::Timestamp>,
    /// Refuse unless the lead is at this version (optimistic concurrency).
    #[arg(long)]
    expected_version: Option<u64>,
}

impl CommandArgs {
    fn request_id(&self) -> String {
        self.request_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

#[derive(Debug, Subcommand)]
pub enum LeadCommand {
    /// Capture a new lead (marketing).
    Capture {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        company: String,
        #[arg(long, default_value = "")]
        phone: String,
        /// e.g. web, event, partner, outbound.
        #[arg(long, default_value = "")]
        source: String,
        #[arg(long, default_value = "")]
        campaign: String,
        #[arg(long, default_value = "")]
        persona: String,
        /// The lead's id in another system (e.g. the CRM you import from).
        #[arg(long, default_value = "")]
        external_ref: String,
        /// The new lead's id (default: the server picks one).
        #[arg(long, default_value = "")]
        lead_id: String,
        #[command(flatten)]
        common: CommandArgs,
    },
    /// Qualify a lead as an MQL and hand it to sales (marketing).
    Qualify {
        lead_id: String,
        /// 0 to 100.
        #[arg(long)]
        score: Option<i32>,
        #[arg(long, default_value = "")]
        note: String,
        /// The sales rep who must answer.
        #[arg(long, default_value = "")]
        assignee: String,
        #[command(flatten)]
        common: CommandArgs,
    },
    /// Give an MQL or SQL to another sales rep.
    Assign {
        lead_id: String,
        #[arg(long)]
        assignee: String,
        #[command(flatten)]
        common: CommandArgs,
    },
    /// Accept an MQL as an SQL (sales).
    Accept {
        lead_id: String,
        #[arg(long, default_value = "")]
        owner: String,
        #[command(flatten)]
        common: CommandArgs,
    },
    /// Send an MQL back to marketing with a reason (sales).
    Reject {
        lead_id: String,
        /// A reason code, e.g. no-budget, bad-fit, duplicate.
        #[arg(long)]
        reason: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        common: CommandArgs,
    },
    /// Close a lead won or lost.
    Close {
        lead_id: String,
        #[arg(long, value_enum)]
        outcome: CloseOutcome,
        /// Won amount in major units with two decimals, e.g. 12000.50.
        #[arg(long, requires = "currency")]
        amount: Option<String>,
        /// ISO 4217 code, e.g. EUR.
        #[arg(long, default_value = "")]
        currency: String,
        #[arg(long, default_value = "")]
        lost_reason: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        common: CommandArgs,
    },
    /// Rate the lead's quality for marketing (sales).
    Feedback {
        lead_id: String,
        /// 1 to 5.
        #[arg(long)]
        rating: i32,
        /// Repeat for several, e.g. --reason-code good-fit --reason-code fast-reply.
        #[arg(long = "reason-code")]
        reason_codes: Vec<String>,
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        common: CommandArgs,
    },
    /// Show a lead and its history.
    Show { lead_id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CloseOutcome {
    Won,
    Lost,
}

#[derive(Debug, Subcommand)]
pub enum SlaCommand {
    /// Define the SLA policy in force from now (or --effective-from) (admin).
    SetPolicy {
        /// Sales answers each MQL within this working time, e.g. 4h.
        #[arg(long, value_parser = crate::parse_duration)]
        accept_within: Duration,
        /// Sales closes each SQL within this working time, e.g. 30d.
        #[arg(long, value_parser = crate::parse_duration)]
        close_within: Duration,
        /// Marketing's monthly MQL quota.
        #[arg(long)]
        mql_target: Option<u64>,
        /// IANA time zone of the working calendar, e.g. Europe/Berlin (default: UTC, every hour counts).
        #[arg(long, default_value = "")]
        time_zone: String,
        /// Working days as ISO numbers (1 = Monday), e.g. 1,2,3,4,5.
        #[arg(long, value_delimiter = ',')]
        working_days: Vec<i32>,
        /// Opening time, e.g. 09:00.
        #[arg(long, default_value = "")]
        opens: String,
        /// Closing time, e.g. 17:00.
        #[arg(long, default_value = "")]
        closes: String,
        #[arg(long, value_parser = parse_time)]
        effective_from: Option<prost_types::Timestamp>,
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show the SLA policy versions.
    Policy,
    /// List SLA breaches: hand-offs past their deadline.
    Breaches {
        #[arg(long, value_enum)]
        kind: Option<BreachKind>,
        /// open: not answered yet; late: answered after the deadline.
        #[arg(long, value_enum)]
        state: Option<BreachState>,
        #[arg(long, default_value = "")]
        owner: String,
        #[command(flatten)]
        window: report::WindowArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BreachKind {
    Acceptance,
    Close,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BreachState {
    Open,
    Late,
}

/// One command of any kind, for the senders of many (`demo`, `import`).
pub enum Call {
    Capture(pb::CaptureLeadRequest),
    Qualify(pb::QualifyLeadRequest),
    Assign(pb::AssignLeadRequest),
    Accept(pb::AcceptLeadRequest),
    Reject(pb::RejectLeadRequest),
    Close(pb::CloseLeadRequest),
    Feedback(pb::RecordFeedbackRequest),
}

impl Call {
    /// Sends the command with this idempotency key and business time.
    pub async fn send(
        self,
        api: &mut Server,
        request_id: String,
        occurred_at: Option<prost_types::Timestamp>,
    ) -> Result<Option<pb::CommandResult>, tonic::Status> {
        let commands = &mut api.commands;
        Ok(match self {
            Call::Capture(r) => {
                commands
                    .capture_lead(pb::CaptureLeadRequest { request_id, occurred_at, ..r })
                    .await?
                    .into_inner()
                    .result
            }
            Call::Qualify(r) => {
                commands
                    .qualify_lead(pb::QualifyLeadRequest { request_id, occurred_at, ..r })
                    .await?
                    .into_inner()
                    .result
            }
            Call::Assign(r) => {
                commands.assign_lead(pb::AssignLeadRequest { request_id, occurred_at, ..r }).await?.into_inner().result
            }
            Call::Accept(r) => {
                commands.accept_lead(pb::AcceptLeadRequest { request_id, occurred_at, ..r }).await?.into_inner().result
            }
            Call::Reject(r) => {
                commands.reject_lead(pb::RejectLeadRequest { request_id, occurred_at, ..r }).await?.into_inner().result
            }
            Call::Close(r) => {
                commands.close_lead(pb::CloseLeadRequest { request_id, occurred_at, ..r }).await?.into_inner().result
            }
            Call::Feedback(r) => {
                commands
                    .record_feedback(pb::RecordFeedbackRequest { request_id, occurred_at, ..r })
                    .await?
                    .into_inner()
                    .result
            }
        })
    }
}

/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
pub fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let timestamp = match jiff::Timestamp::from_str(text) {
        Ok(timestamp) => timestamp,
        Err(_) => jiff::civil::Date::from_str(text)
            .and_then(|date| date.to_zoned(jiff::tz::TimeZone::UTC))
            .map(|zoned| zoned.timestamp())
            .map_err(|_| format!("{text:?} is not a date (2026-01-31) or an RFC 3339 time (2026-01-31T09:00:00Z)"))?,
    };
    Ok(prost_types::Timestamp { seconds: timestamp.as_second(), nanos: timestamp.subsec_nanosecond() })
}

/// `12000.50` → 1200050 minor units.
pub fn minor_units(amount: &str) -> anyhow::Result<i64> {
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let digits_ok = !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()) && fraction.len() <= 2;
    if !digits_ok || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        bail!("--amount {amount:?} must be a number with at most two decimals, e.g. 12000.50");
    }
    let whole: i64 = whole.parse().context("--amount is too large")?;
    let fraction: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    whole.checked_mul(100).and_then(|w| w.checked_add(fraction)).context("--amount is too large")
}

/// A refused call as an error that names the status code and the server's message.
pub fn refused(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut message = format!("{:?}: {}", status.code(), status.message());
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        for violation in &bad.field_violations {
            message.push_str(&format!("\n  {}: {}", violation.field, violation.description));
        }
    }
    anyhow::anyhow!(message)
}

fn print_result(json: bool, what: &str, result: Option<pb::CommandResult>) {
    let result = result.unwrap_or_default();
    let stage = report::stage_name(result.stage);
    if json {
        println!(
            "{}",
            json!({
                "lead_id": result.lead_id,
                "version": result.version,
                "position": result.position,
                "stage": stage,
                "replayed": result.replayed,
            })
        );
    } else {
        let replayed = if result.replayed { "; already applied with this request id, nothing changed" } else { "" };
        println!(
            "{what} lead {} (version {}, stage {stage}, log position {}{replayed})",
            result.lead_id, result.version, result.position
        );
    }
}

pub async fn lead(server: &ServerArgs, command: LeadCommand) -> anyhow::Result<()> {
    let mut api = server.connect().await?;
    let json = server.json;
    macro_rules! call {
        ($what:literal, $rpc:ident, $request:expr) => {{
            let response = api.commands.$rpc($request).await.map_err(refused)?.into_inner();
            print_result(json, $what, response.result);
        }};
    }
    match command {
        LeadCommand::Capture {
            email,
            name,
            company,
            phone,
            source,
            campaign,
            persona,
            external_ref,
            lead_id,
            common,
        } => {
            call!(
                "captured",
                capture_lead,
                pb::CaptureLeadRequest {
                    request_id: common.request_id(),
                    lead_id,
                    expected_version: common.expected_version,
                    occurred_at: common.occurred_at,
                    email,
                    name,
                    company,
                    phone,
                    source,
                    campaign,
                    persona,
                    external_ref,
                }
            )
        }
        LeadCommand::Qualify { lead_id, score, note, assignee, common } => call!(
            "qualified",
            qualify_lead,
            pb::QualifyLeadRequest {
                request_id: common.request_id(),
                lead_id,
                expected_version: common.expected_version,
                occurred_at: common.occurred_at,
                score,
                note,
                assignee,
            }
        ),
        LeadCommand::Assign { lead_id, assignee, common } => call!(
            "assigned",
            assign_lead,
            pb::AssignLeadRequest {
                request_id: common.request_id(),
                lead_id,
                expected_version: common.expected_version,
                occurred_at: common.occurred_at,
                assignee,
            }
        ),
        LeadCommand::Accept { lead_id, owner, common } => call!(
            "accepted",
            accept_lead,
            pb::AcceptLeadRequest {
                request_id: common.request_id(),
                lead_id,
                expected_version: common.expected_version,
                occurred_at: common.occurred_at,
                owner,
            }
        ),
        LeadCommand::Reject { lead_id, reason, note, common } => call!(
            "rejected",
            reject_lead,
            pb::RejectLeadRequest {
                request_id: common.request_id(),
                lead_id,
                expected_version: common.expected_version,
                occurred_at: common.occurred_at,
                reason,
                note,
            }
        ),
        LeadCommand::Close { lead_id, outcome, amount, currency, lost_reason, note, common } => {
            let amount_minor = amount.as_deref().map(minor_units).transpose()?.unwrap_or(0);
            let outcome = match outcome {
                CloseOutcome::Won => pb::Outcome::Won,
                CloseOutcome::Lost => pb::Outcome::Lost,
            };
            call!(
                "closed",
                close_lead,
                pb::CloseLeadRequest {
                    request_id: common.request_id(),
                    lead_id,
                    expected_version: common.expected_version,
                    occurred_at: common.occurred_at,
                    outcome: outcome as i32,
                    amount_minor,
                    currency,
                    lost_reason,
                    note,
                }
            )
        }
        LeadCommand::Feedback { lead_id, rating, reason_codes, comment, common } => {
            call!(
                "recorded feedback on",
                record_feedback,
                pb::RecordFeedbackRequest {
                    request_id: common.request_id(),
                    lead_id,
                    expected_version: common.expected_version,
                    occurred_at: common.occurred_at,
                    rating,
                    reason_codes,
                    comment,
                }
            )
        }
        LeadCommand::Show { lead_id } => {
            let response = api.queries.get_lead(pb::GetLeadRequest { lead_id }).await.map_err(refused)?.into_inner();
            report::print_lead(json, &response);
        }
    }
    Ok(())
}

pub async fn sla(server: &ServerArgs, command: SlaCommand) -> anyhow::Result<()> {
    let mut api = server.connect().await?;
    match command {
        SlaCommand::SetPolicy {
            accept_within,
            close_within,
            mql_target,
            time_zone,
            working_days,
            opens,
            closes,
            effective_from,
            request_id,
        } => {
            let duration = |d: Duration| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            };
            let calendar =
                (!time_zone.is_empty() || !working_days.is_empty() || !opens.is_empty() || !closes.is_empty())
                    .then(|| pb::WorkingCalendar { time_zone, working_days, opens, closes, holidays: Vec::new() });
            let policy = pb::SlaPolicy {
                accept_within: Some(duration(accept_within)),
                close_within: Some(duration(close_within)),
                mql_target,
                calendar,
                effective_from,
                ..Default::default()
            };
            let request = pb::DefineSlaPolicyRequest {
                request_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                policy: Some(policy),
            };
            let response = api.commands.define_sla_policy(request).await.map_err(refused)?.into_inner();
            if server.json {
                println!("{}", json!({"version": response.version, "position": response.position}));
            } else {
                println!("SLA policy version {} defined (log position {})", response.version, response.position);
            }
        }
        SlaCommand::Policy => {
            let response =
                api.analytics.get_sla_policy(pb::GetSlaPolicyRequest {}).await.map_err(refused)?.into_inner();
            report::print_policies(server.json, &response);
        }
        SlaCommand::Breaches { kind, state, owner, window } => {
            let breaches = report::fetch_breaches(&mut api, &window, kind, state, &owner).await?;
            report::print_breaches(server.json, &breaches);
        }
    }
    Ok(())
}
