//! Secrets in other placements (query parameter, HTTP Basic), and the grep of every surface
//! an operator or the agent sees for every credential value.

use serde_json::json;

use crate::{Options, World};

#[tokio::test(flavor = "multi_thread")]
async fn secrets_go_in_a_query_parameter_or_as_http_basic() {
    let w = World::start(Options::default()).await;
    let client = w.tg.forward_client();
    let resp = client
        .get("http://maps.test/tiles?z=3&key=agent-own-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", w.tg.logs());
    assert_eq!(
        resp.headers()["x-echo-target"],
        "/tiles?z=3&key=[redacted]",
        "the tool's echo of the secret is scrubbed"
    );
    let resp = client
        .get("http://legacy.test/status")
        .header("authorization", "Basic YWdlbnQ6b3du")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The whole header value is the credential's wire form: masked whole.
    assert_eq!(resp.headers()["x-echo-authorization"], "[redacted]");
    let seen = w.tool.seen();
    assert_eq!(
        seen[0].target, "/tiles?z=3&key=maps%2Fsecret%2B9e",
        "the agent's own key is replaced"
    );
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("svc:{}", crate::LEGACY_SECRET));
    assert_eq!(seen[1].headers["authorization"], format!("Basic {basic}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_or_token_value_reaches_logs_metrics_or_responses() {
    let receiver = crate::otlp::Receiver::http().await;
    let w = World::start(Options {
        otlp: Some(receiver.endpoint()),
        ..Options::default()
    })
    .await;
    let client = w.tg.forward_client();
    let task_token = w.task_token("T-5", json!({ "role": "analyst", "on_behalf_of": "bob" }));
    let mut surfaces = support_surfaces::Surfaces::default();
    let requests = [
        client
            .post("http://payments.test/v1/payments")
            .header("x-toolgate-task-token", &task_token),
        client
            .get("http://github.test/repos/toolgate")
            .header("x-toolgate-task-token", &task_token),
        client
            .get("http://jira.test/issue/A")
            .header("x-api-token", "agent-own"),
        client.get("http://maps.test/tiles?key=agent-own"),
        client.get("http://legacy.test/status"),
        client
            .get("http://reports.test/reports/1")
            .header("x-toolgate-task-token", &task_token),
        client
            .get("http://reports.test/reports/1")
            .header("x-toolgate-task-token", "garbage"),
        client.delete("http://jira.test/issue/A"),
    ];
    for rb in requests {
        surfaces.response(rb.send().await.unwrap()).await;
    }
    w.sts.fail_with(503);
    surfaces
        .response(
            client
                .get("http://github.test/repos/other/status")
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert!(w.wait_for_log("action=repo.status"), "{}", w.tg.logs());

    // What each credential was on the wire, as the tool received it.
    let seen = w.tool.seen();
    assert_eq!(seen.len(), 6, "{seen:#?}");
    let header = |i: usize, name: &str| seen[i].headers[name].to_str().unwrap().to_string();
    let minted = seen[0].bearer();
    let exchanged = seen[1].bearer();
    assert!(header(0, "authorization").len() > 100 && exchanged.starts_with("exchanged-"));
    assert_eq!(header(2, "x-api-token"), crate::JIRA_SECRET);
    let key_body: String = w
        .signing_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let values = [
        ("minted JWT", minted.as_str()),
        ("exchanged token", exchanged.as_str()),
        ("jira secret", crate::JIRA_SECRET),
        ("maps secret", crate::MAPS_SECRET),
        ("maps secret, encoded", "maps%2Fsecret%2B9e"),
        ("legacy password", crate::LEGACY_SECRET),
        ("STS client secret", crate::STS_CLIENT_SECRET),
        ("agent identity token", w.svid.as_str()),
        ("task token", task_token.as_str()),
        ("signing key", key_body.as_str()),
        ("operator token", crate::support::OPERATOR_TOKEN),
    ];
    // The tool did echo credentials: only scrubbing keeps them from the agent.
    assert!(surfaces
        .all()
        .iter()
        .any(|(_, text)| text.contains("[redacted]")));
    // Refusals at identify (the garbage task token) come before a decision: 8 lines.
    let lines = w.wait_for_decision(|l| l.len() >= 8);
    assert_eq!(lines.len(), 8, "{lines:?}");
    surfaces.admin(
        &w.tg,
        &[
            "/metrics",
            "/.well-known/jwks.json",
            "/v1/tasks",
            "/v1/tasks/T-5",
            "/v1/revoke",
        ],
    );
    surfaces.logs(&w.tg);
    // Every exchange that reached the pipeline is one span: all nine requests.
    surfaces.spans(&receiver, 9).await;
    for (label, text) in surfaces.all() {
        for (name, value) in values {
            assert!(
                !text.contains(value),
                "the {name} appears in {label}:\n{text}"
            );
        }
    }
}

/// Every text surface an operator or the agent can see, gathered for one grep.
mod support_surfaces {
    use crate::support;

    #[derive(Default)]
    pub struct Surfaces {
        texts: Vec<(String, String)>,
    }

    impl Surfaces {
        /// A response to the agent: status, headers and body.
        pub async fn response(&mut self, resp: reqwest::Response) {
            let mut text = format!("{}\n", resp.status());
            for (k, v) in resp.headers() {
                text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            text.push_str(&resp.text().await.unwrap());
            self.texts
                .push((format!("response #{}", self.texts.len()), text));
        }

        /// Admin endpoints; the operator API's (`/v1/…`) read with the operator token.
        pub fn admin(&mut self, tg: &support::Toolgate, paths: &[&str]) {
            for p in paths {
                let (status, body) = if p.starts_with("/v1/") {
                    let answer = support::operator(tg.admin, "GET", p, None);
                    (answer.status, answer.body)
                } else {
                    support::http_get(tg.admin, p).unwrap()
                };
                assert_eq!(status, 200, "{p}: {body}");
                self.texts.push((format!("admin {p}"), body));
            }
        }

        /// toolgate's log (stderr) and its decision log (stdout).
        pub fn logs(&mut self, tg: &support::Toolgate) {
            self.texts.push(("the log".into(), tg.logs()));
            let decisions = std::fs::read_to_string(tg.dir.path().join("stdout.log")).unwrap();
            self.texts.push(("the decision log".into(), decisions));
        }

        /// The spans toolgate exported over OTLP, once `n` have arrived: each decoded span
        /// (names, attributes, events, status) and each raw protobuf request body.
        pub async fn spans(&mut self, receiver: &crate::otlp::Receiver, n: usize) {
            let spans = receiver.wait_for(n).await;
            assert!(
                spans.iter().any(|s| s
                    .span
                    .attributes
                    .iter()
                    .any(|kv| kv.key == "toolgate.credential.id")),
                "a minted credential's id is exported: {spans:#?}"
            );
            for s in spans {
                self.texts
                    .push((format!("span {}", s.span.name), format!("{:?}", s)));
            }
            for body in receiver.bodies() {
                self.texts.push((
                    "an OTLP request body".into(),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
            }
        }

        pub fn all(&self) -> &[(String, String)] {
            &self.texts
        }
    }
}
