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
use std::sync::{Arc, OnceLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use toolgate_policy::config::SecretText;

/// The byte body matches are masked with.
pub const MASK: u8 = b'*';

/// Searchers for every form of one credential value, longest first. Building a searcher costs
/// about 25 instructions per byte of its needle, so they are built once per value and shared
/// ([`Finders::of`]), not once per request — and a long form is searched by its end only
/// ([`Form`]): a minted token is a new value on every request, with ~9 forms of 300–600 bytes.
pub struct Finders {
    forms: Vec<Form>,
    longest: usize,
    /// The bytes forms begin with.
    first: [bool; 256],
    /// All forms at once, answering "does any occur?" in one pass — built when these
    /// searchers are reused and their forms are short (a configured secret's, on its second
    /// use on a thread), never for a minted token's: their forms serve one request, and an
    /// automaton over several kilobytes of them costs tens of thousands of times one search.
    any: OnceLock<Option<AhoCorasick>>,
}

impl std::fmt::Debug for Finders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finders")
            .field("forms", &self.forms.len())
            .finish_non_exhaustive()
    }
}

/// Forms longer than this are searched by their last [`WINDOW`] bytes, then compared whole.
const WHOLE_UP_TO: usize = 64;
/// How much of a long form's end is searched for.
const WINDOW: usize = 32;
/// The most bytes of forms (all of one value's) searched with one automaton.
const ANY_UP_TO: usize = 2048;

/// One form and its searcher: over the whole form, or over its last [`WINDOW`] bytes, each hit
/// of which is confirmed by comparing the whole form. Same matches either way; a window is
/// used only when its shortest period is at least half its length, so its hits are at least
/// `WINDOW / 2` bytes apart and confirming them costs at most `len / 16` byte comparisons
/// (one vectorised `memcmp` per hit) per byte searched — a tool that repeats the window
/// cannot make the search quadratic.
struct Form {
    needle: Box<[u8]>,
    finder: Finder<'static>,
}

impl Form {
    fn new(needle: &[u8]) -> Form {
        let window = needle
            .len()
            .checked_sub(WINDOW)
            .filter(|_| needle.len() > WHOLE_UP_TO)
            .and_then(|at| needle.get(at..))
            .filter(|w| shortest_period(w) >= WINDOW / 2);
        Form {
            needle: needle.into(),
            finder: Finder::new(window.unwrap_or(needle)).into_owned(),
        }
    }

    /// Where the form first occurs in `haystack`.
    fn find(&self, haystack: &[u8]) -> Option<usize> {
        let (m, w) = (self.needle.len(), self.finder.needle().len());
        if w == m {
            return self.finder.find(haystack);
        }
        // A form starting at `s` has its window at `s + m - w`.
        let mut from = m - w;
        while let Some(i) = haystack.get(from..).and_then(|rest| self.finder.find(rest)) {
            let start = from + i + w - m;
            if haystack.get(start..start + m) == Some(&self.needle[..]) {
                return Some(start);
            }
            from += i + 1;
        }
        None
    }
}

/// The shortest period of a window `s` (its length when it has none shorter), by the prefix
/// function (a form's window is [`WINDOW`] bytes).
fn shortest_period(s: &[u8]) -> usize {
    let s = s.get(..WINDOW).unwrap_or(s);
    let mut border = [0usize; WINDOW];
    let mut k = 0;
    for i in 1..s.len() {
        while k > 0 && s.get(i) != s.get(k) {
            k = border.get(k - 1).copied().unwrap_or(0);
        }
        if s.get(i) == s.get(k) {
            k += 1;
        }
        if let Some(b) = border.get_mut(i) {
            *b = k;
        }
    }
    s.len()
        - s.len()
            .checked_sub(1)
            .and_then(|i| border.get(i))
            .copied()
            .unwrap_or(0)
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
        let forms: Vec<Form> = needles
            .iter()
            .map(|n| n.expose().as_bytes())
            .filter(|n| !n.is_empty())
            .map(Form::new)
            .collect();
        let longest = forms.iter().map(|f| f.needle.len()).max()?;
        let mut first = [false; 256];
        for f in &forms {
            if let Some(b) = f
                .needle
                .first()
                .and_then(|&b| first.get_mut(usize::from(b)))
            {
                *b = true;
            }
        }
        Some(Finders {
            forms,
            longest,
            first,
            any: OnceLock::new(),
        })
    }

    /// Build the all-forms searcher (once), if the forms are short enough.
    fn reused(&self) {
        if self.forms.iter().map(|f| f.needle.len()).sum::<usize>() > ANY_UP_TO {
            return;
        }
        self.any.get_or_init(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                // Small (no DFA tables per thread); the literal prefilter does the searching.
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(self.forms.iter().map(|f| &f.needle[..]))
                .ok()
        });
    }

    /// The searchers for `needles`; `None` when there is nothing to look for. Reused while
    /// the same forms (the same `Arc`, as a configured secret's) come back on this thread.
    pub fn of(needles: &Arc<[SecretText]>) -> Option<Arc<Finders>> {
        let hit = CACHE.with(|c| {
            let mut cache = c.try_borrow_mut().ok()?;
            let i = cache.iter().position(|(k, _)| Arc::ptr_eq(k, needles))?;
            let entry = cache.remove(i);
            let finders = entry.1.clone();
            finders.reused();
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
        match self.any.get() {
            Some(Some(any)) => any.is_match(haystack),
            _ => self.forms.iter().any(|f| f.find(haystack).is_some()),
        }
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
        let masked = if self.finders.any_in(&self.pending) {
            mask(&self.finders.forms, &mut self.pending)
        } else {
            0
        };
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
        // Only a byte some form begins with can begin a held-back end: one table look-up per
        // byte of the last `longest - 1`, a comparison only where one of them is.
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = data.get(data.len() - k..).unwrap_or_default();
                tail.first()
                    .is_some_and(|&b| self.finders.first.get(usize::from(b)) == Some(&true))
                    && self
                        .finders
                        .forms
                        .iter()
                        .any(|f| f.needle.len() > k && f.needle.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

/// Mask every occurrence of every needle in `data` (longer needles first); returns how many.
fn mask(forms: &[Form], data: &mut [u8]) -> u64 {
    let mut count = 0;
    for form in forms {
        let len = form.needle.len();
        let mut from = 0;
        while let Some(i) = data.get(from..).and_then(|rest| form.find(rest)) {
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

    #[test]
    fn a_configured_secret_reused_is_masked_through_the_all_forms_searcher() {
        let needles: Arc<[SecretText]> = toolgate_policy::credential::forms::forms(&[
            "s3cr/et-token-42",
            "Bearer s3cr/et-token-42",
        ])
        .into();
        let first = BodyScrubber::new(needles.clone()).unwrap();
        assert!(first.finders.any.get().is_none(), "not built for one use");
        for round in 0..3 {
            let mut s = BodyScrubber::new(needles.clone()).unwrap();
            assert!(
                matches!(s.finders.any.get(), Some(Some(_))),
                "round {round}"
            );
            // Every form is still found, split or whole; an ordinary body passes unchanged.
            let body =
                "{\"h\":\"Bearer%20s3cr%2Fet%2Dtoken%2D42\",\"b\":\"czNjci9ldC10b2tlbi00Mg\"}";
            let out = through(&mut s, &[&body.as_bytes()[..20], &body.as_bytes()[20..]]);
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains("s3cr") && !out.contains("token"), "{out}");
            assert_eq!(s.masked, 2);
            let plain = b"{\"ok\":true,\"s3cr\":\"et\"}";
            assert_eq!(through(&mut s, &[plain]), plain.to_vec());
            assert!(s.finders.any_in(b"x: s3cr/et-token-42"));
            assert!(!s.finders.any_in(b"x: s3cr/et-token-4"));
        }
    }

    #[test]
    fn a_window_is_used_only_when_it_is_not_periodic() {
        assert_eq!(shortest_period(b"abcabcab"), 3);
        assert_eq!(shortest_period(&[b'a'; WINDOW]), 1);
        assert_eq!(shortest_period(b"abcd"), 4);
        let token: Vec<u8> = (0..200u32)
            .map(|i| b'A' + ((i * 7 + i / 5) % 26) as u8)
            .collect();
        assert_eq!(Form::new(&token).finder.needle().len(), WINDOW);
        let short = Form::new(&token[..WHOLE_UP_TO]);
        assert_eq!(short.finder.needle().len(), WHOLE_UP_TO);
        // A form ending in a run of one byte is searched whole.
        let mut padded = token.clone();
        padded.extend_from_slice(&[b'='; WINDOW]);
        assert_eq!(Form::new(&padded).finder.needle().len(), padded.len());
    }

    #[test]
    fn a_minted_token_split_across_chunks_is_masked_whole() {
        // A JWT-sized token: its forms are long, so each is found by its end and confirmed.
        let token: String = (0..420u32)
            .map(|i| {
                char::from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
                        [(i * 31 % 65) as usize],
                )
            })
            .collect();
        // Decoys: the token's end after a different start, and its start alone.
        let body = format!(
            "{{\"x\":\"zz{}\",\"y\":\"{}\",\"auth\":\"{token}\"}}",
            &token[5..],
            &token[..300]
        );
        let needles: Arc<[SecretText]> =
            toolgate_policy::credential::forms::forms(&[&token]).into();
        for cut in [0, 1, 20, 300, 420, body.len() - 3, body.len()] {
            let mut s = BodyScrubber::new(needles.clone()).unwrap();
            let out = through(&mut s, &[&body.as_bytes()[..cut], &body.as_bytes()[cut..]]);
            let want = body.replace(&token, &"*".repeat(token.len()));
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut {cut}");
            assert_eq!(s.masked, 1, "the decoys are not the token");
            // The header scrub and the body share the forms: no automaton for one request's.
            assert!(s.finders.any.get().is_none());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Searching a long form by its end finds exactly what searching the whole form finds,
        /// on haystacks made of the form's own pieces (near misses, overlaps, repeats).
        #[test]
        fn a_windowed_search_finds_what_a_whole_search_finds(
            needle in proptest::collection::vec(0u8..4, 65..200),
            pieces in proptest::collection::vec((0usize..200, 0usize..200, 0u8..4), 0..12),
        ) {
            let mut haystack = Vec::new();
            for (a, b, noise) in pieces {
                let (a, b) = (a.min(needle.len()), b.min(needle.len()));
                haystack.extend_from_slice(&needle[a.min(b)..a.max(b)]);
                haystack.push(noise);
                if a % 3 == 0 {
                    haystack.extend_from_slice(&needle);
                }
            }
            let form = Form::new(&needle);
            let mut from = 0;
            loop {
                let want = memchr::memmem::find(&haystack[from..], &needle);
                proptest::prop_assert_eq!(form.find(&haystack[from..]), want);
                match want {
                    Some(i) => from += i + 1,
                    None => break,
                }
            }
        }
    }
}
