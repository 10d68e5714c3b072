use std::path::Path;

use super::*;

const POLICY: &[u8] = b"package toolgate\nimport rego.v1\ndefault decision := false\n";

fn load(yaml: &'static str) -> Result<Config, ConfigErrors> {
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("policy/main.rego", POLICY),
        ("policy/data.yaml", b"limits: {payment: 100}\n"),
    ]);
    let vars = StaticEnv(
        [("AGENT", "spiffe://t/agent"), ("JIRA_TOKEN", "s3cret\n")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    );
    Config::load_from(Path::new("toolgate.yaml"), &files, &vars)
}

fn messages(e: &ConfigErrors) -> Vec<String> {
    e.errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

const GOOD: &str = r#"
agent: { id: spiffe://example.org/agent }
tools:
  - name: jira
    hosts: [jira.example.com]
    upstream: https://jira.internal:8443/base
    credential: jira-token
    actions:
      - name: ticket.read
        match: { method: GET, path: "/rest/api/3/issue/{issue}" }
        attributes: { issue: "path:issue", q: "query:q", trace: "header:x-trace" }
routes:
  - { prefix: /jira/, tool: jira }
policy:
  files: [policy/*.rego]
  data: [policy/data.yaml]
credentials:
  jira-token: { kind: secret, env: JIRA_TOKEN, header: Authorization, format: "Bearer {}" }
chain: { max_actions: 8, idle_ttl: 2m }
limits: { upstream_timeout: 2s }
"#;

#[test]
fn loads_a_good_config() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.listen.proxy.to_string(), "127.0.0.1:15001");
    assert_eq!(c.agent.id, "spiffe://example.org/agent");
    let tool = c.catalog.tool(0).unwrap();
    assert_eq!(
        tool.upstream,
        Some(crate::classify::Upstream {
            tls: true,
            host: "jira.internal".into(),
            port: 8443,
            base_path: "/base".into()
        })
    );
    assert_eq!(c.routes[0].prefix, "/jira/");
    assert_eq!(c.policy.modules.len(), 1);
    assert_eq!(c.policy.data["limits"]["payment"], 100);
    assert_eq!(c.policy.query, "data.toolgate.decision");
    assert_eq!(c.chain.max_actions, 8);
    assert_eq!(c.chain.idle_ttl, Duration::from_secs(120));
    assert_eq!(c.limits.upstream_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.max_body_bytes, 65_536);
    let CredentialSpec::Secret(s) = &c.credentials["jira-token"] else {
        panic!("jira-token is a secret")
    };
    assert_eq!(
        s.placement,
        crate::config::Placement::Header(http::HeaderName::from_static("authorization"))
    );
    assert_eq!(s.value.header_value(), "Bearer s3cret");
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "secret leaked into Debug output"
    );
}

#[test]
fn reports_every_unknown_key_with_its_path() {
    let e = load(
        r#"
agent: { id: a, colour: blue }
tools:
  - name: jira
    hosts: [jira.example.com]
    actions:
      - name: x
        mtch: { method: GET }
policy: { files: [policy/*.rego] }
extra: 1
"#,
    )
    .unwrap_err();
    let m = messages(&e);
    assert!(
        m.contains(&"agent.colour: unknown key".to_string()),
        "{m:?}"
    );
    assert!(
        m.contains(&"tools[0].actions[0].mtch: unknown key".to_string()),
        "{m:?}"
    );
    assert!(m.contains(&"extra: unknown key".to_string()), "{m:?}");
    assert!(e.to_string().starts_with("toolgate.yaml: "));
}

#[test]
fn reports_all_semantic_errors_at_once() {
    let e = load(
        r#"
agent: { id_env: MISSING }
listen: { proxy: "nowhere" }
tools:
  - name: jira
    hosts: [jira.example.com, "bad host"]
    credential: nope
    actions:
      - name: ticket.read
        match: { method: get, path: "/issue/{issue}" }
        attributes: { id: "path:id", x: "body:/a" }
  - name: jira
    hosts: [jira.example.com]
routes:
  - { prefix: jira, tool: ghost }
policy: { files: [missing/*.rego], query: toolgate.decision }
credentials:
  c1: { kind: magic }
  c2: { kind: secret, format: "no placeholder" }
  c3: { kind: secret, file: secrets/none }
chain: { idle_ttl: soon }
"#,
    )
    .unwrap_err();
    let m = messages(&e).join("\n");
    for want in [
        "agent.id_env: environment variable MISSING is not set",
        "listen.proxy:",
        "tools[0].hosts[1]:",
        "tools[0].credential: no credential named \"nope\"",
        "tools[0].actions[0].match.method:",
        "tools[0].actions[0].attributes.id: unknown placeholder {id}",
        "tools[0].actions[0].attributes.x:",
        "tools[1].name: tool \"jira\" is defined twice",
        "tools[1].hosts[0]: host \"jira.example.com\" is listed by another tool",
        "routes[0].prefix:",
        "routes[0].tool: no tool named \"ghost\"",
        "policy.files[0]: \"missing/*.rego\" matches no file",
        "policy.query:",
        "credentials.c1.kind: unsupported kind \"magic\"",
        "credentials.c2: a secret needs exactly one of `file` and `env`",
        "credentials.c2.format:",
        "credentials.c3.file: cannot read",
        "chain.idle_ttl:",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
}

#[test]
fn type_errors_name_the_field() {
    let e = load(
        "agent: { id: a }\nchain: { max_actions: lots }\npolicy: { files: [policy/*.rego] }\n",
    )
    .unwrap_err();
    let m = messages(&e);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].starts_with("chain.max_actions: "), "{m:?}");
}

#[test]
fn agent_id_from_environment() {
    let c = load("agent: { id_env: AGENT }\npolicy: { files: [policy/main.rego] }\n").unwrap();
    assert_eq!(c.agent.id, "spiffe://t/agent");
}

#[test]
fn policy_is_required() {
    let e = load("agent: { id: a }\n").unwrap_err();
    assert_eq!(
        messages(&e),
        vec!["policy: required: at least `files` with the Rego modules".to_string()]
    );
}
