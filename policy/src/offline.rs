//! The pipeline without sockets: what `toolgate eval` and `toolgate test` run. It calls the
//! same stages as the proxy (prepare → input → policy → chain), so an offline result is the
//! decision the proxy would make for the same request, task history and configuration.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use regorus::Value;

use crate::approval::Granted;
use crate::chain::{self, Ledger, TaskKey};
use crate::classify::Classification;
use crate::config::Config;
use crate::credential::{self, Subject};
use crate::evaluate::{Decision, Effect, Input, Policy, RequestView};
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
    /// The body as text.
    pub body: Option<String>,
    /// The body as hex, for bytes that are not UTF-8 text.
    pub body_hex: Option<String>,
}

/// What the proxy would do with a request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub prepared: Prepared,
    /// The task the request was decided in.
    pub task: String,
    /// One evaluation per action: one, or one per member of a JSON-RPC batch, in order.
    pub evaluations: Vec<Evaluation>,
}

/// One policy evaluation and its record in the task's chain.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub classification: Classification,
    /// The policy input document.
    pub input: Value,
    /// The decision; an allow whose credential is not configured is an error, as in the
    /// proxy (with the reason in `decision.error`).
    pub decision: Decision,
    /// The action's sequence number in the chain.
    pub seq: u64,
    /// When it was decided (`input.now`).
    pub at: SystemTime,
}

/// A request that cannot be described as HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("header {0:?} is not a valid header")]
    Header(String),
    #[error("body_hex is not an even number of hex digits")]
    BodyHex,
    #[error("set one of body and body_hex, not both")]
    TwoBodies,
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

    /// The body bytes, if the request has a body.
    pub fn body_bytes(&self) -> Result<Option<Vec<u8>>, RequestError> {
        match (&self.body, &self.body_hex) {
            (Some(_), Some(_)) => Err(RequestError::TwoBodies),
            (Some(text), None) => Ok(Some(text.as_bytes().to_vec())),
            (None, Some(hex)) => {
                let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                digits
                    .chunks(2)
                    .map(|pair| match pair {
                        [h, l] => std::str::from_utf8(&[*h, *l])
                            .ok()
                            .and_then(|s| u8::from_str_radix(s, 16).ok()),
                        _ => None,
                    })
                    .collect::<Option<Vec<u8>>>()
                    .map(Some)
                    .ok_or(RequestError::BodyHex)
            }
            (None, None) => Ok(None),
        }
    }
}

impl Outcome {
    /// Whether the proxy would forward the request: every evaluation allowed it.
    pub fn forwarded(&self) -> bool {
        self.evaluations
            .iter()
            .all(|e| e.decision.effect == Effect::Allow)
    }

    /// The evaluation that decides the request: the first that did not allow, else the first.
    pub fn decisive(&self) -> Option<&Evaluation> {
        self.evaluations
            .iter()
            .find(|e| e.decision.effect != Effect::Allow)
            .or_else(|| self.evaluations.first())
    }
}

/// Decide `request` (with `body`) in task `task_id`, whose history is in `ledger`; each
/// evaluated action is recorded there, as the proxy records it, and awaits its status. With
/// `approval`, the request is the retry of one a human approved: policy sees it as
/// `input.approval`, and a decision asking for approval is satisfied by it, as in the proxy.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    config: &Config,
    policy: &Policy,
    request: &Request,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    task_id: &str,
    ledger: &Ledger,
    approval: Option<&Granted>,
) -> Result<Outcome, Refused> {
    let prepared = prepare(
        config,
        &request.method,
        request.url.as_bytes(),
        headers,
        body,
    )?;
    let members: Vec<Prepared> = match prepared.rpc.as_ref().filter(|r| r.batch) {
        Some(rpc) => rpc.members.iter().map(|m| prepared.member(m)).collect(),
        None => vec![prepared.clone()],
    };
    let evaluations = members
        .iter()
        .map(|p| evaluate(config, policy, p, headers, task_id, ledger, approval))
        .collect();
    Ok(Outcome {
        prepared,
        task: task_id.to_string(),
        evaluations,
    })
}

fn evaluate(
    config: &Config,
    policy: &Policy,
    prepared: &Prepared,
    headers: &HeaderMap,
    task_id: &str,
    ledger: &Ledger,
    approval: Option<&Granted>,
) -> Evaluation {
    let tool = prepared.accepted.tool.and_then(|t| config.catalog.tool(t));
    let hidden: Vec<HeaderName> = tool
        .and_then(|t| t.credential.as_deref())
        .and_then(|c| config.credentials.get(c))
        .and_then(|c| c.header())
        .map(|h| vec![h.clone()])
        .unwrap_or_default();
    let accepted = &prepared.accepted;
    let class = &prepared.classification;
    let now = SystemTime::now();
    let task = TaskKey::named(task_id);
    let agent = config.agent.id.as_str();
    let mut input = Input {
        agent_id: agent,
        agent_claims: config.agent.claims.as_ref(),
        task_id,
        task_claims: None,
        task_verified: false,
        action: &class.action,
        tool: tool.map(|t| &*t.name),
        attributes: &class.attributes,
        request: RequestView {
            method: accepted.request.method.as_str(),
            scheme: if accepted.tls { "https" } else { "http" },
            host: &accepted.host,
            port: accepted.port,
            path: &accepted.request.path,
            params: &accepted.request.params,
            headers,
            hidden: &hidden,
            body: prepared.body.as_ref(),
        },
        state: ledger.view(&task, agent, now),
        now,
    }
    .to_value();
    if let Some(granted) = approval {
        granted.annotate(&mut input);
    }
    let mut decision = policy.decide(input.clone());
    if approval.is_some() {
        decision = decision.satisfied_by_approval();
    }
    let catalog_labels = tool.map(|t| t.labels_of(&class.action)).unwrap_or_default();
    let labels = decision.labels_to_set(&catalog_labels, decision.allowed());
    let seq = ledger.record(
        &task,
        &chain::Action {
            action: &class.action,
            tool: tool.map(|t| &*t.name),
            agent,
            decision: decision.effect.as_str(),
            dry_run: false,
            attributes: &class.attributes,
            labels: &labels,
            at: now,
        },
    );
    // As the proxy does: the chain has the allow, then the credential must exist.
    if decision.allowed() {
        if let Err(e) = credential::select(config, tool, &decision.credential) {
            decision.effect = Effect::Error;
            decision.error = Some(e.to_string());
        }
    }
    Evaluation {
        classification: class.clone(),
        input,
        decision,
        seq,
        at: now,
    }
}

/// `toolgate eval`'s JSON: the tool, the action with its attributes, the input document and
/// the decision; for a JSON-RPC batch, also each member's. The decision's `credential` is the
/// one an allowed request would carry (see [`credential_report`]); its `approval` is what a
/// decision that waits for a human asks for (`required`, `approvers`, `ttl`, `reason`,
/// `wait`), else null, and `effect` is then `approval`.
pub fn report(config: &Config, outcome: &Outcome) -> serde_json::Value {
    use serde_json::json;
    let tool = outcome
        .prepared
        .accepted
        .tool
        .and_then(|t| config.catalog.tool(t));
    // One request carries one credential, scoped to all its actions (a batch's members').
    let actions = credential::actions(&outcome.prepared);
    let one = |e: &Evaluation| {
        let attributes: serde_json::Map<String, serde_json::Value> = e
            .classification
            .attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let subject = Subject::new(config, &outcome.task, &actions, None);
        json!({
            "action": &*e.classification.action,
            "attributes": attributes,
            "input": serde_json::to_value(&e.input).unwrap_or_default(),
            "decision": {
                "allow": e.decision.allowed(),
                "effect": e.decision.outcome(),
                "reason": e.decision.reason,
                "credential": credential_report(config, tool, e, &subject),
                "approval": e.decision.approval.as_ref().map(crate::approval::Ask::to_json),
                "labels": e.decision.labels.iter().map(|l| &**l).collect::<Vec<_>>(),
            },
        })
    };
    let mut doc = outcome.decisive().map(one).unwrap_or_else(|| json!({}));
    if let Some(map) = doc.as_object_mut() {
        map.insert("tool".to_string(), json!(tool.map(|t| t.name.to_string())));
        map.insert("forwarded".to_string(), json!(outcome.forwarded()));
        if outcome.evaluations.len() > 1 {
            let members = outcome.evaluations.iter().map(one).collect();
            map.insert("members".to_string(), serde_json::Value::Array(members));
        }
    }
    doc
}

/// The credential evaluation `e` selects for `subject`: null when it is not allowed or gets
/// none; `{name, error}` when the policy names one that is not configured; else
/// [`credential::preview`] — name, kind and what it would carry, never a value.
fn credential_report(
    config: &Config,
    tool: Option<&crate::classify::Tool>,
    e: &Evaluation,
    subject: &Subject<'_>,
) -> serde_json::Value {
    let grant = &e.decision.credential;
    match credential::select(config, tool, grant) {
        Ok(Some(selected)) if e.decision.allowed() => {
            credential::preview(&selected, grant, subject, e.at)
        }
        Err(unknown) if e.decision.effect == Effect::Error && e.decision.error.is_some() => {
            serde_json::json!({ "name": unknown.name(), "error": unknown.to_string() })
        }
        Ok(_) | Err(_) => serde_json::Value::Null,
    }
}

/// `toolgate eval`'s JSON for a request refused before policy, with the status the proxy
/// would answer.
pub fn refused_report(refused: &Refused) -> serde_json::Value {
    let status = match refused {
        Refused::BodyTooLarge { .. } => 413,
        Refused::Rejected(_) | Refused::Ambiguous(_) | Refused::HeaderMismatch(_) => 400,
    };
    serde_json::json!({
        "action": null,
        "forwarded": false,
        "refused": { "status": status, "reason": refused.to_string() },
    })
}
