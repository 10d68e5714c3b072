//! Every form in which an injected credential could come back to the agent in a tool's
//! response: as sent, percent-encoded (upper- or lower-case hex, or form-encoded), JSON-escaped,
//! and inside base64 (standard or URL-safe, at any alignment — a tool that echoes a request's
//! headers base64-encoded embeds the value at an offset the proxy cannot know). The proxy
//! masks each of them in response headers and bodies.

use base64::Engine;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::config::SecretText;

/// Derived forms shorter than this are not searched for: they would mask ordinary text.
pub const MIN_DERIVED_BYTES: usize = 8;

/// The forms of `values` (a secret, and the header value it is sent as) to mask, longest
/// first, each once. The values themselves are always included.
pub fn forms(values: &[&str]) -> Vec<SecretText> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String, derived: bool| {
        if s.is_empty() || (derived && s.len() < MIN_DERIVED_BYTES) || out.contains(&s) {
            return;
        }
        out.push(s);
    };
    for v in values.iter().filter(|v| !v.is_empty()) {
        push((*v).to_string(), false);
        let percent = utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
        push(lower_hex(&percent), true);
        if percent.contains("%20") {
            push(percent.replace("%20", "+"), true);
        }
        push(percent, true);
        let json = if v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            let json = serde_json::to_string(v).unwrap_or_default();
            json.strip_prefix('"')
                .and_then(|j| j.strip_suffix('"'))
                .unwrap_or_default()
                .to_string()
        } else {
            (*v).to_string()
        };
        if json.contains('/') {
            push(json.replace('/', "\\/"), true);
        }
        push(json, true);
        for core in base64_cores(v.as_bytes()) {
            push(core, true);
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.iter().map(|s| SecretText::new(s)).collect()
}

/// `%2F` → `%2f`: some encoders write lower-case hex.
fn lower_hex(percent: &str) -> String {
    let mut out = percent.as_bytes().to_vec();
    let mut escape = 0;
    for b in &mut out {
        if *b == b'%' {
            escape = 2;
        } else if escape > 0 {
            escape -= 1;
            b.make_ascii_lowercase();
        }
    }
    // Only ASCII letters were changed, so it is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// `+` → `-` and `/` → `_`: the URL-safe base64 alphabet from the standard one.
fn url_safe(core: &str) -> String {
    let out: Vec<u8> = core
        .bytes()
        .map(|b| match b {
            b'+' => b'-',
            b'/' => b'_',
            b => b,
        })
        .collect();
    String::from_utf8(out).unwrap_or_default()
}

/// The base64 characters that encode `value` alone, whatever precedes and follows it in the
/// encoded text: for each of the three alignments, the characters whose six bits all fall
/// within `value` — in the standard and the URL-safe alphabets.
fn base64_cores(value: &[u8]) -> Vec<String> {
    let mut cores = Vec::with_capacity(6);
    let mut shifted = Vec::with_capacity(value.len() + 2);
    for align in 0..3usize {
        shifted.clear();
        shifted.resize(align, 0);
        shifted.extend_from_slice(value);
        let first = (8 * align).div_ceil(6);
        let end = (8 * (align + value.len())) / 6;
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&shifted);
        let Some(core) = encoded.get(first..end) else {
            continue;
        };
        // The URL-safe alphabet differs in two characters only.
        cores.push(core.to_string());
        if core.bytes().any(|b| b == b'+' || b == b'/') {
            cores.push(url_safe(core));
        }
    }
    cores
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn all(values: &[&str]) -> Vec<String> {
        forms(values)
            .iter()
            .map(|s| s.expose().to_string())
            .collect()
    }

    #[test]
    fn every_encoding_of_the_value_is_a_form() {
        let f = all(&["s3cr/et+x y", "Bearer s3cr/et+x y"]);
        for want in [
            "s3cr/et+x y",
            "Bearer s3cr/et+x y",
            "s3cr%2Fet%2Bx%20y",
            "s3cr%2fet%2bx%20y",
            "s3cr%2Fet%2Bx+y",
            "s3cr\\/et+x y",
            "Bearer%20s3cr%2Fet%2Bx%20y",
        ] {
            assert!(f.contains(&want.to_string()), "{want} missing from {f:?}");
        }
        // Longest first, so a longer form is masked whole before a shorter one inside it.
        assert!(f.windows(2).all(|w| w[0].len() >= w[1].len()));
    }

    #[test]
    fn a_value_base64_encoded_at_any_offset_is_found() {
        let secret = "tok-8f3a9c2e71b4";
        let f = all(&[secret]);
        for prefix in ["", "a", "ab", "Authorization: Bearer ", "{\"h\":\""] {
            for engine in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
            ] {
                let text = engine.encode(format!("{prefix}{secret}\"}}"));
                assert!(
                    f.iter().any(|form| text.contains(form.as_str())),
                    "{prefix:?}: {text} holds no form"
                );
            }
        }
    }

    #[test]
    fn short_derived_forms_are_left_out() {
        let f = all(&["abc"]);
        assert_eq!(f, ["abc"]);
    }
}
