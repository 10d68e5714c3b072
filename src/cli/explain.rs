//! `toolgate explain -c FILE --log LOG… DECISION_ID [--json]`: one decision, from its
//! decision-log line to everything about it — who, which task and action, the decision and
//! how the action ended, its trace and span ids, the credential's id (a JWT's `jti`) and the
//! approval, the shadow policy's decision when it disagreed, and, when the input was recorded
//! (`telemetry.decision_log: { input: true }`): the chain it saw, the rule of the
//! configuration's policy that produced it (file:line), and the input, with the values of
//! headers and query parameters named like secrets masked. Exits 0 when the decision was
//! found, 1 when it was not, 2 when the configuration or a log cannot be read.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Value as Json};
use toolgate_policy::config::Config;
use toolgate_policy::evaluate::{Decision, Policy};
use toolgate_policy::explain::{self, Explanation};
use toolgate_policy::shadow::Verdict;

/// `toolgate explain` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration whose policy explains the decision.
    #[arg(short, long)]
    config: PathBuf,
    /// A decision log to search; repeatable.
    #[arg(long = "log", value_name = "LOG", required = true)]
    logs: Vec<PathBuf>,
    /// The decision id (the problem's `decision_id`, the span's `toolgate.decision_id`).
    decision_id: String,
    /// Print everything as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Exit code for an unreadable configuration or log.
const CONFIG_ERROR: u8 = 2;

/// Header and query parameter names whose values `explain` masks in the printed input: the
/// agent's own secrets under names toolgate does not strip.
const SECRET_WORDS: [&str; 8] = [
    "auth",
    "token",
    "secret",
    "key",
    "session",
    "password",
    "cookie",
    "signature",
];

/// The value at JSON pointer `path` in `value`, or null.
fn at<'v>(value: &'v Json, path: &str) -> &'v Json {
    value.pointer(path).unwrap_or(&Json::Null)
}

/// Run `toolgate explain`.
pub fn run(args: Args) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let (line, shadow) = match find(&args.logs, &args.decision_id) {
        Ok(Some(found)) => found,
        Ok(None) => {
            eprintln!(
                "toolgate explain: no decision {} in {}",
                args.decision_id,
                args.logs
                    .iter()
                    .map(|l| l.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("toolgate explain: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let rule = rule(&config, &line);
    if args.json {
        let doc = json!({
            "decision": line,
            "shadow": shadow,
            "rule": match &rule {
                Ok(r) => r.to_json(),
                Err(why) => json!({ "unavailable": why }),
            },
            "input": line.get("input").map(redacted),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", render(&config, &line, shadow.as_ref(), &rule));
    }
    ExitCode::SUCCESS
}

/// The decision line with `id`, and its shadow line if the shadow disagreed.
fn find(logs: &[PathBuf], id: &str) -> Result<Option<(Json, Option<Json>)>, String> {
    let mut found = None;
    let mut shadow = None;
    for log in logs {
        let file = std::fs::File::open(log).map_err(|e| format!("{}: {e}", log.display()))?;
        for (i, text) in std::io::BufReader::new(file).lines().enumerate() {
            let text = text.map_err(|e| format!("{}: {e}", log.display()))?;
            // Cheap before parsing: most lines are other decisions.
            if !text.contains(id) {
                continue;
            }
            let line: Json = serde_json::from_str(&text).map_err(|e| {
                format!("{}:{}: not a decision-log line: {e}", log.display(), i + 1)
            })?;
            if line.get("decision_id").and_then(Json::as_str) != Some(id) {
                continue;
            }
            if line.get("shadow").is_some() {
                shadow = Some(line);
            } else {
                found = Some(line);
            }
        }
    }
    Ok(found.map(|l| (l, shadow)))
}

/// What the rule section says: where the configuration's policy decides the recorded input,
/// and whether it is the policy that decided it.
#[derive(Debug)]
struct Rule {
    revision: String,
    /// The configuration's policy is the one that made the decision.
    same_policy: bool,
    /// The configuration's policy decides the input as recorded.
    same_decision: bool,
    decides: Verdict,
    explanation: Explanation,
}

impl Rule {
    fn to_json(&self) -> Json {
        json!({
            "revision": self.revision,
            "same_policy": self.same_policy,
            "same_decision": self.same_decision,
            "decides": self.decides,
            "result": self.explanation.result,
            "produced_by": self.explanation.produced_by,
        })
    }
}

fn rule(config: &Config, line: &Json) -> Result<Rule, String> {
    let input = line.get("input").ok_or(
        "no input recorded with this decision (record inputs with `telemetry.decision_log: { sink: …, input: true }`)",
    )?;
    let policy = Policy::compile(&config.policy).map_err(|e| e.to_string())?;
    let explanation = explain::explain(&config.policy, input).map_err(|e| e.to_string())?;
    let tool = input
        .pointer("/action/tool")
        .and_then(Json::as_str)
        .and_then(|name| config.catalog.tools().iter().find(|t| &*t.name == name));
    let mut decision = Decision::from_result(Ok(explanation.result.clone()));
    if input.get("approval").is_some() {
        decision = decision.satisfied_by_approval();
    }
    let decides = Verdict::of(config, tool, &decision);
    let recorded: Option<Verdict> = serde_json::from_value(line["decision"].clone()).ok();
    Ok(Rule {
        same_policy: line["policy_revision"] == policy.revision(),
        same_decision: recorded.as_ref() == Some(&decides),
        revision: policy.revision().to_string(),
        decides,
        explanation,
    })
}

/// `input` with the values of headers and query parameters named like secrets masked.
fn redacted(input: &Json) -> Json {
    let mut input = input.clone();
    for part in ["headers", "query"] {
        if let Some(map) = input
            .get_mut("request")
            .and_then(|r| r.get_mut(part))
            .and_then(Json::as_object_mut)
        {
            for (name, value) in map.iter_mut() {
                let lower = name.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                    *value = Json::from("<redacted>");
                }
            }
        }
    }
    input
}

fn text(v: &Json) -> String {
    match v {
        Json::Null => "-".to_string(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render(
    config: &Config,
    line: &Json,
    shadow: Option<&Json>,
    rule: &Result<Rule, String>,
) -> String {
    let mut out = String::new();
    let r = &line["result"];
    out.push_str(&format!(
        "decision  {}  at {}\n",
        text(&line["decision_id"]),
        text(&line["timestamp"])
    ));
    out.push_str(&format!("agent     {}\n", text(&line["agent"])));
    out.push_str(&format!(
        "task      {}  seq {}\n",
        text(&line["task"]),
        text(&line["seq"])
    ));
    out.push_str(&format!(
        "action    {}  tool {}  attributes {}\n",
        text(&line["action"]),
        text(&line["tool"]),
        line["attributes"]
    ));
    out.push_str(&format!(
        "decided   {}: {}{}\n",
        text(&r["effect"]),
        text(&r["reason"]),
        if r["dry_run"] == true {
            "  (dry-run: forwarded)"
        } else {
            ""
        }
    ));
    let outcome = &line["outcome"];
    out.push_str(&format!(
        "outcome   {}{}\n",
        text(&outcome["outcome"]),
        outcome
            .get("status")
            .map(|s| format!(" {s}"))
            .unwrap_or_default()
    ));
    let c = &line["credential"];
    out.push_str(&match c {
        Json::Null => "credential none went out\n".to_string(),
        c => format!(
            "credential {} ({}), id (jti) {}\n",
            text(&c["name"]),
            text(&c["kind"]),
            text(&c["id"])
        ),
    });
    let a = &line["approval"];
    if !a.is_null() {
        out.push_str(&format!(
            "approval  {} {}{}{}\n",
            text(&a["id"]),
            text(&a["status"]),
            a.get("decided_by")
                .filter(|b| !b.is_null())
                .map(|b| format!(" by {}", text(b)))
                .unwrap_or_default(),
            a.get("comment")
                .filter(|b| !b.is_null())
                .map(|b| format!(" ({})", text(b)))
                .unwrap_or_default()
        ));
    }
    if let Some(labels) = line.get("labels") {
        out.push_str(&format!("labels    {labels}\n"));
    }
    out.push_str(&format!(
        "trace     {}  span {}\npolicy    revision {}  evaluated in {} µs\n",
        text(&line["trace_id"]),
        text(&line["span_id"]),
        text(&line["policy_revision"]),
        text(&line["eval_duration_us"])
    ));
    if let Some(s) = shadow {
        out.push_str(&format!(
            "shadow    {}: {}  (differs: {}; shadow policy {})\n",
            text(at(s, "/shadow/decision/effect")),
            text(at(s, "/shadow/decision/reason")),
            s["differs"]
                .as_array()
                .map(|d| d.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            text(at(s, "/shadow/policy_revision"))
        ));
    }
    out.push('\n');
    match rule {
        Err(why) => out.push_str(&format!("rule: unavailable: {why}\n")),
        Ok(rule) => {
            out.push_str(&format!(
                "rule (policy revision {} of {}{}):\n",
                rule.revision,
                config.origin.display(),
                if rule.same_policy {
                    ", the policy that decided"
                } else {
                    ", not the policy that decided"
                }
            ));
            if rule.explanation.produced_by.is_empty() {
                out.push_str("  no rule: the decision is undefined (denied)\n");
            }
            for at in &rule.explanation.produced_by {
                out.push_str(&format!(
                    "  {}:{}  {}  [{}]\n",
                    at.file, at.line, at.text, at.kind
                ));
            }
            if !rule.same_decision {
                out.push_str(&format!(
                    "  note: this policy decides the recorded input otherwise: {}: {}\n",
                    rule.decides.effect.as_str(),
                    rule.decides.reason
                ));
            }
        }
    }
    if let Some(input) = line.get("input") {
        let chain = input["chain"].as_array().cloned().unwrap_or_default();
        out.push_str(&format!(
            "\nchain it saw ({} earlier actions{}):\n",
            chain.len(),
            if input.pointer("/task/history_complete") == Some(&Json::Bool(false)) {
                ", history incomplete"
            } else {
                ""
            }
        ));
        for e in &chain {
            let ended = if e["pending"] == true {
                "pending".to_string()
            } else {
                format!(
                    "{}{}",
                    text(&e["outcome"]),
                    e.get("status").map(|s| format!(" {s}")).unwrap_or_default()
                )
            };
            out.push_str(&format!(
                "  seq {}  {}  {}  {}  {}  at {}\n",
                text(&e["seq"]),
                text(&e["action"]),
                text(&e["decision"]),
                ended,
                e["attributes"],
                text(&e["at"])
            ));
        }
        out.push_str(&format!(
            "\ninput (as policy saw it: credential-bearing headers never reach it; header and query values named like secrets masked here):\n{}\n",
            serde_json::to_string_pretty(&redacted(input)).unwrap_or_default()
        ));
    }
    out
}
