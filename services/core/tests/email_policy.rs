//! The email policy against a labelled table of addresses, and properties
//! that must hold for any input string.

use proptest::prelude::*;
use rowpipe_core::validate::{EmailPolicy, validate_email};

fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[test]
fn every_labelled_address_gets_its_expected_verdict_and_reason() {
    let table = include_str!("fixtures/emails.tsv");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (i, line) in table.lines().enumerate().skip(1) {
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "line {} has {} columns", i + 1, cols.len());
        let input = unescape(cols[0]);
        let got = validate_email(&input, EmailPolicy::default());
        let ok = match (cols[1], &got) {
            ("valid", Ok(v)) => v.normalized == unescape(cols[3]),
            ("invalid", Err(r)) => r.reason.code() == cols[2],
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "line {}: {:?} expected {} {} {} got {:?}",
                i + 1,
                input,
                cols[1],
                cols[2],
                cols[3],
                got
            ));
        }
        checked += 1;
    }
    assert!(checked >= 150, "only {checked} labelled addresses");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validation_never_panics_and_normalization_is_idempotent(input in "\\PC{0,80}") {
        if let Ok(v) = validate_email(&input, EmailPolicy::default()) {
            let again = validate_email(&v.normalized, EmailPolicy::default());
            prop_assert!(again.is_ok(), "normalized form {:?} rejected: {:?}", v.normalized, again);
            prop_assert_eq!(again.map(|a| a.normalized).ok(), Some(v.normalized));
        }
    }

    #[test]
    fn address_shaped_inputs_normalize_idempotently(
        local in "[a-zA-Z0-9._%+üéÅ-]{1,20}",
        domain in "[a-zA-Z0-9ü-]{1,12}\\.[a-zA-Z]{2,6}",
        pad in "[ \t]{0,2}",
    ) {
        let input = format!("{pad}{local}@{domain}{pad}");
        if let Ok(v) = validate_email(&input, EmailPolicy::default()) {
            let again = validate_email(&v.normalized, EmailPolicy::default());
            prop_assert_eq!(again.map(|a| a.normalized).ok(), Some(v.normalized));
        }
    }
}
