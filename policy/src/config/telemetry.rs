//! `telemetry.otlp`: where spans go, checked and resolved to the exact URL at load time.
//!
//! The endpoint reads like `OTEL_EXPORTER_OTLP_ENDPOINT`: for HTTP it is the collector's base
//! URL and `/v1/traces` is appended (unless the path already ends with it); for gRPC it is the
//! collector's address and carries no path.

#[cfg(test)]
mod tests;

use super::raw::RawOtlp;
use super::{ConfigError, Otlp, OtlpProtocol};

/// The path OTLP/HTTP collectors receive traces on.
pub const TRACES_PATH: &str = "/v1/traces";

fn error(errors: &mut Vec<ConfigError>, field: &str, message: impl Into<String>) {
    errors.push(ConfigError {
        path: format!("telemetry.otlp.{field}"),
        message: message.into(),
    });
}

/// Validate `telemetry.otlp`, pushing every problem onto `errors`.
pub(super) fn otlp(raw: Option<&RawOtlp>, errors: &mut Vec<ConfigError>) -> Option<Otlp> {
    let raw = raw?;
    let protocol = match raw.protocol.as_deref() {
        None | Some("http") => OtlpProtocol::Http,
        Some("grpc") => OtlpProtocol::Grpc,
        Some(other) => {
            error(
                errors,
                "protocol",
                format!("{other:?} must be `http` (OTLP/HTTP protobuf) or `grpc`"),
            );
            return None;
        }
    };
    let Some(endpoint) = raw.endpoint.as_deref() else {
        error(
            errors,
            "endpoint",
            "required: the collector's URL, e.g. http://127.0.0.1:4318",
        );
        return None;
    };
    match resolve(endpoint, protocol) {
        Ok(endpoint) => Some(Otlp { endpoint, protocol }),
        Err(why) => {
            error(errors, "endpoint", format!("{endpoint:?} {why}"));
            None
        }
    }
}

/// The URL spans are sent to, or why `endpoint` cannot be one.
fn resolve(endpoint: &str, protocol: OtlpProtocol) -> Result<String, &'static str> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| "is not a URL like http://127.0.0.1:4318")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    let Some(authority) = uri.authority() else {
        return Err("names no host");
    };
    if authority.as_str().contains('@') {
        // A URL with credentials ends up in logs; headers are the standard place for them.
        return Err("must not carry credentials: set them in OTEL_EXPORTER_OTLP_HEADERS");
    }
    if uri.query().is_some() {
        return Err("must not have a query");
    }
    let base = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        authority.as_str()
    );
    let path = uri.path().trim_end_matches('/');
    match protocol {
        OtlpProtocol::Grpc if path.is_empty() => Ok(base),
        OtlpProtocol::Grpc => Err("must have no path for gRPC, e.g. http://127.0.0.1:4317"),
        OtlpProtocol::Http if path.ends_with(TRACES_PATH) => Ok(format!("{base}{path}")),
        OtlpProtocol::Http => Ok(format!("{base}{path}{TRACES_PATH}")),
    }
}
