//! Upgrade: which requests may switch the connection to another protocol. After a `101`,
//! every byte on the connection is the new protocol's — requests policy would deny included —
//! and reaches the tool unclassified. So a request's `Upgrade`, `HTTP2-Settings` and the
//! `upgrade` token of `Connection` are removed before it is forwarded unless the action it was
//! classified as declares the protocol (`match: { upgrade: websocket }`), decided by policy
//! like any action; `h2c` is always refused (an HTTP/2 connection carries requests toolgate
//! cannot see one by one); and a `101` answering a request that did not keep its `Upgrade` is
//! answered 502. An allowed tunnel's bytes and duration are recorded on its span.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use pingora::http::RequestHeader;

/// A request header that only an HTTP/2 cleartext upgrade uses.
const HTTP2_SETTINGS: &str = "http2-settings";

/// Why a request that asks to upgrade is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrading to HTTP/2 cleartext (h2c, or an HTTP2-Settings header) is refused: an HTTP/2 connection carries requests toolgate cannot classify one by one")]
    H2c,
}

/// Refuse `h2c` in any position of `Upgrade`, and any `HTTP2-Settings` header.
pub fn check(headers: &HeaderMap) -> Result<(), UpgradeError> {
    let h2c = headers
        .get_all(http::header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|p| {
            let p = p.trim_ascii();
            let name = p.split(|b| *b == b'/').next().unwrap_or(p);
            name.eq_ignore_ascii_case(b"h2c")
        });
    if h2c || headers.contains_key(HTTP2_SETTINGS) {
        return Err(UpgradeError::H2c);
    }
    Ok(())
}

/// Whether the request asks to switch protocols (`Upgrade`, or `upgrade` in `Connection`).
pub fn asks(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
        || headers.contains_key(HTTP2_SETTINGS)
        || connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Remove every trace of an upgrade request from `req`: `Upgrade`, `HTTP2-Settings`, and the
/// `upgrade` token of `Connection` (its other tokens stay).
pub fn strip(req: &mut RequestHeader) {
    req.remove_header(&http::header::UPGRADE);
    req.remove_header(HTTP2_SETTINGS);
    let kept: Vec<Vec<u8>> = connection_tokens(&req.headers)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade"))
        .map(<[u8]>::to_vec)
        .collect();
    req.remove_header(&http::header::CONNECTION);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b", "[..])) {
            let _ = req.insert_header(http::header::CONNECTION, v);
        }
    }
}

/// An allowed upgrade and, once the tool switched, the tunnel's accounting.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub protocol: String,
    /// When the tool answered 101.
    pub opened: Option<Instant>,
    /// Bytes the agent sent through the tunnel.
    pub to_tool: u64,
    /// Bytes the tool sent back through it.
    pub from_tool: u64,
}

impl Tunnel {
    /// A tunnel to `protocol`, not open yet.
    pub fn new(protocol: String) -> Tunnel {
        Tunnel {
            protocol,
            opened: None,
            to_tool: 0,
            from_tool: 0,
        }
    }

    /// How long it has been open.
    pub fn duration(&self) -> Option<Duration> {
        self.opened.map(|o| o.elapsed())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn h2c_is_refused_in_any_spelling() {
        for h in [
            headers(&[("upgrade", "h2c")]),
            headers(&[("upgrade", "websocket, H2C")]),
            headers(&[("upgrade", "foo"), ("upgrade", "h2c/1")]),
            headers(&[("http2-settings", "AAMAAABkAAQAAP__")]),
        ] {
            assert_eq!(check(&h), Err(UpgradeError::H2c), "{h:?}");
        }
        assert_eq!(check(&headers(&[("upgrade", "websocket")])), Ok(()));
    }

    #[test]
    fn stripping_keeps_the_other_connection_tokens() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        req.insert_header("connection", "keep-alive, Upgrade")
            .unwrap();
        assert!(asks(&req.headers));
        strip(&mut req);
        assert!(!asks(&req.headers));
        assert_eq!(req.headers["connection"], "keep-alive");
        assert!(asks(&headers(&[("connection", "upgrade")])));
    }
}
