use super::*;

fn path(p: &str) -> Result<String, Rejection> {
    request("GET", p.as_bytes()).map(|n| n.path)
}

#[test]
fn keeps_plain_paths() {
    assert_eq!(
        path("/rest/api/3/issue/SUP-12"),
        Ok("/rest/api/3/issue/SUP-12".into())
    );
    assert_eq!(path("/"), Ok("/".into()));
    assert_eq!(path("/a/b/"), Ok("/a/b/".into()));
}

#[test]
fn decodes_unreserved_and_upper_cases_other_escapes() {
    let n = request("GET", b"/a%7eb/%41%2c/x%e2%82%ac").unwrap();
    assert_eq!(n.path, "/a~b/A%2C/x%E2%82%AC");
    assert_eq!(n.segments, vec!["a~b", "A,", "x€"]);
}

#[test]
fn rejects_dot_segments_raw_and_encoded() {
    for p in [
        "/a/../b",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a/%2E/b",
        "/a/.%2e",
        "/..",
    ] {
        assert_eq!(path(p), Err(Rejection::DotSegment), "{p}");
    }
}

#[test]
fn rejects_encoded_separators_and_nul() {
    for p in ["/a%2fb", "/a%2Fb", "/a%5cb", "/a%00b"] {
        assert_eq!(path(p), Err(Rejection::EncodedSeparator), "{p}");
    }
}

#[test]
fn rejects_ambiguous_shapes() {
    assert_eq!(path("/a//b"), Err(Rejection::EmptySegment));
    assert_eq!(path("//a"), Err(Rejection::EmptySegment));
    assert_eq!(path("/a;jsessionid=1/b"), Err(Rejection::PathParameter));
    assert_eq!(path("/a\\b"), Err(Rejection::Backslash));
    assert_eq!(path("/a%zz"), Err(Rejection::BadEscape));
    assert_eq!(path("/a%2"), Err(Rejection::BadEscape));
    assert_eq!(path("a/b"), Err(Rejection::NotAbsolutePath));
    assert_eq!(path("/a#frag"), Err(Rejection::Fragment));
    assert_eq!(path("/a\u{7f}"), Err(Rejection::ControlCharacter));
    assert_eq!(path("/%ff"), Err(Rejection::NotUtf8));
}

#[test]
fn rejects_non_uppercase_methods() {
    assert!(matches!(request("get", b"/"), Err(Rejection::Method(_))));
    assert!(matches!(request("Post", b"/"), Err(Rejection::Method(_))));
    assert!(request("PATCH", b"/").is_ok());
}

#[test]
fn query_is_kept_verbatim_and_decoded_for_policy() {
    let n = request("GET", b"/p?amount=500&note=a+b%21&x").unwrap();
    assert_eq!(n.query.as_deref(), Some("amount=500&note=a+b%21&x"));
    assert_eq!(
        n.params,
        vec![
            ("amount".into(), "500".into()),
            ("note".into(), "a b!".into()),
            ("x".into(), "".into())
        ]
    );
    assert_eq!(n.target(), "/p?amount=500&note=a+b%21&x");
}

#[test]
fn strips_route_prefix_segments() {
    let n = request("GET", b"/jira/rest/x?q=1")
        .unwrap()
        .strip_segments(1);
    assert_eq!(n.path, "/rest/x");
    assert_eq!(n.segments, vec!["rest", "x"]);
    assert_eq!(n.target(), "/rest/x?q=1");
    let root = request("GET", b"/jira/").unwrap().strip_segments(1);
    assert_eq!(root.path, "/");
    assert_eq!(root.segments, vec![""]);
}

#[test]
fn authority_is_canonical() {
    assert_eq!(
        authority("Jira.Example.COM."),
        Ok(("jira.example.com".into(), None))
    );
    assert_eq!(
        authority("jira.example.com:8443"),
        Ok(("jira.example.com".into(), Some(8443)))
    );
    assert_eq!(authority("[::1]:80"), Ok(("::1".into(), Some(80))));
    for bad in [
        "",
        "user@host",
        "host:port",
        "host:0",
        "ho st",
        "[::1",
        "a/b",
    ] {
        assert!(authority(bad).is_err(), "{bad}");
    }
}

#[test]
fn hosts_a_resolver_reads_otherwise_are_refused() {
    // Found by the request_head fuzz target: `GET https://..` was accepted with host ".",
    // which is no host at all (and "jira.example.com.." kept a trailing dot no catalog host
    // has, while the resolver still finds Jira).
    for bad in [
        ".",
        "..",
        "...:80",
        ".jira.example.com",
        "jira..example.com",
        "jira.example.com..",
    ] {
        assert!(authority(bad).is_err(), "{bad}");
    }
    // Resolvers (inet_aton, WHATWG URLs) read these as 169.254.169.254 or 127.0.0.1: policy
    // would match one host and the connection reach another.
    for bad in [
        "169.254.43518",
        "2852039166",
        "0xa9fea9fe",
        "0251.0376.0251.0376",
        "169.254.169.0254",
        "127.1",
        "127.0.0.1.1",
        "0x7f.1",
        "0x",
        "example.com.1",
    ] {
        assert!(authority(bad).is_err(), "{bad}");
        assert!(authority(&format!("{bad}:80")).is_err(), "{bad}:80");
    }
    // Positive controls: canonical addresses and names that only look numeric in part.
    for (raw, host) in [
        ("169.254.169.254", "169.254.169.254"),
        ("10.0.0.5:8080", "10.0.0.5"),
        ("1a.example.com", "1a.example.com"),
        ("api.v2", "api.v2"),
        ("example.123abc", "example.123abc"),
        ("[0:0::1]", "::1"),
        ("[::FFFF:A9FE:A9FE]:443", "::ffff:169.254.169.254"),
    ] {
        assert_eq!(
            authority(raw).map(|(h, _)| h),
            Ok(host.to_string()),
            "{raw}"
        );
    }
}

#[test]
fn framing_headers_must_be_unambiguous() {
    let mut h = HeaderMap::new();
    h.append("host", "a".parse().unwrap());
    assert_eq!(headers(&h, true), Ok(()));
    h.append("host", "b".parse().unwrap());
    assert_eq!(headers(&h, true), Err(Rejection::DuplicateHeader("Host")));

    let mut h = HeaderMap::new();
    h.append("content-length", "1".parse().unwrap());
    h.append("transfer-encoding", "chunked".parse().unwrap());
    assert_eq!(
        headers(&h, false),
        Err(Rejection::ContentLengthAndTransferEncoding)
    );
}

#[test]
fn override_headers_are_refused_in_every_spelling_unless_allowed() {
    let with = |name: &str| {
        let mut h = HeaderMap::new();
        h.append("host", "a".parse().unwrap());
        h.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            "DELETE".parse().unwrap(),
        );
        h
    };
    for name in [
        "X-HTTP-Method-Override",
        "x-http-method",
        "X-Method-Override",
        "X_HTTP_Method_Override",
        "x_http_method",
        "x-method_override",
    ] {
        let h = with(name);
        assert_eq!(
            headers(&h, false),
            Err(Rejection::MethodOverride(name.to_ascii_lowercase())),
            "{name}"
        );
        assert_eq!(headers(&h, true), Ok(()), "{name} with overrides: allow");
    }
    for name in [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Override-URL",
        "X_Original_URL",
        "x_rewrite_url",
    ] {
        let h = with(name);
        assert_eq!(
            headers(&h, false),
            Err(Rejection::UrlOverride(name.to_ascii_lowercase())),
            "{name}"
        );
        assert_eq!(headers(&h, true), Ok(()), "{name} with overrides: allow");
    }
    // Lookalikes are other headers.
    for name in [
        "x-http-method-overrides",
        "x-original",
        "x-forwarded-url",
        "x-method",
    ] {
        assert_eq!(headers(&with(name), false), Ok(()), "{name}");
    }
}

fn params(q: &str) -> Vec<(String, String)> {
    request("GET", format!("/p?{q}").as_bytes()).unwrap().params
}

#[test]
fn method_override_parameters_are_refused_unless_allowed() {
    for q in [
        "_method=DELETE",
        "a=1&_method=DELETE",
        "_METHOD=DELETE",
        "%5Fmethod=DELETE",
        ".method=DELETE",
        "+_method=DELETE",
        "_method[]=DELETE",
        "X-HTTP-Method-Override=DELETE",
        "x_http_method=DELETE",
    ] {
        let p = params(q);
        assert!(
            matches!(
                parameters(&p, false, false),
                Err(Rejection::OverrideParameter(_))
            ),
            "{q}"
        );
        assert_eq!(parameters(&p, true, false), Ok(()), "{q} allowed");
    }
    for q in ["method=DELETE", "_methods=x", "my_method=x", "a=_method"] {
        assert_eq!(parameters(&params(q), false, true), Ok(()), "{q}");
    }
}

#[test]
fn parameter_names_one_tool_reads_as_one_are_refused_on_catalogued_tools() {
    for q in [
        "amount=5&Amount=500",
        "amount=5&AMOUNT=500",
        "a.b=1&a_b=2",
        "a b=1&a_b=2",
        "a[x]=1&A[x]=2",
        "key=1&\u{212a}ey=2",
    ] {
        let p = params(q);
        assert!(
            matches!(
                parameters(&p, false, true),
                Err(Rejection::QueryNameCollision(_, _))
            ),
            "{q}"
        );
        // Hosts no tool serves are not held to it (no attribute reads their query).
        assert_eq!(parameters(&p, false, false), Ok(()), "{q}");
    }
    // Repeated names are lists, and bracketed keys are fields: tools agree on both.
    for q in ["ids=1&ids=2", "a[x]=1&a[y]=2&a=3", "amount=5&currency=EUR"] {
        assert_eq!(parameters(&params(q), false, true), Ok(()), "{q}");
    }
}

#[test]
fn names_fold_as_case_insensitive_binders_fold_them() {
    use names::{fold, override_parameter, php_name, same_folded, METHOD_OVERRIDE_HEADERS};
    assert_eq!(fold("Transition"), "TRANSITION");
    // Go folds the Kelvin sign, long s and dotless i to ASCII letters.
    assert!(same_folded("\u{212a}ey", "key"));
    assert!(same_folded("\u{17f}ort", "sort"));
    assert!(same_folded("\u{131}d", "id"));
    assert!(same_folded("\u{130}d", "id"));
    assert!(same_folded("Stra\u{df}e", "STRA\u{df}E"));
    assert!(!same_folded("id", "id"));
    assert!(!same_folded("id", "ids"));
    assert_eq!(php_name(" a.b c[d.e]"), "a_b_c[d.e]");
    assert!(override_parameter("_method"));
    // The longest name it can match is the longest method-override header's.
    let longest = METHOD_OVERRIDE_HEADERS.iter().map(|h| h.len()).max();
    assert_eq!(longest, Some(22));
    assert!(override_parameter("x_http_method_override"));
    assert!(!override_parameter("a[_method]"));
}

#[test]
fn raw_framing_sees_what_the_parser_dropped() {
    let head = |h: &str| format!("POST /x HTTP/1.1\r\nHost: a\r\n{h}\r\n");
    assert_eq!(
        raw_framing(head("Content-Length: 3\r\n").as_bytes()),
        Ok(())
    );
    assert_eq!(
        raw_framing(head("content-length: 3\r\nTransfer-Encoding: chunked\r\n").as_bytes()),
        Err(Rejection::ContentLengthAndTransferEncoding)
    );
    assert_eq!(
        raw_framing(head("Content-Length: 3\r\nCONTENT-LENGTH: 3\r\n").as_bytes()),
        Err(Rejection::DuplicateHeader("Content-Length"))
    );
    assert_eq!(
        raw_framing(head("Transfer-Encoding: chunked\r\n").as_bytes()),
        Ok(())
    );
}

#[test]
fn queries_are_strict_and_uri_safe() {
    let n = request("GET", "/p?q=a b&n=\"x\"&u=é".as_bytes()).unwrap();
    assert_eq!(n.query.as_deref(), Some("q=a%20b&n=%22x%22&u=%C3%A9"));
    assert_eq!(
        n.params,
        vec![
            ("q".into(), "a b".into()),
            ("n".into(), "\"x\"".into()),
            ("u".into(), "é".into())
        ]
    );
    assert_eq!(
        request("GET", b"/p?a=%zz").map(|_| ()),
        Err(Rejection::BadEscape)
    );
    assert_eq!(
        request("GET", b"/p?a=%ff").map(|_| ()),
        Err(Rejection::NotUtf8)
    );
    assert_eq!(
        request("GET", b"/p?a=\x01").map(|_| ()),
        Err(Rejection::ControlCharacter)
    );
    let n = request("GET", b"/p?a=1;b=%2B+").unwrap();
    assert_eq!(n.query.as_deref(), Some("a=1;b=%2B+"));
    assert_eq!(n.params, vec![("a".into(), "1;b=+ ".into())]);
}
