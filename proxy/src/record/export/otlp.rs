//! The OTLP exporter: its destination from `telemetry.otlp` or the standard
//! `OTEL_EXPORTER_OTLP_*` environment, the batching from `OTEL_BSP_*`, and the resource that
//! names this toolgate (service, version, agent, Kubernetes pod).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use toolgate_policy::config::{Otlp, OtlpProtocol, Vars};

use super::otlp_http::HttpExporter;
use super::{Batching, Spans, StartError};

/// Where and how spans are exported, resolved from configuration and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Deadline of one export request (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    pub timeout: Duration,
    pub batching: Batching,
    /// Headers sent with every OTLP/HTTP export (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`); the
    /// gRPC exporter reads them itself.
    pub headers: Headers,
}

/// Export headers, often a collector's API key: `Debug` shows their names, never a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// The traces path of OTLP/HTTP, appended to `OTEL_EXPORTER_OTLP_ENDPOINT`.
const TRACES_PATH: &str = "/v1/traces";

fn env_error(var: &'static str, value: &str, why: &'static str) -> StartError {
    StartError::Env {
        var,
        value: value.to_string(),
        why,
    }
}

/// The first of `names` that is set (and not empty), with its name.
fn first(vars: &dyn Vars, names: &[&'static str]) -> Option<(&'static str, String)> {
    names
        .iter()
        .find_map(|n| vars.var(n).filter(|v| !v.is_empty()).map(|v| (*n, v)))
}

fn millis(vars: &dyn Vars, names: &[&'static str]) -> Result<Option<Duration>, StartError> {
    match first(vars, names) {
        None => Ok(None),
        Some((var, v)) => v
            .trim()
            .parse::<u64>()
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| env_error(var, &v, "must be a whole number of milliseconds")),
    }
}

fn count(vars: &dyn Vars, var: &'static str) -> Result<Option<usize>, StartError> {
    match first(vars, &[var]) {
        None => Ok(None),
        Some((var, v)) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(env_error(var, &v, "must be a positive whole number")),
        },
    }
}

/// Resolve the export settings: `configured` (`telemetry.otlp`) wins over the environment;
/// without either, or with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`, spans
/// are not exported (`Ok(None)`).
pub fn settings(
    configured: Option<&Otlp>,
    vars: &dyn Vars,
) -> Result<Option<Settings>, StartError> {
    if vars
        .var("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Ok(None);
    }
    match first(vars, &["OTEL_TRACES_EXPORTER"]) {
        None => {}
        Some((_, v)) if v.trim() == "otlp" => {}
        Some((_, v)) if v.trim() == "none" => return Ok(None),
        Some((var, v)) => {
            return Err(env_error(
                var,
                &v,
                "toolgate exports spans with `otlp` (or `none`)",
            ))
        }
    }
    let (endpoint, protocol) = match configured {
        Some(otlp) => (otlp.endpoint.clone(), otlp.protocol),
        None => {
            let protocol = match first(
                vars,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                ],
            ) {
                None => OtlpProtocol::Http,
                Some((_, v)) if v.trim() == "http/protobuf" => OtlpProtocol::Http,
                Some((_, v)) if v.trim() == "grpc" => OtlpProtocol::Grpc,
                Some((var, v)) => {
                    return Err(env_error(var, &v, "must be `http/protobuf` or `grpc`"))
                }
            };
            let endpoint =
                if let Some((_, e)) = first(vars, &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]) {
                    // The per-signal endpoint is the complete URL.
                    e
                } else if let Some((_, e)) = first(vars, &["OTEL_EXPORTER_OTLP_ENDPOINT"]) {
                    match protocol {
                        OtlpProtocol::Http => format!("{}{TRACES_PATH}", e.trim_end_matches('/')),
                        OtlpProtocol::Grpc => e,
                    }
                } else {
                    return Ok(None);
                };
            (endpoint, protocol)
        }
    };
    let defaults = Batching::default();
    let max_queue = count(vars, "OTEL_BSP_MAX_QUEUE_SIZE")?.unwrap_or(defaults.max_queue);
    let batching = Batching {
        max_queue,
        max_batch: count(vars, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
            .unwrap_or(defaults.max_batch)
            .min(max_queue),
        delay: millis(vars, &["OTEL_BSP_SCHEDULE_DELAY"])?.unwrap_or(defaults.delay),
        export_timeout: millis(vars, &["OTEL_BSP_EXPORT_TIMEOUT"])?
            .unwrap_or(defaults.export_timeout),
    };
    let timeout = millis(
        vars,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
    )?
    .unwrap_or(Duration::from_secs(10));
    let headers = first(
        vars,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
    )
    .map(|(_, v)| Headers(parse_headers(&v)))
    .unwrap_or_default();
    if protocol == OtlpProtocol::Http {
        if let Some((var, v)) = first(
            vars,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ],
        ) {
            if v.trim() != "none" {
                return Err(env_error(
                    var,
                    &v,
                    "toolgate sends OTLP/HTTP uncompressed: unset it or set `none`",
                ));
            }
        }
    }
    Ok(Some(Settings {
        endpoint,
        protocol,
        timeout,
        batching,
        headers,
    }))
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values
/// percent-decoded (W3C Baggage style); pairs without a key or a value are skipped.
fn parse_headers(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_or_else(|_| v.to_string(), |d| d.into_owned());
            (!k.is_empty() && !v.is_empty()).then(|| (k.to_string(), v))
        })
        .collect()
}

/// The resource toolgate's spans describe: `service.name` (`OTEL_SERVICE_NAME`, else
/// `toolgate`), `service.version`, `service.instance.id`, `toolgate.agent.id`, the Kubernetes
/// pod, namespace and node when their variables are set, then `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource(agent_id: &str, vars: &dyn Vars) -> Resource {
    let mut attributes = vec![
        KeyValue::new("service.name", "toolgate"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        KeyValue::new("toolgate.agent.id", agent_id.to_string()),
    ];
    for (key, names) in [
        ("k8s.pod.name", ["K8S_POD_NAME", "POD_NAME"]),
        (
            "k8s.namespace.name",
            ["K8S_NAMESPACE_NAME", "POD_NAMESPACE"],
        ),
        ("k8s.node.name", ["K8S_NODE_NAME", "NODE_NAME"]),
    ] {
        if let Some((_, v)) = first(vars, &names) {
            attributes.push(KeyValue::new(key, v));
        }
    }
    let mut builder = Resource::builder_empty()
        .with_attributes(attributes)
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Some((_, name)) = first(vars, &["OTEL_SERVICE_NAME"]) {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// Start exporting spans per `settings`, describing them with `resource`.
pub fn start(
    settings: &Settings,
    resource: Resource,
    dropped: Arc<AtomicU64>,
) -> Result<Spans, StartError> {
    let s = settings.clone();
    let destination = format!(
        "{} {}",
        match s.protocol {
            OtlpProtocol::Http => "OTLP/HTTP",
            OtlpProtocol::Grpc => "OTLP/gRPC",
        },
        s.endpoint
    );
    Spans::start(
        move || {
            let mut exporter = build(&s).map_err(|e| e.to_string())?;
            exporter.set_resource(&resource);
            Ok(exporter)
        },
        settings.batching,
        destination,
        dropped,
    )
}

/// The HTTP client of OTLP/HTTP export: system roots for https (and `SSL_CERT_FILE`).
type Client = opentelemetry_http::hyper::HyperClient<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
>;

/// The exporter of one protocol: OTLP/HTTP encodes spans itself ([`super::encode`]); gRPC is
/// the OpenTelemetry exporter.
#[derive(Debug)]
pub enum Exporter {
    Http(Box<HttpExporter<Client>>),
    Grpc(Box<opentelemetry_otlp::SpanExporter>),
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            Exporter::Http(e) => e.export(batch).await,
            Exporter::Grpc(e) => e.export(batch).await,
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Exporter::Http(e) => e.shutdown_with_timeout(timeout),
            Exporter::Grpc(e) => e.shutdown_with_timeout(timeout),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Exporter::Http(e) => e.set_resource(resource),
            Exporter::Grpc(e) => e.set_resource(resource),
        }
    }
}

/// Build the exporter; must run inside a Tokio runtime (the gRPC channel needs one).
fn build(s: &Settings) -> Result<Exporter, Box<dyn std::error::Error>> {
    let exporter = match s.protocol {
        OtlpProtocol::Http => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)?
                .https_or_http()
                .enable_http1()
                .build();
            let client = opentelemetry_http::hyper::HyperClient::new(connector, s.timeout, None);
            Exporter::Http(Box::new(HttpExporter::new(
                client,
                &s.endpoint,
                &s.headers.0,
                s.timeout,
            )?))
        }
        OtlpProtocol::Grpc => {
            let mut tonic = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(s.endpoint.clone())
                .with_timeout(s.timeout);
            if s.endpoint.starts_with("https://") {
                // tonic trusts no roots by default: use the system's (and SSL_CERT_FILE).
                tonic = tonic
                    .with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
            }
            Exporter::Grpc(Box::new(tonic.build()?))
        }
    };
    Ok(exporter)
}
