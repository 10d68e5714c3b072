//! The OTLP/HTTP request body (`ExportTraceServiceRequest`, protobuf), written straight from
//! the SDK's spans into one buffer: the resource once at start, each span field by field.
//!
//! The OpenTelemetry exporter first converted every span into the generated protobuf types
//! (a `String` and a `Vec` per id, attribute and value) and then encoded those, computing each
//! nested message's length again at every level: ~40 k instructions per span on the export
//! thread, 14 % of a request's (callgrind, `benches/load/count.py --row secret`). Here a nested
//! message is written in place behind a one-byte length, moved only when it is longer than
//! 127 bytes. The bytes are the same as the generated types' encoding (fields by number,
//! proto3 defaults left out, oneof members always written): `tests` compares them.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, StringValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` and `…_IS_REMOTE_MASK`.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The body's fixed part: the resource every span is exported under.
#[derive(Debug, Default)]
pub struct Body {
    /// `ResourceSpans.resource`, encoded (tag included).
    resource: Vec<u8>,
    /// `ResourceSpans.schema_url`.
    schema_url: String,
}

impl Body {
    /// The body for spans of `resource`.
    pub fn new(resource: &Resource) -> Body {
        let mut out = Vec::new();
        // ResourceSpans.resource = 1: Resource { attributes = 1, dropped = 2 (0) }.
        message(&mut out, 1, |out| {
            for (k, v) in resource.iter() {
                key_value(out, 1, k.as_str(), v);
            }
        });
        Body {
            resource: out,
            schema_url: resource.schema_url().unwrap_or_default().to_string(),
        }
    }

    /// Append `ExportTraceServiceRequest { resource_spans: [one] }` for `spans` to `out`,
    /// grouped into one `ScopeSpans` per instrumentation scope, in order of first appearance.
    /// Fields are written in the order of their numbers, as `prost` writes them.
    pub fn encode(&self, spans: &[SpanData], out: &mut Vec<u8>) {
        // Nearly always one scope: a linear search beats hashing.
        let mut scopes: Vec<&InstrumentationScope> = Vec::new();
        let mut of: Vec<usize> = Vec::with_capacity(spans.len());
        for s in spans {
            let i = match scopes.iter().position(|sc| *sc == &s.instrumentation_scope) {
                Some(i) => i,
                None => {
                    scopes.push(&s.instrumentation_scope);
                    scopes.len() - 1
                }
            };
            of.push(i);
        }
        out.reserve(spans.len() * 512);
        // ExportTraceServiceRequest.resource_spans = 1.
        message(out, 1, |out| {
            out.extend_from_slice(&self.resource);
            for (i, scope) in scopes.iter().enumerate() {
                // ResourceSpans.scope_spans = 2.
                message(out, 2, |out| {
                    // ScopeSpans.scope = 1.
                    message(out, 1, |out| {
                        string(out, 1, scope.name());
                        string(out, 2, scope.version().unwrap_or_default());
                        for kv in scope.attributes() {
                            key_value(out, 3, kv.key.as_str(), &kv.value);
                        }
                    });
                    for (s, _) in spans.iter().zip(&of).filter(|(_, &o)| o == i) {
                        // ScopeSpans.spans = 2.
                        message(out, 2, |out| span(out, s));
                    }
                    string(out, 3, scope.schema_url().unwrap_or_default());
                });
            }
            string(out, 3, &self.schema_url);
        });
    }
}

/// One `Span`'s fields.
fn span(out: &mut Vec<u8>, s: &SpanData) {
    let cx = &s.span_context;
    bytes(out, 1, &cx.trace_id().to_bytes());
    bytes(out, 2, &cx.span_id().to_bytes());
    string(out, 3, &cx.trace_state().header());
    if s.parent_span_id != SpanId::INVALID {
        bytes(out, 4, &s.parent_span_id.to_bytes());
    }
    string(out, 5, &s.name);
    varint_field(out, 6, kind(&s.span_kind));
    fixed64(out, 7, nanos(s.start_time));
    fixed64(out, 8, nanos(s.end_time));
    for kv in &s.attributes {
        key_value(out, 9, kv.key.as_str(), &kv.value);
    }
    varint_field(out, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        message(out, 11, |out| {
            fixed64(out, 1, nanos(e.timestamp));
            string(out, 2, &e.name);
            for kv in &e.attributes {
                key_value(out, 3, kv.key.as_str(), &kv.value);
            }
            varint_field(out, 4, u64::from(e.dropped_attributes_count));
        });
    }
    varint_field(out, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        message(out, 13, |out| {
            let cx = &l.span_context;
            bytes(out, 1, &cx.trace_id().to_bytes());
            bytes(out, 2, &cx.span_id().to_bytes());
            string(out, 3, &cx.trace_state().header());
            for kv in &l.attributes {
                key_value(out, 4, kv.key.as_str(), &kv.value);
            }
            varint_field(out, 5, u64::from(l.dropped_attributes_count));
            fixed32(out, 6, flags(cx.is_remote(), cx.trace_flags().to_u8()));
        });
    }
    varint_field(out, 14, u64::from(s.links.dropped_count));
    // Status = 15, always present: message = 2, code = 3.
    message(out, 15, |out| match &s.status {
        Status::Unset => {}
        Status::Ok => varint_field(out, 3, 1),
        Status::Error { description } => {
            string(out, 2, description);
            varint_field(out, 3, 2);
        }
    });
    fixed32(
        out,
        16,
        flags(s.parent_span_is_remote, cx.trace_flags().to_u8()),
    );
}

fn flags(remote: bool, trace_flags: u8) -> u32 {
    let mut f = u32::from(trace_flags) | HAS_IS_REMOTE;
    if remote {
        f |= IS_REMOTE;
    }
    f
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A `KeyValue { key = 1, value = 2 }` as field `field`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |out| {
        string(out, 1, key);
        message(out, 2, |out| any_value(out, value));
    });
}

/// An `AnyValue`'s oneof member (always written, even when it is the default).
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => len_field(out, 1, s.as_str().as_bytes()),
        Value::Bool(b) => {
            tag(out, 2, VARINT);
            varint(out, u64::from(*b));
        }
        Value::I64(i) => {
            tag(out, 3, VARINT);
            varint(out, *i as u64);
        }
        Value::F64(f) => {
            tag(out, 4, FIXED64);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Array(a) => message(out, 5, |out| array(out, a)),
        // A value kind newer than this encoder: an empty AnyValue (never a panic).
        _ => {}
    }
}

/// `ArrayValue { values = 1 }`.
fn array(out: &mut Vec<u8>, a: &Array) {
    match a {
        Array::Bool(v) => v
            .iter()
            .for_each(|b| message(out, 1, |out| any_value(out, &Value::Bool(*b)))),
        Array::I64(v) => v
            .iter()
            .for_each(|i| message(out, 1, |out| any_value(out, &Value::I64(*i)))),
        Array::F64(v) => v
            .iter()
            .for_each(|f| message(out, 1, |out| any_value(out, &Value::F64(*f)))),
        Array::String(v) => v.iter().for_each(|s: &StringValue| {
            message(out, 1, |out| len_field(out, 1, s.as_str().as_bytes()))
        }),
        _ => {}
    }
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - (v | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// A proto3 scalar: left out when zero.
fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, VARINT);
        varint(out, v);
    }
}

fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(out, field, FIXED32);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A length-delimited field, written even when empty (oneof members).
fn len_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A proto3 string: left out when empty.
fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        len_field(out, field, s.as_bytes());
    }
}

/// A proto3 bytes field: left out when empty.
fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        len_field(out, field, b);
    }
}

/// A nested message as field `field`, always written (even empty): its fields are written in
/// place behind a one-byte length, which grows — moving them — only past 127 bytes.
fn message(out: &mut Vec<u8>, field: u32, fields: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    let at = out.len();
    out.push(0);
    fields(out);
    let len = out.len() - at - 1;
    let extra = varint_len(len) - 1;
    if extra > 0 {
        let end = out.len();
        out.resize(end + extra, 0);
        out.copy_within(at + 1..end, at + 1 + extra);
    }
    let mut v = len;
    for b in out.iter_mut().skip(at).take(1 + extra) {
        *b = if v >= 0x80 { (v as u8) | 0x80 } else { v as u8 };
        v >>= 7;
    }
}

#[cfg(test)]
mod tests;
