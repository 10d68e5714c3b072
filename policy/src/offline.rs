//! The pipeline without sockets: what `toolgate eval` and `toolgate test` run. It calls the
//! same stages as the proxy (prepare → input → policy), so an offline result is the decision
//! the proxy would make for the same request, task history and configuration.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use regorus::Value;

use crate::config::Config;
use crate::evaluate::{Decision, Input, Policy, RequestView};
use crate::prepare::{prepare, Prepared, Refused};

/// A request described as data (a fixture, a golden case, command-line flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub method: String,
    /// Absolute (`http://host/path`, as a forward-proxy client sends) or a path with a Host header.
    pub url: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: Option<String>,
}

/// What the proxy would do with a request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub prepared: Prepared,
    /// The policy input document.
    pub input: Value,
    pub decision: Decision,
}

/// A request that cannot be described as HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("header {0:?} is not a valid header")]
    Header(String),
}

impl Request {
    /// The request's headers as the proxy would see them.
    pub fn header_map(&self) -> Result<HeaderMap, RequestError> {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| RequestError::Header(k.clone()))?;
            let value = HeaderValue::from_str(v).map_err(|_| RequestError::Header(k.clone()))?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// Decide `request` in task `task_id` with the task's history `chain` (an `input.chain` value).
pub fn decide(
    config: &Config,
    policy: &Policy,
    request: &Request,
    headers: &HeaderMap,
    task_id: &str,
    chain: Value,
) -> Result<Outcome, Refused> {
    let prepared = prepare(config, &request.method, request.url.as_bytes(), headers)?;
    let tool = prepared.accepted.tool.and_then(|t| config.catalog.tool(t));
    let hidden: Vec<HeaderName> = tool
        .and_then(|t| t.credential.as_deref())
        .and_then(|c| config.credentials.get(c))
        .and_then(|c| c.header())
        .map(|h| vec![h.clone()])
        .unwrap_or_default();
    let accepted = &prepared.accepted;
    let input = Input {
        agent_id: &config.agent.id,
        agent_claims: None,
        task_id,
        task_claims: None,
        action: &prepared.classification.action,
        tool: tool.map(|t| &*t.name),
        attributes: &prepared.classification.attributes,
        request: RequestView {
            method: accepted.request.method.as_str(),
            scheme: if accepted.tls { "https" } else { "http" },
            host: &accepted.host,
            port: accepted.port,
            path: &accepted.request.path,
            params: &accepted.request.params,
            headers,
            hidden: &hidden,
            body: None,
        },
        chain,
        now: SystemTime::now(),
    }
    .to_value();
    let decision = policy.decide(input.clone());
    Ok(Outcome {
        prepared,
        input,
        decision,
    })
}
