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
    let big = load("agent: { id: a }\npolicy: { files: [policy/main.rego] }\nlimits: { max_body_bytes: 1048576 }\n").unwrap();
    assert_eq!(
        crate::config::body_cap(&big.limits),
        65_536,
        "pingora replays at most 64 KiB"
    );
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
        attributes: { id: "path:id", x: "cookie:/a", y: "body:a" }
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
        "tools[0].actions[0].attributes.y: a JSON pointer starts with '/'",
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

#[test]
fn https_keys_are_read_and_checked() {
    let yaml = r#"
listen: { proxy: 127.0.0.1:15001, transparent: 127.0.0.1:15006 }
agent: { id: a }
tools:
  - { name: jira, hosts: [jira.example.com] }
  - { name: vault, hosts: [vault.example.com], intercept: false }
policy: { files: [policy/*.rego] }
tls: { ca: { cert: ca.pem, key: ca-key.pem, cache_entries: 16 } }
"#;
    let files = EmbeddedFiles::new(&[
        ("toolgate.yaml", yaml.as_bytes()),
        ("policy/main.rego", POLICY),
        (
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        ),
        (
            "ca-key.pem",
            b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        ),
    ]);
    let config =
        Config::load_from(Path::new("toolgate.yaml"), &files, &StaticEnv::default()).unwrap();
    assert_eq!(
        config.listen.transparent,
        Some("127.0.0.1:15006".parse().unwrap())
    );
    let intercept: Vec<bool> = config.catalog.tools().iter().map(|t| t.intercept).collect();
    assert_eq!(intercept, [true, false]);
    let ca = config.tls.ca.as_ref().unwrap();
    assert_eq!(ca.cache_entries, 16);
    assert!(
        !format!("{ca:?}").contains("PRIVATE KEY"),
        "the key must never print"
    );
}

#[test]
fn https_key_errors_name_their_fields() {
    let e = load(
        r#"
listen: { proxy: 127.0.0.1:15001, transparent: 127.0.0.1:15001 }
agent: { id: a }
tools: [ { name: jira, hosts: [jira.example.com], intercept: maybe } ]
policy: { files: [policy/*.rego] }
tls: { ca: { cert: policy/data.yaml, key: missing.pem, cache_entries: 0 } }
"#,
    )
    .unwrap_err();
    let all = messages(&e).join("\n");
    assert!(all.contains("tools[0].intercept"), "{all}");
    let e = load(
        r#"
listen: { proxy: 127.0.0.1:15001, transparent: 127.0.0.1:15001 }
agent: { id: a }
policy: { files: [policy/*.rego] }
tls: { ca: { cert: policy/data.yaml, key: missing.pem, cache_entries: 0 } }
"#,
    )
    .unwrap_err();
    let all = messages(&e).join("\n");
    for says in [
        "listen.transparent: 127.0.0.1:15001 is also listen.proxy",
        "tls.ca.cert: ",
        "holds no PEM certificate",
        "tls.ca.key: cannot read",
        "tls.ca.cache_entries: must be at least 1",
    ] {
        assert!(all.contains(says), "missing {says:?} in:\n{all}");
    }
}

#[test]
fn body_rules_and_protocols_are_compiled_and_checked() {
    let c = load(
        r#"
agent: { id: a }
tools:
  - name: jira
    hosts: [jira.example.com]
    actions:
      - name: ticket.close
        match: { method: POST, path: "/issue/{i}/transitions", body: { "/transition/id": "31", "/x": { in: [1, true] } } }
        attributes: { amount: "body:/amount" }
  - name: crm
    hosts: [crm.example.com]
    protocol: mcp
policy: { files: [policy/main.rego] }
"#,
    )
    .unwrap();
    let jira = c.catalog.tool(0).unwrap();
    let close = &jira.actions()[0];
    assert_eq!(close.body.len(), 2);
    assert!(close.reads_body());
    assert_eq!(
        c.catalog.tool(1).unwrap().protocol,
        crate::classify::Protocol::Mcp
    );
    assert_eq!(c.limits.max_body_bytes, 65_536);
    let big = load("agent: { id: a }\npolicy: { files: [policy/main.rego] }\nlimits: { max_body_bytes: 1048576 }\n").unwrap();
    assert_eq!(
        crate::config::body_cap(&big.limits),
        65_536,
        "pingora replays at most 64 KiB"
    );

    let e = load(
        r#"
agent: { id: a }
tools:
  - name: jira
    hosts: [jira.example.com]
    actions:
      - name: a
        match: { path: /a, body: { "transition": "31", "/b": [1], "/c": { in: [] }, "/d": { in: [1], also: 2 }, "/e~": 1 } }
  - name: crm
    hosts: [crm.example.com]
    protocol: mcp
    actions:
      - { name: x, match: { path: /x } }
  - name: other
    hosts: [other.example.com]
    protocol: grpc
policy: { files: [policy/main.rego] }
"#,
    )
    .unwrap_err();
    let m = messages(&e).join("\n");
    for want in [
        "tools[0].actions[0].match.body.\"transition\": a JSON pointer starts with '/'",
        "tools[0].actions[0].match.body.\"/b\": must be a string, a number, a boolean or {in: [...]}",
        "tools[0].actions[0].match.body.\"/c\".in: must list 1 to 64 values",
        "tools[0].actions[0].match.body.\"/d\".also: unknown key",
        "tools[0].actions[0].match.body.\"/e~\": \"/e~\": '~' must be followed by 0",
        "tools[1].actions: an MCP tool's actions are its JSON-RPC methods",
        "tools[2].protocol: \"grpc\" must be `mcp` or `http`",
    ] {
        assert!(m.contains(want), "missing {want:?} in:\n{m}");
    }
}

#[test]
fn overrides_are_refused_unless_a_tool_allows_them() {
    let config = load(
        r#"
agent: { id: a }
tools:
  - { name: jira, hosts: [jira.example.com] }
  - { name: legacy, hosts: [legacy.example.com], overrides: allow }
  - { name: strict, hosts: [strict.example.com], overrides: refuse }
policy: { files: [policy/*.rego] }
"#,
    )
    .unwrap();
    use crate::classify::Overrides;
    let overrides: Vec<Overrides> = config.catalog.tools().iter().map(|t| t.overrides).collect();
    assert_eq!(
        overrides,
        [Overrides::Refuse, Overrides::Allow, Overrides::Refuse]
    );
    let e = load(
        r#"
agent: { id: a }
tools: [ { name: jira, hosts: [jira.example.com], overrides: yes } ]
policy: { files: [policy/*.rego] }
"#,
    )
    .unwrap_err();
    let all = messages(&e).join("\n");
    assert!(all.contains("tools[0].overrides"), "{all}");
    assert!(all.contains("`refuse` (the default) or `allow`"), "{all}");
}

#[test]
fn a_plain_http_upstream_loads_with_a_warning_naming_the_tool() {
    let c = load(
        r#"
agent: { id: a }
tools:
  - { name: legacy, hosts: [legacy.example.com], upstream: "http://10.0.0.7:8080" }
  - { name: jira, hosts: [jira.example.com], upstream: https://jira.example.com }
  - { name: bare, hosts: [bare.example.com] }
policy: { files: [policy/*.rego] }
"#,
    )
    .unwrap();
    let warnings: Vec<String> = c
        .warnings
        .iter()
        .map(|w| format!("{}: {}", w.path, w.message))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("tools[0].upstream: tool \"legacy\" is sent plain HTTP"),
        "{warnings:?}"
    );
    assert!(load(GOOD).unwrap().warnings.is_empty());
}

#[test]
fn a_shadow_policy_is_read_beside_the_live_one() {
    let c = load(
        "agent: { id: a }\npolicy: { files: [policy/main.rego], query: data.toolgate.decision, shadow: { files: [policy/*.rego], data: [policy/data.yaml] } }\n",
    )
    .unwrap();
    let shadow = c.shadow.as_ref().unwrap().source.as_ref().unwrap();
    assert_eq!(shadow.modules.len(), 1);
    assert_eq!(shadow.data["limits"]["payment"], 100);
    assert_eq!(
        shadow.query, "data.toolgate.decision",
        "the live query by default"
    );
    assert!(
        load("agent: { id: a }\npolicy: { files: [policy/main.rego] }\n")
            .unwrap()
            .shadow
            .is_none()
    );
}

#[test]
fn a_shadow_that_cannot_be_read_never_keeps_the_config_from_loading() {
    let c = load(
        "agent: { id: a }\npolicy: { files: [policy/main.rego], shadow: { files: [candidate/*.rego], data: [nowhere.yaml], query: toolgate.decision } }\n",
    )
    .unwrap();
    let errors = c.shadow.unwrap().source.unwrap_err();
    let errors: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].starts_with("policy.shadow.files[0]: \"candidate/*.rego\" matches no file"));
    assert!(errors[1].starts_with("policy.shadow.data[0]: nowhere.yaml"));
    assert!(errors[2].starts_with("policy.shadow.query: \"toolgate.decision\""));
    // Its keys are checked like every other.
    let e = load("agent: { id: a }\npolicy: { files: [policy/main.rego], shadow: { files: [policy/main.rego], mode: dry-run } }\n")
        .unwrap_err();
    assert_eq!(messages(&e), ["policy.shadow.mode: unknown key"]);
}

#[test]
fn the_decision_log_takes_a_sink_or_a_mapping_with_input() {
    let c = load("agent: { id: a }\npolicy: { files: [policy/main.rego] }\ntelemetry: { decision_log: off }\n")
        .unwrap();
    assert_eq!(c.telemetry.decision_log, DecisionLogSink::Off);
    assert!(!c.telemetry.decision_log_input);
    let c = load("agent: { id: a }\npolicy: { files: [policy/main.rego] }\ntelemetry: { decision_log: { sink: decisions.jsonl, input: true } }\n")
        .unwrap();
    assert_eq!(
        c.telemetry.decision_log,
        DecisionLogSink::File(PathBuf::from("<embedded>/decisions.jsonl"))
    );
    assert!(c.telemetry.decision_log_input);
    let c = load("agent: { id: a }\npolicy: { files: [policy/main.rego] }\ntelemetry: { decision_log: { input: true } }\n")
        .unwrap();
    assert_eq!(c.telemetry.decision_log, DecisionLogSink::Stdout);
    assert!(c.telemetry.decision_log_input);
    let e = load("agent: { id: a }\npolicy: { files: [policy/main.rego] }\ntelemetry: { decision_log: { sink: stdout, inptu: true } }\n")
        .unwrap_err();
    assert_eq!(messages(&e), ["telemetry.decision_log.inptu: unknown key"]);
    let e = load("agent: { id: a }\npolicy: { files: [policy/main.rego] }\ntelemetry: { decision_log: { input: yes-please } }\n")
        .unwrap_err();
    assert_eq!(messages(&e).len(), 1, "{:?}", messages(&e));
    assert!(
        messages(&e)[0].starts_with("telemetry.decision_log.input: "),
        "{:?}",
        messages(&e)
    );
}
