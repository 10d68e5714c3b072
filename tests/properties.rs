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

/// A reference reading of a form body, written from README's rules (Classification → form
/// bodies) independently of `body::form`: it groups every field's path at once instead of
/// inserting field by field. `None`: the body is refused.
mod reference {
    use serde_json::{Map, Value as Json};

    #[derive(Debug, Clone, PartialEq)]
    enum Seg {
        Key(String),
        Append,
    }

    pub fn form(body: &[u8]) -> Option<Json> {
        let text = std::str::from_utf8(body).ok()?;
        let start = text
            .trim_start_matches('\u{feff}')
            .trim_start_matches([' ', '\t', '\r', '\n']);
        if start.starts_with('{') || start.starts_with('[') {
            return None;
        }
        let fields: Vec<&str> = text.split('&').filter(|f| !f.is_empty()).collect();
        if fields.len() > 1000 {
            return None;
        }
        let mut entries = Vec::new();
        for field in fields {
            let (name, value) = match field.find('=') {
                Some(i) => (&field[..i], Some(&field[i + 1..])),
                None => (field, None),
            };
            let name = decode(name)?;
            let decoded = match value {
                Some(v) => decode(v)?,
                None => String::new(),
            };
            if let Some(v) = value {
                let v = v.replace("%5D", "]").replace("%5d", "]");
                if v.contains("]=") {
                    return None;
                }
            }
            entries.push((path(&name)?, decoded));
        }
        let doc = group(entries)?;
        for value in doc.values() {
            if !indices_ok(value) {
                return None;
            }
        }
        let doc = Json::Object(doc);
        case_ok(&doc).then_some(doc)
    }

    fn decode(s: &str) -> Option<String> {
        let bytes = s.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'%' {
                let ok = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                if !ok {
                    return None;
                }
            }
        }
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    }

    /// `base[k]…[]` as segments, by a state machine over the characters.
    fn path(name: &str) -> Option<Vec<Seg>> {
        let mut segs = Vec::new();
        let mut current = String::new();
        let mut inside = false;
        let mut closed_any = false;
        for c in name.chars() {
            match (inside, c) {
                (false, '[') => {
                    if !closed_any {
                        if current.is_empty() || current.contains(['.', ' ']) {
                            return None;
                        }
                        segs.push(Seg::Key(std::mem::take(&mut current)));
                    } else if !current.is_empty() {
                        return None;
                    }
                    inside = true;
                }
                (true, ']') => {
                    segs.push(if current.is_empty() {
                        Seg::Append
                    } else {
                        Seg::Key(std::mem::take(&mut current))
                    });
                    inside = false;
                    closed_any = true;
                }
                (true, '[') | (false, ']') => return None,
                (_, c) => {
                    if closed_any && !inside {
                        return None;
                    }
                    current.push(c);
                }
            }
        }
        if inside {
            return None;
        }
        if !closed_any {
            if current.is_empty() || current.contains(['.', ' ']) {
                return None;
            }
            segs.push(Seg::Key(current));
        }
        let appends = segs.iter().filter(|s| **s == Seg::Append).count();
        if appends > 1 || (appends == 1 && segs.last() != Some(&Seg::Append)) {
            return None;
        }
        (segs.len() <= 6).then_some(segs)
    }

    fn group(entries: Vec<(Vec<Seg>, String)>) -> Option<Map<String, Json>> {
        let mut names: Vec<String> = Vec::new();
        let mut groups: std::collections::HashMap<String, Vec<(Vec<Seg>, String)>> =
            std::collections::HashMap::new();
        for (segs, value) in entries {
            let mut segs = segs.into_iter();
            let Some(Seg::Key(first)) = segs.next() else {
                return None;
            };
            if !groups.contains_key(&first) {
                names.push(first.clone());
            }
            groups
                .entry(first)
                .or_default()
                .push((segs.collect(), value));
        }
        let mut out = Map::new();
        for name in names {
            let members = groups.remove(&name)?;
            let value = if members.iter().all(|(rest, _)| rest.is_empty()) {
                if members.len() != 1 {
                    return None;
                }
                Json::String(members.into_iter().next()?.1)
            } else if members.iter().all(|(rest, _)| rest == &[Seg::Append]) {
                Json::Array(members.into_iter().map(|(_, v)| Json::String(v)).collect())
            } else if members
                .iter()
                .all(|(rest, _)| matches!(rest.first(), Some(Seg::Key(_))))
            {
                Json::Object(group(members)?)
            } else {
                return None;
            };
            out.insert(name, value);
        }
        Some(out)
    }

    fn indices_ok(value: &Json) -> bool {
        let Json::Object(map) = value else {
            return true;
        };
        let mut numbers: Vec<u64> = map
            .keys()
            .filter(|k| {
                k.as_str() == "0"
                    || (!k.starts_with('0')
                        && !k.is_empty()
                        && k.chars().all(|c| c.is_ascii_digit()))
            })
            .map(|k| k.parse().unwrap_or(u64::MAX))
            .collect();
        numbers.sort_unstable();
        let contiguous = numbers.iter().enumerate().all(|(i, n)| *n == i as u64);
        contiguous && numbers.len() <= 20 && map.values().all(indices_ok)
    }

    /// Over the test's alphabet (ASCII and the Kelvin sign), Go's folding is this.
    fn folded(key: &str) -> String {
        key.replace('\u{212a}', "k").to_ascii_lowercase()
    }

    fn case_ok(value: &Json) -> bool {
        match value {
            Json::Object(map) => {
                let mut seen = std::collections::HashSet::new();
                map.keys().all(|k| seen.insert(folded(k))) && map.values().all(case_ok)
            }
            Json::Array(items) => items.iter().all(case_ok),
            _ => true,
        }
    }
}

/// Form bodies built from bracketed names, the tricks the frameworks read differently, and
/// spellings that mean the same.
fn bracketed_form() -> impl Strategy<Value = Vec<u8>> {
    let pick = |options: &'static [(u32, &'static str)]| {
        prop::strategy::Union::new_weighted(
            options
                .iter()
                .map(|(w, s)| (*w, Just(*s).boxed()))
                .collect(),
        )
    };
    let base = pick(&[
        (6, "a"),
        (2, "b"),
        (2, "A"),
        (1, "key"),
        (1, "\u{212a}ey"),
        (1, "x.y"),
        (1, "x y"),
        (1, ""),
        (2, "items"),
    ]);
    let group = pick(&[
        (8, "[k]"),
        (2, "[K]"),
        (6, "[0]"),
        (4, "[1]"),
        (2, "[2]"),
        (1, "[19]"),
        (1, "[20]"),
        (1, "[01]"),
        (4, "[]"),
        (1, "["),
        (1, "]"),
        (1, "[a[b]]"),
        (1, "x"),
        (2, "[x.y]"),
        (1, "[\u{212a}ey]"),
        (2, "[key]"),
    ]);
    let value = pick(&[
        (12, "1"),
        (4, "x"),
        (1, "a]=b"),
        (1, "a%5D=b"),
        (1, "a%5d%3Db"),
        (1, "%zz"),
        (2, "a+b"),
        (2, "%E2%84%AA"),
        (1, "{"),
        (1, "%ff"),
        (2, ""),
    ]);
    // Names the frameworks agree on, so that many bodies are read and compared in full.
    let agreed = (
        pick(&[(3, "a"), (2, "b"), (1, "items")]),
        prop::collection::vec(
            pick(&[(3, "k"), (1, "key"), (3, "0"), (1, "1"), (1, "x.y")]),
            0..5,
        ),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(base, keys, append)| {
            let mut groups: Vec<&str> = Vec::new();
            for k in keys {
                groups.push(match k {
                    "k" => "[k]",
                    "key" => "[key]",
                    "0" => "[0]",
                    "1" => "[1]",
                    _ => "[x.y]",
                });
            }
            if append {
                groups.push("[]");
            }
            (base, groups)
        });
    let tricky = (base, prop::collection::vec(group, 0..8));
    let field = (
        prop_oneof![3 => agreed, 1 => tricky],
        prop::option::weighted(0.9, value),
        prop::collection::vec(prop::bool::weighted(0.2), 16),
    )
        .prop_map(|((base, groups), value, encode)| {
            // Brackets may travel percent-encoded; the name means the same.
            let mut name = String::from(base);
            for (g, enc) in groups.iter().zip(encode.iter().cycle()) {
                if *enc {
                    name.push_str(&g.replace('[', "%5B").replace(']', "%5D"));
                } else {
                    name.push_str(g);
                }
            }
            match value {
                Some(v) => format!("{name}={v}"),
                None => name,
            }
        });
    (
        prop::collection::vec(field, 0..7),
        pick(&[(8, ""), (1, "{"), (1, " ["), (1, "&")]),
    )
        .prop_map(|(fields, prefix)| format!("{prefix}{}", fields.join("&")).into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn bracketed_forms_read_as_the_documented_rules_say(b in bracketed_form()) {
        let got = body::form(&b);
        let want = reference::form(&b);
        match (&got, &want) {
            (Ok(doc), Some(expected)) => prop_assert_eq!(doc, expected),
            (Err(_), None) => {}
            _ => prop_assert!(
                false,
                "{:?}: toolgate {:?}, reference {:?}",
                String::from_utf8_lossy(&b),
                got,
                want
            ),
        }
        // A form toolgate accepts is also what prepare hands policy, and prepare never
        // panics on it.
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        let prepared = prepare(
            config(),
            "POST",
            b"http://jira.example.com/rest/api/3/issue/SUP-1/transitions",
            &headers,
            Some(&b),
        );
        if let (Ok(p), Ok(doc)) = (&prepared, &got) {
            prop_assert_eq!(p.body.as_ref(), (!b.is_empty()).then_some(doc));
        }
    }
}
