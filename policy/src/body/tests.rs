use serde_json::json;

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn content_types_select_json_or_form() {
    let kind = |ct: &str| check_headers(&headers(&[("content-type", ct)]));
    assert_eq!(kind("application/json"), Ok(Some(Kind::Json)));
    assert_eq!(
        kind("Application/JSON; charset=UTF-8"),
        Ok(Some(Kind::Json))
    );
    assert_eq!(kind("application/vnd.api+json"), Ok(Some(Kind::Json)));
    assert_eq!(
        kind("application/x-www-form-urlencoded"),
        Ok(Some(Kind::Form))
    );
    assert!(matches!(kind("text/plain"), Err(Rejection::BodyType(_))));
    assert!(matches!(
        kind("application/json; charset=utf-16"),
        Err(Rejection::BodyType(_))
    ));
    assert_eq!(check_headers(&HeaderMap::new()), Ok(None));
}

#[test]
fn compressed_or_oddly_framed_bodies_are_refused() {
    let h = headers(&[
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ]);
    assert_eq!(
        check_headers(&h),
        Err(Rejection::ContentEncoding("gzip".into()))
    );
    let h = headers(&[("content-encoding", "identity")]);
    assert_eq!(check_headers(&h), Ok(None));
    let h = headers(&[("transfer-encoding", "gzip, chunked")]);
    assert!(matches!(
        check_headers(&h),
        Err(Rejection::TransferCoding(_))
    ));
    let h = headers(&[
        ("content-type", "application/json"),
        ("content-type", "application/x-www-form-urlencoded"),
    ]);
    assert_eq!(
        check_headers(&h),
        Err(Rejection::DuplicateHeader("Content-Type"))
    );
}

#[test]
fn json_is_parsed_strictly() {
    assert_eq!(
        json(br#"{"a":{"b":[1,"x"]}}"#),
        Ok(json!({"a": {"b": [1, "x"]}}))
    );
    assert_eq!(
        json(br#"{"a":1,"a":2}"#),
        Err(Rejection::DuplicateKey("a".into()))
    );
    assert_eq!(
        json(br#"{"t":{"id":"31","id":"11"}}"#),
        Err(Rejection::DuplicateKey("id".into()))
    );
    assert_eq!(
        json(br#"[{"k":1},{"k":2,"k":3}]"#),
        Err(Rejection::DuplicateKey("k".into()))
    );
    assert_eq!(json(b"{\"a\":\"\xff\"}"), Err(Rejection::BodyNotUtf8));
    for bad in [
        &b"{\"a\":1} x"[..],
        b"{\"a\":",
        br#""\ud800""#,
        b"\xef\xbb\xbf{}",
    ] {
        assert!(matches!(json(bad), Err(Rejection::BadJson(_))), "{bad:?}");
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(matches!(json(deep.as_bytes()), Err(Rejection::BadJson(_))));
}

#[test]
fn forms_decode_strictly() {
    assert_eq!(
        form(b"amount=500&note=a+b%21&flag"),
        Ok(json!({"amount": "500", "note": "a b!", "flag": ""}))
    );
    assert_eq!(form(b"a=1&a=2"), Err(Rejection::DuplicateKey("a".into())));
    assert_eq!(form(b"a=%zz"), Err(Rejection::BadForm));
    assert_eq!(form(b"a=%ff"), Err(Rejection::BodyNotUtf8));
}

#[test]
fn empty_bodies_are_no_body_and_others_need_a_type() {
    assert_eq!(parse(None, b""), Ok(None));
    assert_eq!(parse(Some(Kind::Json), b""), Ok(None));
    assert!(matches!(parse(None, b"{}"), Err(Rejection::BodyType(_))));
    assert_eq!(parse(Some(Kind::Form), b"x=1"), Ok(Some(json!({"x": "1"}))));
}

#[test]
fn json_keys_that_differ_only_in_case_are_refused_at_any_depth() {
    assert_eq!(
        json(br#"{"transition":{"id":"31","ID":"99"}}"#),
        Err(Rejection::CaseVariantKey("id".into(), "ID".into()))
    );
    assert_eq!(
        json(br#"{"Amount":5,"amount":500}"#),
        Err(Rejection::CaseVariantKey("Amount".into(), "amount".into()))
    );
    assert_eq!(
        json(br#"[{"a":{"k":1}},{"b":[{"key":1,"\u212aey":2}]}]"#),
        Err(Rejection::CaseVariantKey("key".into(), "\u{212a}ey".into()))
    );
    // Distinct names, and the same name in different objects, are fine.
    assert_eq!(
        json(br#"{"id":"31","ids":["a"],"t":{"id":"1"},"u":{"ID":"2"}}"#),
        Ok(json!({"id": "31", "ids": ["a"], "t": {"id": "1"}, "u": {"ID": "2"}}))
    );
}

#[test]
fn bracketed_form_names_nest_as_rails_php_and_qs_agree() {
    assert_eq!(
        form(b"transition[id]=31&note=x"),
        Ok(json!({"transition": {"id": "31"}, "note": "x"}))
    );
    assert_eq!(form(b"a[]=1&a[]=2"), Ok(json!({"a": ["1", "2"]})));
    assert_eq!(
        form(b"items[0][price]=p_1&items[0][quantity]=2&items[1][price]=p_2"),
        Ok(json!({"items": {"0": {"price": "p_1", "quantity": "2"}, "1": {"price": "p_2"}}}))
    );
    assert_eq!(
        form(b"metadata[order_id]=6735&metadata[Note]=a+b&expand[]=customer"),
        Ok(json!({"metadata": {"order_id": "6735", "Note": "a b"}, "expand": ["customer"]}))
    );
    // Brackets may be percent-encoded: frameworks decode the name before reading it.
    assert_eq!(
        form(b"transition%5Bid%5D=31"),
        Ok(json!({"transition": {"id": "31"}}))
    );
    assert_eq!(
        form(b"a[b][c][d][e][]=deep"),
        Ok(json!({"a": {"b": {"c": {"d": {"e": ["deep"]}}}}}))
    );
    assert_eq!(form(b"a[x.y]=1"), Ok(json!({"a": {"x.y": "1"}})));
}

#[test]
fn form_names_the_frameworks_read_differently_are_refused() {
    use FormNameError::*;
    let cases: &[(&[u8], &str, FormNameError)] = &[
        (b"a=1&a[b]=2", "a[b]", Conflict),
        (b"a[b]=2&a=1", "a", Conflict),
        (b"a[]=1&a[b]=2", "a[b]", Conflict),
        (b"a[b]=1&a[]=2", "a[]", Conflict),
        (b"a=1&a[]=2", "a[]", Conflict),
        (b"a[b]=1&a[b][c]=2", "a[b][c]", Conflict),
        (b"a[b", "a[b", Brackets),
        (b"a]b=1", "a]b", Brackets),
        (b"a[b]c=1", "a[b]c", Brackets),
        (b"a[b]]=1", "a[b]]", Brackets),
        (b"x=1&[a]=1", "[a]", Brackets),
        (b"a[b[c]]=1", "a[b[c]]", Brackets),
        (b"a%5Bb=1", "a[b", Brackets),
        (b"a[][b]=1", "a[][b]", AppendNotLast),
        (b"a[][]=1", "a[][]", AppendNotLast),
        (b"a[b][c][d][e][f][g]=1", "a[b][c][d][e][f][g]", TooDeep),
        (b"a[b][c][d][e][f][]=1", "a[b][c][d][e][f][]", TooDeep),
        (b"a[1]=x", "a", Indices),
        (b"a[0]=x&a[2]=y", "a", Indices),
        (b"a[b][1][c]=x", "a", Indices),
        (b"a[20]=x", "a", Indices),
        (b"a.b=1", "a.b", DotOrSpace),
        (b"a+b=1", "a b", DotOrSpace),
        (b"+a=1", " a", DotOrSpace),
        (b"=1", "", Empty),
        (b"a=1&=2", "", Empty),
        (b"a=x]=y", "a", BracketEquals),
        (b"a=x%5D=y", "a", BracketEquals),
    ];
    for (body, name, why) in cases {
        assert_eq!(
            form(body),
            Err(Rejection::FormName {
                name: (*name).into(),
                why: *why
            }),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(
        form(b"a[b]=1&a[b]=2"),
        Err(Rejection::DuplicateKey("a[b]".into()))
    );
    // Contiguous indices, other numbers-as-keys and lists are read alike.
    assert_eq!(
        form(b"a[1]=y&a[0]=x&a[b]=z&a[01]=w&a[-1]=v"),
        Ok(json!({"a": {"0": "x", "1": "y", "b": "z", "01": "w", "-1": "v"}}))
    );
    let twenty: Vec<String> = (0..20).map(|i| format!("a[{i}]={i}")).collect();
    assert!(form(twenty.join("&").as_bytes()).is_ok());
    let twenty_one: Vec<String> = (0..21).map(|i| format!("a[{i}]={i}")).collect();
    assert_eq!(
        form(twenty_one.join("&").as_bytes()),
        Err(Rejection::FormName {
            name: "a".into(),
            why: FormNameError::Indices
        })
    );
    // Top-level names are never indices.
    assert_eq!(form(b"5=x"), Ok(json!({"5": "x"})));
}

#[test]
fn form_names_that_differ_only_in_case_are_refused_at_any_level() {
    for body in [
        &b"amount=5&Amount=500"[..],
        b"transition[id]=11&transition[ID]=31",
        b"a[b][Key]=1&a[b][key]=2",
        b"Transition[id]=31&transition[x]=1",
    ] {
        assert!(
            matches!(form(body), Err(Rejection::CaseVariantKey(_, _))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn a_form_that_starts_like_json_is_refused_and_json_that_looks_like_a_form_is_bad_json() {
    for body in [
        &br#"{"transition":{"id":"31"}}"#[..],
        b"  \r\n{\"a\":1}",
        b"[1]",
        b"\xef\xbb\xbf{}",
    ] {
        assert_eq!(
            parse(Some(Kind::Form), body),
            Err(Rejection::JsonAsForm),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(matches!(
        parse(Some(Kind::Json), b"transition[id]=31"),
        Err(Rejection::BadJson(_))
    ));
    // A form whose value holds braces is still a form.
    assert_eq!(form(b"q=%7B%22a%22%3A1%7D"), Ok(json!({"q": "{\"a\":1}"})));
}

#[test]
fn too_many_form_fields_are_refused() {
    let body: Vec<String> = (0..=form::MAX_FIELDS).map(|i| format!("f{i}=1")).collect();
    assert_eq!(
        form(body.join("&").as_bytes()),
        Err(Rejection::TooManyFields(form::MAX_FIELDS))
    );
    let body = body.get(..form::MAX_FIELDS).unwrap().join("&");
    assert!(form(body.as_bytes()).is_ok());
}

#[test]
fn form_scans_find_override_fields_in_any_spelling() {
    for body in [
        &b"_method=DELETE"[..],
        b"a=1&_method=DELETE",
        b"%5Fmethod=DELETE",
        b"_%6Dethod=DELETE",
        b".method=DELETE",
        b"_method[]=DELETE",
        b"X-HTTP-Method-Override=DELETE",
        b"_method",
    ] {
        assert!(
            matches!(scan_overrides(body), Err(Rejection::OverrideParameter(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for body in [
        &b"method=DELETE"[..],
        b"a=_method",
        b"a[_method]=x",
        b"%zz=1&x=%ff",
        b"",
    ] {
        assert_eq!(
            scan_overrides(body),
            Ok(()),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn json_numbers_read_as_the_nearest_double_as_tools_read_them() {
    // Found by the body_classify and mcp_jsonrpc fuzz targets: serde_json's default float
    // parsing is approximate, so `5e44` read as 5.0000000000000004e44 while Python, Go and
    // JavaScript read 5e44 — toolgate decided on another number than the tool acted on.
    for text in [
        "5e44",
        "-3.2601e97",
        "0.1",
        "1.7976931348623157e308",
        "2.2250738585072014e-308",
    ] {
        let want: f64 = text.parse().unwrap();
        let got = json(text.as_bytes()).unwrap();
        assert_eq!(got.as_f64(), Some(want), "{text}");
        // And the reading is a fixed point: written back and read again, the same number.
        let again = json(serde_json::to_string(&got).unwrap().as_bytes()).unwrap();
        assert_eq!(again, got, "{text}");
    }
    let rule = crate::classify::Scalar::Number(5e44);
    assert!(rule.matches(&json(br#"5e44"#).unwrap()));
    assert!(!rule.matches(&json(br#"5.0000000000000004e44"#).unwrap()));
}
