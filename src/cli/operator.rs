//! The client operator commands use: it finds the operator API through the configuration
//! file — the unix socket (`listen.operator`) when there is one, else the admin listener —
//! and sends the bearer token from `admin.token_file` whenever one is configured. Also the
//! operator part of `toolgate check`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use toolgate_policy::config::{Config, SecretText};
use toolgate_policy::state::State;

/// Exit code of the operator commands for usage and configuration errors, and for an
/// operator API that is off (1 is an API that refused or could not be reached).
pub const CONFIG_ERROR: u8 = 2;

/// The client for `command` (`"toolgate tasks"`) from the configuration at `path`, or the
/// exit code after saying why there is none.
pub fn connect(command: &str, path: Option<&Path>) -> Result<Client, std::process::ExitCode> {
    let fail = || std::process::ExitCode::from(CONFIG_ERROR);
    let Some(path) = path else {
        eprintln!("{command}: -c FILE is required (the configuration of the toolgate to talk to)");
        return Err(fail());
    };
    let config = Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        fail()
    })?;
    Client::from_config(&config).map_err(|e| {
        eprintln!("{command}: {e}");
        fail()
    })
}

/// Print what a call `sent` answered (pretty JSON on stdout, a summary of a refusal on
/// stderr); exit 0 on success, else 1.
pub fn report(
    command: &str,
    client: &Client,
    sent: anyhow::Result<Answer>,
) -> std::process::ExitCode {
    match sent {
        Ok(answer) => {
            println!("{}", answer.pretty());
            if answer.status.is_success() {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("{command}: {}: {}", client.target, answer.summary());
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{command}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The operator's name for the record: `given`, else the login name, else `operator`.
pub fn operator_name(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "operator".to_string())
}

/// `id` as one path segment: anything but letters, digits and `-._~` percent-encoded.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long one operator call may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (the full revocation list is at most about 18 MiB).
pub const MAX_ANSWER: usize = 32 << 20;

/// Where the operator API is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Socket(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// A client of one toolgate's operator API.
#[derive(Debug, Clone)]
pub struct Client {
    pub target: Target,
    token: Option<SecretText>,
}

/// An answer from the operator API.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body, pretty-printed when it is JSON.
    pub fn pretty(&self) -> String {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Err(_) => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }

    /// `title: detail` of a problem answer, or the status.
    pub fn summary(&self) -> String {
        let problem = serde_json::from_slice::<serde_json::Value>(&self.body).ok();
        let field = |k: &str| {
            problem
                .as_ref()
                .and_then(|p| p.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        match (field("title"), field("detail")) {
            (Some(t), Some(d)) => format!("{} {t}: {d}", self.status.as_u16()),
            _ => self.status.to_string(),
        }
    }
}

impl Client {
    /// The client for the toolgate `config` describes; `Err` when its operator API is off.
    pub fn from_config(config: &Config) -> anyhow::Result<Client> {
        let token = config.admin.token.clone();
        let target = match (&config.listen.operator, &token) {
            (Some(path), _) => Target::Socket(path.clone()),
            (None, Some(_)) => Target::Tcp(reachable(config.listen.admin)),
            (None, None) => {
                return Err(anyhow!(
                    "{}: the operator API is off: set admin.token_file and/or listen.operator",
                    config.origin.display()
                ))
            }
        };
        Ok(Client { target, token })
    }

    /// Send `method path` with an optional JSON `body` and wait for the answer.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the client's runtime")?;
        runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
                .await
                .map_err(|_| anyhow!("{}: no answer within {}s", self.target, TIMEOUT.as_secs()))?
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "toolgate");
        if let Some(token) = &self.token {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.expose()),
            );
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let connect =
            |e: std::io::Error| anyhow!("cannot reach the operator API at {}: {e}", self.target);
        let response = match &self.target {
            Target::Socket(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect)?;
                send(TokioIo::new(stream), request).await?
            }
            Target::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect)?;
                send(TokioIo::new(stream), request).await?
            }
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow!("{}: cannot read the answer: {e}", self.target))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

async fn send<T>(
    io: T,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

/// The address to dial for a listener bound to `addr` (a wildcard is dialled on loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// What `toolgate check` says about the operator API and operator state.
#[derive(Debug, Default)]
pub struct Findings {
    /// Problems that make the configuration unfit to serve.
    pub errors: Vec<String>,
    /// Facts worth a line.
    pub notes: Vec<String>,
}

/// Judge how `config` protects the operator API and whether its state can be read.
pub fn check(config: &Config) -> Findings {
    let mut f = Findings::default();
    let token = config.admin.token.is_some();
    match &config.listen.operator {
        Some(path) => check_socket(path, &mut f),
        None if !token => f.notes.push(
            "the operator API is off (no admin.token_file, no listen.operator): revocations cannot be made".into(),
        ),
        None => {}
    }
    if let Err(e) = State::open(&config.state, SystemTime::now()) {
        f.errors.push(e.to_string());
    }
    if config.state.dir.is_none() {
        f.notes
            .push("state.dir is not set: revocations are kept in memory only".into());
    }
    f
}

/// What `toolgate run` would say about the operator socket's place.
fn check_socket(path: &Path, f: &mut Findings) {
    match toolgate_proxy::server::check_socket(path) {
        Err(problem) => f
            .errors
            .push(format!("listen.operator: {}: {problem}", path.display())),
        Ok(Some(note)) => f.notes.push(format!("listen.operator: {note}")),
        Ok(None) => {}
    }
}
