//! The approval page (`GET /approvals` on the admin listener and the operator socket): one
//! self-contained HTML file with no data in it and no external asset. It asks for the
//! operator token (kept in the tab's `sessionStorage`) and calls the authenticated JSON API
//! with `Authorization: Bearer` — never a cookie, so another site cannot make a browser
//! approve anything (no CSRF). Its Content-Security-Policy allows only its own inline script
//! and style (by hash) and requests to its own origin, and no framing.

use std::sync::LazyLock;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The page.
pub const HTML: &str = include_str!("page.html");

/// The page's `Content-Security-Policy`.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = |tag: &str| {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let inner = HTML
            .split_once(&open)
            .and_then(|(_, rest)| rest.split_once(&close))
            .map(|(inner, _)| inner)
            .unwrap_or_default();
        let digest = Sha256::digest(inner.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'none'; \
         form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
        hash("script"),
        hash("style")
    )
});
