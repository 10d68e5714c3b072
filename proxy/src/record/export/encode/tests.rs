//! The body is byte for byte what the OpenTelemetry exporter sent: the same spans through
//! `opentelemetry-proto`'s conversion and `prost`'s encoding, for hand-picked spans (every
//! field, every value kind, lengths across varint boundaries) and generated ones.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::Resource;
use proptest::prelude::*;
use prost::Message;

use super::Body;

/// What the OpenTelemetry exporter's own conversion and encoding make of `spans`.
fn reference(spans: &[SpanData], resource: &Resource) -> Vec<u8> {
    let resource_spans = group_spans_by_resource_and_scope(
        spans.to_vec(),
        &ResourceAttributesWithSchema::from(resource),
    );
    ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

fn ours(spans: &[SpanData], resource: &Resource) -> Vec<u8> {
    let mut out = Vec::new();
    Body::new(resource).encode(spans, &mut out);
    out
}

/// Whether the two encodings are the same bytes; where they differ first, when not.
fn same(ours: &[u8], reference: &[u8]) -> Result<(), String> {
    if ours == reference {
        return Ok(());
    }
    let at = ours
        .iter()
        .zip(reference)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(reference.len()));
    let around = |b: &[u8]| b[at.saturating_sub(8)..(at + 8).min(b.len())].to_vec();
    Err(format!(
        "differ at byte {at} of {} (ours) / {} (reference): ours …{:?}… reference …{:?}…",
        ours.len(),
        reference.len(),
        around(ours),
        around(reference)
    ))
}

fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        remote,
        state.parse::<TraceState>().unwrap_or_default(),
    )
}

fn span(name: &str, attributes: Vec<KeyValue>, scope: InstrumentationScope) -> SpanData {
    let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
    SpanData {
        span_context: context(
            0x0af7651916cd43dd8448eb211c80319c,
            0xb7ad6b7169203331,
            false,
            "",
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: Cow::Owned(name.to_string()),
        start_time: start,
        end_time: start + Duration::from_micros(250),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope,
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("toolgate")
        .with_version("0.1.0")
        .build()
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "toolgate"),
            KeyValue::new(
                "service.instance.id",
                "5a1c0f6e-0000-4000-8000-000000000001",
            ),
            KeyValue::new("toolgate.agent.id", "spiffe://example.org/agent"),
        ])
        .build()
}

#[test]
fn an_action_span_is_encoded_as_the_exporter_encoded_it() {
    let s = span(
        "ticket.close",
        vec![
            KeyValue::new("toolgate.action", "ticket.close"),
            KeyValue::new("toolgate.decision", "allow"),
            KeyValue::new("http.response.status_code", 200_i64),
            KeyValue::new("toolgate.chain.length", 16_i64),
        ],
        scope(),
    );
    let r = resource();
    same(&ours(std::slice::from_ref(&s), &r), &reference(&[s], &r)).unwrap();
}

#[test]
fn every_field_and_value_kind_is_encoded_as_the_exporter_encoded_it() {
    let long = "x".repeat(20_000); // a length of three varint bytes, inside three messages
    let mut s = span(
        "data.export",
        vec![
            KeyValue::new("s", ""),
            KeyValue::new("b", false),
            KeyValue::new("t", true),
            KeyValue::new("i", 0_i64),
            KeyValue::new("neg", -42_i64),
            KeyValue::new("f", 0.0_f64),
            KeyValue::new("pi", std::f64::consts::PI),
            KeyValue::new("long", long.clone()),
            KeyValue::new("ünï", "çødé ✓"),
            KeyValue::new("ab", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("ai", Value::Array(Array::I64(vec![0, -1, i64::MAX]))),
            KeyValue::new("af", Value::Array(Array::F64(vec![1.5, -0.0]))),
            KeyValue::new(
                "as",
                Value::Array(Array::String(vec![
                    StringValue::from(""),
                    StringValue::from("a"),
                ])),
            ),
            KeyValue::new("empty", Value::Array(Array::I64(vec![]))),
        ],
        InstrumentationScope::builder("toolgate")
            .with_version("0.1.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.attr", 7_i64)])
            .build(),
    );
    s.span_context = context(1, 2, false, "vendor=opaque,other=x");
    s.parent_span_id = SpanId::from(3);
    s.parent_span_is_remote = true;
    s.span_kind = SpanKind::Server;
    s.dropped_attributes_count = 5;
    s.events = SpanEvents::default();
    s.events.events = vec![
        Event::new(
            "retry",
            SystemTime::UNIX_EPOCH + Duration::from_secs(9),
            vec![KeyValue::new("n", 1_i64)],
            2,
        ),
        Event::new("", SystemTime::UNIX_EPOCH, vec![], 0),
    ];
    s.events.dropped_count = 3;
    s.links = SpanLinks::default();
    s.links.links = vec![
        Link::new(
            context(7, 8, true, "k=v"),
            vec![KeyValue::new("toolgate.link", "previous")],
            1,
        ),
        Link::new(context(9, 10, false, ""), vec![], 0),
    ];
    s.links.dropped_count = 4;
    s.status = Status::error(long);
    let mut ok = span("payment.create", vec![], scope());
    ok.status = Status::Ok;
    ok.span_kind = SpanKind::Internal;
    let mut other_scope = span(
        "task",
        vec![KeyValue::new("k", "v")],
        InstrumentationScope::builder("other").build(),
    );
    other_scope.span_kind = SpanKind::Producer;
    let mut consumer = span("c", vec![], scope());
    consumer.span_kind = SpanKind::Consumer;
    consumer.end_time = SystemTime::UNIX_EPOCH;
    let r = Resource::builder_empty()
        .with_schema_url(
            [KeyValue::new("service.name", "toolgate")],
            "https://example.org/schema",
        )
        .build();
    let spans = [s, ok, other_scope, consumer];
    same(&ours(&spans, &r), &reference(&spans, &r)).unwrap();
    // And it decodes: the collector reads what it was sent.
    let decoded = ExportTraceServiceRequest::decode(ours(&spans, &r).as_slice()).unwrap();
    // Three scopes (the first with a schema and attributes), in order of first appearance.
    let scopes = &decoded.resource_spans[0].scope_spans;
    let names: Vec<(&str, usize)> = scopes
        .iter()
        .map(|s| (s.scope.as_ref().unwrap().name.as_str(), s.spans.len()))
        .collect();
    assert_eq!(names, [("toolgate", 1), ("toolgate", 2), ("other", 1)]);
    assert_eq!(
        scopes[0].spans[0].status.as_ref().unwrap().message.len(),
        20_000
    );
}

#[test]
fn no_spans_is_the_resource_alone() {
    let r = resource();
    same(&ours(&[], &r), &reference(&[], &r)).unwrap();
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,200}".prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::I64),
        any::<f64>().prop_map(Value::F64),
        proptest::collection::vec(".{0,20}", 0..4).prop_map(|v| Value::Array(Array::String(
            v.into_iter().map(StringValue::from).collect()
        ))),
        proptest::collection::vec(any::<i64>(), 0..4).prop_map(|v| Value::Array(Array::I64(v))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_spans_are_encoded_as_the_exporter_encoded_them(
        spans in proptest::collection::vec(
            (".{0,40}", proptest::collection::vec(("[a-z.]{1,20}", value()), 0..24), any::<u64>(), any::<u128>(), 0..3u8, proptest::option::of(".{0,300}")),
            0..6,
        ),
    ) {
        let spans: Vec<SpanData> = spans
            .into_iter()
            .map(|(name, attributes, id, trace, sc, error)| {
                let scope = match sc {
                    0 => scope(),
                    1 => InstrumentationScope::builder("b").build(),
                    _ => InstrumentationScope::builder("c").with_version("1").build(),
                };
                let mut s = span(&name, attributes.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect(), scope);
                s.span_context = context(trace, id, false, "");
                s.parent_span_id = SpanId::from(id.wrapping_add(1));
                if let Some(e) = error {
                    s.status = Status::error(e);
                }
                s
            })
            .collect();
        let r = resource();
        let checked = same(&ours(&spans, &r), &reference(&spans, &r));
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
