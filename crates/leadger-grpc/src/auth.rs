//! Who is calling, and whether their roles let them call this RPC.
//!
//! A calling system authenticates with a bearer token (`authorization:
//! Bearer …`) listed, hashed, in the credentials file, or with the client
//! certificate of a mutual-TLS connection whose subject common name the file
//! lists. Each entry names the client id (recorded in every event's metadata
//! and scoping its idempotency keys) and its [`Roles`]. The layer answers
//! `UNAUTHENTICATED` without valid credentials and `PERMISSION_DENIED` when no
//! role of the caller may call the RPC; what depends on the lead's stage
//! (marketing closing a lead LOST) is checked when the command is decided.
//!
//! Health and reflection stay open, so probes and tools work without a token.
//! Without a credentials file the server is open: every caller has every role.
//!
//! The credentials file, one entry per line (`#` starts a comment):
//!
//! ```text
//! # client id     roles              credential
//! crm-sync        marketing          sha256:<hex SHA-256 of the token>
//! sales-console   sales,analytics    sha256:<…>
//! bi-exporter     analytics          certificate
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use leadger_domain::{CommandKind, Role, Roles};
use sha2::{Digest, Sha256};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::error::ERROR_DOMAIN;

/// The authenticated caller, put into each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub client_id: String,
    pub roles: Roles,
}

/// How callers prove who they are.
#[derive(Debug, Clone, Default)]
pub enum Authenticator {
    /// No credentials file: every caller has every role.
    #[default]
    Open,
    Credentials(Credentials),
}

/// The parsed credentials file.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// By the SHA-256 of the token.
    tokens: HashMap<[u8; 32], Caller>,
    /// By the certificate subject's common name.
    certificates: HashMap<String, Caller>,
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct CredentialsError {
    pub line: usize,
    pub problem: String,
}

impl Credentials {
    pub fn parse(text: &str) -> Result<Self, CredentialsError> {
        let mut credentials = Self::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let problem = |problem: String| CredentialsError { line, problem };
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [client_id, roles, credential] = fields[..] else {
                return Err(problem(format!("expected `client-id roles credential`, found {} fields", fields.len())));
            };
            if client_id.len() > 128 || !client_id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(problem("the client id must be 1 to 128 visible ASCII characters".into()));
            }
            let roles = roles
                .split(',')
                .map(|name| {
                    Role::parse(name)
                        .ok_or_else(|| problem(format!("unknown role {name:?} (marketing, sales, analytics, admin)")))
                })
                .collect::<Result<Vec<Role>, _>>()?;
            let caller = Caller { client_id: client_id.to_string(), roles: Roles::of(roles) };
            if credential == "certificate" {
                if credentials.certificates.insert(client_id.to_string(), caller).is_some() {
                    return Err(problem(format!("certificate of {client_id:?} is listed twice")));
                }
            } else if let Some(digest) = credential.strip_prefix("sha256:") {
                let digest: [u8; 32] = hex::decode(digest)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| problem("sha256: must be followed by 64 hex characters".into()))?;
                if credentials.tokens.insert(digest, caller).is_some() {
                    return Err(problem("this token hash is listed twice".into()));
                }
            } else {
                return Err(problem("the credential must be `sha256:<hex>` or `certificate`".into()));
            }
        }
        Ok(credentials)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.certificates.is_empty()
    }

    /// Callers listed, as (client id, roles, kind of credential).
    pub fn entries(&self) -> impl Iterator<Item = (&Caller, &'static str)> {
        self.tokens.values().map(|c| (c, "token")).chain(self.certificates.values().map(|c| (c, "certificate")))
    }

    fn by_token(&self, token: &str) -> Option<&Caller> {
        self.tokens.get(&token_digest(token))
    }
}

/// The SHA-256 of a token, as the credentials file lists it. Tokens are long
/// random strings, so a fast hash suffices: nothing to brute-force.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random bearer token and its credentials-file form.
pub fn new_token() -> (String, String) {
    let random: Vec<u8> =
        [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().flat_map(|id| id.as_bytes().to_vec()).collect();
    let token = format!("lgr_{}", hex::encode(random));
    let digest = format!("sha256:{}", hex::encode(token_digest(&token)));
    (token, digest)
}

/// What an RPC requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health and reflection: no credentials.
    Public,
    /// Every authenticated caller (queries, analytics).
    Read,
    /// A role that may issue one of these commands in some stage.
    Command(&'static [CommandKind]),
    Admin,
}

impl Access {
    pub fn permits(self, roles: Roles) -> bool {
        match self {
            Self::Public | Self::Read => true,
            Self::Command(kinds) => roles.iter().any(|role| kinds.iter().any(|kind| role.may_ever(*kind))),
            Self::Admin => roles.contains(Role::Admin),
        }
    }
}

/// The access each RPC needs, by its gRPC path.
pub fn access(path: &str) -> Access {
    use CommandKind as C;
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else { return Access::Read };
    match (service, method) {
        (s, _) if s.starts_with("grpc.health.") || s.starts_with("grpc.reflection.") => Access::Public,
        ("leads.v1.LeadCommandService", method) => match method {
            "CaptureLead" => Access::Command(&[C::CaptureLead]),
            "QualifyLead" => Access::Command(&[C::QualifyLead]),
            "AssignLead" => Access::Command(&[C::AssignLead]),
            "AcceptLead" => Access::Command(&[C::AcceptLead]),
            "RejectLead" => Access::Command(&[C::RejectLead]),
            "CloseLead" => Access::Command(&[C::CloseLeadWon, C::CloseLeadLost]),
            "RecordFeedback" => Access::Command(&[C::RecordFeedback]),
            // DefineSlaPolicy, EraseLead, and any command added later until
            // it is listed here.
            _ => Access::Admin,
        },
        _ => Access::Read,
    }
}

/// Authenticates and authorizes every request before it reaches a service.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    pub authenticator: Arc<Authenticator>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, authenticator: self.authenticator.clone() }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Auth<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Authenticator::Credentials(credentials) = self.authenticator.as_ref() else {
            return Box::pin(self.inner.call(request));
        };
        let access = access(request.uri().path());
        if access == Access::Public {
            return Box::pin(self.inner.call(request));
        }
        let verdict = authenticate(credentials, &request).and_then(|caller| {
            if access.permits(caller.roles) {
                Ok(caller)
            } else {
                Err(refusal(
                    Code::PermissionDenied,
                    format!(
                        "{} may not call {}: its roles are {}",
                        caller.client_id,
                        request.uri().path(),
                        caller.roles
                    ),
                    "ROLE_NOT_PERMITTED",
                ))
            }
        });
        match verdict {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::info!(path = request.uri().path(), code = ?status.code(), message = status.message(), "request refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

fn refusal(code: Code, message: String, reason: &str) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()))
}

fn authenticate<B>(credentials: &Credentials, request: &http::Request<B>) -> Result<Caller, Status> {
    if let Some(value) = request.headers().get(http::header::AUTHORIZATION) {
        let token = value.to_str().ok().and_then(|text| text.strip_prefix("Bearer ")).map(str::trim);
        return match token.and_then(|token| credentials.by_token(token)) {
            Some(caller) => Ok(caller.clone()),
            None => Err(refusal(
                Code::Unauthenticated,
                "the authorization bearer token is not valid".into(),
                "INVALID_TOKEN",
            )),
        };
    }
    if let Some(subject) = certificate_subject(request) {
        return match credentials.certificates.get(&subject) {
            Some(caller) => Ok(caller.clone()),
            None => Err(refusal(
                Code::Unauthenticated,
                format!("the client certificate {subject:?} is not in the credentials file"),
                "UNKNOWN_CERTIFICATE",
            )),
        };
    }
    Err(refusal(
        Code::Unauthenticated,
        "credentials are required: send `authorization: Bearer <token>` or connect with a client certificate".into(),
        "MISSING_CREDENTIALS",
    ))
}

/// The common name of the client certificate of a mutual-TLS connection.
fn certificate_subject<B>(request: &http::Request<B>) -> Option<String> {
    let certificates = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    let leaf = certificates.first()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let common_name = certificate.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(common_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credentials_file_lists_tokens_and_certificates() {
        let (token, digest) = new_token();
        let text = format!("# systems\ncrm  marketing,sales  {digest}  # the CRM\n\nbi analytics certificate\n");
        let credentials = Credentials::parse(&text).expect("parse");
        let caller = credentials.by_token(&token).expect("token listed");
        assert_eq!(caller.client_id, "crm");
        assert_eq!(caller.roles, Roles::of([Role::Marketing, Role::Sales]));
        assert!(credentials.by_token("lgr_other").is_none());
        assert_eq!(credentials.certificates["bi"].roles, Roles::of([Role::Analytics]));
    }

    #[test]
    fn bad_lines_name_their_line_and_problem() {
        for (text, problem) in [
            ("crm marketing", "expected `client-id roles credential`"),
            ("crm root sha256:00", "unknown role \"root\""),
            ("crm sales sha256:abc", "64 hex characters"),
            ("crm sales password", "must be `sha256:<hex>` or `certificate`"),
        ] {
            let error = Credentials::parse(&format!("# header\n{text}")).expect_err(text);
            assert_eq!(error.line, 2);
            assert!(error.problem.contains(problem), "{text}: {}", error.problem);
        }
    }

    #[test]
    fn rpcs_need_the_roles_of_their_commands() {
        let marketing = Roles::of([Role::Marketing]);
        let analytics = Roles::of([Role::Analytics]);
        assert!(access("/leads.v1.LeadCommandService/CloseLead").permits(marketing));
        assert!(!access("/leads.v1.LeadCommandService/AcceptLead").permits(marketing));
        assert!(!access("/leads.v1.LeadCommandService/EraseLead").permits(Roles::of([Role::Sales])));
        assert!(access("/leads.v1.LeadCommandService/EraseLead").permits(Roles::of([Role::Admin])));
        assert!(access("/leads.v1.LeadAnalyticsService/GetFunnel").permits(analytics));
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Public);
    }
}
