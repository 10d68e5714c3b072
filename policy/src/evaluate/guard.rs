//! Known RVM miscompilations toolgate steers around. A policy that contains one runs on the
//! interpreter instead — slower, but the same answer OPA gives — and `toolgate check` says why.
//!
//! regorus 0.14.1: in a rule with `else`, when a body before the last iterates (`some x in`,
//! `xs[_]`, `xs[i]`) and the iteration finds nothing, the RVM ends the whole chain with the
//! rule's default instead of trying the next `else` (the interpreter, like OPA, goes on).
//! Found by the differential test; pinned by `else_after_an_empty_iteration_is_not_left_to_the_rvm`.

use regorus::unstable::Rule;
use regorus::Engine;

/// Why the RVM must not run the engine's modules, if there is a reason.
pub(super) fn rvm_hazard(engine: &mut Engine) -> Option<String> {
    for module in engine.get_modules() {
        for rule in &module.policy {
            let Rule::Spec { bodies, .. } = &**rule else {
                continue;
            };
            if !bodies.iter().any(|b| b.is_else) {
                continue;
            }
            let Some((_, before_last)) = bodies.split_last() else {
                continue;
            };
            if let Some(body) = before_last.iter().find(|b| iterates(b.query.span.text())) {
                let at = &body.query.span;
                return Some(format!(
                    "{}:{}: an `else` follows a body that iterates, which regorus 0.14.1's RVM \
                     evaluates wrongly when the iteration finds nothing (move the iteration \
                     into a helper rule to use the RVM)",
                    at.source.file(),
                    at.line
                ));
            }
        }
    }
    None
}

/// Whether Rego text may iterate: `some`, `[_]`, or a variable index `[name]`. Conservative:
/// a false positive costs speed (the interpreter), never correctness.
fn iterates(text: &str) -> bool {
    let words = text.split(|c: char| !(c.is_alphanumeric() || c == '_'));
    if words.clone().any(|w| w == "some") {
        return true;
    }
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'['
            && bytes
                .get(i + 1..)
                .and_then(|rest| {
                    let len = rest
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                        .count();
                    let first = rest.first()?;
                    let ident = len > 0 && (first.is_ascii_alphabetic() || *first == b'_');
                    Some(ident && rest.get(len) == Some(&b']'))
                })
                .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::iterates;

    #[test]
    fn recognises_iteration() {
        for text in [
            "some x in input.chain; x == 1",
            "input.chain[_] == 1",
            "input.chain[i].action == \"a\"",
            "some i\n xs[i]",
        ] {
            assert!(iterates(text), "{text}");
        }
        for text in [
            "input.action.name == \"ticket.read\"",
            "input.action.attributes[\"issue\"] == \"a\"",
            "xs[0] == 1",
            "handsome == true",
            "read_in_task",
        ] {
            assert!(!iterates(text), "{text}");
        }
    }
}
