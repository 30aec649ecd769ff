//! The gRPC limit beside leadger: a server of the same `LeadCommandService`
//! on the same runtime (tokio, tonic, the same strict prost codec, TCP with
//! nodelay) that answers every command at once with a result of the same
//! shape and size, and stores nothing. The load generator drives it exactly
//! as it drives `leadger serve`, so the difference between the two is what
//! leadger does per command: validation, the domain, encryption and the
//! durable commit.
//!
//! It runs as its own process (`leadger-bench echo-server`, started by
//! [`EchoServer::start`]), like `leadger serve`, so the load generator does
//! not share its runtime.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use leadger_proto::leads::v1 as pb;
use leadger_proto::leads::v1::lead_command_service_server::{LeadCommandService, LeadCommandServiceServer};
use tonic::{Request, Response, Status};

use crate::process::stop_gracefully;
use crate::scenario::free_port;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers every command as if it were appended: the lead keeps its id (a
/// capture gets a new one), its version goes up by one, and every answer
/// takes the next position.
#[derive(Default)]
struct Echo {
    positions: AtomicU64,
}

impl Echo {
    fn result(&self, lead_id: &str, expected_version: Option<u64>, stage: pb::Stage) -> Option<pb::CommandResult> {
        let lead_id = if lead_id.is_empty() { uuid::Uuid::now_v7().to_string() } else { lead_id.to_string() };
        Some(pb::CommandResult {
            lead_id,
            version: expected_version.unwrap_or(0) + 1,
            position: self.positions.fetch_add(1, Ordering::Relaxed) + 1,
            stage: stage.into(),
            replayed: false,
        })
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl LeadCommandService for Echo {
    async fn capture_lead(&self, request: Request<pb::CaptureLeadRequest>) -> Answer<pb::CaptureLeadResponse> {
        let r = request.into_inner();
        Ok(Response::new(pb::CaptureLeadResponse {
            result: self.result(&r.lead_id, r.expected_version, pb::Stage::Captured),
        }))
    }

    async fn qualify_lead(&self, request: Request<pb::QualifyLeadRequest>) -> Answer<pb::QualifyLeadResponse> {
        let r = request.into_inner();
        Ok(Response::new(pb::QualifyLeadResponse {
            result: self.result(&r.lead_id, r.expected_version, pb::Stage::Mql),
        }))
    }

    async fn assign_lead(&self, request: Request<pb::AssignLeadRequest>) -> Answer<pb::AssignLeadResponse> {
        let r = request.into_inner();
        Ok(Response::new(pb::AssignLeadResponse {
            result: self.result(&r.lead_id, r.expected_version, pb::Stage::Mql),
        }))
    }

    async fn accept_lead(&self, request: Request<pb::AcceptLeadRequest>) -> Answer<pb::AcceptLeadResponse> {
        let r = request.into_inner();
        Ok(Response::new(pb::AcceptLeadResponse {
            result: self.result(&r.lead_id, r.expected_version, pb::Stage::Sql),
        }))
    }

    async fn reject_lead(&self, request: Request<pb::RejectLeadRequest>) -> Answer<pb::RejectLeadResponse> {
        let r = request.into_inner();
        Ok(Response::new(pb::RejectLeadResponse {
            result: self.result(&r.lead_id, r.expected_version, pb::Stage::Rejected),
        }))
    }

    async fn close_lead(&self, request: Request<pb::CloseLeadRequest>) -> Answer<pb::CloseLeadResponse> {
        let r = request.into_inner();
        let stage = if r.outcome == i32::from(pb::Outcome::Won) { pb::Stage::Won } else { pb::Stage::Lost };
        Ok(Response::new(pb::CloseLeadResponse { result: self.result(&r.lead_id, r.expected_version, stage) }))
    }

    async fn record_feedback(&self, request: Request<pb::RecordFeedbackRequest>) -> Answer<pb::RecordFeedbackResponse> {
        let r = request.into_inner();
        Ok(Response::new(pb::RecordFeedbackResponse {
            result: self.result(&r.lead_id, r.expected_version, pb::Stage::Sql),
        }))
    }

    async fn erase_lead(&self, request: Request<pb::EraseLeadRequest>) -> Answer<pb::EraseLeadResponse> {
        let r = request.into_inner();
        Ok(Response::new(pb::EraseLeadResponse { result: self.result(&r.lead_id, r.expected_version, pb::Stage::Sql) }))
    }

    async fn define_sla_policy(
        &self,
        _request: Request<pb::DefineSlaPolicyRequest>,
    ) -> Answer<pb::DefineSlaPolicyResponse> {
        Err(Status::unimplemented("the echo service answers lead commands only"))
    }
}

/// `leadger-bench echo-server --listen ADDR`: serves until killed.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(LeadCommandServiceServer::new(Echo::default()))
        .serve_with_incoming(incoming)
        .await
        .context("serve the echo service")
}

/// The echo service as a child process of this executable; stopped on drop.
pub struct EchoServer {
    child: Child,
    listen: SocketAddr,
}

impl EchoServer {
    /// Starts `leadger-bench echo-server` on a free port and waits until it
    /// accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let executable = std::env::current_exe().context("find this executable")?;
        let child = Command::new(executable)
            .arg("echo-server")
            .arg("--listen")
            .arg(listen.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("start `leadger-bench echo-server`")?;
        let mut server = Self { child, listen };
        let deadline = Instant::now() + READY_TIMEOUT;
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            if let Some(status) = server.child.try_wait().context("check the echo server")? {
                bail!("the echo server exited ({status})");
            }
            if Instant::now() >= deadline {
                bail!("the echo server did not listen on {listen} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        stop_gracefully(&mut self.child, "echo server", Duration::from_secs(5));
    }
}
