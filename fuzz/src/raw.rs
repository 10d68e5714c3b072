//! A raw HTTP/1.1 request as the fuzz input: `METHOD SP TARGET SP HTTP/1.1`, header lines,
//! a blank line, the body. Seeds are real requests, readable and editable as text; the
//! reading is lenient on purpose (any bytes give a request) so that mutations reach the
//! library rather than die in the harness.

use http::{HeaderMap, HeaderName, HeaderValue};

/// One request taken apart the way the proxy hands it to the policy crate.
#[derive(Debug)]
pub struct RawRequest<'a> {
    /// The method, as text (invalid UTF-8 replaced, as no HTTP parser would pass it anyway).
    pub method: String,
    /// The request target exactly as sent.
    pub target: &'a [u8],
    /// The request line and header lines as received: what `normalise::raw_framing` reads.
    pub head: &'a [u8],
    /// The header lines that are valid field names and values, in order (duplicates kept);
    /// an HTTP parser refuses the others before toolgate sees the request.
    pub headers: HeaderMap,
    /// Everything after the blank line.
    pub body: &'a [u8],
}

impl<'a> RawRequest<'a> {
    /// Read `data` as a request head and body. `None` when there is no request line at all.
    pub fn parse(data: &'a [u8]) -> Option<RawRequest<'a>> {
        let (head, body) = match find(data, b"\r\n\r\n") {
            Some(i) => (&data[..i], &data[i + 4..]),
            None => match find(data, b"\n\n") {
                Some(i) => (&data[..i], &data[i + 2..]),
                None => (data, &data[data.len()..]),
            },
        };
        let mut lines = head.split(|b| *b == b'\n').map(strip_cr);
        let line = lines.next()?;
        let space = line.iter().position(|b| *b == b' ')?;
        let method = String::from_utf8_lossy(&line[..space]).into_owned();
        let rest = &line[space + 1..];
        // The target runs to the last space when a protocol version follows it.
        let target = match rest.iter().rposition(|b| *b == b' ') {
            Some(i) if rest[i + 1..].starts_with(b"HTTP/") => &rest[..i],
            _ => rest,
        };
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let value = line[colon + 1..].trim_ascii();
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        Some(RawRequest {
            method,
            target,
            head,
            headers,
            body,
        })
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
