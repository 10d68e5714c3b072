//! Scrub: the injected credential never comes back. A tool that echoes request headers in its
//! response (httpbin-style endpoints, error messages, debug pages) would hand the agent the
//! secret toolgate injected; every form of it ([`toolgate_policy::credential::forms`]) is
//! masked in the response headers and, while streaming, in the body.
//!
//! Bodies are masked in place with `*`, one for one, so the response's framing
//! (`Content-Length`, ranges) stays true. A form split across two chunks is still found: the
//! end of a chunk that could begin a form is held back until the next chunk (or the end)
//! decides — at most the longest form minus one byte, so memory stays bounded and an SSE event
//! that ends a chunk is never delayed (no form begins with a line break).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use toolgate_policy::config::SecretText;

/// The byte body matches are masked with.
pub const MASK: u8 = b'*';

/// Masks every form of one credential in a streamed body.
pub struct BodyScrubber {
    finders: Vec<Finder<'static>>,
    /// The forms, longest first (the order `forms` gives).
    needles: Arc<[SecretText]>,
    longest: usize,
    /// The held-back end of the last chunk.
    pending: BytesMut,
    /// Matches masked so far.
    pub masked: u64,
}

impl std::fmt::Debug for BodyScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyScrubber")
            .field("forms", &self.needles.len())
            .field("pending", &self.pending.len())
            .field("masked", &self.masked)
            .finish()
    }
}

impl BodyScrubber {
    /// A scrubber for `needles`; `None` when there is nothing to look for.
    pub fn new(needles: Arc<[SecretText]>) -> Option<BodyScrubber> {
        let finders: Vec<Finder<'static>> = needles
            .iter()
            .map(|n| n.expose().as_bytes())
            .filter(|n| !n.is_empty())
            .map(|n| Finder::new(n).into_owned())
            .collect();
        let longest = finders.iter().map(|f| f.needle().len()).max()?;
        Some(BodyScrubber {
            finders,
            needles,
            longest,
            pending: BytesMut::new(),
            masked: 0,
        })
    }

    /// Scrub the next chunk; returns what can be passed on now.
    pub fn chunk(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let masked = mask(&self.finders, &mut self.pending);
        self.masked += masked;
        let hold = self.held_back();
        let ready = self.pending.len() - hold;
        self.pending.split_to(ready).freeze()
    }

    /// The end of the body: whatever was held back, scrubbed (no form can complete now).
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }

    /// Length of the longest end of `pending` that is a proper beginning of some form.
    fn held_back(&self) -> usize {
        let data = &self.pending[..];
        let max = data.len().min(self.longest.saturating_sub(1));
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = data.get(data.len() - k..).unwrap_or_default();
                self.finders
                    .iter()
                    .any(|f| f.needle().len() > k && f.needle().starts_with(tail))
            })
            .unwrap_or(0)
    }
}

/// Mask every occurrence of every needle in `data` (longer needles first); returns how many.
fn mask(finders: &[Finder<'static>], data: &mut [u8]) -> u64 {
    let mut count = 0;
    for finder in finders {
        let len = finder.needle().len();
        let mut from = 0;
        while let Some(i) = data.get(from..).and_then(|rest| finder.find(rest)) {
            let start = from + i;
            if let Some(hit) = data.get_mut(start..start + len) {
                hit.fill(MASK);
                count += 1;
            }
            from = start + len;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn scrubber(values: &[&str]) -> BodyScrubber {
        BodyScrubber::new(toolgate_policy::credential::forms::forms(values).into()).unwrap()
    }

    fn through(s: &mut BodyScrubber, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.chunk(c));
        }
        out.extend_from_slice(&s.finish());
        out
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked_in_place() {
        let body = b"{\"headers\":{\"Authorization\":\"Bearer s3cret-token-1\"}}";
        for cut in 0..body.len() {
            let mut s = scrubber(&["s3cret-token-1", "Bearer s3cret-token-1"]);
            let out = through(&mut s, &[&body[..cut], &body[cut..]]);
            assert_eq!(out.len(), body.len(), "the length is kept");
            assert!(
                !String::from_utf8_lossy(&out).contains("s3cret"),
                "cut {cut}: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn a_chunk_that_cannot_begin_a_secret_is_passed_on_whole() {
        let mut s = scrubber(&["s3cret-token-1"]);
        let event = b"data: {\"ok\":true}\n\n";
        assert_eq!(&s.chunk(event)[..], event, "nothing held back");
        // A chunk ending in the beginning of the secret is held back until it is decided.
        let held = s.chunk(b"data: s3cr");
        assert_eq!(&held[..], b"data: ");
        assert_eq!(&s.chunk(b"ambled\n\n")[..], b"s3crambled\n\n");
    }

    #[test]
    fn memory_held_is_bounded_by_the_longest_form() {
        let mut s = scrubber(&["s3cret-token-1"]);
        let longest = s.longest;
        for _ in 0..1000 {
            let _ = s.chunk(b"s3cret-token-");
            assert!(s.pending.len() < longest);
        }
    }
}
