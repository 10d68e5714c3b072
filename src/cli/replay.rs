//! `toolgate replay -c FILE [--policy CANDIDATE.rego…] [--data FILE…] [--json] LOG…`: the
//! decisions recorded in decision logs (written with `telemetry.decision_log: { input: true }`)
//! decided again by a candidate policy — by default the configuration's `policy.shadow`.
//! Prints a summary per action and every changed decision with its decision id and trace id
//! (`--json`: the whole report). Exits 0 when nothing changed, 1 when something did, 2 when
//! the configuration, the candidate or a log cannot be used.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use toolgate_policy::config::{Config, PolicySource};
use toolgate_policy::evaluate::Policy;
use toolgate_policy::replay::{self, Report, Skipped};
use toolgate_policy::shadow::{Change, Verdict};

/// `toolgate replay` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration the decisions were made under (catalog, credentials, data, query).
    #[arg(short, long)]
    config: PathBuf,
    /// The candidate's Rego: a file, a directory (its `*.rego`) or a glob; repeatable.
    /// Default: the configuration's `policy.shadow`.
    #[arg(long = "policy", value_name = "REGO")]
    policy: Vec<String>,
    /// The candidate's data documents (YAML or JSON); default: the live policy's data.
    #[arg(long = "data", value_name = "FILE")]
    data: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Decision logs to replay.
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
}

/// Exit code for unusable configuration, candidate or logs.
const CONFIG_ERROR: u8 = 2;

/// Run `toolgate replay`.
pub fn run(args: Args) -> ExitCode {
    match replay(&args) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", render(&report));
            }
            if report.changed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("toolgate replay: {e}");
            ExitCode::from(CONFIG_ERROR)
        }
    }
}

fn replay(args: &Args) -> Result<Report, String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let source = candidate(&config, &args.policy, &args.data)?;
    let candidate = Policy::compile(&source).map_err(|e| format!("the candidate policy: {e}"))?;
    let mut recorded = Vec::new();
    let mut skipped = Skipped::default();
    for log in &args.logs {
        let file = std::fs::File::open(log).map_err(|e| format!("{}: {e}", log.display()))?;
        replay::read_log(
            &log.display().to_string(),
            BufReader::new(file),
            &mut recorded,
            &mut skipped,
        )
        .map_err(|e| e.to_string())?;
    }
    if recorded.is_empty() {
        return Err(format!(
            "no decision with a recorded input in {} ({} lines without one): record inputs with `telemetry.decision_log: {{ sink: …, input: true }}`",
            args.logs
                .iter()
                .map(|l| l.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            skipped.without_input
        ));
    }
    Ok(replay::replay(&config, &candidate, recorded, skipped))
}

/// The candidate's sources: `--policy` (and `--data`) over the live policy's data and query,
/// or the configured `policy.shadow`.
fn candidate(config: &Config, policy: &[String], data: &[PathBuf]) -> Result<PolicySource, String> {
    if policy.is_empty() {
        let shadow = config.shadow.as_ref().ok_or(
            "no candidate: pass --policy CANDIDATE.rego, or configure policy.shadow".to_string(),
        )?;
        let mut source = shadow.source.clone().map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        if !data.is_empty() {
            source.data = documents(data)?;
        }
        return Ok(source);
    }
    let mut modules = Vec::new();
    for pattern in policy {
        for file in rego_files(pattern)? {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            modules.push((file.display().to_string(), text));
        }
    }
    Ok(PolicySource {
        modules,
        data: if data.is_empty() {
            config.policy.data.clone()
        } else {
            documents(data)?
        },
        query: config.policy.query.clone(),
        mode: config.policy.mode,
    })
}

/// The Rego files `pattern` names: a file, a directory's `*.rego`, or a glob's matches.
fn rego_files(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let found: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{pattern}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rego"))
            .collect();
        files.sort();
        files
    } else {
        let mut files: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|e| format!("--policy {pattern:?}: {e}"))?
            .filter_map(Result::ok)
            .collect();
        files.sort();
        files
    };
    if found.is_empty() {
        return Err(format!("--policy {pattern:?} names no Rego file"));
    }
    Ok(found)
}

/// Data documents merged under `data.`, as the configuration merges them.
fn documents(files: &[PathBuf]) -> Result<serde_json::Value, String> {
    let mut data = serde_json::Map::new();
    for file in files {
        let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        match serde_yaml::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(map)) => data.extend(map),
            Ok(_) => {
                return Err(format!(
                    "{}: a data document must be a mapping",
                    file.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", file.display())),
        }
    }
    Ok(serde_json::Value::Object(data))
}

fn verdict(v: &Verdict) -> String {
    let mut out = format!("{} {:?}", v.effect.as_str(), v.reason);
    if let Some(c) = &v.credential {
        out.push_str(&format!(" · credential {}", c.name));
        if !c.scopes.is_empty() {
            out.push_str(&format!(" scopes {}", c.scopes.join(" ")));
        }
        if let Some(ttl) = &c.ttl {
            out.push_str(&format!(" ttl {ttl}"));
        }
    }
    if !v.labels.is_empty() {
        out.push_str(&format!(" · labels {}", v.labels.join(",")));
    }
    out
}

fn change_name(c: Change) -> &'static str {
    match c {
        Change::Unchanged => "unchanged",
        Change::NewlyDenied => "newly denied",
        Change::NewlyAllowed => "newly allowed",
        Change::ChangedCredential => "changed credential",
        Change::Changed => "changed",
    }
}

/// The human summary.
fn render(report: &Report) -> String {
    let mut out = String::new();
    let recorded: Vec<&str> = report
        .recorded_revisions
        .iter()
        .map(String::as_str)
        .collect();
    out.push_str(&format!(
        "replayed {} decisions of {} tasks: recorded under policy {}, candidate {}\n",
        report.replayed,
        report.tasks,
        recorded.join(", "),
        report.candidate_revision
    ));
    let s = &report.skipped;
    if s.without_input + s.duplicates > 0 {
        out.push_str(&format!(
            "skipped {} lines without a recorded input, {} seen twice\n",
            s.without_input, s.duplicates
        ));
    }
    let width = report
        .actions
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("action".len());
    out.push_str(&format!(
        "\n{:width$}  unchanged  newly denied  newly allowed  changed credential  changed\n",
        "action"
    ));
    for (action, c) in &report.actions {
        out.push_str(&format!(
            "{action:width$}  {:>9}  {:>12}  {:>13}  {:>18}  {:>7}\n",
            c.unchanged, c.newly_denied, c.newly_allowed, c.changed_credential, c.changed
        ));
    }
    if report.changes.is_empty() {
        out.push_str("\nno decision changes\n");
    } else {
        out.push_str(&format!("\n{} changed decisions:\n", report.changes.len()));
    }
    for c in &report.changes {
        out.push_str(&format!(
            "  {}  {}  task {} seq {}  decision {}  trace {}\n      recorded:  {}\n      candidate: {}\n",
            change_name(c.change),
            c.action,
            c.task,
            c.seq,
            c.decision_id,
            c.trace_id,
            verdict(&c.recorded),
            verdict(&c.candidate)
        ));
    }
    if !report.history.is_empty() {
        out.push_str(&format!(
            "\n{} decisions depend on history the candidate changed (decided again with the candidate's earlier decisions in their chain):\n",
            report.history.len()
        ));
        for h in &report.history {
            let before: Vec<String> = h.changed_before.iter().map(u64::to_string).collect();
            out.push_str(&format!(
                "  {}  task {} seq {} (after seq {})  decision {}  trace {}\n      as recorded:                  {}\n      with the candidate's history: {}\n",
                h.action,
                h.task,
                h.seq,
                before.join(", "),
                h.decision_id,
                h.trace_id,
                verdict(&h.as_recorded),
                verdict(&h.with_candidate_history)
            ));
        }
    }
    out
}
