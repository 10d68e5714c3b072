//! Metrics in Prometheus text format (DESIGN.md §8), served on the admin listener.
//!
//! Counters are atomics or small maps; label cardinality is bounded: actions beyond
//! `MAX_ACTION_LABELS` distinct names are counted under `other`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most distinct `action` label values kept; further actions are counted as `other`.
pub const MAX_ACTION_LABELS: usize = 1_000;

/// Bucket upper bounds (seconds) for policy evaluation.
const EVAL_BUCKETS: [f64; 10] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.01, 0.1,
];
/// Bucket upper bounds (seconds) for the time a human takes to decide an approval.
const DECISION_BUCKETS: [f64; 10] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 86_400.0,
];
/// Bucket upper bounds (seconds) for upstream round trips.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            if let Some(c) = self.counts.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// All of toolgate's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<HashMap<(Arc<str>, &'static str), u64>>,
    pub policy_eval: Histogram,
    pub upstream_duration: Histogram,
    credentials_issued: Mutex<BTreeMap<&'static str, u64>>,
    policy_reloads: Mutex<BTreeMap<&'static str, u64>>,
    spans_dropped: Arc<AtomicU64>,
    /// What was kept from the agent in tool responses: `set_cookie`, `masked` (a credential
    /// form in a header or the body), `compressed_body` (withheld).
    scrubbed: Mutex<BTreeMap<&'static str, u64>>,
    operator_auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    revocations_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Approval lifecycle events: requested, approved, denied, expired, consumed.
    approvals: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from an approval's request to a human's decision.
    pub approval_decision: Histogram,
    /// Approvals refused because the room for them was full.
    approvals_refused: AtomicU64,
    webhooks: Arc<crate::approval::webhook::Counts>,
    connections_refused: Mutex<BTreeMap<&'static str, u64>>,
    heads_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections open and bytes buffered, kept by the connection gate (`accept::gate`).
    pub load: Arc<Load>,
}

/// What the listeners hold right now. The connection gate counts here, so the numbers it
/// decides on are the numbers `/metrics` shows.
#[derive(Debug, Default)]
pub struct Load {
    /// Agent connections open on the proxy and transparent listeners together.
    pub agent_connections: AtomicUsize,
    pub proxy: AtomicUsize,
    pub transparent: AtomicUsize,
    pub admin: AtomicUsize,
    /// Bytes of request heads and bodies charged to `limits.max_buffered_bytes`.
    pub buffered: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            policy_eval: Histogram::new(&EVAL_BUCKETS),
            upstream_duration: Histogram::new(&UPSTREAM_BUCKETS),
            credentials_issued: Mutex::default(),
            policy_reloads: Mutex::default(),
            spans_dropped: Arc::default(),
            scrubbed: Mutex::default(),
            operator_auth_failures: Mutex::default(),
            revocations_refused: Mutex::default(),
            approvals: Mutex::default(),
            approval_decision: Histogram::new(&DECISION_BUCKETS),
            approvals_refused: AtomicU64::new(0),
            webhooks: Arc::default(),
            connections_refused: Mutex::default(),
            heads_refused: Mutex::default(),
            load: Arc::default(),
        }
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K, n: u64) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += n;
    }
}

/// A counter with one label, one row per value seen.
fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    map: &Mutex<BTreeMap<&'static str, u64>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    if let Ok(m) = map.lock() {
        for (value, n) in m.iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
}

/// Escape a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Count one request by action and decision (`allow`, `deny`, `error`, `reject`…).
    pub fn request(&self, action: &Arc<str>, decision: &'static str) {
        let Ok(mut m) = self.requests.lock() else {
            return;
        };
        let known = m.contains_key(&(action.clone(), decision)) || m.len() < MAX_ACTION_LABELS;
        let action = if known {
            action.clone()
        } else {
            Arc::from("other")
        };
        *m.entry((action, decision)).or_default() += 1;
    }

    /// Count a credential injected, by kind (`secret`, `jwt`, `token_exchange`).
    pub fn credential_issued(&self, kind: &'static str) {
        bump(&self.credentials_issued, kind, 1);
    }

    /// Count a policy/config reload attempt by result (`success`, `failure`).
    pub fn policy_reload(&self, result: &'static str) {
        bump(&self.policy_reloads, result, 1);
    }

    /// Count what was kept from the agent in a response (`set_cookie`, `masked`,
    /// `compressed_body`).
    pub fn scrubbed(&self, what: &'static str, n: u64) {
        if n > 0 {
            bump(&self.scrubbed, what, n);
        }
    }

    /// Count `Set-Cookie` headers dropped from responses to credentialed requests.
    pub fn cookies_dropped(&self, n: usize) {
        self.scrubbed("set_cookie", n as u64);
    }

    /// Count a request to the operator API that failed authentication, by listener
    /// (`admin`, `socket`).
    pub fn operator_auth_failure(&self, listener: &'static str) {
        bump(&self.operator_auth_failures, listener, 1);
    }

    /// Count a revocation refused because its kind's room is full (`task`, `agent`, `jti`).
    pub fn revocation_refused(&self, kind: &'static str) {
        bump(&self.revocations_refused, kind, 1);
    }

    /// Count an approval event (`requested`, `approved`, `denied`, `expired`, `consumed`).
    pub fn approval_event(&self, event: &'static str) {
        bump(&self.approvals, event, 1);
    }

    /// Count an approval refused because `approvals.max_pending` were in force.
    pub fn approval_refused(&self) {
        self.approvals_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The approval webhook's delivery counts, shared with its sender.
    pub fn webhook_counts(&self) -> Arc<crate::approval::webhook::Counts> {
        self.webhooks.clone()
    }

    /// Count a connection refused at a listener's cap (`proxy`, `transparent`), or one closed
    /// to make room (`admin`).
    pub fn connection_refused(&self, listener: &'static str) {
        bump(&self.connections_refused, listener, 1);
    }

    /// Count a request head toolgate answered itself before reading it whole
    /// (`head_timeout`, `head_too_large`, `buffers_full`).
    pub fn head_refused(&self, reason: &'static str) {
        bump(&self.heads_refused, reason, 1);
    }

    /// The counter of spans dropped before export (full queue, endpoint down), shared with
    /// the exporter.
    pub fn spans_dropped(&self) -> Arc<AtomicU64> {
        self.spans_dropped.clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP toolgate_requests_total Requests by action and decision.\n");
        out.push_str("# TYPE toolgate_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort();
            for ((action, decision), n) in rows {
                let _ = writeln!(
                    out,
                    "toolgate_requests_total{{action=\"{}\",decision=\"{decision}\"}} {n}",
                    label(action)
                );
            }
        }
        self.policy_eval.render(
            &mut out,
            "toolgate_policy_eval_seconds",
            "Policy evaluation time.",
        );
        self.upstream_duration.render(
            &mut out,
            "toolgate_upstream_duration_seconds",
            "Time from sending a request upstream to its response head.",
        );
        out.push_str("# HELP toolgate_credentials_issued_total Credentials injected, by kind.\n");
        out.push_str("# TYPE toolgate_credentials_issued_total counter\n");
        if let Ok(m) = self.credentials_issued.lock() {
            for (kind, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "toolgate_credentials_issued_total{{kind=\"{kind}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP toolgate_policy_reloads_total Configuration and policy reloads, by result.\n",
        );
        out.push_str("# TYPE toolgate_policy_reloads_total counter\n");
        if let Ok(m) = self.policy_reloads.lock() {
            for (result, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "toolgate_policy_reloads_total{{result=\"{result}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP toolgate_spans_dropped_total Spans dropped before export.\n");
        out.push_str("# TYPE toolgate_spans_dropped_total counter\n");
        let _ = writeln!(
            out,
            "toolgate_spans_dropped_total {}",
            self.spans_dropped.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "toolgate_response_scrubbed_total",
            "What tool responses lost before reaching the agent: set_cookie (dropped), masked (an injected credential's form), compressed_body (withheld: it could not be checked).",
            "what",
            &self.scrubbed,
        );
        counter(
            &mut out,
            "toolgate_operator_auth_failures_total",
            "Operator API requests refused for failed authentication, by listener.",
            "listener",
            &self.operator_auth_failures,
        );
        counter(
            &mut out,
            "toolgate_revocations_refused_total",
            "Revocations refused because their kind's room was full, by kind.",
            "kind",
            &self.revocations_refused,
        );
        counter(
            &mut out,
            "toolgate_approvals_total",
            "Approval events: requested, approved, denied, expired, consumed (used by the approved request).",
            "event",
            &self.approvals,
        );
        self.approval_decision.render(
            &mut out,
            "toolgate_approval_decision_seconds",
            "Time from an approval's request to a human's approve or deny.",
        );
        let _ = writeln!(
            out,
            "# HELP toolgate_approvals_refused_total Approvals refused because approvals.max_pending were in force.\n# TYPE toolgate_approvals_refused_total counter\ntoolgate_approvals_refused_total {}",
            self.approvals_refused.load(Ordering::Relaxed)
        );
        let w = &self.webhooks;
        let _ = writeln!(
            out,
            "# HELP toolgate_approval_webhooks_total Approval webhook deliveries, by result.\n# TYPE toolgate_approval_webhooks_total counter\ntoolgate_approval_webhooks_total{{result=\"delivered\"}} {}\ntoolgate_approval_webhooks_total{{result=\"failed\"}} {}\ntoolgate_approval_webhooks_total{{result=\"dropped\"}} {}",
            w.delivered.load(Ordering::Relaxed),
            w.failed.load(Ordering::Relaxed),
            w.dropped.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "toolgate_connections_refused_total",
            "Connections refused because the listener held its most (limits.max_connections; admin: the oldest closed instead), by listener.",
            "listener",
            &self.connections_refused,
        );
        counter(
            &mut out,
            "toolgate_request_heads_refused_total",
            "Request heads answered before they were read whole: head_timeout (408), head_too_large (431), buffers_full (503).",
            "reason",
            &self.heads_refused,
        );
        let load = &self.load;
        let _ = writeln!(
            out,
            "# HELP toolgate_connections_open Connections open, by listener.\n# TYPE toolgate_connections_open gauge"
        );
        for (listener, n) in [
            ("proxy", &load.proxy),
            ("transparent", &load.transparent),
            ("admin", &load.admin),
        ] {
            let _ = writeln!(
                out,
                "toolgate_connections_open{{listener=\"{listener}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP toolgate_buffered_bytes Bytes of request heads and bodies held, against limits.max_buffered_bytes.\n# TYPE toolgate_buffered_bytes gauge\ntoolgate_buffered_bytes {}",
            load.buffered.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request(&Arc::from("ticket.read"), "allow");
        m.request(&Arc::from("ticket.read"), "allow");
        m.request(&Arc::from("payment.create"), "deny");
        m.credential_issued("secret");
        m.operator_auth_failure("admin");
        m.operator_auth_failure("admin");
        m.revocation_refused("jti");
        m.approval_event("requested");
        m.approval_event("approved");
        m.approval_refused();
        m.approval_decision.observe(Duration::from_secs(42));
        m.connection_refused("proxy");
        m.head_refused("head_timeout");
        m.load.proxy.store(3, Ordering::Relaxed);
        m.load.buffered.store(4096, Ordering::Relaxed);
        m.policy_eval.observe(Duration::from_micros(3));
        m.policy_eval.observe(Duration::from_millis(50));
        let text = m.render();
        assert!(
            text.contains("toolgate_requests_total{action=\"ticket.read\",decision=\"allow\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "toolgate_requests_total{action=\"payment.create\",decision=\"deny\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("toolgate_credentials_issued_total{kind=\"secret\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("toolgate_policy_eval_seconds_bucket{le=\"0.000005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("toolgate_policy_eval_seconds_bucket{le=\"0.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("toolgate_policy_eval_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("toolgate_operator_auth_failures_total{listener=\"admin\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE toolgate_revocations_refused_total counter\ntoolgate_revocations_refused_total{kind=\"jti\"} 1\n"),
            "{text}"
        );
        for line in [
            "toolgate_approvals_total{event=\"approved\"} 1\n",
            "toolgate_approvals_total{event=\"requested\"} 1\n",
            "toolgate_approval_decision_seconds_bucket{le=\"30\"} 0\n",
            "toolgate_approval_decision_seconds_bucket{le=\"60\"} 1\n",
            "toolgate_approvals_refused_total 1\n",
            "toolgate_approval_webhooks_total{result=\"failed\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
        for line in [
            "toolgate_connections_refused_total{listener=\"proxy\"} 1\n",
            "toolgate_request_heads_refused_total{reason=\"head_timeout\"} 1\n",
            "# TYPE toolgate_connections_open gauge\ntoolgate_connections_open{listener=\"proxy\"} 3\n",
            "toolgate_connections_open{listener=\"admin\"} 0\n",
            "# TYPE toolgate_buffered_bytes gauge\ntoolgate_buffered_bytes 4096\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn action_labels_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_ACTION_LABELS + 10 {
            m.request(&Arc::from(format!("a{i}")), "deny");
        }
        let text = m.render();
        assert!(
            text.contains("toolgate_requests_total{action=\"other\",decision=\"deny\"} 10\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("toolgate_requests_total{").count(),
            MAX_ACTION_LABELS + 1
        );
    }
}
