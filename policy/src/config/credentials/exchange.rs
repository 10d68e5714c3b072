//! `kind: token_exchange`: an RFC 8693 exchange of the agent's identity token at an STS.

use super::{format, is_scope, read_secret, required, ExchangeSpec, SecretText, JWT_TOKEN_TYPE};
use crate::config::raw::RawCredential;
use crate::config::validate::{duration, header_name, Collector};
use crate::config::{Agent, Files};

/// Whether `host` (from a URL; IPv6 in brackets) is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn compile(
    c: &mut Collector,
    path: &str,
    cred: &RawCredential,
    agent: &Agent,
    files: &dyn Files,
) -> Option<ExchangeSpec> {
    let endpoint = required(
        c,
        path,
        "endpoint",
        cred.endpoint.as_ref(),
        "the STS token endpoint, e.g. https://sts.example.com/token",
    )
    .and_then(|e| sts_url(c, &format!("{path}.endpoint"), e));
    let revocation_endpoint = cred
        .revocation_endpoint
        .as_deref()
        .and_then(|e| sts_url(c, &format!("{path}.revocation_endpoint"), e))
        .map(Box::new);
    let audience = required(
        c,
        path,
        "audience",
        cred.audience.as_ref(),
        "the audience to exchange the agent's token for",
    );
    let scopes = cred.scopes.clone().unwrap_or_default();
    for (i, s) in scopes.iter().enumerate() {
        if !is_scope(s) {
            c.push(
                format!("{path}.scopes[{i}]"),
                format!("{s:?} is not a scope token (no spaces or quotes)"),
            );
        }
    }
    if agent.token.is_none() {
        c.push(
            path,
            "token_exchange needs `agent.id_file`: the agent's identity token is the subject token",
        );
    }
    let client = match (&cred.client_id, &cred.client_secret_file) {
        (Some(id), Some(file)) => {
            read_secret(c, &format!("{path}.client_secret_file"), file, files)
                .map(|s| (id.clone(), SecretText::new(s.trim())))
        }
        (None, None) => None,
        _ => {
            c.push(
                path,
                "set both `client_id` and `client_secret_file`, or neither",
            );
            None
        }
    };
    let timeout = duration(c, &format!("{path}.timeout"), cred.timeout.as_deref(), "5s");
    let header = header_name(
        c,
        &format!("{path}.header"),
        cred.header.as_deref().unwrap_or("authorization"),
    );
    let format = format(c, path, cred.format.as_deref(), "Bearer {}");
    Some(ExchangeSpec {
        endpoint: endpoint?,
        audience: audience?.to_string(),
        scopes,
        subject_token_type: cred
            .subject_token_type
            .clone()
            .unwrap_or_else(|| JWT_TOKEN_TYPE.to_string()),
        requested_token_type: cred.requested_token_type.clone(),
        client,
        revocation_endpoint,
        timeout,
        header,
        format: format?,
    })
}

/// An STS URL (`endpoint`, `revocation_endpoint`) at `field`: http or https, no userinfo, no
/// query — both would end up in messages, which name the STS by scheme, host and path.
fn sts_url(c: &mut Collector, field: &str, e: &str) -> Option<http::Uri> {
    match e.parse::<http::Uri>() {
        // Credentials in the URL would end up in error messages: they belong in
        // client_id and client_secret_file.
        Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            c.push(
                field,
                "must not hold credentials: use client_id and client_secret_file",
            );
            None
        }
        // A query string (an API key, a tenant) would end up in error messages too.
        Ok(uri) if uri.query().is_some() => {
            c.push(
                field,
                "must not hold a query string: toolgate names the STS by scheme, host and path in problems and logs, and sends its parameters in the form body",
            );
            None
        }
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            if uri.scheme_str() == Some("http") && !uri.host().is_some_and(is_loopback) {
                c.warn(
                    field,
                    "plain http:// to a host other than loopback: the agent's identity token and the exchanged token cross the network unencrypted; use https://",
                );
            }
            Some(uri)
        }
        _ => {
            c.push(field, format!("{e:?} must be an http:// or https:// URL"));
            None
        }
    }
}
