//! `toolgate inject -c injector.yaml --tls-cert F --tls-key F [--listen ADDR]`: the Kubernetes
//! mutating admission webhook (see `crate::inject`). Exits 2 on a bad configuration or
//! certificate, 1 when it cannot serve, 0 after SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::inject::server::{self, Certificate};
use crate::inject::template::Template;

/// `toolgate inject` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to inject: image, ports, capture default, CA and operator Secrets (the chart's
    /// injector mode renders it).
    #[arg(short, long)]
    config: PathBuf,
    /// The serving certificate chain (PEM); read again when it changes.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// The serving certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
}

/// Run `toolgate inject`.
pub fn run(args: Args) -> ExitCode {
    let template = match Template::load(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("toolgate inject: {e}");
            return ExitCode::from(2);
        }
    };
    let certificate = match Certificate::load(&args.tls_cert, &args.tls_key) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("toolgate inject: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("toolgate inject: cannot start its runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let served = runtime.block_on(server::serve(
        args.listen,
        certificate,
        template,
        stopped(),
        |addr| println!("toolgate inject listening on {addr}"),
    ));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("toolgate inject: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM (the kubelet) or Ctrl-C.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
