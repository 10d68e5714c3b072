use super::*;

#[test]
fn names_split_into_base_keys_and_append() {
    let n = Name::parse("a[b][0][]").unwrap();
    assert_eq!(
        n,
        Name {
            base: "a",
            keys: vec!["b", "0"],
            append: true
        }
    );
    assert_eq!(Name::parse("a[b").unwrap_err(), FormNameError::Brackets);
    assert_eq!(
        Name::parse("a[][b]").unwrap_err(),
        FormNameError::AppendNotLast
    );
    assert_eq!(Name::parse("a.b").unwrap_err(), FormNameError::DotOrSpace);
}

#[test]
fn a_value_holding_bracket_equals_is_found_in_any_spelling() {
    assert!(closes_bracket(b"x]=y"));
    assert!(closes_bracket(b"x%5D=y"));
    assert!(closes_bracket(b"x%5d=y"));
    assert!(!closes_bracket(b"x]y=z"));
    assert!(!closes_bracket(b"x%5Ey=z"));
    assert!(!closes_bracket(b"%5"));
}
