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
