//! Who may call what: bearer tokens and roles (the whole role × RPC matrix),
//! mutual TLS naming the caller, the audit trail in event metadata, and the
//! binary's refusal to expose an unprotected server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadger_grpc::{Authenticator, Credentials, ServerConfig};
use leadger_store::SqliteLog;
use leadger_tests::{Backend, ServerProcess, TestDatabase, TestServer, leadger_binary, pb};
use pb::lead_analytics_service_client::LeadAnalyticsServiceClient;
use pb::lead_command_service_client::LeadCommandServiceClient;
use pb::lead_query_service_client::LeadQueryServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Code, Request};

const ROLES: [&str; 4] = ["marketing", "sales", "analytics", "admin"];

/// Which roles may call each RPC, written out from the issue's table rather
/// than derived from the code under test.
const MATRIX: &[(&str, &[&str])] = &[
    ("CaptureLead", &["marketing"]),
    ("QualifyLead", &["marketing"]),
    ("AssignLead", &["marketing", "sales"]),
    ("AcceptLead", &["sales"]),
    ("RejectLead", &["sales"]),
    ("CloseLead", &["marketing", "sales"]),
    ("RecordFeedback", &["sales"]),
    ("DefineSlaPolicy", &["admin"]),
    ("EraseLead", &["admin"]),
    ("GetLead", &ROLES),
    ("ReadLog", &ROLES),
    ("FindLeads", &ROLES),
    ("GetFunnel", &ROLES),
    ("GetConversionRates", &ROLES),
    ("GetLeadQuality", &ROLES),
    ("GetSlaPolicy", &ROLES),
    ("ListSlaBreaches", &ROLES),
    ("GetSlaReport", &ROLES),
];

/// One token per role, and the credentials file listing their hashes.
struct Tokens {
    by_role: Vec<(&'static str, String)>,
    file: String,
}

fn tokens() -> Tokens {
    let mut by_role = Vec::new();
    let mut file = String::from("# client id  roles  credential\n");
    for role in ROLES {
        let (token, digest) = leadger_grpc::auth::new_token();
        file.push_str(&format!("{role}-system {role} {digest}\n"));
        by_role.push((role, token));
    }
    Tokens { by_role, file }
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    request
}

/// Calls `rpc` with a small request; returns the status code it got (OK
/// included). Requests need not be valid: authorization comes first.
async fn call(channel: &Channel, rpc: &str, token: Option<&str>) -> Code {
    let mut commands = LeadCommandServiceClient::new(channel.clone());
    let mut queries = LeadQueryServiceClient::new(channel.clone());
    let mut analytics = LeadAnalyticsServiceClient::new(channel.clone());
    let lead_id = uuid::Uuid::now_v7().to_string();
    macro_rules! code {
        ($call:expr) => {
            match $call.await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            }
        };
    }
    match rpc {
        "CaptureLead" => code!(commands.capture_lead(with_token(
            pb::CaptureLeadRequest { email: format!("{lead_id}@matrix.example"), ..Default::default() },
            token
        ))),
        "QualifyLead" => code!(commands.qualify_lead(with_token(
            pb::QualifyLeadRequest { lead_id: lead_id.clone(), ..Default::default() },
            token
        ))),
        "AssignLead" => code!(commands.assign_lead(with_token(
            pb::AssignLeadRequest { lead_id: lead_id.clone(), assignee: "ana".into(), ..Default::default() },
            token
        ))),
        "AcceptLead" => {
            code!(commands.accept_lead(with_token(
                pb::AcceptLeadRequest { lead_id: lead_id.clone(), ..Default::default() },
                token
            )))
        }
        "RejectLead" => {
            code!(commands.reject_lead(with_token(
                pb::RejectLeadRequest { lead_id: lead_id.clone(), ..Default::default() },
                token
            )))
        }
        "CloseLead" => code!(
            commands
                .close_lead(with_token(pb::CloseLeadRequest { lead_id: lead_id.clone(), ..Default::default() }, token))
        ),
        "RecordFeedback" => code!(commands.record_feedback(with_token(
            pb::RecordFeedbackRequest { lead_id: lead_id.clone(), ..Default::default() },
            token
        ))),
        "DefineSlaPolicy" => {
            code!(commands.define_sla_policy(with_token(pb::DefineSlaPolicyRequest::default(), token)))
        }
        "EraseLead" => code!(
            commands
                .erase_lead(with_token(pb::EraseLeadRequest { lead_id: lead_id.clone(), ..Default::default() }, token))
        ),
        "GetLead" => code!(queries.get_lead(with_token(pb::GetLeadRequest { lead_id: lead_id.clone() }, token))),
        "ReadLog" => code!(queries.read_log(with_token(pb::ReadLogRequest { from_position: 1, follow: false }, token))),
        "FindLeads" => code!(queries.find_leads(with_token(pb::FindLeadsRequest::default(), token))),
        "GetFunnel" => code!(analytics.get_funnel(with_token(pb::GetFunnelRequest::default(), token))),
        "GetConversionRates" => {
            code!(analytics.get_conversion_rates(with_token(pb::GetConversionRatesRequest::default(), token)))
        }
        "GetLeadQuality" => code!(analytics.get_lead_quality(with_token(pb::GetLeadQualityRequest::default(), token))),
        "GetSlaPolicy" => code!(analytics.get_sla_policy(with_token(pb::GetSlaPolicyRequest::default(), token))),
        "ListSlaBreaches" => {
            code!(analytics.list_sla_breaches(with_token(pb::ListSlaBreachesRequest::default(), token)))
        }
        "GetSlaReport" => code!(analytics.get_sla_report(with_token(pb::GetSlaReportRequest::default(), token))),
        other => panic!("no call for {other}"),
    }
}

fn config_with(credentials: &str) -> ServerConfig {
    let credentials = Credentials::parse(credentials).expect("credentials");
    ServerConfig { authenticator: Arc::new(Authenticator::Credentials(credentials)), ..ServerConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_is_refused_exactly_the_rpcs_it_must_not_call() {
    let tokens = tokens();
    let server = TestServer::start_with(Backend::Sqlite, config_with(&tokens.file)).await;
    let channel = server.channel().await;
    let mut refused = 0;
    for (rpc, allowed) in MATRIX {
        for (role, token) in &tokens.by_role {
            let code = call(&channel, rpc, Some(token)).await;
            if allowed.contains(role) {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{role} may call {rpc} but got {code:?}"
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{role} must not call {rpc}");
                refused += 1;
            }
        }
        assert_eq!(call(&channel, rpc, None).await, Code::Unauthenticated, "{rpc} without a token");
        assert_eq!(call(&channel, rpc, Some("lgr_not-a-token")).await, Code::Unauthenticated, "{rpc}, bad token");
    }
    eprintln!("role matrix: {} RPCs x {} roles, {refused} calls refused PERMISSION_DENIED", MATRIX.len(), ROLES.len());
    // Health stays open for probes.
    leadger_tests::wait_until_serving(server.addr).await.expect("health without a token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_closes_lost_only_leads_that_are_still_its_own_and_events_name_the_caller() {
    let tokens = tokens();
    let token = |role: &str| tokens.by_role.iter().find(|(r, _)| *r == role).map(|(_, t)| t.as_str());
    let server = TestServer::start_with(Backend::Sqlite, config_with(&tokens.file)).await;
    let mut commands = server.commands().await;
    let capture = |email: &str| pb::CaptureLeadRequest {
        email: email.into(),
        name: "Ada".into(),
        request_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let close = |lead_id: &str, outcome: pb::Outcome| pb::CloseLeadRequest {
        lead_id: lead_id.into(),
        outcome: outcome as i32,
        amount_minor: if outcome == pb::Outcome::Won { 1_000 } else { 0 },
        currency: if outcome == pb::Outcome::Won { "EUR".into() } else { String::new() },
        lost_reason: if outcome == pb::Outcome::Lost { "no-budget".into() } else { String::new() },
        ..Default::default()
    };
    // A header naming another client changes nothing: the token says who calls.
    let mut junk = with_token(capture("junk@roles.example"), token("marketing"));
    junk.metadata_mut().insert("x-client-id", "someone-else".parse().expect("ascii"));
    let junk = commands.capture_lead(junk).await.expect("capture").into_inner().result.expect("result").lead_id;
    let won = commands.close_lead(with_token(close(&junk, pb::Outcome::Won), token("marketing"))).await;
    assert_eq!(won.expect_err("marketing cannot close won").code(), Code::PermissionDenied);
    commands
        .close_lead(with_token(close(&junk, pb::Outcome::Lost), token("marketing")))
        .await
        .expect("marketing disqualifies a captured lead");

    let good = commands
        .capture_lead(with_token(capture("good@roles.example"), token("marketing")))
        .await
        .expect("capture")
        .into_inner()
        .result
        .expect("result")
        .lead_id;
    let qualify =
        pb::QualifyLeadRequest { lead_id: good.clone(), score: Some(80), assignee: "bo".into(), ..Default::default() };
    commands.qualify_lead(with_token(qualify, token("marketing"))).await.expect("qualify");
    let refused = commands
        .close_lead(with_token(close(&good, pb::Outcome::Lost), token("marketing")))
        .await
        .expect_err("an MQL is sales' to close");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("MQL"), "the refusal names the stage: {}", refused.message());
    commands
        .close_lead(with_token(close(&good, pb::Outcome::Lost), token("sales")))
        .await
        .expect("sales closes an MQL lost");

    let mut queries = server.queries().await;
    let mut log = queries
        .read_log(with_token(pb::ReadLogRequest { from_position: 1, follow: false }, token("analytics")))
        .await
        .expect("read")
        .into_inner();
    let mut callers = Vec::new();
    while let Some(item) = log.message().await.expect("stream") {
        let event = item.event.expect("event");
        callers.push((event.r#type, event.client_id));
    }
    let callers: Vec<(&str, &str)> = callers.iter().map(|(t, c)| (t.as_str(), c.as_str())).collect();
    assert_eq!(
        callers,
        [
            ("captured", "marketing-system"),
            ("closed", "marketing-system"),
            ("captured", "marketing-system"),
            ("qualified", "marketing-system"),
            ("closed", "sales-system"),
        ]
    );
    server.stop().await;
}

/// A test CA, and certificates it signed for the server (localhost) and for clients.
struct Pki {
    ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "leadger test CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key")).expect("CA");
        Self { ca_pem: issuer.pem(), issuer }
    }

    /// (certificate PEM, key PEM) for `common_name`, valid for localhost.
    fn issue(&self, common_name: &str) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, &self.issuer).expect("sign");
        (certificate.pem(), key.serialize_pem())
    }
}

/// A TLS server in this process (SQLite); returns its address and database.
async fn tls_server(
    tls: ServerTlsConfig,
    credentials: &str,
) -> (SocketAddr, TestDatabase, tokio::sync::oneshot::Sender<()>) {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let log = Arc::new(SqliteLog::connect(&database.url).await.expect("open sqlite"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ServerConfig { tls: Some(tls), ..config_with(credentials) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let vault = Arc::new(database.vault());
    tokio::spawn(leadger_grpc::serve(log, vault, listener, config, async move {
        let _ = stopped.await;
    }));
    (addr, database, stop)
}

async fn tls_channel(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let endpoint = Channel::from_shared(format!("https://{addr}")).expect("uri").tls_config(tls.clone())?;
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_and_its_subject_is_the_caller() {
    let pki = Pki::new();
    let (server_cert, server_key) = pki.issue("leadger server");
    let (crm_cert, crm_key) = pki.issue("crm");
    let (stranger_cert, stranger_key) = pki.issue("stranger");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server_cert, &server_key))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem));
    let (addr, _database, stop) = tls_server(tls, "crm marketing certificate\n").await;
    let trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)).domain_name("localhost");

    let crm = tls_channel(addr, trust.clone().identity(Identity::from_pem(&crm_cert, &crm_key))).await.expect("mTLS");
    let mut commands = LeadCommandServiceClient::new(crm.clone());
    let captured = commands
        .capture_lead(pb::CaptureLeadRequest { email: "grace@tls.example".into(), ..Default::default() })
        .await
        .expect("the certificate authenticates crm as marketing")
        .into_inner()
        .result
        .expect("result");
    let accept = pb::AcceptLeadRequest { lead_id: captured.lead_id.clone(), owner: "bo".into(), ..Default::default() };
    assert_eq!(commands.accept_lead(accept).await.expect_err("marketing").code(), Code::PermissionDenied);
    let mut queries = LeadQueryServiceClient::new(crm);
    let mut log =
        queries.read_log(pb::ReadLogRequest { from_position: 1, follow: false }).await.expect("read").into_inner();
    let event = log.message().await.expect("stream").expect("one event").event.expect("event");
    assert_eq!(event.client_id, "crm", "the certificate's subject is recorded");

    // A certificate the CA signed but the credentials file does not list.
    let stranger = tls_channel(addr, trust.clone().identity(Identity::from_pem(&stranger_cert, &stranger_key)))
        .await
        .expect("tls");
    let refused = LeadCommandServiceClient::new(stranger)
        .capture_lead(pb::CaptureLeadRequest { email: "eve@tls.example".into(), ..Default::default() })
        .await
        .expect_err("unknown subject");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("stranger"), "{}", refused.message());

    // No client certificate: the handshake (or the first call) fails.
    let anonymous = async {
        let channel = Channel::from_shared(format!("https://{addr}"))?.tls_config(trust.clone())?.connect().await?;
        LeadQueryServiceClient::new(channel).get_lead(pb::GetLeadRequest { lead_id: captured.lead_id.clone() }).await?;
        anyhow::Ok(())
    };
    assert!(anonymous.await.is_err(), "a client without a certificate is refused");
    // Plain TCP to the TLS port gets nothing either.
    let plain = async {
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        LeadQueryServiceClient::new(channel).get_lead(pb::GetLeadRequest { lead_id: captured.lead_id }).await?;
        anyhow::Ok(())
    };
    assert!(plain.await.is_err(), "plain TCP is refused on a TLS port");
    let _ = stop.send(());
}

fn leadger(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(leadger_binary!()).args(args).current_dir(dir).output().expect("run leadger")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_an_exposed_server_without_tls_or_credentials_and_takes_generated_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exposed = format!("0.0.0.0:{}", leadger_tests::free_port());
    let output = leadger(dir.path(), &["serve", "--listen", &exposed]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-plaintext"), "{output:?}");
    let output = leadger(dir.path(), &["serve", "--listen", &exposed, "--allow-plaintext"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-anonymous"), "{output:?}");

    let generated = leadger(dir.path(), &["token", "generate", "crm", "--roles", "marketing,analytics"]);
    assert!(generated.status.success(), "{generated:?}");
    let text = String::from_utf8(generated.stdout).expect("utf-8");
    let token = text.lines().find_map(|l| l.split(": ").nth(1).filter(|t| t.starts_with("lgr_"))).expect("token");
    let line = text.lines().find_map(|l| l.strip_prefix("credentials file line: ")).expect("line");
    assert!(!line.contains(token), "only the token's hash goes into the file");
    std::fs::write(dir.path().join("credentials"), format!("{line}\n")).expect("write credentials");

    let server = ServerProcess::start(&leadger_binary!(), dir.path(), &["--credentials-file", "credentials"])
        .await
        .expect("serve with credentials");
    let mut commands = LeadCommandServiceClient::new(leadger_tests::connect(server.addr).await);
    let capture = || pb::CaptureLeadRequest { email: "hedy@token.example".into(), ..Default::default() };
    let refused = commands.capture_lead(capture()).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    commands.capture_lead(with_token(capture(), Some(token))).await.expect("the generated token works");
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0));
}
