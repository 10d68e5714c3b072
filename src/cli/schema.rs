//! The policy input's schema: `toolgate schema -c FILE` prints it as JSON Schema (with the
//! catalog's actions and their attributes), for editors and OPA tooling (`opa check
//! --schema`); and `toolgate check` / `toolgate test` check the configured policies against it
//! ([`findings`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use toolgate_policy::config::{Config, PolicySource};
use toolgate_policy::{lint, schema};

/// `toolgate schema` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (its catalog gives the actions and their attributes).
    #[arg(short, long)]
    config: PathBuf,
}

/// Run `toolgate schema`: exit 0 with the schema, 2 when the configuration cannot be read.
pub fn run(args: Args) -> ExitCode {
    match Config::load(&args.config) {
        Ok(config) => {
            let schema = schema::json_schema(&config.catalog);
            let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
            text.push('\n');
            // A reader that stops early (`| head`) is not an error worth a panic.
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("toolgate schema: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Every reference of the live and the shadow policy to an input path the input never has,
/// to an attribute no action it can concern extracts, or to an action name no action has —
/// one line each, `FILE:LINE:COL: REFERENCE: what is wrong`, the file as found from the
/// current directory.
pub fn findings(config: &Config) -> Result<Vec<String>, String> {
    let base = config.origin.parent().unwrap_or(Path::new(""));
    let mut sources: Vec<&PolicySource> = vec![&config.policy];
    if let Some(Ok(shadow)) = config.shadow.as_ref().map(|s| s.source.as_ref()) {
        sources.push(shadow);
    }
    let mut out = Vec::new();
    for source in sources {
        for mut f in lint::lint(source, Some(&config.catalog)).map_err(|e| e.to_string())? {
            if Path::new(&f.file).is_relative() {
                f.file = base.join(&f.file).display().to_string();
            }
            let line = f.to_string();
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
    Ok(out)
}
