//! `kind: token_exchange`: an RFC 8693 exchange of the agent's identity token at an STS.

use super::{format, is_scope, read_secret, required, ExchangeSpec, SecretText, JWT_TOKEN_TYPE};
use crate::config::raw::RawCredential;
use crate::config::validate::{duration, header_name, Collector};
use crate::config::{Agent, Files};

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
    .and_then(|e| match e.parse::<http::Uri>() {
        // Credentials in the URL would end up in error messages: they belong in
        // client_id and client_secret_file.
        Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            c.push(
                format!("{path}.endpoint"),
                "must not hold credentials: use client_id and client_secret_file",
            );
            None
        }
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            Some(uri)
        }
        _ => {
            c.push(
                format!("{path}.endpoint"),
                format!("{e:?} must be an http:// or https:// URL"),
            );
            None
        }
    });
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
        timeout,
        header,
        format: format?,
    })
}
