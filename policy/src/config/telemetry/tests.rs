use std::path::Path;

use crate::config::{Config, ConfigErrors, EmbeddedFiles, Otlp, OtlpProtocol, StaticEnv};

fn load(telemetry: &str) -> Result<Config, ConfigErrors> {
    // EmbeddedFiles holds 'static bytes; a leaked test string is fine.
    let yaml: &'static str =
        format!("agent: {{ id: a }}\npolicy: {{ files: [p.rego] }}\ntelemetry: {telemetry}\n")
            .leak();
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
    ]);
    Config::load_from(
        Path::new("toolgate.yaml"),
        &files,
        &StaticEnv(Default::default()),
    )
}

fn otlp(telemetry: &str) -> Option<Otlp> {
    load(telemetry).unwrap().telemetry.otlp
}

fn problems(telemetry: &str) -> Vec<String> {
    load(telemetry)
        .unwrap_err()
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

#[test]
fn http_endpoints_resolve_to_the_traces_path() {
    for (given, want) in [
        ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
        ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
        (
            "http://phoenix:6006/v1/traces",
            "http://phoenix:6006/v1/traces",
        ),
        (
            "https://otlp.example.com/otlp",
            "https://otlp.example.com/otlp/v1/traces",
        ),
    ] {
        let got = otlp(&format!("{{ otlp: {{ endpoint: \"{given}\" }} }}")).unwrap();
        assert_eq!(got.endpoint, want, "{given}");
        assert_eq!(got.protocol, OtlpProtocol::Http);
    }
}

#[test]
fn grpc_endpoints_are_taken_as_given() {
    let got = otlp("{ otlp: { endpoint: \"http://tempo:4317\", protocol: grpc } }").unwrap();
    assert_eq!(got.endpoint, "http://tempo:4317");
    assert_eq!(got.protocol, OtlpProtocol::Grpc);
}

#[test]
fn no_otlp_key_means_no_configured_export() {
    assert_eq!(otlp("{ decision_log: off }"), None);
}

#[test]
fn bad_otlp_settings_name_their_field() {
    assert_eq!(
        problems("{ otlp: { protocol: grpc } }"),
        ["telemetry.otlp.endpoint: required: the collector's URL, e.g. http://127.0.0.1:4318"]
    );
    assert_eq!(
        problems("{ otlp: { endpoint: \"http://c:4317\", protocol: thrift } }"),
        ["telemetry.otlp.protocol: \"thrift\" must be `http` (OTLP/HTTP protobuf) or `grpc`"]
    );
    for (endpoint, why) in [
        ("collector:4318", "must start with http:// or https://"),
        ("ftp://collector", "must start with http:// or https://"),
        (
            "http://user:pw@collector:4318",
            "must not carry credentials: set them in OTEL_EXPORTER_OTLP_HEADERS",
        ),
        ("http://collector:4318/?a=1", "must not have a query"),
    ] {
        assert_eq!(
            problems(&format!("{{ otlp: {{ endpoint: \"{endpoint}\" }} }}")),
            [format!("telemetry.otlp.endpoint: {endpoint:?} {why}")],
        );
    }
    assert_eq!(
        problems("{ otlp: { endpoint: \"http://c:4317/x\", protocol: grpc } }"),
        ["telemetry.otlp.endpoint: \"http://c:4317/x\" must have no path for gRPC, e.g. http://127.0.0.1:4317"]
    );
}

#[test]
fn unknown_otlp_keys_are_reported() {
    assert_eq!(
        problems("{ otlp: { endpoint: \"http://c:4318\", headers: {a: b} } }"),
        ["telemetry.otlp.headers: unknown key"]
    );
}
