//! `toolgate demo`: the quickstart end to end, in one process. toolgate serves the embedded
//! quickstart, except that each catalogued tool's `upstream` points at a fake tool on a
//! loopback port, spans go to an in-process OTLP receiver and the operator API gets a token of
//! the demo's own (an overlay on the parsed YAML: `toolgate run` serves the quickstart
//! unchanged). A scripted agent runs one task — with a payment held for a human, which the
//! demo approves as an operator through the operator API before the agent retries it — and
//! then hands reading a ticket to a second agent, served by a second toolgate in the same
//! process (`handoff.rs`), which reads it and is refused closing it. The demo prints the
//! decisions and the task's chain as rebuilt from the exported spans of both toolgates, and
//! fails if the chain is not one linked trace.

mod handoff;
mod receiver;
mod report;
mod tools;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_yaml::Value as Yaml;
use toolgate_policy::config::{Config, EmbeddedFiles, Files, ProcessEnv, StaticEnv};
use toolgate_proxy::server::{serve_with, Stopper};
use toolgate_proxy::Snapshot;

/// Which agent takes a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    /// The quickstart's agent, in its own task (`x-toolgate-task`).
    Triage,
    /// The second agent, with the delegation token the last handoff step got.
    Billing,
}

/// One request of the scripted agent. Adding a step is one more entry in [`SCRIPT`]; a tool
/// added to the quickstart gets its own fake tool automatically.
#[derive(Debug)]
pub struct Step {
    pub by: Who,
    /// What the agent is doing, for the table.
    pub says: &'static str,
    pub method: &'static str,
    /// Absolute-form URL, as an agent honouring `HTTP_PROXY` sends it.
    pub url: &'static str,
    pub content_type: Option<&'static str>,
    pub body: &'static str,
    /// The action the catalog must classify it as, and the quickstart policy's decision.
    pub action: &'static str,
    pub decision: &'static str,
    /// The answer names an approval, which the demo then approves as an operator.
    pub approve: bool,
}

/// The agent's task.
pub const SCRIPT: &[Step] = &[
    Step {
        by: Who::Triage,
        says: "reads ticket SUP-12",
        method: "GET",
        url: "http://jira.example.com/rest/api/3/issue/SUP-12",
        content_type: None,
        body: "",
        action: "ticket.read",
        decision: "allow",
        approve: false,
    },
    Step {
        by: Who::Triage,
        says: "closes SUP-12",
        method: "POST",
        url: "http://jira.example.com/rest/api/3/issue/SUP-12/transitions",
        content_type: Some("application/json"),
        body: r#"{"transition":{"id":"31"}}"#,
        action: "ticket.transition",
        decision: "allow",
        approve: false,
    },
    Step {
        by: Who::Triage,
        says: "pays out 5000 EUR",
        method: "POST",
        url: "http://payments.example.com/v1/payments?amount=5000&currency=EUR",
        content_type: None,
        body: "",
        action: "payment.create",
        decision: "deny",
        approve: true,
    },
    Step {
        by: Who::Triage,
        says: "retries it once approved",
        method: "POST",
        url: "http://payments.example.com/v1/payments?amount=5000&currency=EUR",
        content_type: None,
        body: "",
        action: "payment.create",
        decision: "allow",
        approve: false,
    },
    Step {
        by: Who::Triage,
        says: "looks up customer ACME (MCP)",
        method: "POST",
        url: "http://crm.example.com/mcp",
        content_type: Some("application/json"),
        body: r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_customer","arguments":{"customer":"ACME"}}}"#,
        action: "crm.lookup_customer",
        decision: "allow",
        approve: false,
    },
    Step {
        by: Who::Triage,
        says: "hands reading on to billing",
        method: "POST",
        url: "http://toolgate.internal/delegate",
        content_type: Some("application/json"),
        body: r#"{"to":"spiffe://example.org/ns/support/sa/billing-agent","actions":["ticket.read"],"ttl":"10m"}"#,
        action: "task.delegate",
        decision: "allow",
        approve: false,
    },
    Step {
        by: Who::Billing,
        says: "billing reads SUP-12",
        method: "GET",
        url: "http://jira.example.com/rest/api/3/issue/SUP-12",
        content_type: None,
        body: "",
        action: "ticket.read",
        decision: "allow",
        approve: false,
    },
    Step {
        by: Who::Billing,
        says: "billing tries to close SUP-12",
        method: "POST",
        url: "http://jira.example.com/rest/api/3/issue/SUP-12/transitions",
        content_type: Some("application/json"),
        body: r#"{"transition":{"id":"31"}}"#,
        action: "ticket.transition",
        decision: "deny",
        approve: false,
    },
];

/// Who the demo approves as.
pub const APPROVER: &str = "demo-operator";

/// The agent's own token: toolgate must keep it from every tool.
const AGENT_TOKEN: &str = "agent-own-token-never-forwarded";

/// The quickstart with the demo's `toolgate.yaml`, operator token and extra files.
#[derive(Debug)]
struct Overlay {
    base: EmbeddedFiles,
    config: Vec<u8>,
    token: String,
    /// Files of the demo's own (a delegation key, a peer's JWKS).
    extra: Vec<(PathBuf, Vec<u8>)>,
}

impl Files for Overlay {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        if path == Path::new(CONFIG) {
            return Ok(self.config.clone());
        }
        if path == Path::new(TOKEN_FILE) {
            return Ok(self.token.clone().into_bytes());
        }
        if let Some((_, bytes)) = self.extra.iter().find(|(p, _)| p == path) {
            return Ok(bytes.clone());
        }
        self.base.read(path)
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        self.base.glob(pattern)
    }

    fn locate(&self, path: &Path) -> PathBuf {
        self.base.locate(path)
    }
}

const CONFIG: &str = "toolgate.yaml";
const TOKEN_FILE: &str = "operator-token";

/// A token for this run's operator API: 64 hex digits from the process's random hash keys.
fn operator_token() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    (0..4)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// Approve, as an operator, the approval the answer `held` names.
async fn approve(admin: SocketAddr, token: &str, held: &[u8]) -> anyhow::Result<String> {
    let problem: serde_json::Value = serde_json::from_slice(held)?;
    let id = problem
        .get("approval_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("the held payment's answer names no approval: {problem}"))?
        .to_string();
    let body =
        serde_json::json!({ "approver": APPROVER, "comment": "approved by the demo script" });
    let req = Request::post(format!("/v1/approvals/{id}/approve"))
        .header(http::header::HOST, admin.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let (status, answer) = exchange(admin, req).await?;
    if status != 200 {
        bail!(
            "approving {id} failed: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(id)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Set `map[key] = value` in a YAML mapping.
fn set(map: &mut Yaml, key: &str, value: Yaml) -> anyhow::Result<()> {
    map.as_mapping_mut()
        .ok_or_else(|| anyhow!("the quickstart's {key} is not in a mapping"))?
        .insert(Yaml::from(key), value);
    Ok(())
}

/// A short id unique to this run, so repeated runs are separate traces in a real store.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:06x}",
        (nanos ^ u128::from(std::process::id())) & 0xff_ffff
    )
}

/// One HTTP/1.1 exchange on a new connection; returns the status and body.
async fn exchange(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let req = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let (status, body) = exchange(addr, req).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The agent's request for `step`, sent through toolgate's proxy listener: in `task`, or
/// under the delegation token `token` when given.
async fn send(
    proxy: SocketAddr,
    step: &Step,
    task: &str,
    token: Option<&str>,
) -> anyhow::Result<report::Outcome> {
    let uri: http::Uri = step.url.parse()?;
    let host = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| anyhow!("{} has no host", step.url))?;
    let mut req = Request::builder()
        .method(step.method)
        .uri(uri)
        .header(http::header::HOST, host)
        .header(http::header::AUTHORIZATION, format!("Bearer {AGENT_TOKEN}"));
    req = match token {
        Some(token) => req.header("x-toolgate-task-token", token),
        None => req.header("x-toolgate-task", task),
    };
    if let Some(ct) = step.content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    let req = req.body(Full::new(Bytes::from_static(step.body.as_bytes())))?;
    let (status, body) = exchange(proxy, req).await?;
    Ok(report::Outcome {
        status,
        body: body.to_vec(),
    })
}

/// Poll `what` every 50 ms until it holds, for at most `limit`.
async fn until<F, Fut>(limit: Duration, mut what: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if what().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Requests toolgate has recorded (and so queued the spans of).
async fn recorded(admin: SocketAddr) -> u64 {
    let Ok((200, text)) = get(admin, "/metrics").await else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with("toolgate_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A toolgate serving on pingora's own threads, stopped by its `Stopper` rather than a signal.
struct Serving {
    stopper: Stopper,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Serving {
    /// Stop it and wait until it has flushed its spans.
    async fn stop(self) -> anyhow::Result<()> {
        self.stopper.stop();
        match tokio::task::spawn_blocking(move || self.thread.join()).await? {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("toolgate failed: {e}"),
            Err(_) => bail!("toolgate's thread panicked"),
        }
    }
}

/// Load `overlay`'s configuration and serve it until stopped; ready once `admin` says so.
async fn serve(overlay: Overlay, admin: SocketAddr) -> anyhow::Result<Serving> {
    let origin = Path::new("<embedded quickstart>").join(CONFIG);
    let config = Config::load_from(&origin, &overlay, &ProcessEnv).map_err(|e| anyhow!("{e}"))?;
    let snapshot = Snapshot::build(config)?;
    // The user's OTEL_* variables are not consulted: the demo exports to its receiver, quickly.
    let stopper = Stopper::default();
    let vars = StaticEnv(
        [("OTEL_BSP_SCHEDULE_DELAY", "100")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    );
    let stop = stopper.clone();
    let thread = std::thread::Builder::new()
        .name("toolgate-demo".into())
        .spawn(move || serve_with(snapshot, None, Some(stop), &vars).map_err(|e| e.to_string()))?;
    let ready = until(Duration::from_secs(30), || async {
        thread.is_finished() || matches!(get(admin, "/readyz").await, Ok((200, _)))
    })
    .await;
    if !ready || thread.is_finished() {
        stopper.stop();
        let why = match thread.join() {
            Ok(Err(e)) => e,
            _ => "it did not become ready".to_string(),
        };
        bail!("toolgate did not start: {why}");
    }
    Ok(Serving { stopper, thread })
}

/// Run the demo on the quickstart `files` (with `toolgate.yaml` among them). With `forward`,
/// spans are also sent to that OTLP/HTTP endpoint. `Ok(false)` when a check failed.
pub fn run(files: &[(&str, &'static [u8])], forward: Option<&str>) -> anyhow::Result<bool> {
    let forward = match forward {
        Some(url) => {
            let uri: http::Uri = url.parse().with_context(|| format!("--otlp {url}"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                bail!(
                    "--otlp {url}: give an OTLP/HTTP endpoint like http://127.0.0.1:4318/v1/traces"
                );
            }
            Some(uri)
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(demo(files, forward))
}

async fn demo(files: &[(&str, &'static [u8])], forward: Option<http::Uri>) -> anyhow::Result<bool> {
    let yaml = files
        .iter()
        .find(|(name, _)| *name == CONFIG)
        .map(|(_, bytes)| *bytes)
        .ok_or_else(|| anyhow!("the embedded quickstart has no {CONFIG}"))?;
    let mut doc: Yaml = serde_yaml::from_slice(yaml)?;

    let receiver = receiver::Receiver::start(forward.clone()).await?;
    let mut fakes = Vec::new();
    if let Some(tools) = doc.get_mut("tools").and_then(Yaml::as_sequence_mut) {
        for tool in tools {
            let name = tool
                .get("name")
                .and_then(Yaml::as_str)
                .unwrap_or("tool")
                .to_string();
            let fake = tools::FakeTool::start(&name, AGENT_TOKEN).await?;
            set(
                tool,
                "upstream",
                Yaml::from(format!("http://{}", fake.addr)),
            )?;
            fakes.push(fake);
        }
    }
    let (proxy, admin) = (free_addr()?, free_addr()?);
    let listen = serde_yaml::from_str(&format!("{{ proxy: \"{proxy}\", admin: \"{admin}\" }}"))?;
    set(&mut doc, "listen", listen)?;
    let telemetry = serde_yaml::from_str(&format!(
        "{{ otlp: {{ endpoint: \"http://{}\", protocol: http }}, decision_log: off }}",
        receiver.addr
    ))?;
    set(&mut doc, "telemetry", telemetry)?;
    let token = operator_token();
    set(
        &mut doc,
        "admin",
        serde_yaml::from_str(&format!("{{ token_file: {TOKEN_FILE} }}"))?,
    )?;
    // The second agent's toolgate: the same quickstart, trusting the first one's handoffs.
    let (second, second_proxy, second_admin) = handoff::second_agent(&doc)?;
    handoff::delegating(&mut doc)?;

    let overlay = |doc: &Yaml, extra: Vec<(PathBuf, Vec<u8>)>| -> anyhow::Result<Overlay> {
        Ok(Overlay {
            base: EmbeddedFiles::new(files),
            config: serde_yaml::to_string(doc)?.into_bytes(),
            token: token.clone(),
            extra,
        })
    };
    let first = serve(overlay(&doc, handoff::first_files()?)?, admin).await?;
    let second = async {
        let (status, jwks) = get(admin, "/.well-known/jwks.json").await?;
        if status != 200 {
            bail!("the first toolgate's JWKS: {status} {jwks}");
        }
        serve(overlay(&second, handoff::second_files(jwks))?, second_admin).await
    };
    let second = match second.await {
        Ok(s) => s,
        Err(e) => {
            first.stop().await?;
            return Err(e);
        }
    };

    let task = format!("demo-{}", run_id());
    let mut outcomes = Vec::new();
    let mut approved = Vec::new();
    let mut handed: Option<String> = None;
    for (i, step) in SCRIPT.iter().enumerate() {
        let outcome = match step.by {
            Who::Triage => send(proxy, step, &task, None).await?,
            Who::Billing => send(second_proxy, step, &task, handed.as_deref()).await?,
        };
        if step.approve {
            let id = approve(admin, &token, &outcome.body).await?;
            approved.push((i + 1, id));
        }
        if step.action == toolgate_policy::delegation::ACTION {
            handed = handoff::token(&outcome.body);
        }
        outcomes.push(outcome);
    }
    // Spans are queued once their request is counted; then stopping flushes them all.
    let count = |who: Who| SCRIPT.iter().filter(|s| s.by == who).count() as u64;
    until(Duration::from_secs(30), || async {
        recorded(admin).await >= count(Who::Triage)
            && recorded(second_admin).await >= count(Who::Billing)
    })
    .await;
    let stopped = (first.stop().await, second.stop().await);
    stopped.0?;
    stopped.1?;

    let received = receiver.spans();
    let chain = report::chain(&received, &task);
    let root = report::root(&received, &task);
    let seen: Vec<tools::Seen> = fakes.iter().flat_map(|f| f.seen()).collect();
    println!(
        "toolgate demo: the embedded quickstart's catalog and policy, its tools ({}) faked on \
         127.0.0.1,\none scripted agent task ({task}), handed in part to a second agent ({}) \
         served by a second toolgate,\nspans of both exported over OTLP/HTTP to an in-process \
         receiver.\n",
        fakes
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        handoff::SECOND
    );
    println!("Decisions\n\n{}", report::table(SCRIPT, &outcomes, &chain));
    for (step, id) in &approved {
        println!(
            "After step {step} the demo approved it as an operator ({APPROVER}): POST /v1/approvals/{id}/approve\n"
        );
    }
    for (i, (step, outcome)) in SCRIPT.iter().zip(&outcomes).enumerate() {
        if step.action == toolgate_policy::delegation::ACTION {
            println!("{}", report::handoff(i + 1, outcome));
        }
    }
    let trace = chain
        .first()
        .map(|s| {
            s.trace_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .unwrap_or_default();
    println!(
        "The task's chain, rebuilt from the {} spans received (trace {trace}):\n\n{}{}",
        chain.len(),
        root.as_ref().map(report::root_line).unwrap_or_default(),
        report::timeline(&chain)
    );
    if let Some(uri) = &forward {
        match receiver.forwarded() {
            (n, errors) if errors.is_empty() => {
                let requests = if n == 1 { "request" } else { "requests" };
                println!("Also sent to {uri} ({n} OTLP {requests}): look for task {task}.\n")
            }
            (_, errors) => eprintln!("could not pass spans on: {}", errors.join("; ")),
        }
    }
    let problems = report::problems(SCRIPT, &outcomes, &chain, root.as_ref(), &seen);
    for p in &problems {
        eprintln!("demo check failed: {p}");
    }
    Ok(problems.is_empty())
}
