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

use std::cell::RefCell;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use toolgate_policy::config::SecretText;

/// The byte body matches are masked with.
pub const MASK: u8 = b'*';

/// Searchers for every form of one credential value, longest first. Building one costs about
/// as much as a policy decision (13 forms of a secret: ~25 k instructions with the copies),
/// so they are built once per value and shared ([`Finders::of`]), not once per request.
pub struct Finders {
    finders: Vec<Finder<'static>>,
    longest: usize,
}

impl std::fmt::Debug for Finders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finders")
            .field("forms", &self.finders.len())
            .finish_non_exhaustive()
    }
}

/// How many credential values each thread keeps searchers for: a static secret hits every
/// time; a minted token (new each request) replaces the oldest.
const CACHED: usize = 8;

/// Searchers by the identity of their forms (`Arc::ptr_eq`), most recent first.
type Cached = Vec<(Arc<[SecretText]>, Arc<Finders>)>;

thread_local! {
    static CACHE: RefCell<Cached> = const { RefCell::new(Vec::new()) };
}

impl Finders {
    fn build(needles: &[SecretText]) -> Option<Finders> {
        let finders: Vec<Finder<'static>> = needles
            .iter()
            .map(|n| n.expose().as_bytes())
            .filter(|n| !n.is_empty())
            .map(|n| Finder::new(n).into_owned())
            .collect();
        let longest = finders.iter().map(|f| f.needle().len()).max()?;
        Some(Finders { finders, longest })
    }

    /// The searchers for `needles`; `None` when there is nothing to look for. Reused while
    /// the same forms (the same `Arc`, as a configured secret's) come back on this thread.
    pub fn of(needles: &Arc<[SecretText]>) -> Option<Arc<Finders>> {
        let hit = CACHE.with(|c| {
            let mut cache = c.try_borrow_mut().ok()?;
            let i = cache.iter().position(|(k, _)| Arc::ptr_eq(k, needles))?;
            let entry = cache.remove(i);
            let finders = entry.1.clone();
            cache.insert(0, entry);
            Some(finders)
        });
        if hit.is_some() {
            return hit;
        }
        let built = Arc::new(Finders::build(needles)?);
        CACHE.with(|c| {
            if let Ok(mut cache) = c.try_borrow_mut() {
                cache.truncate(CACHED - 1);
                cache.insert(0, (needles.clone(), built.clone()));
            }
        });
        Some(built)
    }

    /// Whether any form occurs in `haystack`.
    pub fn any_in(&self, haystack: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(haystack).is_some())
    }
}

/// Masks every form of one credential in a streamed body.
pub struct BodyScrubber {
    finders: Arc<Finders>,
    /// The forms, longest first (the order `forms` gives).
    needles: Arc<[SecretText]>,
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
        let finders = Finders::of(&needles)?;
        Some(BodyScrubber {
            finders,
            needles,
            pending: BytesMut::new(),
            masked: 0,
        })
    }

    /// Scrub the next chunk; returns what can be passed on now.
    pub fn chunk(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let masked = mask(&self.finders.finders, &mut self.pending);
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
        let max = data.len().min(self.finders.longest.saturating_sub(1));
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = data.get(data.len() - k..).unwrap_or_default();
                self.finders
                    .finders
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
    fn searchers_kept_for_one_credential_never_serve_another() {
        // Built once per credential value and kept per thread: a minted token is a new value
        // on every request, and each must be masked with its own searchers, not the last's.
        let mut seen = Vec::new();
        for i in 0..(2 * CACHED) {
            let token = format!("minted-token-{i:04}");
            let mut s = scrubber(&[&token]);
            let body = format!("a {token} b minted-token-9999");
            let out = through(&mut s, &[body.as_bytes()]);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("a {} b minted-token-9999", "*".repeat(token.len()))
            );
            seen.push(token);
        }
        // The positive control: the first value, asked again, is masked again.
        let mut s = scrubber(&[&seen[0]]);
        assert_eq!(
            through(&mut s, &[seen[0].as_bytes()]),
            vec![MASK; seen[0].len()]
        );
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
        let longest = s.finders.longest;
        for _ in 0..1000 {
            let _ = s.chunk(b"s3cret-token-");
            assert!(s.pending.len() < longest);
        }
    }
}
