//! `toolgate mcp pin`: the tool definitions a live MCP server lists, fetched as a client
//! would — a 2026-07-28 stateless `tools/list` first, and the 2025 `initialize` handshake
//! when the server does not speak it — every page, directly (not through the proxy). The
//! CLI writes them, with their digests, to the tool's lock file.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value as Json};
use toolgate_policy::classify::mcp::headers::{
    METHOD, PROTOCOL_VERSION, STATELESS_VERSIONS, VERSION_META,
};

/// Most pages of `tools/list` followed.
pub const MAX_PAGES: usize = 100;
/// Largest answer read.
pub const MAX_ANSWER: usize = 16 << 20;
/// The 2025 revision offered in `initialize`.
pub const SESSION_VERSION: &str = "2025-11-25";

/// Why the definitions could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0}")]
    Client(String),
    #[error("{url}: {message}")]
    Server { url: String, message: String },
}

/// What the server listed, and in which era it was asked.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The protocol version spoken (`2026-07-28`, or what `initialize` negotiated).
    pub version: String,
    pub tools: Vec<Json>,
}

/// How the server is reached: extra trust roots (`tls.upstream_ca`) and time limits.
#[derive(Debug, Clone)]
pub struct Trust {
    pub upstream_ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// Fetch every tool definition the MCP server at `url` lists. `headers` are sent with every
/// request (an `Authorization` the server needs).
pub async fn fetch(
    trust: &Trust,
    url: &str,
    headers: &[(String, String)],
) -> Result<Fetched, PinError> {
    let client = client(trust)?;
    let session = Session {
        client,
        url: url.to_string(),
        headers: headers.to_vec(),
        timeout: trust.timeout,
    };
    let modern = STATELESS_VERSIONS.first().copied().unwrap_or("2026-07-28");
    match session.list(modern, None).await {
        Ok(tools) => Ok(Fetched {
            version: modern.to_string(),
            tools,
        }),
        // Not a 2026-07-28 server: the handshake of the session-based era.
        Err(stateless) => {
            let (version, id) = session.initialize().await.map_err(|e| match e {
                PinError::Server { url, message } => PinError::Server {
                    url,
                    message: format!(
                        "{message} (and the 2026-07-28 request failed too: {stateless})"
                    ),
                },
                other => other,
            })?;
            let tools = session.list(&version, id.as_deref()).await?;
            session.end(id.as_deref()).await;
            Ok(Fetched { version, tools })
        }
    }
}

fn client(trust: &Trust) -> Result<reqwest::Client, PinError> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(trust.connect_timeout)
        .tls_built_in_root_certs(false);
    if let Ok(system) = rustls_native_certs::load_native_certs() {
        for der in system {
            if let Ok(cert) = reqwest::Certificate::from_der(&der) {
                builder = builder.add_root_certificate(cert);
            }
        }
    }
    if let Some(path) = &trust.upstream_ca {
        let pem = std::fs::read(path)
            .map_err(|e| PinError::Client(format!("cannot read {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| PinError::Client(format!("{}: {e}", path.display())))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| PinError::Client(e.to_string()))
}

struct Session {
    client: reqwest::Client,
    url: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl Session {
    fn fail(&self, message: impl Into<String>) -> PinError {
        PinError::Server {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    /// POST one message; the answer to `id` (JSON, or the SSE event carrying it) and the
    /// session id the server assigned, if any.
    async fn post(
        &self,
        message: &Json,
        version: Option<&str>,
        session: Option<&str>,
    ) -> Result<(Option<Json>, Option<String>), PinError> {
        let method = message
            .get("method")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(message.to_string());
        if let Some(v) = version {
            req = req.header(PROTOCOL_VERSION, v);
        }
        if version.is_some_and(|v| STATELESS_VERSIONS.contains(&v)) {
            req = req.header(METHOD, method);
        }
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| self.fail(e.to_string()))?;
        let status = resp.status();
        let assigned = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = read_capped(resp).await.map_err(|e| self.fail(e))?;
        let Some(id) = message.get("id") else {
            return Ok((None, assigned));
        };
        let answer = if sse {
            from_sse(&body, id)
        } else {
            serde_json::from_slice(&body).ok()
        };
        match answer {
            Some(a) if a.get("error").is_some() => Err(self.fail(format!(
                "{method} answered HTTP {status} with error {}",
                a.get("error").map(Json::to_string).unwrap_or_default()
            ))),
            Some(a) if status.is_success() => Ok((Some(a), assigned)),
            _ => Err(self.fail(format!(
                "{method} answered HTTP {status} without a JSON-RPC result"
            ))),
        }
    }

    /// Every page of `tools/list`.
    async fn list(&self, version: &str, session: Option<&str>) -> Result<Vec<Json>, PinError> {
        let stateless = STATELESS_VERSIONS.contains(&version);
        let mut tools = Vec::new();
        let mut cursor: Option<Json> = None;
        for page in 0..MAX_PAGES {
            let mut params = serde_json::Map::new();
            if let Some(c) = cursor.take() {
                params.insert("cursor".into(), c);
            }
            if stateless {
                params.insert("_meta".into(), envelope(version));
            }
            let message =
                json!({"jsonrpc": "2.0", "id": page + 2, "method": "tools/list", "params": params});
            let (answer, _) = self.post(&message, Some(version), session).await?;
            let result = answer.as_ref().and_then(|a| a.get("result"));
            let Some(Json::Array(listed)) = result.and_then(|r| r.get("tools")) else {
                return Err(self.fail("tools/list answered without result.tools"));
            };
            tools.extend(listed.iter().cloned());
            match result.and_then(|r| r.get("nextCursor")) {
                Some(c @ Json::String(_)) => cursor = Some(c.clone()),
                _ => return Ok(tools),
            }
        }
        Err(self.fail(format!("tools/list has more than {MAX_PAGES} pages")))
    }

    /// The 2025 handshake: the negotiated version and the session id.
    async fn initialize(&self) -> Result<(String, Option<String>), PinError> {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": SESSION_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "toolgate mcp pin", "version": env!("CARGO_PKG_VERSION")},
        }});
        let (answer, session) = self.post(&init, None, None).await?;
        let version = answer
            .as_ref()
            .and_then(|a| a.get("result"))
            .and_then(|r| r.get("protocolVersion"))
            .and_then(Json::as_str)
            .unwrap_or(SESSION_VERSION)
            .to_string();
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.post(&initialized, Some(&version), session.as_deref())
            .await?;
        Ok((version, session))
    }

    /// End the session, if the server opened one (best effort).
    async fn end(&self, session: Option<&str>) {
        if let Some(s) = session {
            let mut req = self
                .client
                .delete(&self.url)
                .timeout(self.timeout)
                .header("mcp-session-id", s);
            for (k, v) in &self.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let _ = req.send().await;
        }
    }
}

/// The 2026-07-28 per-request envelope in `_meta`.
fn envelope(version: &str) -> Json {
    json!({
        VERSION_META: version,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "toolgate mcp pin", "version": env!("CARGO_PKG_VERSION")},
    })
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER {
            return Err(format!("the answer is larger than {MAX_ANSWER} bytes"));
        }
    }
    Ok(body)
}

/// The JSON-RPC message answering `id` in an SSE body.
fn from_sse(body: &[u8], id: &Json) -> Option<Json> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n").find_map(|event| {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let message: Json = serde_json::from_str(&data.join("\n")).ok()?;
        (message.get("id") == Some(id)).then_some(message)
    })
}
