//! Names as tools compare them. Frameworks disagree on when two spellings of a parameter,
//! body key or header name are the same name: Go's `encoding/json` and ASP.NET bind keys
//! case-insensitively, PHP turns `.` and ` ` in a parameter name into `_`, CGI, PHP and
//! nginx-fastcgi map `-` and `_` in header names to one variable. toolgate compares names
//! the way the most lenient of them does, so that two spellings one tool reads as one name
//! are refused, or read as that name, rather than read as two.

/// Headers that ask a server to treat the request as another method.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers that ask a server to route the request to another URL (Symfony, IIS URL Rewrite,
/// Zend): the proxy decides on one path and the tool serves another.
pub const URL_OVERRIDE_HEADERS: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-override-url"];

/// The parameter Rails, Laravel, Symfony and Express's `method-override` read as the method.
pub const METHOD_PARAMETER: &str = "_method";

/// What an override header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    Method,
    Url,
}

/// The key under which case-insensitive binders file a name: each character lower-cased,
/// then upper-cased, one character to one, as Go's `encoding/json` folds field names. Under
/// it `ID`, `Id` and `id` are one key, and so are `ıd` (dotless i) and `\u{212A}ey` (Kelvin
/// sign) with `id` and `key`, which Go binds to the same field.
pub fn fold(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_uppercase();
    }
    s.chars().map(|c| simple_upper(simple_lower(c))).collect()
}

/// Whether two distinct names are one name to a case-insensitive binder.
pub fn same_folded(a: &str, b: &str) -> bool {
    a != b && fold(a) == fold(b)
}

/// The lower-case mapping of `c` when it is one character (Unicode's simple mapping, as Go's
/// `unicode.ToLower`); `İ` (U+0130) is the one character whose full mapping is longer.
fn simple_lower(c: char) -> char {
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ if c == '\u{130}' => 'i',
        _ => c,
    }
}

fn simple_upper(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// A query or form parameter name as PHP registers it: leading spaces dropped, and `.` and
/// ` ` before the first `[` turned into `_` (`a.b` and `a b` are `a_b` in `$_GET`).
pub fn php_name(name: &str) -> String {
    let name = name.trim_start_matches(' ');
    let cut = name.find('[').unwrap_or(name.len());
    let (base, rest) = name.split_at(cut);
    let mut out = base.replace(['.', ' '], "_");
    out.push_str(rest);
    out
}

/// The part of a parameter name before its first `[`: the name Rails, PHP and qs file a
/// bracketed parameter (`amount[]`, `amount[x]`) under.
pub fn base_name(name: &str) -> &str {
    name.split('[').next().unwrap_or(name)
}

/// One spelling for every name some framework reads as the same parameter: PHP's mangling,
/// then case folding.
pub fn parameter_key(name: &str) -> String {
    fold(&php_name(name))
}

/// Whether a header name (lower-case, as `http` stores it) is an override header, in any
/// spelling a server maps to the same variable (`X_HTTP_Method_Override`).
pub fn override_header(name: &str) -> Option<Override> {
    // Runs on every header of every request: compared in place, without allocating.
    let same = |known: &&str| {
        known.len() == name.len()
            && known.bytes().zip(name.bytes()).all(|(k, n)| {
                let n = n.to_ascii_lowercase();
                k == n || (k == b'-' && n == b'_')
            })
    };
    if METHOD_OVERRIDE_HEADERS.iter().any(same) {
        Some(Override::Method)
    } else if URL_OVERRIDE_HEADERS.iter().any(same) {
        Some(Override::Url)
    } else {
        None
    }
}

/// Longest name [`override_parameter`] can match.
const LONGEST_OVERRIDE: usize = 22;

/// Whether a query or form parameter asks for another method: `_method` (also as PHP and
/// case-insensitive binders read it: `.method`, `_METHOD`, `_method[]`), or a method-override
/// header's name sent as a parameter.
pub fn override_parameter(name: &str) -> bool {
    let base = base_name(name).trim_start_matches(' ');
    if !(METHOD_PARAMETER.len()..=LONGEST_OVERRIDE).contains(&base.len()) {
        return false;
    }
    let key = php_name(base).to_ascii_lowercase();
    key == METHOD_PARAMETER || override_header(&key).is_some_and(|kind| kind == Override::Method)
}

/// Whether two distinct parameter names are one parameter to some tool (see
/// [`parameter_key`]).
pub fn same_parameter(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let plain = |s: &str| s.is_ascii() && !s.contains(['.', ' ']);
    if plain(a) && plain(b) {
        return a.eq_ignore_ascii_case(b);
    }
    parameter_key(a) == parameter_key(b)
}
