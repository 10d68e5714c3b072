//! Property tests over adversarial input. Classification and normalisation never panic on
//! arbitrary method, target, header and body bytes; and a request toolgate forwards reads the
//! same when parsed the way a tool parses it: an RFC 3986 path split-then-decode gives the
//! segments toolgate classified, the forwarded request classifies to the same action and
//! attributes, and a plain JSON parser reads the body toolgate read.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use toolgate_policy::classify::mcp;
use toolgate_policy::config::Config;
use toolgate_policy::prepare::{prepare, Prepared};
use toolgate_policy::{body, normalise};

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/config/toolgate.yaml");
        Config::load(&path).unwrap()
    })
}

/// Path pieces an attacker would combine: the catalog's literals and every trick in §7.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("rest".to_string()),
        Just("api".to_string()),
        Just("3".to_string()),
        Just("issue".to_string()),
        Just("transitions".to_string()),
        Just("mine".to_string()),
        Just("v1".to_string()),
        Just("payments".to_string()),
        Just("mcp".to_string()),
        Just("SUP-1".to_string()),
        Just("jira".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("%2f".to_string()),
        Just("%5C".to_string()),
        Just("%00".to_string()),
        Just("%".to_string()),
        Just("%7e".to_string()),
        Just("%C3%A9".to_string()),
        Just("%ff".to_string()),
        Just(";x=1".to_string()),
        Just("\\".to_string()),
        Just("?a=1&a=2".to_string()),
        Just("#f".to_string()),
        Just("é".to_string()),
        Just(" ".to_string()),
        "[a-zA-Z0-9._~!$&'()*+,=:@-]{1,6}",
    ]
}

fn target() -> impl Strategy<Value = Vec<u8>> {
    let path =
        prop::collection::vec((piece(), prop::bool::weighted(0.1)), 0..8).prop_map(|parts| {
            let mut p = String::new();
            for (part, double) in parts {
                p.push('/');
                if double {
                    p.push('/');
                }
                p.push_str(&part);
            }
            if p.is_empty() {
                p.push('/');
            }
            p
        });
    let host = prop_oneof![
        Just("http://jira.example.com".to_string()),
        Just("http://payments.example.com".to_string()),
        Just("http://crm.example.com".to_string()),
        Just("http://JIRA.example.com.".to_string()),
        Just("https://jira.example.com:8443".to_string()),
        Just(String::new()),
        Just("http://evil.example.net".to_string()),
    ];
    prop_oneof![
        8 => (host, path).prop_map(|(h, p)| format!("{h}{p}").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string()),
        Just("get".to_string()),
        Just("PoSt".to_string()),
        "[A-Za-z]{0,8}",
        any::<String>(),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        Just("host".to_string()),
        Just("content-type".to_string()),
        Just("content-length".to_string()),
        Just("transfer-encoding".to_string()),
        Just("content-encoding".to_string()),
        Just("x-http-method-override".to_string()),
        Just("x-trace".to_string()),
        Just("x-toolgate-task".to_string()),
        "[a-z-]{1,12}",
    ];
    let value = prop_oneof![
        Just(b"application/json".to_vec()),
        Just(b"application/x-www-form-urlencoded".to_vec()),
        Just(b"jira.example.com".to_vec()),
        Just(b"gzip".to_vec()),
        Just(b"chunked".to_vec()),
        Just(b"12".to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
    ];
    prop::collection::vec((name, value), 0..5)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(br#"{"transition":{"id":"31"}}"#.to_vec()),
        Just(br#"{"transition":{"id":"31","id":"11"}}"#.to_vec()),
        Just(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"a"}}}"#.to_vec()),
        Just(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","method":"x"}]"#.to_vec()),
        Just(b"amount=500&currency=EUR".to_vec()),
        "\\PC{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..96),
    ]
}

/// A request as bytes: method, target, headers, body.
type Raw = (String, Vec<u8>, Vec<(String, Vec<u8>)>, Option<Vec<u8>>);

/// A segment spelled with some characters percent-encoded (which must not change its meaning).
fn spelled(segment: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::bool::weighted(0.2), segment.len()).prop_map(move |enc| {
        segment
            .bytes()
            .zip(enc)
            .map(|(c, e)| {
                if e {
                    format!("%{c:02x}")
                } else {
                    char::from(c).to_string()
                }
            })
            .collect()
    })
}

/// Requests shaped like the catalog's actions, with captures and spellings varied, so that
/// many are forwarded and the round trip is exercised on real actions.
fn plausible() -> impl Strategy<Value = Raw> {
    let capture = prop_oneof!["[A-Za-z0-9._~-]{1,8}", piece(), "\\PC{1,4}",];
    let jira = (
        spelled("rest"),
        spelled("issue"),
        capture,
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(rest, issue, id, transitions, routed)| {
            let tail = if transitions { "/transitions" } else { "" };
            let path = format!("/{rest}/api/3/{issue}/{id}{tail}");
            if routed {
                format!("/jira{path}")
            } else {
                format!("http://jira.example.com{path}")
            }
        });
    let fixed = prop_oneof![
        Just("http://payments.example.com/v1/payments".to_string()),
        Just("http://payments.example.com/v1/refunds".to_string()),
        Just("http://crm.example.com/mcp".to_string()),
        Just("http://jira.example.com/rest/api/3/issue/mine".to_string()),
    ];
    let url = prop_oneof![3 => jira, 1 => fixed];
    let query = prop::option::of("[a-z]{1,3}=[a-zA-Z0-9 %+\"{é]{0,6}");
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string())
    ];
    let content_type = prop_oneof![
        Just(b"application/json".to_vec()),
        Just(b"application/x-www-form-urlencoded".to_vec()),
    ];
    (
        method,
        url,
        query,
        content_type,
        body(),
        prop::collection::vec(("x-trace|x-other", "[a-z0-9]{0,6}"), 0..2),
    )
        .prop_map(|(m, url, q, ct, b, extra)| {
            let target = match q {
                Some(q) => format!("{url}?{q}"),
                None => url,
            };
            let mut headers = vec![
                ("host".to_string(), b"jira.example.com".to_vec()),
                ("content-type".to_string(), ct),
            ];
            if !target.starts_with('/') {
                headers.remove(0);
            }
            headers.extend(extra.into_iter().map(|(k, v)| (k, v.into_bytes())));
            (m, target.into_bytes(), headers, Some(b))
        })
}

fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// How a tool splits and decodes the origin-form path it receives (RFC 3986: split on '/',
/// then percent-decode each segment).
fn upstream_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    rest.split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect()
}

fn forwarded(p: &Prepared, original: &HeaderMap) -> (String, HeaderMap) {
    let mut headers = original.clone();
    headers.remove(http::header::HOST);
    let authority = match p.accepted.port {
        80 if !p.accepted.tls => p.accepted.host.clone(),
        443 if p.accepted.tls => p.accepted.host.clone(),
        port => format!("{}:{port}", p.accepted.host),
    };
    let scheme = if p.accepted.tls { "https" } else { "http" };
    // As the tool's host sees it: absolute-form to the same authority (routes resolved).
    let url = format!("{scheme}://{authority}{}", p.accepted.request.target());
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(&authority).unwrap(),
    );
    (url, headers)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn preparing_any_request_never_panics(
        m in method(), t in target(), h in headers(), b in prop::option::of(body())
    ) {
        let headers = header_map(&h);
        let _ = prepare(config(), &m, &t, &headers, b.as_deref());
        let _ = normalise::request(&m, &t);
        let _ = normalise::raw_framing(&t);
    }

    #[test]
    fn parsing_any_body_never_panics(b in body(), h in headers()) {
        let headers = header_map(&h);
        if let Ok(kind) = body::check_headers(&headers) {
            let _ = body::parse(kind, &b);
        }
        let _ = body::form(&b);
        if let Ok(json) = body::json(&b) {
            let _ = mcp::classify(0, "crm", &json);
        }
    }

    #[test]
    fn a_forwarded_request_reads_the_same_at_the_tool(
        (m, t, h, b) in prop_oneof![
            1 => (method(), target(), headers(), prop::option::of(body())),
            3 => plausible(),
        ]
    ) {
        let headers = header_map(&h);
        let Ok(p) = prepare(config(), &m, &t, &headers, b.as_deref()) else {
            return Ok(());
        };
        let target = p.accepted.request.target();
        // The tool's HTTP stack accepts the target and splits it as toolgate did.
        let uri: http::Uri = target.parse().unwrap();
        prop_assert_eq!(uri.path(), p.accepted.request.path.as_str());
        prop_assert_eq!(uri.query(), p.accepted.request.query.as_deref());
        let segments = upstream_segments(uri.path());
        prop_assert_eq!(segments.as_ref(), Some(&p.accepted.request.segments));
        // Classifying the forwarded form gives the same action and attributes.
        let (url, fwd_headers) = forwarded(&p, &headers);
        let again = prepare(config(), p.accepted.request.method.as_str(), url.as_bytes(), &fwd_headers, b.as_deref());
        let again = again.unwrap_or_else(|e| panic!("forwarded {url} refused: {e}"));
        prop_assert_eq!(&again.classification, &p.classification);
        prop_assert_eq!(&again.accepted.request.target(), &target);
        // A plain JSON parser (which would take the last of duplicate keys) reads the body
        // toolgate classified on: strictness refused everything where they could differ.
        let json = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().windows(4).any(|w| w.eq_ignore_ascii_case(b"json")));
        if let (Some(parsed), Some(bytes), true) = (&p.body, &b, json) {
            let plain: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            prop_assert_eq!(parsed, &plain);
        }
    }
}
