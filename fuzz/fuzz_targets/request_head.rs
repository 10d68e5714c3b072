//! request_head: an arbitrary request (method, target, headers, body) through the steps the
//! proxy runs on every request head — `normalise::raw_framing` on the raw head, then
//! accept → normalise → classify (`prepare::head`, `prepare::finish`) — against the golden
//! cases' catalog and the embedded quickstart, as a forward-proxy/Host request and as one
//! arriving on a fixed destination (an intercepted CONNECT tunnel, a transparent capture).
//!
//! Input: a raw HTTP/1.1 request (`GET /x HTTP/1.1\r\nHost: h\r\n\r\nbody`), see `raw.rs`.
//! Besides "no panic": every canonical request is a fixed point that the tool splits as
//! toolgate did (`invariants::normalised`), refusals have bounded reasons, framing the raw head
//! shows as ambiguous is refused, and an accepted request forwarded as toolgate forwards it
//! classifies the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolgate_fuzz::invariants;
use toolgate_fuzz::raw::RawRequest;
use toolgate_policy::accept::{Destination, Via};
use toolgate_policy::config::Config;
use toolgate_policy::normalise;
use toolgate_policy::prepare;

fuzz_target!(|data: &[u8]| {
    let Some(req) = RawRequest::parse(data) else {
        return;
    };
    match normalise::request(&req.method, req.target) {
        Ok(n) => invariants::normalised(&n),
        Err(e) => invariants::refusal(&e),
    }
    framing(&req);
    for config in [toolgate_fuzz::golden(), toolgate_fuzz::quickstart()] {
        run(config, None, &req);
        for destination in destinations(&req) {
            run(config, Some(&destination), &req);
        }
    }
});

/// `raw_framing` refuses what the parsed headers show to be ambiguous framing (two
/// Content-Length, or Content-Length with Transfer-Encoding), which an HTTP parser may have
/// resolved one way before toolgate sees the headers.
fn framing(req: &RawRequest<'_>) {
    let verdict = normalise::raw_framing(req.head);
    let lengths = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .count();
    let codings = req
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .count();
    if lengths > 1 || (lengths == 1 && codings > 0) {
        assert!(
            verdict.is_err(),
            "raw_framing let {lengths} Content-Length and {codings} Transfer-Encoding through"
        );
    }
}

/// The connection-fixed destinations this request could arrive on: the authority its Host
/// header names (else a tool's), inside a TLS tunnel and as captured plain HTTP.
fn destinations(req: &RawRequest<'_>) -> Vec<Destination> {
    let named = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| normalise::authority(h).ok());
    let (host, port) = named.unwrap_or_else(|| ("jira.example.com".to_string(), None));
    vec![
        Destination {
            via: Via::Tunnel,
            host: host.clone(),
            port: port.unwrap_or(443),
            tls: true,
        },
        Destination {
            via: Via::Transparent,
            host,
            port: port.unwrap_or(80),
            tls: false,
        },
    ]
}

fn run(config: &Config, destination: Option<&Destination>, req: &RawRequest<'_>) {
    let head = match prepare::head(config, destination, &req.method, req.target, &req.headers) {
        Ok(h) => h,
        Err(e) => return invariants::refusal(&e),
    };
    invariants::accepted(config, &head.accepted);
    if let Some(d) = destination {
        assert_eq!(
            (&head.accepted.host, head.accepted.port, head.accepted.tls),
            (&d.host, d.port, d.tls),
            "a request on a fixed destination went elsewhere"
        );
    }
    let body = Some(req.body);
    match prepare::finish(config, head, &req.headers, body) {
        Ok(p) => {
            invariants::prepared(config, &p);
            if destination.is_none() {
                invariants::forwarded(config, &p, &req.headers, body);
            }
        }
        Err(e) => invariants::refusal(&e),
    }
}
