//! `toolgate tasks -c FILE end ID [--by NAME] [--reason TEXT]` and `toolgate tasks -c FILE
//! show ID`: end a task — its next request is refused, its credentials die — or show its
//! chain and end, through the operator API of the toolgate the configuration describes.
//! Prints the API's JSON answer; exits 0 when it succeeded, 1 when the API refused or could
//! not be reached, 2 on usage and configuration errors.

use std::path::PathBuf;
use std::process::ExitCode;

use http::Method;
use serde_json::json;
use toolgate_policy::config::Config;

use super::approvals::segment;
use super::operator::Client;

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

/// Exit code for configuration errors and an operator API that is off.
const CONFIG_ERROR: u8 = 2;

/// Run `toolgate tasks`.
pub fn run(args: Args) -> ExitCode {
    let Some(path) = args.config else {
        eprintln!(
            "toolgate tasks: -c FILE is required (the configuration of the toolgate to talk to)"
        );
        return ExitCode::from(CONFIG_ERROR);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let client = match Client::from_config(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("toolgate tasks: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let sent = match args.command {
        Command::End { id, by, reason } => {
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "operator".to_string());
            let mut body = json!({ "by": by });
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
    match sent {
        Ok(answer) => {
            println!("{}", answer.pretty());
            if answer.status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("toolgate tasks: {}: {}", client.target, answer.summary());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("toolgate tasks: {e:#}");
            ExitCode::FAILURE
        }
    }
}
