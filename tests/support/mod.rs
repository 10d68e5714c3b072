//! End-to-end test support: a real tool server (HTTP or HTTPS) that records what it receives,
//! and the real `toolgate` binary on free 127.0.0.1 ports with its own shutdown.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the tool received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The request target exactly as sent on the wire (origin-form expected).
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The proxy's side of the connection (distinguishes upstream connections).
    pub peer: SocketAddr,
}

/// A fake tool: answers every request `200 {"ok":true}` and records it.
pub struct ToolServer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ToolServer {
    /// A plain-HTTP tool on 127.0.0.1.
    pub async fn http() -> ToolServer {
        ToolServer::start(None).await
    }

    /// An HTTPS tool on 127.0.0.1 presenting `tls`.
    pub async fn https(tls: &TestCa) -> ToolServer {
        ToolServer::start(Some(tls.server_config())).await
    }

    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> ToolServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let rec = received.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| record(req, peer, rec.clone()));
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(tls), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        ToolServer {
            addr,
            received,
            task,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The only request received; fails if there were none or several.
    pub fn only(&self) -> Received {
        let all = self.received();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one request at the tool, got {all:#?}"
        );
        all.into_iter().next().unwrap()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ToolServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    req: Request<Incoming>,
    peer: SocketAddr,
    rec: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    rec.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts.headers,
        body,
        peer,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
        .unwrap())
}

/// A throwaway CA with a leaf for `localhost` and `127.0.0.1`.
pub struct TestCa {
    pub ca_pem: String,
    leaf_der: rustls::pki_types::CertificateDer<'static>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        TestCa::for_names(&["localhost", "127.0.0.1"])
    }

    /// A CA with a leaf for `names` (DNS names or IP addresses).
    pub fn for_names(names: &[&str]) -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "toolgate test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        TestCa {
            ca_pem: ca.pem(),
            leaf_der: leaf.der().clone(),
            ca_der: ca.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
        }
    }

    /// The leaf certificate, PEM.
    pub fn leaf_pem(&self) -> String {
        pem("CERTIFICATE", &self.leaf_der)
    }

    /// The leaf's private key, PKCS#8 PEM.
    pub fn leaf_key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.leaf_key_der)
    }

    /// A rustls server configuration presenting the leaf (with the CA in its chain).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.leaf_key_der.clone().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone(), self.ca_der.clone()], key)
            .unwrap();
        Arc::new(config)
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A port on 127.0.0.1 that refuses connections for as long as this value lives: bound and
/// never listening, so no other test (a tool server binding port 0) can be handed it, as it
/// could be a port that was merely freed.
pub struct ClosedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    ClosedPort {
        port,
        _socket: socket,
    }
}

/// A free port on 127.0.0.1 (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Path of the toolgate binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_toolgate")
}

/// A running toolgate process with its own config directory; stopped (SIGTERM) on drop.
pub struct Toolgate {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Toolgate {
    /// Write `files` (relative path → contents) and a `toolgate.yaml` made of a `listen`
    /// section on free ports followed by `config`, then start toolgate and wait until ready.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Toolgate {
        Toolgate::start_with_env(config, files, &[])
    }

    /// [`Toolgate::start`] with extra environment variables for the process.
    pub fn start_with_env(config: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Toolgate {
        Toolgate::start_with_listen("", config, files, env)
    }

    /// [`Toolgate::start_with_env`] with more keys in the `listen` section, e.g.
    /// `operator: "unix:run/operator.sock"`.
    pub fn start_with_listen(
        listen: &str,
        config: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Toolgate {
        let dir = tempfile::tempdir().unwrap();
        for (path, contents) in files {
            write(dir.path(), path, contents);
        }
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = if listen.is_empty() {
            String::new()
        } else {
            format!(", {listen}")
        };
        let yaml =
            format!("listen: {{ proxy: \"{proxy}\", admin: \"{admin}\"{listen} }}\n{config}");
        write(dir.path(), "toolgate.yaml", &yaml);
        let log = dir.path().join("toolgate.log");
        let child = Command::new(binary())
            .args(["run", "-c"])
            .arg(dir.path().join("toolgate.yaml"))
            .env("TOOLGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut tg = Toolgate {
            proxy,
            admin,
            dir,
            child: Some(child),
            log,
        };
        tg.wait_ready();
        tg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "toolgate exited with {status} before becoming ready:\n{}",
                    self.logs()
                );
            }
            if http_get(self.admin, "/readyz")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("toolgate did not become ready:\n{}", self.logs());
    }

    /// The toolgate process id (for /proc measurements).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// What toolgate wrote to stdout so far (the decision log, by default).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// What toolgate wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (up to 5 s) until the log contains `needle`; returns whether it did.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// stdout (the decision log) once it contains `needle`, or as it is after 10 s: the decision
    /// log is written by its own thread, after the request's own log lines.
    pub fn wait_for_stdout(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.stdout();
            if out.contains(needle) || Instant::now() >= deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// A client that sends every http:// request through toolgate as a forward proxy.
    pub fn forward_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(self.proxy_url()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A client that talks to toolgate's listener directly (named routes).
    pub fn direct_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// Send SIGTERM and wait for exit; returns whether it exited successfully within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Toolgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Write `contents` at `dir/path`, creating directories.
pub fn write(dir: &Path, path: &str, contents: &str) {
    let full = dir.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, contents).unwrap();
}

/// A minimal blocking HTTP/1.1 GET (for readiness polling and admin checks).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Send raw bytes on one connection and read until the server closes it.
pub fn raw(addr: SocketAddr, request: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a problem+json response body, checking the content type.
pub async fn problem(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        ct.as_deref(),
        Some("application/problem+json"),
        "status {status}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    (status, body)
}

/// The operator token tests configure with `admin: { token_file: operator-token }` and the
/// file [`OPERATOR_TOKEN_FILE`].
pub const OPERATOR_TOKEN: &str = "0f4e8d2c6a1b9f3e7d5c0b8a2e6f4d1c9b7a3e5f";
/// `("operator-token", OPERATOR_TOKEN)`, for `Toolgate::start`'s files.
pub const OPERATOR_TOKEN_FILE: (&str, &str) = ("operator-token", OPERATOR_TOKEN);

/// An HTTP/1.1 answer read to the end.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The status line and headers, as received.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Send one request on `stream` (`Connection: close`) and read the whole answer.
pub fn request_on(
    mut stream: impl std::io::Read + std::io::Write,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: toolgate\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    // One write, as clients send a small request: a server that answers from the head alone
    // (401 before the body) and closes must not turn the answer into a broken pipe.
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// [`request_on`] a TCP connection to `addr`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    request_on(s, method, target, headers, body).unwrap()
}

/// [`request_on`] the unix socket at `path`.
pub fn request_unix(
    path: &Path,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    request_on(s, method, target, headers, body).unwrap()
}

/// An operator call on the admin listener at `admin`, with [`OPERATOR_TOKEN`].
pub fn operator(admin: SocketAddr, method: &str, target: &str, body: Option<&str>) -> Answer {
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    request(
        admin,
        method,
        target,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.unwrap_or_default().as_bytes(),
    )
}

/// `GET target` on the operator API, which must answer 200 with JSON.
pub fn operator_json(admin: SocketAddr, target: &str) -> serde_json::Value {
    let answer = operator(admin, "GET", target, None);
    assert_eq!(answer.status, 200, "{target}: {}", answer.body);
    answer.json()
}

/// Verify `tokens` with PyJWT (an independent JWT library) against `jwks` for `audience`;
/// the (header, claims) of each. PyJWT refusing any token fails the test.
pub fn verify_independently(
    jwks: &serde_json::Value,
    audience: &str,
    tokens: &[String],
) -> Vec<(serde_json::Value, serde_json::Value)> {
    use std::io::Write as _;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), jwks.to_string()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/credentials/verify_jwt.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg(file.path())
        .arg(audience)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with pyjwt[crypto] is required (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(tokens.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyJWT refused a token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pairs: Vec<(serde_json::Value, serde_json::Value)> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pairs.len(), tokens.len());
    pairs
}
