//! `toolgate tasks -c FILE end ID [--by NAME] [--reason TEXT]` and `toolgate tasks -c FILE
//! show ID`: end a task — its next request is refused, its credentials die — or show its
//! chain and end, through the operator API of the toolgate the configuration describes.
//! Prints the API's JSON answer; exits 0 when it succeeded, 1 when the API refused or could
//! not be reached, 2 on usage and configuration errors.

use std::path::PathBuf;
use std::process::ExitCode;

use http::Method;
use serde_json::json;

use super::operator::{connect, operator_name, report, segment};

/// `toolgate tasks` arguments.
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
    /// End a task: its next request is refused (`task-ended`), its minted JWTs and delegation
    /// tokens are answered inactive by introspection and listed in the revocation feed, its
    /// exchanged tokens are revoked at the STS; its chain is kept for chain.ended_retention.
    End {
        id: String,
        /// Who ends it (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Why (kept with the end).
        #[arg(long)]
        reason: Option<String>,
    },
    /// A task's chain as policy sees it, its labels, and its end if it ended.
    Show { id: String },
}

/// Run `toolgate tasks`.
pub fn run(args: Args) -> ExitCode {
    let client = match connect("toolgate tasks", args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sent = match args.command {
        Command::End { id, by, reason } => {
            let mut body = json!({ "by": operator_name(by) });
            if let (Some(r), Some(map)) = (reason, body.as_object_mut()) {
                map.insert("reason".into(), json!(r));
            }
            client.send(
                Method::POST,
                &format!("/v1/tasks/{}/end", segment(&id)),
                Some(body.to_string().into_bytes()),
            )
        }
        Command::Show { id } => {
            client.send(Method::GET, &format!("/v1/tasks/{}", segment(&id)), None)
        }
    };
    report("toolgate tasks", &client, sent)
}
