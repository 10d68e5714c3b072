//! Form bodies (`application/x-www-form-urlencoded`) read the way Rails (Rack), PHP and qs
//! (Express) agree on, or refused where they disagree.
//!
//! Each `name=value` field is split at its first `=` and both sides are percent-decoded (`+`
//! is a space; a malformed escape or invalid UTF-8 is refused). A name is `base`, then up to
//! five bracket groups `[key]`, the last of which may be `[]`:
//!
//! - `a=1` → `{"a": "1"}`; `a[b]=1` → `{"a": {"b": "1"}}`; `a[b][c]=1` nests further;
//! - `a[]=1&a[]=2` → `{"a": ["1", "2"]}`, in order;
//! - `a[0][b]=x` → `{"a": {"0": {"b": "x"}}}` — Rails keeps `"0"` a key, PHP and qs make an
//!   array, and a JSON pointer `/a/0/b` reads the same value from either.
//!
//! Refused, because the frameworks read them differently: a name used as more than one of a
//! value, a list (`[]`) and fields (`[k]`) (`a=1&a[b]=2`); unbalanced or stray brackets (`a[b`,
//! `a]b`, `a[b]c`, `[a]`, `a[b[c]]`); `[]` anywhere but last (`a[][b]`); more than five
//! bracket groups (qs keeps the rest as one literal key); a repeated name that is not a list;
//! numeric keys that do not run `0, 1, 2…` without a gap, or reach 20 (qs closes gaps and
//! turns large indices into keys); `.` or ` ` in the base (PHP reads them as `_`, Spring and
//! ASP.NET read `.` as nesting); an empty name (every framework drops the field); `]=` later in
//! a field than its first `=` (qs splits the field there); keys that differ only in case at
//! one level (Go, ASP.NET); more than 1,000 fields (qs and PHP ignore the rest); and a body that
//! starts like JSON (`{` or `[`), which frameworks that sniff would read as JSON.

#[cfg(test)]
mod tests;

use serde_json::map::Entry;
use serde_json::{Map, Value as Json};

use super::check_case;
use crate::normalise::{clip, Rejection};

/// Most fields a form may have: qs's `parameterLimit` and PHP's `max_input_vars`.
pub const MAX_FIELDS: usize = 1000;

/// Most bracket groups in one name: qs's default `depth`.
pub const MAX_DEPTH: usize = 5;

/// Numeric keys at one level must stay below this: qs's default `arrayLimit`.
pub const MAX_INDEX: usize = 20;

/// Why a form field's name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormNameError {
    #[error("unbalanced or stray brackets, which Rails, PHP and qs each read differently")]
    Brackets,
    #[error("'[]' anywhere but at the end of a name is read differently by Rails, PHP and qs")]
    AppendNotLast,
    #[error("more than {MAX_DEPTH} bracket groups (qs reads deeper groups as one literal key)")]
    TooDeep,
    #[error("the name is used as more than one of a value, a list ('[]') and fields ('[key]'); Rails refuses that, PHP keeps the last, qs merges")]
    Conflict,
    #[error("numeric keys at one level must run 0, 1, 2… without a gap and stay below {MAX_INDEX} (qs closes gaps and turns larger indices into keys)")]
    Indices,
    #[error("'.' or ' ' in a name: PHP reads it as '_', Spring and ASP.NET read '.' as nesting")]
    DotOrSpace,
    #[error("empty name: frameworks drop the field")]
    Empty,
    #[error("']=' after the field's first '=': qs ends the name there instead")]
    BracketEquals,
}

/// A form body as a JSON document: objects of strings, nested objects and lists of strings.
pub fn parse(bytes: &[u8]) -> Result<Json, Rejection> {
    if looks_like_json(bytes) {
        return Err(Rejection::JsonAsForm);
    }
    let mut root = Map::new();
    let mut fields = 0;
    for pair in bytes.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(Rejection::TooManyFields(MAX_FIELDS));
        }
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (pair.get(..i).unwrap_or_default(), pair.get(i + 1..)),
            None => (pair, None),
        };
        let name = decode(k)?;
        let value = v.map(decode).transpose()?.unwrap_or_default();
        let refuse = |why| Rejection::FormName {
            name: clip(&name),
            why,
        };
        if v.is_some_and(closes_bracket) {
            return Err(refuse(FormNameError::BracketEquals));
        }
        let path = Name::parse(&name).map_err(refuse)?;
        match insert(&mut root, &path, value) {
            Ok(()) => {}
            Err(Clash::Repeated) => return Err(Rejection::DuplicateKey(clip(&name))),
            Err(Clash::Conflict) => return Err(refuse(FormNameError::Conflict)),
        }
    }
    for (name, value) in &root {
        check_indices(value).map_err(|why| Rejection::FormName {
            name: clip(name),
            why,
        })?;
    }
    let doc = Json::Object(root);
    check_case(&doc)?;
    Ok(doc)
}

/// Whether a form body starts (after a byte-order mark and JSON whitespace) like a JSON object
/// or array.
pub fn looks_like_json(bytes: &[u8]) -> bool {
    let rest = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    rest.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .is_some_and(|b| matches!(b, b'{' | b'['))
}

/// A field name taken apart: `base[k1][k2]…`, with `[]` last if `append`.
#[derive(Debug, PartialEq, Eq)]
struct Name<'a> {
    base: &'a str,
    keys: Vec<&'a str>,
    append: bool,
}

impl<'a> Name<'a> {
    fn parse(name: &'a str) -> Result<Name<'a>, FormNameError> {
        let (base, mut rest) = name.split_at(name.find('[').unwrap_or(name.len()));
        if base.is_empty() {
            return Err(if rest.is_empty() {
                FormNameError::Empty
            } else {
                FormNameError::Brackets
            });
        }
        if base.contains(']') {
            return Err(FormNameError::Brackets);
        }
        if base.contains(['.', ' ']) {
            return Err(FormNameError::DotOrSpace);
        }
        let mut keys = Vec::new();
        let mut append = false;
        while let Some(open) = rest.strip_prefix('[') {
            if append {
                return Err(FormNameError::AppendNotLast);
            }
            let Some((inner, after)) = open.split_once(']') else {
                return Err(FormNameError::Brackets);
            };
            if inner.contains('[') {
                return Err(FormNameError::Brackets);
            }
            if inner.is_empty() {
                append = true;
            } else {
                keys.push(inner);
            }
            if keys.len() + usize::from(append) > MAX_DEPTH {
                return Err(FormNameError::TooDeep);
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err(FormNameError::Brackets);
        }
        Ok(Name { base, keys, append })
    }
}

enum Clash {
    /// The same name twice, not a list.
    Repeated,
    /// A name used as two of value, list and fields.
    Conflict,
}

fn insert(root: &mut Map<String, Json>, name: &Name<'_>, value: String) -> Result<(), Clash> {
    let mut path = std::iter::once(name.base).chain(name.keys.iter().copied());
    let mut last = path.next().unwrap_or(name.base);
    let mut node = root;
    for next in path {
        let child = node.entry(last).or_insert_with(|| Json::Object(Map::new()));
        node = match child {
            Json::Object(fields) => fields,
            _ => return Err(Clash::Conflict),
        };
        last = next;
    }
    if name.append {
        match node.entry(last).or_insert_with(|| Json::Array(Vec::new())) {
            Json::Array(items) => items.push(Json::String(value)),
            _ => return Err(Clash::Conflict),
        }
        return Ok(());
    }
    match node.entry(last) {
        Entry::Vacant(slot) => {
            slot.insert(Json::String(value));
            Ok(())
        }
        Entry::Occupied(slot) if slot.get().is_string() => Err(Clash::Repeated),
        Entry::Occupied(_) => Err(Clash::Conflict),
    }
}

/// Below the top level, numeric keys (`0`, `1`, no leading zero) are array indices to PHP
/// and qs: they must be `0..n` with `n` at most [`MAX_INDEX`], so that every reading puts
/// each value at the same index.
fn check_indices(value: &Json) -> Result<(), FormNameError> {
    let Json::Object(fields) = value else {
        return Ok(());
    };
    let mut indices = 0;
    let mut seen = [false; MAX_INDEX];
    for key in fields.keys() {
        let numeric = !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_digit())
            && (key == "0" || !key.starts_with('0'));
        if !numeric {
            continue;
        }
        let slot = key
            .parse::<usize>()
            .ok()
            .and_then(|i| seen.get_mut(i))
            .ok_or(FormNameError::Indices)?;
        *slot = true;
        indices += 1;
    }
    if seen.iter().take(indices).any(|s| !s) {
        return Err(FormNameError::Indices);
    }
    fields.values().try_for_each(check_indices)
}

/// qs looks for `]=` before it looks for `=`: a field whose value (after its first `=`)
/// holds `]=` — with `]` possibly encoded as `%5D` — is split elsewhere by qs.
fn closes_bracket(value: &[u8]) -> bool {
    let mut close = false;
    let mut bytes = value.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        let is_close = match b {
            b']' => true,
            b'%' => {
                let hi = bytes.next_if(|h| *h == b'5');
                hi.is_some() && bytes.next_if(|l| matches!(l, b'D' | b'd')).is_some()
            }
            b'=' if close => return true,
            _ => false,
        };
        close = is_close;
    }
    false
}

fn decode(raw: &[u8]) -> Result<String, Rejection> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(hex);
                let lo = bytes.next().and_then(hex);
                let (Some(h), Some(l)) = (hi, lo) else {
                    return Err(Rejection::BadForm);
                };
                out.push((h << 4) | l);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| Rejection::BodyNotUtf8)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}
