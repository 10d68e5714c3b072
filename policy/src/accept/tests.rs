use std::path::Path;

use crate::config::{EmbeddedFiles, StaticEnv};

use super::*;

fn config() -> Config {
    let files = EmbeddedFiles::new(&[
        (
            "toolgate.yaml",
            br#"
agent: { id: a }
tools:
  - name: jira
    hosts: [jira.example.com]
  - name: pay
    hosts: [pay.example.com]
    upstream: http://127.0.0.1:9000
routes:
  - { prefix: /jira/, tool: jira }
  - { prefix: /pay/v1/, tool: pay }
policy: { files: [p.rego] }
"#,
        ),
        ("p.rego", b"package toolgate\ndecision := false\n"),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap()
}

struct Req(&'static str, &'static str, HeaderMap);

fn req(method: &'static str, target: &'static str, host: Option<&str>) -> Req {
    let mut h = HeaderMap::new();
    if let Some(host) = host {
        h.insert("host", host.parse().unwrap());
    }
    Req(method, target, h)
}

fn accept(r: &Req, config: &Config) -> Result<Accepted, Rejection> {
    super::accept(config, r.0, r.1.as_bytes(), &r.2)
}

#[test]
fn absolute_form_names_host_and_scheme() {
    let a = accept(
        &req(
            "GET",
            "http://Jira.Example.com/rest/x?y=1",
            Some("jira.example.com"),
        ),
        &config(),
    )
    .unwrap();
    assert_eq!(
        (a.via, a.tool, a.tls, a.host.as_str(), a.port),
        (Via::AbsoluteForm, Some(0), false, "jira.example.com", 80)
    );
    assert_eq!(a.request.target(), "/rest/x?y=1");
    let root = accept(&req("GET", "http://jira.example.com", None), &config()).unwrap();
    assert_eq!(root.request.path, "/");
}

#[test]
fn absolute_form_matches_a_portless_host_only_on_its_schemes_default_port() {
    for (target, tool) in [
        ("http://jira.example.com/x", Some(0)),
        ("https://jira.example.com/x", Some(0)),
        ("http://jira.example.com:80/x", Some(0)),
        ("https://jira.example.com:443/x", Some(0)),
        ("http://jira.example.com:8080/x", None),
        ("http://jira.example.com:443/x", None),
        ("https://jira.example.com:80/x", None),
        ("https://jira.example.com:8443/x", None),
    ] {
        let a = accept(&req("GET", target, None), &config()).unwrap();
        assert_eq!(a.tool, tool, "{target}");
    }
}

#[test]
fn absolute_form_host_header_must_agree() {
    let e = accept(
        &req("GET", "http://jira.example.com/x", Some("pay.example.com")),
        &config(),
    )
    .unwrap_err();
    assert!(matches!(e, Rejection::HostMismatch(_)));
}

#[test]
fn routes_strip_their_prefix() {
    let a = accept(
        &req("GET", "/jira/rest/api/3/issue/X", Some("127.0.0.1:15001")),
        &config(),
    )
    .unwrap();
    assert_eq!(
        (a.via, a.tool, a.tls, a.host.as_str(), a.port),
        (Via::Route, Some(0), true, "jira.example.com", 443)
    );
    assert_eq!(a.request.path, "/rest/api/3/issue/X");
    let b = accept(&req("POST", "/pay/v1/charges", None), &config()).unwrap();
    assert_eq!(
        (b.tool, b.host.as_str(), b.port, b.request.path.as_str()),
        (Some(1), "127.0.0.1", 9000, "/charges")
    );
}

#[test]
fn route_prefix_is_matched_on_the_canonical_path() {
    // `/jira/../pay/v1/x` must not reach the pay route, nor the jira one.
    assert_eq!(
        accept(&req("GET", "/jira/../pay/v1/x", None), &config()).unwrap_err(),
        Rejection::DotSegment
    );
    let a = accept(&req("GET", "/%6aira/x", None), &config()).unwrap();
    assert_eq!((a.via, a.request.path.as_str()), (Via::Route, "/x"));
}

#[test]
fn origin_form_uses_host() {
    let a = accept(&req("GET", "/x", Some("pay.example.com")), &config()).unwrap();
    assert_eq!(
        (a.via, a.tool, a.tls, a.port),
        (Via::Host, Some(1), false, 80)
    );
    // Another port of a catalogued host is no tool: `unknown`, decided as such.
    let other = accept(&req("GET", "/x", Some("pay.example.com:8080")), &config()).unwrap();
    assert_eq!((other.via, other.tool, other.port), (Via::Host, None, 8080));
    let unknown = accept(&req("GET", "/x", Some("evil.example.com")), &config()).unwrap();
    assert_eq!(unknown.tool, None);
    assert_eq!(
        accept(&req("GET", "/x", None), &config()).unwrap_err(),
        Rejection::NoHost
    );
}

fn tunnel(host: &str, port: u16) -> Destination {
    Destination {
        via: Via::Tunnel,
        host: host.to_string(),
        port,
        tls: true,
    }
}

fn accept_in(d: &Destination, r: &Req) -> Result<Accepted, Rejection> {
    accept_at(&config(), d, r.0, r.1.as_bytes(), &r.2)
}

#[test]
fn inside_a_tunnel_the_connect_target_is_the_authority() {
    let d = tunnel("jira.example.com", 443);
    let a = accept_in(&d, &req("GET", "/rest/x", Some("Jira.Example.com"))).unwrap();
    assert_eq!(
        (a.via, a.tool, a.tls, a.host.as_str(), a.port),
        (Via::Tunnel, Some(0), true, "jira.example.com", 443)
    );
    // A Host naming anything else — another host, another port — is refused.
    for host in ["pay.example.com", "jira.example.com:8443"] {
        let e = accept_in(&d, &req("GET", "/rest/x", Some(host))).unwrap_err();
        assert!(matches!(e, Rejection::HostMismatch(_)), "{host}: {e:?}");
    }
    // No Host at all: the target still decides.
    assert_eq!(
        accept_in(&d, &req("GET", "/x", None)).unwrap().tool,
        Some(0)
    );
    // A tunnel to another port of the host is no tool.
    let d = tunnel("jira.example.com", 8443);
    assert_eq!(accept_in(&d, &req("GET", "/x", None)).unwrap().tool, None);
}

#[test]
fn inside_a_tunnel_routes_do_not_apply_and_absolute_form_must_name_the_target() {
    let d = tunnel("jira.example.com", 443);
    let a = accept_in(&d, &req("GET", "/pay/v1/charges", None)).unwrap();
    assert_eq!(
        (a.tool, a.request.path.as_str()),
        (Some(0), "/pay/v1/charges")
    );
    let a = accept_in(&d, &req("GET", "https://jira.example.com/x", None)).unwrap();
    assert_eq!(a.request.target(), "/x");
    for target in ["https://pay.example.com/x", "http://jira.example.com/x"] {
        let e = accept_in(&d, &req("GET", target, None)).unwrap_err();
        assert!(matches!(e, Rejection::HostMismatch(_)), "{target}: {e:?}");
    }
    assert_eq!(
        accept_in(&d, &req("GET", "*", None)).unwrap_err(),
        Rejection::BadTarget
    );
}

#[test]
fn a_refused_host_is_quoted_in_at_most_64_characters() {
    // Every other refusal quotes agent input clipped; a host that is not UTF-8 was quoted
    // whole, so a 1 MiB request head came back in the 400 and went into the decision log.
    let c = config();
    let long: Vec<u8> = [b"http://".as_slice(), &[0xff; 10_000], b"/x"].concat();
    match super::accept(&c, "GET", &long, &HeaderMap::new()) {
        Err(Rejection::BadHost(quoted)) => assert!(quoted.chars().count() <= 64, "{quoted}"),
        other => panic!("{other:?}"),
    }
    let destination = Destination {
        via: Via::Tunnel,
        host: "jira.example.com".into(),
        port: 443,
        tls: true,
    };
    let long_tls: Vec<u8> = [b"https://".as_slice(), &[0xff; 10_000], b"/x"].concat();
    match accept_at(&c, &destination, "GET", &long_tls, &HeaderMap::new()) {
        Err(Rejection::BadHost(quoted)) => assert!(quoted.chars().count() <= 64, "{quoted}"),
        other => panic!("{other:?}"),
    }
    let mut h = HeaderMap::new();
    h.insert(
        "host",
        http::HeaderValue::from_bytes(&[0xff; 10_000]).unwrap(),
    );
    match super::accept(&c, "GET", b"/x", &h) {
        Err(Rejection::BadHost(quoted)) => assert!(quoted.chars().count() <= 64, "{quoted}"),
        other => panic!("{other:?}"),
    }
    // Positive control: the same requests with a real host are accepted.
    let ok = super::accept(&c, "GET", b"http://jira.example.com/x", &HeaderMap::new()).unwrap();
    assert_eq!((ok.host.as_str(), ok.tool), ("jira.example.com", Some(0)));
}
