//! `toolgate demo`, run as a user would: the real binary, its own fake tools and receiver.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::process::{Command, Output, Stdio};

fn demo(args: &[&str]) -> Output {
    Command::new(support::binary())
        .arg("demo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_prints_the_decisions_and_the_linked_timeline_and_exits_0() {
    let out = demo(&[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for row in [
        "1  reads ticket SUP-12            ticket.read          allow     200     reading tickets is allowed",
        "2  closes SUP-12                  ticket.transition    allow     200     SUP-12 was read earlier in this task",
        "3  pays out 5000 EUR              payment.create       held      403     payment of 5000 exceeds the limit of 100: a human must approve it",
        "4  retries it once approved       payment.create       allow     200     payment of 5000 approved by demo-operator",
        "5  looks up customer ACME (MCP)   crm.lookup_customer  allow     200     looking customers up is allowed",
        "6  hands reading on to billing    task.delegate        allow     200     reads may be handed on, once",
        "7  billing reads SUP-12           ticket.read          allow     200     reading tickets is allowed",
        "8  billing tries to close SUP-12  ticket.transition    deny      403     action ticket.transition is outside this task's delegation, which allows only ticket.read",
    ] {
        assert!(stdout.contains(row), "missing row {row:?} in\n{stdout}");
    }
    assert!(
        stdout.contains("rebuilt from the 8 spans received (trace "),
        "{stdout}"
    );
    // Held, approved by the demo as an operator through the operator API, then retried.
    let approved = stdout
        .lines()
        .find_map(|l| l.strip_prefix("After step 3 the demo approved it as an operator (demo-operator): POST /v1/approvals/"))
        .unwrap_or_else(|| panic!("no approval line in\n{stdout}"));
    let id = approved.trim_end_matches("/approve");
    assert!(
        stdout.contains(&format!("held for approval {id}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "approval {id} consumed, approved by demo-operator"
        )),
        "{stdout}"
    );
    // The timeline: each action one level under the one it links to.
    let lines: Vec<&str> = stdout.lines().collect();
    let at = |name: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!(" {name} [seq")))
            .unwrap_or_else(|| panic!("no timeline line for {name} in\n{stdout}"))
    };
    let column = |line: &str| line.find(['●', '└']).unwrap();
    let (read, close, pay, lookup) = (
        at("ticket.read"),
        at("ticket.transition"),
        at("payment.create"),
        at("crm.lookup_customer"),
    );
    let retry = lines
        .iter()
        .find(|l| l.contains(" payment.create [seq 4]"))
        .unwrap_or_else(|| panic!("no retried payment in\n{stdout}"));
    assert!(read.contains("● +"), "{read}");
    assert!(
        column(read) < column(close)
            && column(close) < column(pay)
            && column(pay) < column(retry)
            && column(retry) < column(lookup),
        "{stdout}"
    );
    for credential in [
        "credential issued: jira-token (secret)",
        "credential issued: payments-key (secret)",
        "credential issued: crm-token (secret)",
    ] {
        assert!(stdout.contains(credential), "{stdout}");
    }
    // The first agent's six actions link one to the next, and so do the second agent's two.
    assert_eq!(stdout.matches("links to span ").count(), 6, "{stdout}");
    // The handoff: the second agent's actions sit under the delegate action, in the same
    // trace, refused what was not handed on.
    let delegate = at("task.delegate");
    let handoff_span = delegate.rsplit("span ").next().unwrap();
    let billing: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            l.contains(" [seq ")
                && (l.contains("ticket.read [seq 1]") || l.contains("ticket.transition [seq 2]"))
        })
        .filter(|l| column(l) > column(delegate))
        .collect();
    assert_eq!(billing.len(), 2, "{stdout}");
    assert!(
        stdout.contains(&format!("child of span {handoff_span}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("by spiffe://example.org/ns/support/sa/billing-agent, delegation depth 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("credential issued: delegation (delegation, id "),
        "{stdout}"
    );
    assert!(
        stdout.contains("After step 6 the first agent's toolgate signed a delegation token for spiffe://example.org/ns/support/sa/billing-agent (task demo-"),
        "{stdout}"
    );
    // The task's root span (the first toolgate's: the second one's actions are under the
    // delegate action instead): the parent of the six, counted, exported when it stopped.
    let root = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("task demo-"))
        .unwrap_or_else(|| panic!("no task root line in\n{stdout}"));
    assert!(
        root.contains(
            "— 6 actions (5 allow, 1 deny), the parent of the first agent's spans; closed at shutdown"
        ),
        "{root}"
    );
    assert!(
        stdout.contains("(jira, payments, crm) faked on 127.0.0.1"),
        "{stdout}"
    );
    assert!(!stderr.contains("demo check failed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_also_sends_its_spans_to_a_given_otlp_endpoint() {
    let store = otlp::Receiver::http().await;
    let url = format!("{}/v1/traces", store.endpoint());
    let out = tokio::task::spawn_blocking(move || demo(&["--otlp", &url]))
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Eight actions from the two toolgates, and the task's root.
    let spans = store.wait_for(9).await;
    let mut names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    names.sort();
    assert!(names[3].starts_with("task demo-"), "{names:?}");
    names[3] = "task";
    assert_eq!(
        names,
        [
            "crm.lookup_customer",
            "payment.create",
            "payment.create",
            "task",
            "task.delegate",
            "ticket.read",
            "ticket.read",
            "ticket.transition",
            "ticket.transition"
        ]
    );
    let traces: std::collections::BTreeSet<&[u8]> =
        spans.iter().map(|s| s.span.trace_id.as_slice()).collect();
    assert_eq!(traces.len(), 1, "both toolgates' spans are one trace");
    assert!(stdout.contains("Also sent to http://"), "{stdout}");
}

#[test]
fn demo_refuses_an_endpoint_it_cannot_send_to() {
    let out = demo(&["--otlp", "https://collector.example.com/v1/traces"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("give an OTLP/HTTP endpoint like"),
        "{stderr}"
    );
}
