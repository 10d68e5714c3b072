//! body_classify: arbitrary body bytes, sent with each content type toolgate classifies by
//! (JSON, `*+json`, JSON with a charset, form, none), to routes of the golden cases' catalog
//! that read the body in each way: body rules (`ticket.close` / `ticket.reopen` over
//! `/transition/id`), `body:` attributes (`payment.create`), a boolean rule
//! (`payment.refund`), a form POST no rule reads (scanned for `_method`), and a tool that
//! accepts overrides (body not read). The body goes through `prepare::finish` as the proxy
//! sends it, and through `body::json` / `body::form` directly.
//!
//! Input: two selector bytes, then the body. Byte 0 picks the content type and byte 1 the
//! route, each as `(byte - b'0') % 5`, so seeds read `00{"transition":{"id":"31"}}`:
//!
//! | n | content type (byte 0)               | route (byte 1)                                |
//! |---|-------------------------------------|-----------------------------------------------|
//! | 0 | application/json                    | POST jira …/issue/SUP-7/transitions           |
//! | 1 | application/x-www-form-urlencoded   | POST payments /v1/payments                    |
//! | 2 | application/vnd.api+json            | POST payments /v1/refunds                     |
//! | 3 | application/json; charset=utf-8     | POST jira …/issue/SUP-7/attachments           |
//! | 4 | (none)                              | POST legacy /records/7 (overrides allowed)    |
//!
//! Besides "no panic": a JSON reading is what a plain parser reads, case-unique, and a fixed
//! point; a form reading has the documented shape and re-reads the same when written back;
//! the action chosen is the first whose body rules hold on the body policy sees.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use toolgate_fuzz::invariants;
use toolgate_policy::{body, prepare};

const TYPES: [Option<&str>; 5] = [
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("application/vnd.api+json"),
    Some("application/json; charset=utf-8"),
    None,
];

const ROUTES: [&str; 5] = [
    "http://jira.example.com/rest/api/3/issue/SUP-7/transitions",
    "http://payments.example.com/v1/payments",
    "http://payments.example.com/v1/refunds",
    "http://jira.example.com/rest/api/3/issue/SUP-7/attachments",
    "http://legacy.example.com/records/7",
];

fn pick(b: u8) -> usize {
    usize::from(b.wrapping_sub(b'0') % 5)
}

fuzz_target!(|data: &[u8]| {
    let [t, r, bytes @ ..] = data else {
        return;
    };
    match body::json(bytes) {
        Ok(v) => invariants::json_body(bytes, &v),
        Err(e) => invariants::refusal(&e),
    }
    match body::form(bytes) {
        Ok(doc) => invariants::form_body(bytes, &doc),
        Err(e) => invariants::refusal(&e),
    }
    if let Err(e) = body::scan_overrides(bytes) {
        invariants::refusal(&e);
    }

    let config = toolgate_fuzz::golden();
    let mut headers = HeaderMap::new();
    if let Some(ct) = TYPES[pick(*t)] {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let target = ROUTES[pick(*r)].as_bytes();
    let head = match prepare::head(config, None, "POST", target, &headers) {
        Ok(h) => h,
        Err(e) => panic!("the fixed head POST {} is refused: {e}", ROUTES[pick(*r)]),
    };
    match prepare::finish(config, head, &headers, Some(bytes)) {
        Ok(p) => {
            invariants::prepared(config, &p);
            if let Some(parsed) = &p.body {
                match TYPES[pick(*t)] {
                    Some(ct) if ct.contains("json") => invariants::json_body(bytes, parsed),
                    Some(_) => invariants::form_body(bytes, parsed),
                    None => panic!("a body without a content type was read: {parsed:?}"),
                }
            }
        }
        Err(e) => invariants::refusal(&e),
    }
});
