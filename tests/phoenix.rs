//! A real trace store: Arize Phoenix (PyPI `arize-phoenix`, installed by scripts/test.sh) on
//! 127.0.0.1, fed by `toolgate demo --otlp`, queried through its REST API
//! (`GET /v1/projects/default/spans`). The demo's task must read as one tree there: one trace,
//! a root span `task <id>` of kind AGENT, the first agent's six actions its children, in chain
//! order, the second agent's two below the handoff, each a TOOL span with the GenAI
//! tool-execution attributes.
//!
//! Phoenix's REST API does not return span links (its `links` field is still a TODO in
//! 20.x); the links between consecutive actions are checked against toolgate's own receiver
//! in tests/demo.rs and tests/telemetry.rs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `phoenix serve` on loopback ports of its own, in a working directory of its own; killed
/// (by its pid) on drop.
struct Phoenix {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Phoenix {
    fn start() -> Phoenix {
        let found = Command::new("python3")
            .args(["-c", "import phoenix.server.main"])
            .output()
            .expect("python3 is required");
        assert!(
            found.status.success(),
            "run scripts/test.sh, which installs arize-phoenix: {}",
            String::from_utf8_lossy(&found.stderr)
        );
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let log = dir.path().join("phoenix.log");
        let child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/phoenix/serve.py"))
            .env("PHOENIX_WORKING_DIR", dir.path())
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", port.to_string())
            .env("PHOENIX_GRPC_PORT", support::free_port().to_string())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut phoenix = Phoenix {
            port,
            child,
            _dir: dir,
            log,
        };
        phoenix.wait_healthy();
        phoenix
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Phoenix migrates its database and starts in 10 to 30 s here; allow two minutes.
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let client = reqwest::blocking::Client::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("phoenix exited with {status}:\n{}", self.logs());
            }
            if client
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("phoenix did not become healthy:\n{}", self.logs());
    }

    /// Every span of project `default` whose trace is `trace`, once there are `n` of them.
    fn spans_of(&self, trace: &str, n: usize) -> Vec<Value> {
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let page: Value = client
                .get(self.url("/v1/projects/default/spans"))
                .query(&[("trace_id", trace), ("limit", "1000")])
                .send()
                .unwrap()
                .json()
                .unwrap();
            let spans = page["data"].as_array().cloned().unwrap_or_default();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "Phoenix holds {} spans of trace {trace}, wanted {n}: {page:#}",
                spans.len()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo's output line `The task's chain, rebuilt from the 5 spans received (trace T):`.
fn demo_trace(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split("(trace ").nth(1))
        .map(|t| t.trim_end_matches("):").to_string())
        .unwrap_or_else(|| panic!("no trace id in the demo's output:\n{stdout}"))
}

#[test]
fn the_demo_task_reads_as_one_tree_of_tool_spans_in_phoenix() {
    let phoenix = Phoenix::start();
    let out = Command::new(support::binary())
        .args(["demo", "--otlp", &phoenix.url("/v1/traces")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = demo_trace(&stdout);
    let spans = phoenix.spans_of(&trace, 9);
    assert_eq!(
        spans.len(),
        9,
        "eight actions (six by the first agent, two by the one it handed the task to) and the task's root: {spans:#?}"
    );

    // One root, `task demo-…`, of kind AGENT, with the first agent's counts.
    let roots: Vec<&Value> = spans.iter().filter(|s| s["parent_id"].is_null()).collect();
    assert_eq!(roots.len(), 1, "one root: {spans:#?}");
    let root = roots[0];
    let task = root["attributes"]["toolgate.task.id"].as_str().unwrap();
    assert_eq!(root["name"], format!("task {task}"));
    assert_eq!(root["span_kind"], "AGENT");
    assert_eq!(root["attributes"]["toolgate.task.actions"], 6);
    assert_eq!(root["attributes"]["toolgate.task.decisions.allow"], 5);
    assert_eq!(root["attributes"]["toolgate.task.decisions.deny"], 1);
    let root_id = root["context"]["span_id"].as_str().unwrap();
    let first_agent = root["attributes"]["gen_ai.agent.id"].as_str().unwrap();

    // The second agent's actions hang below the handoff (the delegation token's trace
    // context), in the same trace.
    let by = |agent_is_first: bool| {
        let mut v: Vec<&Value> = spans
            .iter()
            .filter(|s| !s["parent_id"].is_null())
            .filter(|s| (s["attributes"]["gen_ai.agent.id"] == first_agent) == agent_is_first)
            .collect();
        v.sort_by_key(|s| s["attributes"]["toolgate.chain.seq"].as_i64());
        v
    };
    let (actions, billing) = (by(true), by(false));
    let handoff = actions
        .iter()
        .find(|s| s["name"] == "task.delegate")
        .expect("the handoff is one of the first agent's actions");
    let names: Vec<&str> = billing
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ticket.read", "ticket.transition"]);
    assert_eq!(billing[0]["parent_id"], handoff["context"]["span_id"]);
    for span in &billing {
        assert_eq!(span["context"]["trace_id"], trace.as_str());
        assert_eq!(span["span_kind"], "TOOL", "{}", span["name"]);
    }

    // The first agent's actions: children of the root, in chain order, TOOL spans with
    // GenAI attributes.
    let names: Vec<&str> = actions
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ticket.read",
            "ticket.transition",
            "payment.create",
            "payment.create",
            "crm.lookup_customer",
            "task.delegate"
        ]
    );
    let mut started = String::new();
    for (i, span) in actions.iter().enumerate() {
        let a = &span["attributes"];
        assert_eq!(span["parent_id"], root_id, "{}", span["name"]);
        assert_eq!(span["context"]["trace_id"], trace.as_str());
        assert_eq!(span["span_kind"], "TOOL", "{}", span["name"]);
        assert_eq!(a["toolgate.chain.seq"], i as i64 + 1);
        assert_eq!(a["gen_ai.operation.name"], "execute_tool");
        assert_eq!(a["toolgate.task.id"], task);
        assert!(a["gen_ai.agent.id"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://"));
        // In chain order in time too (RFC 3339 with a fixed offset sorts as text).
        let start = span["start_time"].as_str().unwrap().to_string();
        assert!(
            start >= started,
            "{} starts before the action before it",
            span["name"]
        );
        started = start;
    }
    assert_eq!(actions[0]["attributes"]["gen_ai.tool.name"], "ticket.read");
    let mcp = &actions[4]["attributes"];
    assert_eq!(mcp["gen_ai.tool.name"], "lookup_customer");
    assert_eq!(mcp["mcp.method.name"], "tools/call");
    assert!(mcp["gen_ai.tool.call.id"].is_string(), "{mcp:#}");
    assert_eq!(mcp["gen_ai.tool.call.id"], mcp["jsonrpc.request.id"]);
}
