//! The `toolgate` command line: serve, check a configuration, the demo, the pod init step,
//! and the operator commands (`src/cli/`).

mod cli;
mod demo;
mod inject;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use toolgate_policy::config::{Config, ConfigErrors, EmbeddedFiles, ProcessEnv};
use toolgate_proxy::capture::{self, CaptureSpec, Cidr, Egress, Family, Iptables, Jumps};
use toolgate_proxy::Snapshot;

// glibc's allocator serialises pingora's worker threads on arena locks (measured: malloc and
// free were a fifth of the proxy's CPU under load); mimalloc keeps per-thread heaps. Built
// with `no_thp`, which turns transparent huge pages off for the process (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An egress proxy that authorizes every tool call an AI agent makes.
#[derive(Debug, Parser)]
#[command(name = "toolgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the proxy and admin listeners.
    Run {
        /// Configuration file; without it, the embedded quickstart.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and compile its policy.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Classify and decide one request offline, printing the action, attributes, policy
    /// input and decision as JSON. No network; the task's history starts empty.
    Eval(Eval),
    /// Run Rego `test_*` rules and YAML request fixtures against a configuration.
    Test {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Fixture files (.yaml), Rego test files (.rego) or directories holding them;
        /// default: the `tests` directory beside the configuration.
        paths: Vec<PathBuf>,
    },
    /// The quickstart end to end: fake tools, a scripted agent task, its decisions and its
    /// chain of spans as exported over OTLP; exits 0 when the chain is one linked trace.
    Demo {
        /// Also send the spans to this OTLP/HTTP endpoint (Jaeger, Tempo, Arize Phoenix),
        /// e.g. http://127.0.0.1:4318/v1/traces.
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
    },
    /// Pod init step for transparent capture: redirect the agent's outbound TCP (IPv4 and
    /// IPv6) to toolgate's transparent listener, refuse UDP to those ports, optionally drop
    /// all other egress (iptables/ip6tables `nat` and `filter` rules; needs NET_ADMIN and
    /// NET_RAW).
    InitIptables(InitIptables),
    /// The CA toolgate intercepts HTTPS with (`tls.ca`).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Signing keys for minted credentials.
    #[command(subcommand)]
    Keys(Keys),
    /// Revoke a task, an agent or a credential id through the operator API, or list the
    /// revocations in force.
    Revoke(cli::revoke::Args),
    /// Serve the Kubernetes mutating admission webhook that adds toolgate to the pods that
    /// ask for it (AdmissionReview v1 over HTTPS).
    Inject(cli::inject::Args),
    /// Requests held for human approval: list, show, approve or deny them through the
    /// operator API.
    Approvals(cli::approvals::Args),
    /// Decide the decisions recorded in decision logs again with a candidate policy (by
    /// default `policy.shadow`) and report what changes; exits 1 when anything does.
    Replay(cli::replay::Args),
    /// One decision from a decision log: the input, the decision, the rule that produced it,
    /// the chain it saw, its trace and span, the credential's jti and the approval.
    Explain(cli::explain::Args),
    /// Print the policy input's JSON Schema, with the catalog's actions and their attributes
    /// (for editors and `opa check --schema`).
    Schema(cli::schema::Args),
    /// MCP tools: `pin` writes the lock file of a tool's definitions from its live server.
    #[command(subcommand)]
    Mcp(cli::mcp::Command),
    /// End a task (refuse it, kill its credentials) or show its chain, through the operator
    /// API.
    Tasks(cli::tasks::Args),
}

/// `toolgate ca …`
#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a CA for `tls.ca`: an ECDSA P-256 certificate (agents trust it) and its PKCS#8
    /// private key (toolgate only; written with mode 0600). Existing files are kept unless
    /// --force.
    Init {
        /// Where to write the certificate (PEM).
        #[arg(long, default_value = "ca.pem")]
        cert: PathBuf,
        /// Where to write the private key (PEM).
        #[arg(long, default_value = "ca-key.pem")]
        key: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "toolgate interception CA")]
        common_name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// `toolgate eval` arguments.
#[derive(Debug, clap::Args)]
struct Eval {
    /// Configuration file.
    #[arg(short, long)]
    config: PathBuf,
    /// Request method (upper case, as the agent sends it).
    #[arg(long)]
    method: String,
    /// Request URL: absolute (http://host/path) or a path with a Host header.
    #[arg(long)]
    url: String,
    /// A request header `Name: value`; repeatable.
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// The request body: a file, or `-` for standard input.
    #[arg(long)]
    body: Option<PathBuf>,
    /// The task the request belongs to.
    #[arg(long, default_value = "eval")]
    task: String,
}

/// `toolgate keys …`
#[derive(Debug, Subcommand)]
enum Keys {
    /// Write a new Ed25519 signing key (PKCS#8 PEM, mode 0600) for `kind: jwt` credentials.
    Init {
        /// Where to write it; without it, the key is printed to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing file (rotation: the new key signs from the next reload on).
        #[arg(long)]
        force: bool,
    },
}

/// `toolgate init-iptables` arguments; lists are comma-separated.
#[derive(Debug, clap::Args)]
struct InitIptables {
    /// Print the iptables-restore (and ip6tables-restore) input instead of applying it.
    #[arg(long)]
    dry_run: bool,
    /// Port of toolgate's transparent listener on loopback (127.0.0.1 and [::1]).
    #[arg(long, default_value_t = 15006)]
    transparent_port: u16,
    /// Port of toolgate's admin listener (never redirected).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// The uid toolgate runs as; its connections are never redirected nor filtered.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// Also exempt connections made with this gid.
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// Destination TCP ports to redirect; UDP to them is refused (HTTP/3 falls back to TCP).
    #[arg(long, value_delimiter = ',', default_value = "80,443")]
    ports: Vec<u16>,
    /// Destination networks to redirect (IPv4 and IPv6 CIDRs); a family none of them names
    /// is redirected whole.
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0/0,::/0")]
    include_cidrs: Vec<Cidr>,
    /// Destination networks never redirected nor filtered.
    #[arg(long, value_delimiter = ',')]
    exclude_cidrs: Vec<Cidr>,
    /// Destination TCP ports never redirected (and, with deny-other, allowed out).
    #[arg(long, value_delimiter = ',')]
    exclude_ports: Vec<u16>,
    /// The agent's other egress: allow-other, or deny-other (dropped, except DNS to
    /// --dns-servers, the exclusions and replies on connections the pod accepted).
    #[arg(long, default_value = "allow-other")]
    egress: Egress,
    /// With --egress deny-other: the resolvers the agent may query on UDP/TCP 53; default:
    /// the nameservers in /etc/resolv.conf.
    #[arg(long, value_delimiter = ',')]
    dns_servers: Vec<IpAddr>,
    /// IPv6 capture: auto (whenever the kernel has IPv6) or off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"])]
    ipv6: String,
    /// The iptables program (e.g. iptables-legacy on legacy nodes).
    #[arg(long, default_value = "iptables")]
    iptables: String,
    /// The iptables-restore program (e.g. iptables-legacy-restore).
    #[arg(long, default_value = "iptables-restore")]
    iptables_restore: String,
    /// The ip6tables program (e.g. ip6tables-legacy on legacy nodes).
    #[arg(long, default_value = "ip6tables")]
    ip6tables: String,
    /// The ip6tables-restore program (e.g. ip6tables-legacy-restore).
    #[arg(long, default_value = "ip6tables-restore")]
    ip6tables_restore: String,
}

/// Exit code for configuration and policy errors.
const CONFIG_ERROR: u8 = 2;

/// The quickstart (examples/quickstart), compiled in.
const QUICKSTART: &[(&str, &[u8])] = toolgate_policy::quickstart::FILES;

fn quickstart() -> EmbeddedFiles {
    EmbeddedFiles::new(QUICKSTART)
}

fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    match path {
        Some(p) => Config::load(p),
        None => Config::load_from(
            Path::new("<embedded quickstart>/toolgate.yaml"),
            &quickstart(),
            &ProcessEnv,
        ),
    }
}

/// Load and compile, printing every error; `None` when the configuration is unusable.
fn snapshot(path: Option<&Path>) -> Option<Snapshot> {
    let config = match load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return None;
        }
    };
    let origin = config.origin.clone();
    match Snapshot::build(config) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("{}: {e}", origin.display());
            None
        }
    }
}

/// `toolgate test`: exit 0 when every test passes, 1 when one fails, 2 when tests cannot run.
fn test(config_path: &Path, mut paths: Vec<PathBuf>) -> ExitCode {
    use toolgate_policy::testing;
    let Some(s) = snapshot(Some(config_path)) else {
        return ExitCode::from(CONFIG_ERROR);
    };
    if paths.is_empty() {
        paths.push(config_path.parent().unwrap_or(Path::new(".")).join("tests"));
    }
    let fail = |e: testing::TestError| {
        eprintln!("{e}");
        ExitCode::from(CONFIG_ERROR)
    };
    let (fixtures, rego) = match testing::discover(&paths) {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let mut cases = match testing::run_rego_tests(&s.config, &rego) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    for path in &fixtures {
        match testing::load_fixture(path) {
            Ok(f) => cases.extend(testing::run_fixture(
                &s.config,
                &s.policy,
                &path.display().to_string(),
                &f,
            )),
            Err(e) => return fail(e),
        }
    }
    // The policy checked against the input it will see: each finding fails the run.
    match cli::schema::findings(&s.config) {
        Ok(found) => cases.extend(found.into_iter().map(|f| testing::Case {
            name: "input schema".to_string(),
            failure: Some(f),
        })),
        Err(e) => return fail(testing::TestError::Rego(e)),
    }
    let failed = cases.iter().filter(|c| c.failure.is_some()).count();
    for case in &cases {
        match &case.failure {
            None => println!("PASS {}", case.name),
            Some(why) => println!("FAIL {}: {why}", case.name),
        }
    }
    println!("{} passed, {failed} failed", cases.len() - failed);
    if cases.is_empty() {
        eprintln!(
            "no tests found under {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(CONFIG_ERROR);
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `toolgate eval`: exit 0 with the JSON report, 2 when the configuration or the request
/// cannot be used.
fn eval(args: Eval) -> ExitCode {
    use std::io::Read;
    use toolgate_policy::{chain::Ledger, offline};
    let Some(s) = snapshot(Some(&args.config)) else {
        return ExitCode::from(CONFIG_ERROR);
    };
    let fail = |message: String| {
        eprintln!("toolgate eval: {message}");
        ExitCode::from(CONFIG_ERROR)
    };
    let request = offline::Request {
        method: args.method,
        url: args.url,
        ..Default::default()
    };
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            return fail(format!("--header {h:?} must be `Name: value`"));
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.trim().as_bytes()),
            http::HeaderValue::from_str(v.trim()),
        ) else {
            return fail(format!("--header {h:?} is not a valid header"));
        };
        headers.append(name, value);
    }
    let body = match args.body.as_deref() {
        None => None,
        Some(p) if p == Path::new("-") => {
            let mut bytes = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
                return fail(format!("cannot read the body from standard input: {e}"));
            }
            Some(bytes)
        }
        Some(p) => match std::fs::read(p) {
            Ok(bytes) => Some(bytes),
            Err(e) => return fail(format!("cannot read {}: {e}", p.display())),
        },
    };
    let ledger = Ledger::new(&s.config.chain);
    let decided = offline::decide(
        &s.config,
        &s.policy,
        &request,
        &headers,
        body.as_deref(),
        &args.task,
        &ledger,
        None,
    );
    let report = match decided {
        Ok(outcome) => offline::report(&s.config, &outcome),
        Err(refused) => offline::refused_report(&refused),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("TOOLGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

fn init_iptables(args: InitIptables) -> ExitCode {
    let dns_servers = if args.dns_servers.is_empty() && args.egress == Egress::DenyOther {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|text| capture::nameservers(&text))
            .unwrap_or_default()
    } else {
        args.dns_servers
    };
    let spec = CaptureSpec {
        transparent_port: args.transparent_port,
        admin_port: args.admin_port,
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        ports: args.ports,
        include_cidrs: args.include_cidrs,
        exclude_cidrs: args.exclude_cidrs,
        exclude_ports: args.exclude_ports,
        egress: args.egress,
        dns_servers,
    };
    if let Err(e) = spec.validate() {
        eprintln!("toolgate init-iptables: {e}");
        return ExitCode::from(CONFIG_ERROR);
    }
    let programs = Iptables {
        iptables: args.iptables,
        restore: args.iptables_restore,
        ip6tables: args.ip6tables,
        ip6_restore: args.ip6tables_restore,
    };
    let skip_v6 = if args.ipv6 == "off" {
        Some("IPv6: not captured (--ipv6 off)")
    } else if !capture::ipv6_available() {
        Some("IPv6: skipped, the kernel has no IPv6 (no /proc/net/if_inet6)")
    } else {
        None
    };
    let families: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| *f == Family::V4 || skip_v6.is_none())
        .collect();
    if args.dry_run {
        for family in &families {
            let restore = match family {
                Family::V4 => &programs.restore,
                Family::V6 => &programs.ip6_restore,
            };
            println!("# {}: {restore} --noflush", family.name());
            print!("{}", spec.restore_input(*family, Jumps::BOTH));
        }
        if let Some(note) = skip_v6 {
            println!("# {note}");
        }
        return ExitCode::SUCCESS;
    }
    for family in families {
        match capture::apply(&spec, &programs, family) {
            Ok(applied) => {
                let added = applied.jumps_added.nat || applied.jumps_added.filter;
                let listener = match family {
                    Family::V4 => format!("127.0.0.1:{}", spec.transparent_port),
                    Family::V6 => format!("[::1]:{}", spec.transparent_port),
                };
                println!(
                    "toolgate init-iptables: {}: {} rules in nat {}, {} in filter {}, {}; TCP to ports {:?} redirected to {listener}, UDP to them refused, other egress {}",
                    family.name(),
                    applied.nat_rules,
                    capture::CHAIN,
                    applied.filter_rules,
                    capture::EGRESS_CHAIN,
                    if added { "jumps from OUTPUT added" } else { "jumps from OUTPUT already present" },
                    spec.ports,
                    match spec.egress {
                        Egress::AllowOther => "allowed",
                        Egress::DenyOther => "dropped",
                    },
                );
            }
            Err(e) => {
                eprintln!("toolgate init-iptables: {}: {e}", family.name());
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(note) = skip_v6 {
        println!("toolgate init-iptables: {note}");
    }
    ExitCode::SUCCESS
}

fn ca(command: CaCommand) -> ExitCode {
    let CaCommand::Init {
        cert,
        key,
        common_name,
        days,
        force,
    } = command;
    if days == 0 {
        eprintln!("toolgate ca init: --days must be at least 1");
        return ExitCode::from(CONFIG_ERROR);
    }
    for path in [&cert, &key] {
        if path.exists() && !force {
            eprintln!(
                "toolgate ca init: {} exists; pass --force to replace it",
                path.display()
            );
            return ExitCode::from(CONFIG_ERROR);
        }
    }
    let (cert_pem, key_pem) = match toolgate_proxy::ca::generate(&common_name, days) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("toolgate ca init: {e}");
            return ExitCode::FAILURE;
        }
    };
    let write = |path: &Path, text: &str, mode: u32| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        file.write_all(text.as_bytes())
    };
    if let Err(e) = write(&key, &key_pem, 0o600).and_then(|()| write(&cert, &cert_pem, 0o644)) {
        eprintln!("toolgate ca init: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "toolgate ca init: wrote {} (the certificate agents trust) and {} (the private key, for toolgate only); valid {days} days",
        cert.display(),
        key.display()
    );
    ExitCode::SUCCESS
}

/// `toolgate keys init`: a new key, written so that only its owner can read it. The file is
/// written beside its destination and renamed over it, so a running toolgate reloading it
/// never reads half a key.
fn keys_init(out: Option<&Path>, force: bool) -> ExitCode {
    let pem = match toolgate_policy::config::generate_ed25519_pem() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("toolgate keys init: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(out) = out else {
        print!("{pem}");
        return ExitCode::SUCCESS;
    };
    if out.exists() && !force {
        eprintln!(
            "toolgate keys init: {} exists; pass --force to replace it",
            out.display()
        );
        return ExitCode::FAILURE;
    }
    match write_private(out, pem.as_bytes()) {
        Ok(()) => {
            println!(
                "toolgate keys init: wrote an Ed25519 signing key to {}",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toolgate keys init: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn write_private(out: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    match written.and_then(|()| std::fs::rename(&tmp, out)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Ca(command) => ca(command),
        Command::Keys(Keys::Init { out, force }) => keys_init(out.as_deref(), force),
        Command::InitIptables(args) => init_iptables(args),
        Command::Check { config } => {
            let Some(s) = snapshot(Some(&config)) else {
                return ExitCode::from(CONFIG_ERROR);
            };
            if let Some(why) = &s.shadow_error {
                eprintln!("{why}");
                return ExitCode::from(CONFIG_ERROR);
            }
            let operator = cli::operator::check(&s.config);
            for e in &operator.errors {
                eprintln!("{}: {e}", config.display());
            }
            if !operator.errors.is_empty() {
                return ExitCode::from(CONFIG_ERROR);
            }
            // References the input never satisfies: a typo that never matches, or fails open.
            match cli::schema::findings(&s.config) {
                Ok(found) if found.is_empty() => {}
                Ok(found) => {
                    for f in &found {
                        eprintln!("{f}");
                    }
                    return ExitCode::from(CONFIG_ERROR);
                }
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(CONFIG_ERROR);
                }
            }
            let actions: usize = s
                .config
                .catalog
                .tools()
                .iter()
                .map(|t| t.actions().len())
                .sum();
            println!(
                "{}: ok — {} tools, {} actions, {} routes, policy revision {} ({:?} evaluator)",
                config.display(),
                s.config.catalog.tools().len(),
                actions,
                s.config.routes.len(),
                s.policy.revision(),
                s.policy.evaluator(),
            );
            if let Some(why) = s.policy.rvm_unsupported() {
                println!("note: the RVM cannot run this policy, the interpreter will: {why}");
            }
            if let Some(shadow) = &s.shadow {
                println!(
                    "shadow policy revision {} ({:?} evaluator): evaluated beside, never enforced",
                    shadow.revision(),
                    shadow.evaluator()
                );
            }
            for note in &operator.notes {
                println!("note: {note}");
            }
            for w in &s.config.warnings {
                eprintln!("warning: {}: {}: {}", config.display(), w.path, w.message);
            }
            ExitCode::SUCCESS
        }
        Command::Revoke(args) => cli::revoke::run(args),
        Command::Inject(args) => {
            init_logging("info");
            cli::inject::run(args)
        }
        Command::Approvals(args) => cli::approvals::run(args),
        Command::Replay(args) => cli::replay::run(args),
        Command::Explain(args) => cli::explain::run(args),
        Command::Schema(args) => cli::schema::run(args),
        Command::Mcp(command) => cli::mcp::run(command),
        Command::Tasks(args) => cli::tasks::run(args),
        Command::Test { config, paths } => test(&config, paths),
        Command::Eval(args) => eval(args),
        Command::Demo { otlp } => {
            init_logging("warn");
            match demo::run(QUICKSTART, otlp.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("toolgate demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            init_logging("info");
            let Some(s) = snapshot(config.as_deref()) else {
                return ExitCode::from(CONFIG_ERROR);
            };
            for w in &s.config.warnings {
                tracing::warn!(field = %w.path, "{}", w.message);
            }
            if let Some(why) = &s.shadow_error {
                // The live policy serves; the shadow is off until a reload brings a good one.
                tracing::error!(error = %why, "shadow policy rejected; serving without a shadow");
            }
            match toolgate_proxy::serve(s, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("toolgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
