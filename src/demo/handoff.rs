//! The demo's second agent: the quickstart again, as the billing agent, served by a second
//! toolgate in the same process. The first toolgate signs delegation tokens with a key the
//! demo generates for this run; the second trusts the first's JWKS (fetched from its admin
//! listener, kept as a file) for the first toolgate's issuer. Both export to the same
//! receiver, so the handoff is one trace.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::anyhow;
use serde_yaml::Value as Yaml;
use toolgate_policy::config::generate_ed25519_pem;

use super::{free_addr, set};

/// The second agent's id (the quickstart's first one is the triage agent).
pub const SECOND: &str = "spiffe://example.org/ns/support/sa/billing-agent";
/// The first toolgate's issuer of delegation tokens.
pub const FIRST_ISSUER: &str = "https://toolgate.triage-agent.demo";
const KEY_FILE: &str = "keys/delegation.pem";
const JWKS_FILE: &str = "keys/triage-toolgate.json";

/// The first toolgate's files: a delegation key made for this run.
pub fn first_files() -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let pem = generate_ed25519_pem().map_err(|e| anyhow!(e))?;
    Ok(vec![(PathBuf::from(KEY_FILE), pem.into_bytes())])
}

/// The second toolgate's files: the first one's JWKS, as its admin listener serves it.
pub fn second_files(first_jwks: String) -> Vec<(PathBuf, Vec<u8>)> {
    vec![(PathBuf::from(JWKS_FILE), first_jwks.into_bytes())]
}

/// Let the first toolgate (`doc`) sign delegation tokens.
pub fn delegating(doc: &mut Yaml) -> anyhow::Result<()> {
    let section = format!("{{ key_file: {KEY_FILE}, issuer: \"{FIRST_ISSUER}\", max_ttl: 30m }}");
    set(doc, "delegation", serde_yaml::from_str(&section)?)
}

/// The second toolgate's configuration, from the first one's `doc` (tools, policy,
/// telemetry, operator token): another agent on other ports, accepting the first toolgate's
/// delegations for it. Also its proxy and admin addresses.
pub fn second_agent(doc: &Yaml) -> anyhow::Result<(Yaml, SocketAddr, SocketAddr)> {
    let mut second = doc.clone();
    let (proxy, admin) = (free_addr()?, free_addr()?);
    set(
        &mut second,
        "listen",
        serde_yaml::from_str(&format!("{{ proxy: \"{proxy}\", admin: \"{admin}\" }}"))?,
    )?;
    set(
        &mut second,
        "agent",
        serde_yaml::from_str(&format!("{{ id: \"{SECOND}\" }}"))?,
    )?;
    let issuers = format!(
        "{{ issuers: [{{ issuer: \"{FIRST_ISSUER}\", jwks_file: {JWKS_FILE}, audience: \"{SECOND}\" }}] }}"
    );
    set(&mut second, "task_tokens", serde_yaml::from_str(&issuers)?)?;
    Ok((second, proxy, admin))
}

/// The delegation token in the first toolgate's answer to a handoff.
pub fn token(answer: &[u8]) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_slice(answer).ok()?;
    answer.get("token")?.as_str().map(str::to_string)
}
