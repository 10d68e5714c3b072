use super::*;
use crate::normalise;

fn action(
    name: &str,
    method: Option<&str>,
    path: &str,
    attrs: &[(&str, AttributeSource)],
) -> Action {
    Action {
        name: name.into(),
        method: method.map(|m| m.parse().unwrap()),
        template: path.parse().unwrap(),
        body: Vec::new(),
        attributes: attrs
            .iter()
            .map(|(n, s)| (Arc::from(*n), s.clone()))
            .collect(),
        labels: Vec::new(),
        upgrade: None,
    }
}

fn jira() -> Catalog {
    let mut c = Catalog::new();
    c.push(ToolSpec {
        name: "jira".into(),
        hosts: vec!["jira.example.com".into(), "*.atlassian.net".into()],
        upstream: None,
        credential: None,
        intercept: true,
        protocol: Protocol::Http,
        labels: Vec::new(),
        overrides: Overrides::Refuse,
        actions: vec![
            action(
                "ticket.read",
                Some("GET"),
                "/rest/api/3/issue/{issue}",
                &[("issue", AttributeSource::Path(0))],
            ),
            action("ticket.mine", Some("GET"), "/rest/api/3/issue/mine", &[]),
            action(
                "ticket.search",
                Some("GET"),
                "/rest/api/3/search",
                &[("jql", AttributeSource::Query("jql".into()))],
            ),
            action("ticket.any", None, "/rest/api/3/issue/{issue}/{sub}", &[]),
            action(
                "ticket.comment",
                Some("POST"),
                "/rest/api/3/issue/{issue}/comment",
                &[],
            ),
            action(
                "ticket.shadowed",
                Some("GET"),
                "/rest/api/3/issue/{other}",
                &[],
            ),
        ],
    });
    c.push(ToolSpec {
        name: "local".into(),
        hosts: vec!["127.0.0.1:9000".into(), "127.0.0.1".into()],
        upstream: None,
        credential: None,
        intercept: true,
        protocol: Protocol::Http,
        labels: Vec::new(),
        overrides: Overrides::Refuse,
        actions: vec![],
    });
    c
}

fn classify(c: &Catalog, method: &str, target: &str) -> Classification {
    let n = normalise::request(method, target.as_bytes()).unwrap();
    c.classify(Some(0), &n, &HeaderMap::new()).unwrap()
}

#[test]
fn hosts_resolve_exact_wildcard_and_port() {
    let c = jira();
    assert_eq!(c.tool_for_host("jira.example.com", 443, true), Some(0));
    assert_eq!(c.tool_for_host("acme.atlassian.net", 443, true), Some(0));
    assert_eq!(c.tool_for_host("atlassian.net", 443, true), None);
    assert_eq!(c.tool_for_host("127.0.0.1", 9000, false), Some(1));
    assert_eq!(c.tool_for_host("127.0.0.1", 9000, true), Some(1));
    assert_eq!(c.tool_for_host("127.0.0.1", 80, false), Some(1));
    assert_eq!(c.tool_for_host("evil.example.com", 443, true), None);
}

#[test]
fn a_pattern_without_a_port_matches_only_the_schemes_default_port() {
    let c = jira();
    assert_eq!(c.tool_for_host("jira.example.com", 80, false), Some(0));
    assert_eq!(c.tool_for_host("acme.atlassian.net", 80, false), Some(0));
    // Any other port of a catalogued host is no tool: `unknown`, decided as such.
    for (port, tls) in [
        (8080, false),
        (443, false),
        (80, true),
        (8443, true),
        (1, true),
    ] {
        assert_eq!(
            c.tool_for_host("jira.example.com", port, tls),
            None,
            "{port} tls={tls}"
        );
        assert_eq!(
            c.tool_for_host("acme.atlassian.net", port, tls),
            None,
            "{port} tls={tls}"
        );
    }
    // `127.0.0.1:9000` names its port; the port-less `127.0.0.1` still only the defaults.
    assert_eq!(c.tool_for_host("127.0.0.1", 443, true), Some(1));
    assert_eq!(c.tool_for_host("127.0.0.1", 9001, false), None);
}

#[test]
fn captures_become_attributes() {
    let got = classify(&jira(), "GET", "/rest/api/3/issue/SUP-12");
    assert_eq!(&*got.action, "ticket.read");
    assert_eq!(
        got.attributes,
        vec![(Arc::from("issue"), Json::String("SUP-12".into()))]
    );
}

#[test]
fn literal_beats_capture_and_first_listed_wins_ties() {
    assert_eq!(
        &*classify(&jira(), "GET", "/rest/api/3/issue/mine").action,
        "ticket.mine"
    );
    // ticket.shadowed has the same template shape as ticket.read, listed later.
    assert_eq!(
        &*classify(&jira(), "GET", "/rest/api/3/issue/X").action,
        "ticket.read"
    );
}

#[test]
fn method_specific_and_any_method_compete_on_specificity() {
    assert_eq!(
        &*classify(&jira(), "POST", "/rest/api/3/issue/X/comment").action,
        "ticket.comment"
    );
    assert_eq!(
        &*classify(&jira(), "DELETE", "/rest/api/3/issue/X/comment").action,
        "ticket.any"
    );
}

#[test]
fn unmatched_is_unknown_but_keeps_the_tool() {
    let got = classify(&jira(), "GET", "/rest/api/3/issue");
    assert_eq!(&*got.action, UNKNOWN);
    assert_eq!(got.tool, Some(0));
    let none = jira()
        .classify(
            None,
            &normalise::request("GET", b"/").unwrap(),
            &HeaderMap::new(),
        )
        .unwrap();
    assert_eq!((&*none.action, none.tool), (UNKNOWN, None));
}

#[test]
fn repeated_query_attribute_is_ambiguous() {
    let c = jira();
    let ok = classify(&c, "GET", "/rest/api/3/search?jql=a%20b");
    assert_eq!(
        ok.attributes,
        vec![(Arc::from("jql"), Json::String("a b".into()))]
    );
    let n = normalise::request("GET", b"/rest/api/3/search?jql=a&jql=b").unwrap();
    assert_eq!(
        c.classify(Some(0), &n, &HeaderMap::new()),
        Err(ClassifyError::AmbiguousQuery("jql".into()))
    );
}

#[test]
fn trailing_slash_is_a_different_path() {
    assert_eq!(
        &*classify(&jira(), "GET", "/rest/api/3/search/").action,
        UNKNOWN
    );
}

#[test]
fn a_capture_never_matches_an_empty_segment() {
    let c = jira();
    // `/issue/` is not `ticket.read` with `issue: ""`, nor `ticket.any` with an empty `sub`.
    assert_eq!(&*classify(&c, "GET", "/rest/api/3/issue/").action, UNKNOWN);
    assert_eq!(
        &*classify(&c, "POST", "/rest/api/3/issue/SUP-1/").action,
        UNKNOWN
    );
    // The same paths with a value still classify.
    let read = classify(&c, "GET", "/rest/api/3/issue/SUP-1");
    assert_eq!(&*read.action, "ticket.read");
    assert_eq!(
        read.attributes,
        vec![(Arc::from("issue"), Json::from("SUP-1"))]
    );
    assert_eq!(
        &*classify(&c, "POST", "/rest/api/3/issue/SUP-1/x").action,
        "ticket.any"
    );
    // A routed request whose rest is `/` reaches no `/{x}` template either.
    let mut t = Trie::default();
    t.insert(&"/{x}".parse().unwrap(), 0);
    assert_eq!(t.lookup(&[""]), None);
    assert!(t.lookup(&["a"]).is_some());
}

#[test]
fn templates_reject_bad_shapes() {
    assert_eq!(
        "a".parse::<PathTemplate>(),
        Err(TemplateError::NoLeadingSlash)
    );
    assert_eq!(
        "/a//b".parse::<PathTemplate>(),
        Err(TemplateError::EmptySegment)
    );
    assert!(matches!(
        "/a{b}".parse::<PathTemplate>(),
        Err(TemplateError::PartialPlaceholder(_))
    ));
    assert!(matches!(
        "/{a}/{a}".parse::<PathTemplate>(),
        Err(TemplateError::DuplicatePlaceholder(_))
    ));
    assert!(matches!(
        "/{a-b}".parse::<PathTemplate>(),
        Err(TemplateError::BadPlaceholder(_))
    ));
    assert_eq!(
        "/a/../b".parse::<PathTemplate>(),
        Err(TemplateError::DotSegment)
    );
    assert!(matches!(
        "/a%2f".parse::<PathTemplate>(),
        Err(TemplateError::Unnormalised(_))
    ));
    assert_eq!(
        "/x/{id}/y".parse::<PathTemplate>().unwrap().to_string(),
        "/x/{id}/y"
    );
}

#[test]
fn split_host_port_handles_ipv6() {
    assert_eq!(split_host_port("[::1]:8080"), ("::1", Some(8080)));
    assert_eq!(split_host_port("a.b:1"), ("a.b", Some(1)));
    assert_eq!(split_host_port("a.b"), ("a.b", None));
}

fn rule(pointer: &str, expect: Expect) -> BodyRule {
    BodyRule {
        pointer: pointer.parse().unwrap(),
        expect,
    }
}

fn s(v: &str) -> Scalar {
    Scalar::String(v.into())
}

/// Jira transitions: the same URL is a close or another transition depending on the body.
fn transitions() -> Catalog {
    let mut close = action(
        "ticket.close",
        Some("POST"),
        "/issue/{issue}/transitions",
        &[("issue", AttributeSource::Path(0))],
    );
    close.body = vec![rule("/transition/id", Expect::One(s("31")))];
    let mut reopen = action(
        "ticket.reopen",
        Some("POST"),
        "/issue/{issue}/transitions",
        &[],
    );
    reopen.body = vec![rule(
        "/transition/id",
        Expect::In(vec![s("41"), Scalar::Number(42.0)]),
    )];
    let mut pay = action(
        "payment.create",
        Some("POST"),
        "/payments",
        &[("amount", AttributeSource::Body("/amount".parse().unwrap()))],
    );
    pay.body = Vec::new();
    let mut c = Catalog::new();
    c.push(ToolSpec {
        name: "jira".into(),
        hosts: vec!["jira.test".into()],
        upstream: None,
        credential: None,
        intercept: true,
        protocol: Protocol::Http,
        labels: Vec::new(),
        overrides: Overrides::Refuse,
        actions: vec![
            // Listed first, yet tried after the actions with body rules at its template.
            action(
                "ticket.transition",
                Some("POST"),
                "/issue/{issue}/transitions",
                &[],
            ),
            close,
            reopen,
            pay,
            action("ticket.read", Some("GET"), "/issue/{issue}", &[]),
        ],
    });
    c
}

fn classify_body(c: &Catalog, method: &str, target: &str, body: Option<Json>) -> Classification {
    let n = normalise::request(method, target.as_bytes()).unwrap();
    c.classify_body(Some(0), &n, &HeaderMap::new(), body.as_ref())
        .unwrap()
}

#[test]
fn body_rules_pick_the_action_at_one_url() {
    let c = transitions();
    let url = "/issue/SUP-1/transitions";
    let got = classify_body(
        &c,
        "POST",
        url,
        Some(serde_json::json!({"transition": {"id": "31"}})),
    );
    assert_eq!(&*got.action, "ticket.close");
    assert_eq!(
        got.attributes,
        vec![(Arc::from("issue"), Json::String("SUP-1".into()))]
    );
    let other = classify_body(
        &c,
        "POST",
        url,
        Some(serde_json::json!({"transition": {"id": "11"}})),
    );
    assert_eq!(&*other.action, "ticket.transition");
    assert_eq!(
        &*classify_body(&c, "POST", url, None).action,
        "ticket.transition"
    );
    for reopen in [
        serde_json::json!({"transition": {"id": 42}}),
        serde_json::json!({"transition": {"id": "41"}}),
    ] {
        assert_eq!(
            &*classify_body(&c, "POST", url, Some(reopen)).action,
            "ticket.reopen"
        );
    }
}

#[test]
fn body_values_match_across_json_types() {
    let c = transitions();
    let url = "/issue/SUP-1/transitions";
    for close in [
        serde_json::json!({"transition": {"id": 31}}),
        serde_json::json!({"transition": {"id": 31.0}}),
        serde_json::json!({"transition": {"id": "31.0"}}),
    ] {
        assert_eq!(
            &*classify_body(&c, "POST", url, Some(close.clone())).action,
            "ticket.close",
            "{close}"
        );
    }
    assert!(Scalar::Bool(true).matches(&Json::String("true".into())));
    assert!(s("true").matches(&Json::Bool(true)));
    assert!(!s("31").matches(&Json::Null));
    assert!(!s("31").matches(&serde_json::json!(["31"])));
}

#[test]
fn body_attributes_keep_the_json_value() {
    let c = transitions();
    let got = classify_body(
        &c,
        "POST",
        "/payments",
        Some(serde_json::json!({"amount": 500})),
    );
    assert_eq!(
        got.attributes,
        vec![(Arc::from("amount"), serde_json::json!(500))]
    );
    let form = classify_body(
        &c,
        "POST",
        "/payments",
        Some(serde_json::json!({"amount": "500"})),
    );
    assert_eq!(
        form.attributes,
        vec![(Arc::from("amount"), serde_json::json!("500"))]
    );
}

#[test]
fn the_body_is_needed_only_where_a_candidate_reads_it() {
    let c = transitions();
    let needs = |method: &str, target: &str| {
        c.needs_body(
            Some(0),
            &normalise::request(method, target.as_bytes()).unwrap(),
        )
    };
    assert!(needs("POST", "/issue/A/transitions"));
    assert!(needs("POST", "/payments"));
    assert!(!needs("GET", "/issue/A"));
    assert!(!needs("POST", "/elsewhere"));
    assert!(!c.needs_body(None, &normalise::request("POST", b"/payments").unwrap()));
}

#[test]
fn json_pointers_follow_rfc_6901() {
    let doc = serde_json::json!({"a/b": {"m~n": [10, 20]}, "": 1});
    let at = |p: &str| p.parse::<JsonPointer>().unwrap().lookup(&doc).cloned();
    assert_eq!(at("/a~1b/m~0n/1"), Some(serde_json::json!(20)));
    assert_eq!(at("/a~1b/m~0n/01"), None);
    assert_eq!(at("/a~1b/m~0n/-"), None);
    assert_eq!(at("/"), Some(serde_json::json!(1)));
    assert!("a".parse::<JsonPointer>().is_err());
    assert!("/a~2".parse::<JsonPointer>().is_err());
    assert_eq!(
        "/a~1b/m~0n".parse::<JsonPointer>().unwrap().to_string(),
        "/a~1b/m~0n"
    );
}

#[test]
fn a_body_key_that_a_rule_reads_only_up_to_case_is_refused() {
    let c = transitions();
    let n = normalise::request("POST", b"/issue/SUP-1/transitions").unwrap();
    let classify = |body: Json| c.classify_body(Some(0), &n, &HeaderMap::new(), Some(&body));
    // Go and ASP.NET bind `ID` (or `\u{131}d`, dotless i) to the field `id`: the close rule
    // would not hold for toolgate while the tool closes the ticket.
    for body in [
        serde_json::json!({"transition": {"ID": "31"}}),
        serde_json::json!({"Transition": {"id": "31"}}),
        serde_json::json!({"transition": {"\u{131}d": "31"}}),
    ] {
        assert!(
            matches!(
                classify(body.clone()),
                Err(ClassifyError::CaseVariant { .. })
            ),
            "{body}"
        );
    }
    // Positive control: the exact spelling classifies.
    let close = classify(serde_json::json!({"transition": {"id": "31"}})).unwrap();
    assert_eq!(&*close.action, "ticket.close");
    // A body attribute is held to the same rule.
    let pay = normalise::request("POST", b"/payments").unwrap();
    assert_eq!(
        c.classify_body(
            Some(0),
            &pay,
            &HeaderMap::new(),
            Some(&serde_json::json!({"Amount": 5000}))
        ),
        Err(ClassifyError::CaseVariant {
            pointer: "/amount".into(),
            key: "Amount".into()
        })
    );
    // Keys no rule reads may be spelled any way.
    let other = classify(serde_json::json!({"transition": {"id": "11"}, "Fields": {}})).unwrap();
    assert_eq!(&*other.action, "ticket.transition");
}

#[test]
fn a_query_attribute_refuses_its_name_spelled_another_way() {
    let c = jira();
    let search = |target: &str| {
        let n = normalise::request("GET", target.as_bytes()).unwrap();
        c.classify(Some(0), &n, &HeaderMap::new())
    };
    for target in [
        "/rest/api/3/search?JQL=x",
        "/rest/api/3/search?jql=a&Jql=b",
        "/rest/api/3/search?jql[]=a",
        "/rest/api/3/search?jql[x]=a",
        "/rest/api/3/search?Jql[]=a",
    ] {
        assert!(
            matches!(search(target), Err(ClassifyError::QueryVariant { .. })),
            "{target}"
        );
    }
    let ok = search("/rest/api/3/search?jql=a&jqlx=b&other[jql]=c").unwrap();
    assert_eq!(ok.attributes, vec![(Arc::from("jql"), Json::from("a"))]);
}

fn mcp_catalog() -> Catalog {
    let mut c = Catalog::new();
    c.push(ToolSpec {
        name: "crm".into(),
        hosts: vec!["crm.test".into()],
        upstream: None,
        credential: None,
        intercept: true,
        protocol: Protocol::Mcp,
        labels: Vec::new(),
        overrides: Overrides::Refuse,
        actions: vec![],
    });
    c
}

#[test]
fn mcp_methods_become_actions() {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "search", "arguments": {"q": "acme", "limit": 5}}});
    let rpc = mcp::classify(0, "crm", &body).unwrap();
    assert!(!rpc.batch);
    let m = &rpc.members[0];
    assert_eq!(m.id, Some(serde_json::json!(7)));
    assert_eq!(&*m.classification.action, "crm.search");
    assert_eq!(
        m.classification.attributes,
        vec![
            (Arc::from("limit"), serde_json::json!(5)),
            (Arc::from("q"), serde_json::json!("acme"))
        ]
    );
    let list = serde_json::json!([{"jsonrpc": "2.0", "id": "a", "method": "tools/list"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 3, "result": {}}]);
    let rpc = mcp::classify(0, "crm", &list).unwrap();
    assert!(rpc.batch);
    let actions: Vec<_> = rpc
        .members
        .iter()
        .map(|m| (&*m.classification.action, m.id.clone()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("crm.mcp.tools_list", Some(serde_json::json!("a"))),
            ("crm.mcp.notifications_initialized", None),
            ("crm.mcp.response", None)
        ]
    );
}

#[test]
fn malformed_json_rpc_is_refused() {
    for bad in [
        serde_json::json!([]),
        serde_json::json!({"id": 1, "method": "x"}),
        serde_json::json!({"jsonrpc": "2.0", "id": {}, "method": "x"}),
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}),
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "arguments": [1]}}),
        serde_json::json!({"jsonrpc": "2.0", "id": 1}),
        serde_json::json!("hello"),
        Json::Array(vec![
            serde_json::json!({"jsonrpc": "2.0", "method": "ping"});
            mcp::MAX_BATCH + 1
        ]),
    ] {
        assert!(
            matches!(
                mcp::classify(0, "crm", &bad),
                Err(crate::normalise::Rejection::BadRpc(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn mcp_tools_read_posts_and_name_streams() {
    let c = mcp_catalog();
    let req = |m: &str| normalise::request(m, b"/mcp").unwrap();
    assert!(c.needs_body(Some(0), &req("POST")));
    assert!(!c.needs_body(Some(0), &req("GET")));
    let action = |m: &str| {
        c.classify(Some(0), &req(m), &HeaderMap::new())
            .unwrap()
            .action
    };
    assert_eq!(&*action("GET"), "crm.mcp.stream");
    assert_eq!(&*action("DELETE"), "crm.mcp.terminate");
    assert_eq!(&*action("PUT"), UNKNOWN);
}
