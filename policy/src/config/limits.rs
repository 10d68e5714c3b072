//! `limits`: what a client may spend — bytes, time and connections — each with a default that
//! keeps toolgate inside a 256 MiB container under a flood of hostile connections, and bounds
//! checked at load.

use super::matching;
use super::raw::RawLimits;
use super::validate::{duration, Collector};
use super::Limits;

/// Smallest `limits.max_head_bytes`: a request line and the headers every agent sends (a
/// JWT-SVID task token alone can take a kilobyte) must fit.
pub const MIN_HEAD_BYTES: usize = 1024;
/// Largest `limits.max_head_bytes`: pingora refuses heads from 1 MiB on regardless.
pub const MAX_HEAD_BYTES_CEILING: usize = 1_048_575;
/// Default `limits.max_head_bytes`.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
/// Default `limits.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default `limits.max_buffered_bytes`.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;

/// Validate `raw` into [`Limits`], collecting every problem with its field path.
pub(super) fn limits(c: &mut Collector, raw: &RawLimits) -> Limits {
    let time = |c: &mut Collector, key: &str, value: &Option<String>, default: &str| {
        duration(c, &format!("limits.{key}"), value.as_deref(), default)
    };
    let max_head_bytes = raw.max_head_bytes.unwrap_or(DEFAULT_MAX_HEAD_BYTES);
    if !(MIN_HEAD_BYTES..=MAX_HEAD_BYTES_CEILING).contains(&max_head_bytes) {
        c.push(
            "limits.max_head_bytes",
            format!("{max_head_bytes} is outside {MIN_HEAD_BYTES}..={MAX_HEAD_BYTES_CEILING}"),
        );
    }
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        c.push("limits.max_connections", "must be at least 1");
    }
    let limits = Limits {
        max_body_bytes: matching::max_body_bytes(raw.max_body_bytes),
        upstream_timeout: time(c, "upstream_timeout", &raw.upstream_timeout, "30s"),
        connect_timeout: time(c, "connect_timeout", &raw.connect_timeout, "5s"),
        shutdown_timeout: time(c, "shutdown_timeout", &raw.shutdown_timeout, "2s"),
        head_timeout: time(c, "head_timeout", &raw.head_timeout, "10s"),
        idle_timeout: time(c, "idle_timeout", &raw.idle_timeout, "60s"),
        max_head_bytes,
        max_connections,
        max_buffered_bytes: raw.max_buffered_bytes.unwrap_or(DEFAULT_MAX_BUFFERED_BYTES),
    };
    // One request must always fit, or every request would wait for a budget it can never get.
    let one_request = limits.max_head_bytes + matching::body_cap(&limits);
    if limits.max_buffered_bytes < one_request {
        c.push(
            "limits.max_buffered_bytes",
            format!(
                "{} is less than one request may need: max_head_bytes + max_body_bytes = {one_request}",
                limits.max_buffered_bytes
            ),
        );
    }
    limits
}

#[cfg(test)]
mod tests;
