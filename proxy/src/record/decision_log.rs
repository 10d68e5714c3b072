//! The decision log: one JSON line per decision (OPA's decision logs are the model), written
//! by its own thread so a slow disk never slows a request. When the queue is full, lines are
//! dropped and counted rather than blocking traffic. Credential values never appear: only the
//! credential's name and id.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use toolgate_policy::config::DecisionLogSink;

/// Lines queued before new ones are dropped.
pub const QUEUE: usize = 16_384;

/// The outcome part of a decision-log line.
#[derive(Debug, Serialize)]
pub struct Result<'a> {
    pub allow: bool,
    /// `allow`, `deny` or `error`.
    pub effect: &'a str,
    pub reason: &'a str,
    /// True when a would-deny was forwarded because policy runs in dry-run mode.
    pub dry_run: bool,
}

/// The credential part of a decision-log line: never the value.
#[derive(Debug, Serialize)]
pub struct Credential<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    /// The minted credential's id (a JWT's jti), when it has one.
    pub id: Option<&'a str>,
}

/// How the decided action ended (the chain entry's outcome).
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// `response`, `refused`, `agent_disconnected`, `upstream_error` or `timeout`.
    pub outcome: &'static str,
    /// The tool's status (`response`) or toolgate's own (`refused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// One decision.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub decision_id: &'a str,
    pub timestamp: String,
    pub agent: &'a str,
    pub task: &'a str,
    pub seq: u64,
    pub action: &'a str,
    pub tool: Option<&'a str>,
    pub attributes: Map<String, Json>,
    pub result: Result<'a>,
    /// The labels the decision set on the task and the agent.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub labels: &'a [std::sync::Arc<str>],
    pub outcome: Outcome,
    pub policy_revision: &'a str,
    pub credential: Option<Credential<'a>>,
    /// The approval the decision asked for (`pending`, `denied`, `expired`…) or went out on
    /// (`consumed`, with who approved it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Json>,
    /// The task's delegation (`depth`, `agents`), when a delegation token named the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Json>,
    /// The task's end (`at`, `by`), when the request was refused because the task ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_ended: Option<Json>,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub eval_duration_us: u64,
}

/// A handle to the decision-log writer.
#[derive(Debug)]
pub struct DecisionLog {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

impl DecisionLog {
    /// Start writing to `sink` (nothing is started for `off`).
    pub fn start(sink: &DecisionLogSink) -> io::Result<DecisionLog> {
        let out: Box<dyn Write + Send> = match sink {
            DecisionLogSink::Off => {
                return Ok(DecisionLog {
                    tx: None,
                    dropped: Arc::default(),
                })
            }
            DecisionLogSink::Stdout => Box::new(io::stdout()),
            DecisionLogSink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("toolgate-decision-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(DecisionLog {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    /// Whether lines are written at all (`decision_log: off` writes none).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue one line; never blocks.
    pub fn write(&self, line: &Line<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(text) = serde_json::to_string(line) else {
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(text) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(out);
    while let Ok(first) = rx.recv() {
        let mut line = Some(first);
        // Write what is queued, then flush once: one syscall per burst, not per line.
        while let Some(l) = line {
            if writeln!(out, "{l}").is_err() {
                return;
            }
            line = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}
