//! `toolgate mcp pin -c FILE --tool NAME [--url URL] [--header K:V]... [--out FILE]`: list the
//! tools of an MCP tool's live server and write their definitions, with their digests, to the
//! tool's lock file (`tools[].lock`), which toolgate then pins them by
//! (`input.action.definition`). The server is reached directly, not through the proxy, at
//! `--url`, or else the tool's `upstream` (or `https://<first host>`) with path `/mcp`.
//!
//! The configuration is read as YAML, not loaded, so that the first pin can write a lock
//! file the configuration already names; once written, the configuration is loaded to show
//! that it accepts the file. Exits 0 when the lock was written and loads, 1 when the server
//! could not be listed, 2 on usage and configuration errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_yaml::Value as Yaml;
use toolgate_policy::classify::mcp::definition;
use toolgate_policy::config::{Config, LockFile, Pinned};
use toolgate_proxy::mcp::pin::{self, Trust};

/// Exit code for usage and configuration errors.
const CONFIG_ERROR: u8 = 2;

/// `toolgate mcp …`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write the lock file of an MCP tool's definitions from its live server.
    Pin(PinArgs),
}

/// `toolgate mcp pin` arguments.
#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// The configuration naming the tool (and its `lock` file).
    #[arg(short, long)]
    config: PathBuf,
    /// The MCP tool (catalog name, `protocol: mcp`).
    #[arg(long)]
    tool: String,
    /// The server's MCP endpoint; default: the tool's upstream (or https://<first host>) + /mcp.
    #[arg(long)]
    url: Option<String>,
    /// A header sent with every request to the server (e.g. `Authorization: Bearer …`).
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// Where to write; default: the tool's `lock` in the configuration.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Run `toolgate mcp …`.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Pin(args) => pin(args),
    }
}

fn pin(args: PinArgs) -> ExitCode {
    let fail = |message: String| {
        eprintln!("toolgate mcp pin: {message}");
        ExitCode::from(CONFIG_ERROR)
    };
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", args.config.display())),
    };
    let yaml: Yaml = match serde_yaml::from_str(&text) {
        Ok(y) => y,
        Err(e) => return fail(format!("{}: {e}", args.config.display())),
    };
    let base = args.config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let target = match Target::read(&yaml, &args.tool, &base) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", args.config.display())),
    };
    let Some(out) = args.out.clone().or(target.lock) else {
        return fail(format!(
            "{}: tool {:?} has no `lock:` file; add one (e.g. lock: {}.lock.yaml) or pass --out",
            args.config.display(),
            args.tool,
            args.tool
        ));
    };
    let url = match args.url.clone().or(target.url) {
        Some(u) => u,
        None => {
            return fail(format!(
                "tool {:?} has no upstream or host: pass --url",
                args.tool
            ))
        }
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                headers.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => return fail(format!("--header {h:?} is not K:V")),
        }
    }
    let trust = Trust {
        upstream_ca: target.upstream_ca,
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(30),
    };
    let fetched = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(pin::fetch(&trust, &url, &headers))
                .map_err(|e| e.to_string())
        }) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("toolgate mcp pin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut lock = LockFile {
        tool: args.tool.clone(),
        tools: Default::default(),
    };
    for def in fetched.tools {
        let Some(name) = def.get("name").and_then(|n| n.as_str()).map(str::to_string) else {
            continue;
        };
        lock.tools.insert(
            name,
            Pinned {
                digest: definition::digest(&def).to_string(),
                definition: def,
            },
        );
    }
    let body = match serde_yaml::to_string(&lock) {
        Ok(b) => b,
        Err(e) => return fail(e.to_string()),
    };
    let header = format!(
        "# Pinned tool definitions of {:?}, listed by {url} (MCP {}) — written by\n# `toolgate mcp pin`. Review the definitions; toolgate refuses a digest that does not\n# match its definition. Calls to a tool whose definition changed since see\n# input.action.definition.changed.\n",
        args.tool, fetched.version
    );
    let path = if out.is_absolute() {
        out
    } else {
        base.join(out)
    };
    if let Err(e) = std::fs::write(&path, format!("{header}{body}")) {
        return fail(format!("{}: {e}", path.display()));
    }
    println!(
        "pinned {} tool definitions of {:?} in {}",
        lock.tools.len(),
        args.tool,
        path.display()
    );
    for (name, p) in &lock.tools {
        println!("  {name}  {}", p.digest);
    }
    if let Err(errors) = Config::load(&args.config) {
        eprintln!("{errors}");
        return ExitCode::from(CONFIG_ERROR);
    }
    ExitCode::SUCCESS
}

/// What the configuration says about the tool.
struct Target {
    url: Option<String>,
    lock: Option<PathBuf>,
    upstream_ca: Option<PathBuf>,
}

impl Target {
    fn read(yaml: &Yaml, tool: &str, base: &Path) -> Result<Target, String> {
        let tools = yaml
            .get("tools")
            .and_then(Yaml::as_sequence)
            .ok_or("no `tools`")?;
        let entry = tools
            .iter()
            .find(|t| t.get("name").and_then(Yaml::as_str) == Some(tool))
            .ok_or_else(|| format!("no tool named {tool:?}"))?;
        if entry.get("protocol").and_then(Yaml::as_str) != Some("mcp") {
            return Err(format!("tool {tool:?} is not `protocol: mcp`"));
        }
        let origin = entry
            .get("upstream")
            .and_then(Yaml::as_str)
            .map(|u| u.trim_end_matches('/').to_string())
            .or_else(|| {
                entry
                    .get("hosts")
                    .and_then(Yaml::as_sequence)
                    .and_then(|h| h.first())
                    .and_then(Yaml::as_str)
                    .map(|h| format!("https://{h}"))
            });
        Ok(Target {
            url: origin.map(|o| format!("{o}/mcp")),
            lock: entry.get("lock").and_then(Yaml::as_str).map(PathBuf::from),
            upstream_ca: yaml
                .get("tls")
                .and_then(|t| t.get("upstream_ca"))
                .and_then(Yaml::as_str)
                .map(|p| base.join(p)),
        })
    }
}
