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
        attributes: attrs
            .iter()
            .map(|(n, s)| (Arc::from(*n), s.clone()))
            .collect(),
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
    assert_eq!(c.tool_for_host("jira.example.com", 443), Some(0));
    assert_eq!(c.tool_for_host("acme.atlassian.net", 443), Some(0));
    assert_eq!(c.tool_for_host("atlassian.net", 443), None);
    assert_eq!(c.tool_for_host("127.0.0.1", 9000), Some(1));
    assert_eq!(c.tool_for_host("127.0.0.1", 80), Some(1));
    assert_eq!(c.tool_for_host("evil.example.com", 443), None);
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
