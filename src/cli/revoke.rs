//! `toolgate revoke -c FILE (--task ID | --agent ID | --jti ID) [--ttl 1h]` and
//! `toolgate revoke -c FILE --list`: revocations through the operator API of the toolgate
//! the configuration describes. Prints the API's JSON answer; exits 0 when it succeeded, 1
//! when the API refused or could not be reached, 2 on usage and configuration errors.

use std::path::PathBuf;
use std::process::ExitCode;

use http::Method;
use serde_json::json;

use super::operator::{connect, report, CONFIG_ERROR};

/// `toolgate revoke` arguments.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["task", "agent", "jti", "list"])))]
pub struct Args {
    /// The configuration of the toolgate to talk to (its operator socket or admin listener,
    /// and its token).
    #[arg(short, long)]
    config: PathBuf,
    /// Revoke a task: its next request and every one after are refused.
    #[arg(long, value_name = "ID")]
    task: Option<String>,
    /// Revoke an agent identity.
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
    /// Revoke a minted credential by its `jti`.
    #[arg(long, value_name = "ID")]
    jti: Option<String>,
    /// How long the revocation lasts (default admin.revocation_ttl; at most
    /// admin.max_revocation_ttl). A revocation in force is only ever lengthened.
    #[arg(long, value_name = "DURATION", conflicts_with = "list")]
    ttl: Option<String>,
    /// List the revocations in force.
    #[arg(long)]
    list: bool,
}

/// Run `toolgate revoke`.
pub fn run(args: Args) -> ExitCode {
    let client = match connect("toolgate revoke", Some(&args.config)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sent = if args.list {
        client.send(Method::GET, "/v1/revoke", None)
    } else {
        let mut body = match (args.task, args.agent, args.jti) {
            (Some(id), None, None) => json!({ "task": id }),
            (None, Some(id), None) => json!({ "agent": id }),
            (None, None, Some(id)) => json!({ "jti": id }),
            _ => {
                eprintln!("toolgate revoke: give exactly one of --task, --agent, --jti or --list");
                return ExitCode::from(CONFIG_ERROR);
            }
        };
        if let (Some(ttl), Some(fields)) = (args.ttl, body.as_object_mut()) {
            fields.insert("ttl".into(), json!(ttl));
        }
        client.send(
            Method::POST,
            "/v1/revoke",
            Some(body.to_string().into_bytes()),
        )
    };
    report("toolgate revoke", &client, sent)
}
