//! Path templates (`/rest/api/3/issue/{issue}`) and the per-method trie that matches them.
//!
//! A template segment is either a literal or a whole-segment capture; a capture never matches
//! an empty segment. Lookup cost depends on
//! the request's depth, not on the number of templates: at each segment the trie follows the
//! literal child and the capture child. The most specific template wins: at the first segment
//! where two matching templates differ, a literal beats a capture; remaining ties go to the
//! template listed first.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Longest template (in segments) the catalog accepts; specificity is a 64-bit mask.
pub const MAX_SEGMENTS: usize = 64;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Capture(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

/// Why a path template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("must start with '/'")]
    NoLeadingSlash,
    #[error("empty segment ('//') is not allowed")]
    EmptySegment,
    #[error("segment {0:?} mixes text and a placeholder: a placeholder must be a whole segment")]
    PartialPlaceholder(String),
    #[error("placeholder {{{0}}} is not a valid name (letters, digits, '_')")]
    BadPlaceholder(String),
    #[error("placeholder {{{0}}} appears twice")]
    DuplicatePlaceholder(String),
    #[error("'.' and '..' segments are not allowed")]
    DotSegment,
    #[error("more than {MAX_SEGMENTS} segments")]
    TooLong,
    #[error("segment {0:?} contains a character that requests are normalised away from ('%', ';', '\\', '?' or '#')")]
    Unnormalised(String),
}

impl FromStr for PathTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix('/').ok_or(TemplateError::NoLeadingSlash)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() > MAX_SEGMENTS {
            return Err(TemplateError::TooLong);
        }
        let mut segments = Vec::with_capacity(parts.len());
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.iter().enumerate() {
            // A trailing empty segment is a trailing slash, which is part of the path.
            if part.is_empty() && i != last {
                return Err(TemplateError::EmptySegment);
            }
            if *part == "." || *part == ".." {
                return Err(TemplateError::DotSegment);
            }
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(TemplateError::BadPlaceholder(name.to_string()));
                }
                if segments
                    .iter()
                    .any(|s| matches!(s, Segment::Capture(n) if n == name))
                {
                    return Err(TemplateError::DuplicatePlaceholder(name.to_string()));
                }
                segments.push(Segment::Capture(name.to_string()));
            } else if part.contains(['{', '}']) {
                return Err(TemplateError::PartialPlaceholder((*part).to_string()));
            } else if part.contains(['%', ';', '\\', '?', '#']) {
                return Err(TemplateError::Unnormalised((*part).to_string()));
            } else {
                segments.push(Segment::Literal((*part).to_string()));
            }
        }
        Ok(PathTemplate { segments })
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            match s {
                Segment::Literal(l) => write!(f, "/{l}")?,
                Segment::Capture(c) => write!(f, "/{{{c}}}")?,
            }
        }
        Ok(())
    }
}

impl PathTemplate {
    /// Index of the capture named `name`, counted among captures only.
    pub fn capture_index(&self, name: &str) -> Option<usize> {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Capture(_)))
            .position(|s| matches!(s, Segment::Capture(n) if n == name))
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

/// A template match: which entry, how specific, and the captured segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub entry: usize,
    /// Bit (63 - i) is set when segment i matched a literal: higher is more specific.
    pub specificity: u64,
}

/// A trie of path templates; each terminal holds every entry inserted for that template, in
/// the order [`Trie::order`] gives them.
#[derive(Debug, Default)]
pub struct Trie {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    capture: Option<Box<Node>>,
    terminal: Vec<usize>,
}

impl Trie {
    /// Add a template for `entry`; entries sharing a template keep insertion order.
    pub fn insert(&mut self, template: &PathTemplate, entry: usize) {
        let mut node = &mut self.root;
        for segment in &template.segments {
            node = match segment {
                Segment::Literal(l) => node.literals.entry(l.as_str().into()).or_default(),
                Segment::Capture(_) => node.capture.get_or_insert_with(Box::default),
            };
        }
        node.terminal.push(entry);
    }

    /// Sort the entries of every template by `key` (stable: equal keys keep insertion order).
    pub fn order<K: Ord>(&mut self, key: &impl Fn(usize) -> K) {
        fn walk<K: Ord>(node: &mut Node, key: &impl Fn(usize) -> K) {
            node.terminal.sort_by_key(|e| key(*e));
            for child in node.literals.values_mut() {
                walk(child, key);
            }
            if let Some(child) = node.capture.as_deref_mut() {
                walk(child, key);
            }
        }
        walk(&mut self.root, key);
    }

    /// The most specific template matching `segments` (decoded path segments): its first entry.
    pub fn lookup<S: AsRef<str>>(&self, segments: &[S]) -> Option<Match> {
        self.find(segments, &mut |specificity, entries| {
            entries.first().map(|&entry| Match { entry, specificity })
        })
    }

    /// Visit the templates matching `segments`, most specific first, with their entries,
    /// until `visit` returns `Some`. Cost depends on the request's depth and the templates
    /// that match it, not on the number of templates.
    pub fn find<S: AsRef<str>, T>(
        &self,
        segments: &[S],
        visit: &mut impl FnMut(u64, &[usize]) -> Option<T>,
    ) -> Option<T> {
        if segments.len() > MAX_SEGMENTS {
            return None;
        }
        find(&self.root, segments, 0, 0, visit)
    }
}

fn find<S: AsRef<str>, T>(
    node: &Node,
    segments: &[S],
    depth: usize,
    mask: u64,
    visit: &mut impl FnMut(u64, &[usize]) -> Option<T>,
) -> Option<T> {
    let Some((first, rest)) = segments.split_first() else {
        if node.terminal.is_empty() {
            return None;
        }
        return visit(mask, &node.terminal);
    };
    // Depth-first, literal before capture: matches come in order of decreasing specificity.
    if let Some(child) = node.literals.get(first.as_ref()) {
        let bit = 1u64
            .checked_shl(63u32.saturating_sub(depth as u32))
            .unwrap_or(0);
        if let Some(m) = find(child, rest, depth + 1, mask | bit, visit) {
            return Some(m);
        }
    }
    // A capture names a value: the empty segment after a trailing '/' is not one
    // (`/issue/` is not `/issue/{issue}` with `issue: ""`).
    if first.as_ref().is_empty() {
        return None;
    }
    node.capture
        .as_deref()
        .and_then(|child| find(child, rest, depth + 1, mask, visit))
}
