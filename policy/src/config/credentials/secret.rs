//! `kind: secret`: a static secret from a file or the environment, sent in a header (raw,
//! through `format`, or as HTTP Basic) or in a query parameter.

use base64::Engine as _;

use super::{format, read_secret, Placement, SecretText};
use crate::config::raw::RawCredential;
use crate::config::validate::{header_name, Collector};
use crate::config::{Files, SecretSpec, SecretValue, Vars};

const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(super) fn compile(
    c: &mut Collector,
    path: &str,
    cred: &RawCredential,
    files: &dyn Files,
    vars: &dyn Vars,
) -> Option<SecretSpec> {
    let secret = match (&cred.file, &cred.env) {
        (Some(f), None) => read_secret(c, &format!("{path}.file"), f, files),
        (None, Some(e)) => {
            let value = vars.var(e);
            if value.is_none() {
                c.push(
                    format!("{path}.env"),
                    format!("environment variable {e} is not set"),
                );
            }
            value
        }
        _ => {
            c.push(path, "a secret needs exactly one of `file` and `env`");
            None
        }
    };
    // A trailing newline in a secret is an editor's (or `echo`'s), not the secret's.
    let secret = secret.map(|s| s.trim_end_matches(['\n', '\r']).to_string());
    let basic = cred.format.as_deref() == Some("basic");
    let placement = match (&cred.query, &cred.header) {
        (Some(_), Some(_)) => {
            c.push(path, "set one of `header` and `query`, not both");
            return None;
        }
        (Some(q), None) if basic => {
            c.push(
                format!("{path}.query"),
                format!("format: basic goes in a header, not query parameter {q:?}"),
            );
            return None;
        }
        (Some(q), None) => {
            if q.is_empty()
                || percent_encoding::utf8_percent_encode(q, UNRESERVED).to_string() != *q
            {
                c.push(
                    format!("{path}.query"),
                    format!(
                        "{q:?} must be a parameter name of letters, digits, '-', '.', '_', '~'"
                    ),
                );
                return None;
            }
            Placement::Query(q.clone())
        }
        (None, h) => Placement::Header(header_name(
            c,
            &format!("{path}.header"),
            h.as_deref().unwrap_or("authorization"),
        )),
    };
    if cred.username.is_some() && !basic {
        c.push(
            format!("{path}.username"),
            "applies to `format: basic` only",
        );
    }
    let format = if basic {
        None
    } else {
        Some(format(c, path, cred.format.as_deref(), "{}")?)
    };
    let secret = secret?;
    if secret.is_empty() {
        c.push(path, "the secret is empty");
        return None;
    }
    let mut needles = vec![SecretText::new(&secret)];
    let wire = match (&placement, &format) {
        (Placement::Query(_), Some(f)) => {
            let encoded =
                percent_encoding::utf8_percent_encode(&f.apply(&secret), UNRESERVED).to_string();
            needles.push(SecretText::new(&encoded));
            encoded
        }
        (_, Some(f)) => f.apply(&secret),
        (_, None) => {
            // RFC 7617: base64 of `user:password`; without `username` the secret is that pair.
            let pair = match &cred.username {
                Some(user) => format!("{user}:{secret}"),
                None if secret.contains(':') => secret.clone(),
                None => {
                    c.push(
                        path,
                        "format: basic needs `username`, or a secret of the form user:password",
                    );
                    return None;
                }
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair.as_bytes());
            needles.push(SecretText::new(&encoded));
            format!("Basic {encoded}")
        }
    };
    // Every form the value could come back in (percent-encoded, JSON-escaped, in base64…).
    let bases: Vec<&str> = needles
        .iter()
        .map(SecretText::expose)
        .chain(std::iter::once(wire.as_str()))
        .collect();
    let needles = crate::credential::forms::forms(&bases).into();
    match http::HeaderValue::from_str(&wire) {
        Ok(v) => Some(SecretSpec {
            placement,
            value: SecretValue::new(v),
            needles,
        }),
        // Never echo the secret itself.
        Err(_) => {
            c.push(
                path,
                "the secret holds characters not allowed in a header value",
            );
            None
        }
    }
}
