#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use http::HeaderMap;
use toolgate_policy::accept::{accept, accept_at, Destination, Via};
use toolgate_policy::config::{Config, EmbeddedFiles, StaticEnv};

use super::{plan, Plan};

fn config() -> Config {
    let yaml = br#"
agent: { id: a }
tools:
  - { name: jira, hosts: [jira.example.com, "*.atlassian.net"] }
  - { name: local, hosts: ["tools.internal:8443"] }
  - { name: legacy, hosts: [legacy.example.com], upstream: "http://10.0.0.7:8080/api" }
  - { name: pay, hosts: [pay.example.com], upstream: "https://pay.internal" }
routes:
  - { prefix: /jira/, tool: jira }
policy: { files: [p.rego] }
"#;
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml),
        ("p.rego", b"package toolgate\ndefault decision := false\n"),
    ]);
    Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap()
}

/// The plan for `target` sent to the proxy listener (absolute-form, or a route).
fn planned(config: &Config, target: &str) -> Plan {
    let a = accept(config, "GET", target.as_bytes(), &HeaderMap::new()).unwrap();
    plan(&a, a.tool.and_then(|t| config.catalog.tool(t)))
}

fn summary(p: &Plan) -> (bool, &str, u16, &str, &str) {
    (
        p.tls,
        p.host.as_str(),
        p.port,
        p.target.as_str(),
        p.authority.as_str(),
    )
}

#[test]
fn a_tool_without_upstream_is_reached_over_https_whatever_the_agent_asked() {
    let c = config();
    for target in [
        "http://jira.example.com/rest/x?y=1",
        "http://jira.example.com:80/rest/x?y=1",
        "https://jira.example.com/rest/x?y=1",
        "/jira/rest/x?y=1",
    ] {
        assert_eq!(
            summary(&planned(&c, target)),
            (
                true,
                "jira.example.com",
                443,
                "/rest/x?y=1",
                "jira.example.com"
            ),
            "{target}"
        );
    }
    let p = planned(&c, "http://acme.atlassian.net/x");
    assert_eq!(
        summary(&p),
        (true, "acme.atlassian.net", 443, "/x", "acme.atlassian.net")
    );
    // A host:port pattern keeps its port; only the scheme is upgraded.
    let p = planned(&c, "http://tools.internal:8443/x");
    assert_eq!(
        summary(&p),
        (true, "tools.internal", 8443, "/x", "tools.internal:8443")
    );
}

#[test]
fn only_an_explicit_http_upstream_is_plain_http() {
    let c = config();
    let p = planned(&c, "https://legacy.example.com/v1");
    assert_eq!(
        summary(&p),
        (false, "10.0.0.7", 8080, "/api/v1", "10.0.0.7:8080")
    );
    let p = planned(&c, "http://pay.example.com/v1");
    assert_eq!(
        summary(&p),
        (true, "pay.internal", 443, "/v1", "pay.internal")
    );
}

#[test]
fn an_uncatalogued_destination_goes_as_asked() {
    let c = config();
    // Another port of a catalogued host is no tool: as asked, and never given a credential.
    let p = planned(&c, "http://jira.example.com:8080/x");
    assert_eq!(
        summary(&p),
        (
            false,
            "jira.example.com",
            8080,
            "/x",
            "jira.example.com:8080"
        )
    );
    let p = planned(&c, "http://elsewhere.example.net/x");
    assert_eq!(
        summary(&p),
        (
            false,
            "elsewhere.example.net",
            80,
            "/x",
            "elsewhere.example.net"
        )
    );
}

#[test]
fn transparent_plain_http_to_a_tool_is_upgraded() {
    let c = config();
    let d = Destination {
        via: Via::Transparent,
        host: "jira.example.com".to_string(),
        port: 80,
        tls: false,
    };
    let a = accept_at(&c, &d, "GET", b"/x", &HeaderMap::new()).unwrap();
    let p = plan(&a, a.tool.and_then(|t| c.catalog.tool(t)));
    assert_eq!(
        summary(&p),
        (true, "jira.example.com", 443, "/x", "jira.example.com")
    );
}
