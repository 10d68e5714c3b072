//! `toolgate approvals -c FILE list | show ID | approve ID | deny ID [--comment C]
//! [--approver NAME]`: human approval of held requests, through the operator API of the
//! toolgate the configuration describes. Prints the API's JSON answer; exits 0 when it
//! succeeded, 1 when the API refused or could not be reached, 2 on usage and configuration
//! errors.

use std::path::PathBuf;
use std::process::ExitCode;

use http::Method;
use serde_json::json;

use super::operator::{connect, operator_name, report, segment, Client};

/// `toolgate approvals` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration of the toolgate to talk to (its operator socket or admin listener,
    /// and its token).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The approvals pending or approved (not yet used).
    List,
    /// One approval, whatever its status, with the request and its task's chain so far.
    Show { id: String },
    /// Approve a pending approval: the agent's identical request then goes out once.
    Approve(Verdict),
    /// Deny a pending approval: the agent's identical request is refused with your comment.
    Deny(Verdict),
}

#[derive(Debug, clap::Args)]
struct Verdict {
    id: String,
    /// Why (shown to the agent on a denial, kept with the approval, sent to the webhook).
    #[arg(long)]
    comment: Option<String>,
    /// Who decides (default: $USER).
    #[arg(long)]
    approver: Option<String>,
}

/// Run `toolgate approvals`.
pub fn run(args: Args) -> ExitCode {
    let client = match connect("toolgate approvals", args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sent = match args.command {
        Command::List => client.send(Method::GET, "/v1/approvals", None),
        Command::Show { id } => client.send(
            Method::GET,
            &format!("/v1/approvals/{}", segment(&id)),
            None,
        ),
        Command::Approve(v) => decide(&client, "approve", v),
        Command::Deny(v) => decide(&client, "deny", v),
    };
    report("toolgate approvals", &client, sent)
}

fn decide(client: &Client, verb: &str, v: Verdict) -> anyhow::Result<super::operator::Answer> {
    let mut body = json!({ "approver": operator_name(v.approver) });
    if let (Some(c), Some(map)) = (v.comment, body.as_object_mut()) {
        map.insert("comment".into(), json!(c));
    }
    client.send(
        Method::POST,
        &format!("/v1/approvals/{}/{verb}", segment(&v.id)),
        Some(body.to_string().into_bytes()),
    )
}
