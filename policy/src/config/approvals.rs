//! `approvals.*`: how long approvals live and how many are held, where a human approves one
//! (`page_url`), and the webhook told when one is requested and decided.

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use super::raw::RawApprovals;
use super::validate::{duration, Collector};
use super::{Files, Listen, SecretText};
use crate::state::approvals::MAX_CAPACITY;

/// Default for `approvals.max_pending`.
pub const DEFAULT_MAX_PENDING: usize = 1_000;
/// The longest `approvals.max_ttl` accepted.
pub const LONGEST_TTL: Duration = Duration::from_secs(7 * 86_400);
/// The longest `approvals.max_wait` accepted: a request held open longer than this is better
/// retried.
pub const LONGEST_WAIT: Duration = Duration::from_secs(600);
/// Most webhook retries.
pub const MAX_RETRIES: u32 = 10;

/// Approval settings, validated.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    /// Where a human approves: `approve_url` is this with `#<id>` appended.
    pub page_url: String,
    /// Most approvals pending or approved at once; beyond, new ones are refused (503).
    pub max_pending: usize,
    /// An approval's lifetime when the decision gives none.
    pub default_ttl: Duration,
    /// The longest lifetime a decision may give (longer ones are cut to it).
    pub max_ttl: Duration,
    /// The longest a decision's `wait` may hold a request open (longer ones are cut to it).
    pub max_wait: Duration,
    /// How long a denied, expired or used approval is kept: an identical retry meanwhile is
    /// told it was denied or expired, and `GET /v1/approvals/{id}` still shows it.
    pub retention: Duration,
    pub webhook: Option<Webhook>,
}

/// `approvals.webhook`: a JSON POST on every approval requested and decided.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The URL; a Slack incoming-webhook URL is a secret, so it is never logged whole.
    pub url: SecretText,
    /// `scheme://host[:port]` of the URL, for logs.
    pub origin: String,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first, with exponential backoff (250 ms, 500 ms, 1 s, …).
    pub retries: u32,
}

pub(super) fn approvals(
    c: &mut Collector,
    raw: &RawApprovals,
    listen: &Listen,
    files: &dyn Files,
) -> ApprovalSettings {
    let max_pending = raw.max_pending.unwrap_or(DEFAULT_MAX_PENDING);
    if max_pending == 0 || max_pending > MAX_CAPACITY {
        c.push(
            "approvals.max_pending",
            format!("must be 1 to {MAX_CAPACITY}"),
        );
    }
    let default_ttl = duration(
        c,
        "approvals.default_ttl",
        raw.default_ttl.as_deref(),
        "15m",
    );
    let max_ttl = duration(c, "approvals.max_ttl", raw.max_ttl.as_deref(), "24h");
    if max_ttl > LONGEST_TTL {
        c.push(
            "approvals.max_ttl",
            "must be at most 7d: an approval is for a request about to run, not a standing permission",
        );
    }
    if default_ttl > max_ttl {
        c.push(
            "approvals.default_ttl",
            format!(
                "{} is longer than approvals.max_ttl ({})",
                raw.default_ttl.as_deref().unwrap_or("15m"),
                raw.max_ttl.as_deref().unwrap_or("24h")
            ),
        );
    }
    let max_wait = duration(c, "approvals.max_wait", raw.max_wait.as_deref(), "60s");
    if max_wait > LONGEST_WAIT {
        c.push("approvals.max_wait", "must be at most 10m");
    }
    let retention = duration(c, "approvals.retention", raw.retention.as_deref(), "1h");
    let page_url = match raw.page_url.as_deref() {
        Some(url) => match check_url(url) {
            Ok(_) => url.trim_end_matches('#').to_string(),
            Err(why) => {
                c.push("approvals.page_url", format!("{url:?} {why}"));
                String::new()
            }
        },
        None => default_page(listen),
    };
    let webhook = raw.webhook.as_ref().and_then(|w| {
        let url = match (&w.url, &w.url_file) {
            (Some(url), None) => url.clone(),
            (None, Some(file)) => {
                let located = files.locate(Path::new(file));
                match files.read(Path::new(file)) {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
                    Err(e) => {
                        c.push(
                            "approvals.webhook.url_file",
                            format!("cannot read {}: {e}", located.display()),
                        );
                        return None;
                    }
                }
            }
            _ => {
                c.push(
                    "approvals.webhook",
                    "give exactly one of url and url_file (a file holding the URL, for URLs that are secrets, like Slack's)",
                );
                return None;
            }
        };
        let origin = match check_url(&url) {
            Ok(origin) => origin,
            Err(why) => {
                // Never the URL itself: it may be a secret.
                c.push("approvals.webhook.url", format!("the URL {why}"));
                return None;
            }
        };
        let timeout = duration(
            c,
            "approvals.webhook.timeout",
            w.timeout.as_deref(),
            "5s",
        );
        let retries = w.retries.unwrap_or(3);
        if retries > MAX_RETRIES {
            c.push(
                "approvals.webhook.retries",
                format!("must be at most {MAX_RETRIES}"),
            );
        }
        Some(Webhook {
            url: SecretText::new(&url),
            origin,
            timeout,
            retries: retries.min(MAX_RETRIES),
        })
    });
    ApprovalSettings {
        page_url,
        max_pending: max_pending.clamp(1, MAX_CAPACITY),
        default_ttl: default_ttl.min(max_ttl),
        max_ttl: max_ttl.min(LONGEST_TTL),
        max_wait: max_wait.min(LONGEST_WAIT),
        retention,
        webhook,
    }
}

/// The admin listener's page: `http://<admin>/approvals` (a wildcard address as loopback).
fn default_page(listen: &Listen) -> String {
    let admin = listen.admin;
    let host = match admin.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/approvals", admin.port())
}

/// `scheme://authority` of an http(s) URL, or why it is not one.
fn check_url(url: &str) -> Result<String, &'static str> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "is not a URL like https://approvals.example.com/approvals")?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => return Err("must start with http:// or https://"),
    };
    let Some(authority) = uri.authority() else {
        return Err("names no host");
    };
    if authority.as_str().contains('@') {
        return Err("must not carry credentials in its authority");
    }
    Ok(format!("{scheme}://{}", authority.as_str()))
}

impl ApprovalSettings {
    /// Where a human approves approval `id`.
    pub fn approve_url(&self, id: &str) -> String {
        format!("{}#{id}", self.page_url)
    }

    /// The lifetime of an approval whose decision asked for `ttl`.
    pub fn ttl(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.default_ttl).min(self.max_ttl)
    }

    /// The store bounds these settings set.
    pub fn bounds(&self) -> crate::state::Bounds {
        crate::state::Bounds {
            capacity: self.max_pending,
            retention: self.retention,
        }
    }
}
