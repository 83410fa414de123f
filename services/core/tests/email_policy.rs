//! The email policy against a labelled table of addresses, and properties
//! that must hold for any input string.

use proptest::prelude::*;
use rowpipe_core::validate::{EmailPolicy, rfc_options, validate_email};

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

/// The policy skips the RFC parser's cross-check on plain ASCII because its
/// own checks are stricter there; this holds it to that.
fn assert_rfc_valid_if_accepted(input: &str) -> Result<(), TestCaseError> {
    if let Ok(v) = validate_email(input, EmailPolicy::default())
        && input.is_ascii()
    {
        let rfc = email_address::EmailAddress::parse_with_options(&v.normalized, rfc_options());
        prop_assert!(
            rfc.is_ok(),
            "{input:?} accepted as {:?}, which the RFC parser rejects: {rfc:?}",
            v.normalized
        );
    }
    Ok(())
}

#[test]
fn every_ascii_address_of_the_table_the_policy_accepts_is_rfc_valid() {
    let table = include_str!("fixtures/emails.tsv");
    let mut accepted = 0;
    for line in table.lines().skip(1).filter(|l| !l.is_empty()) {
        let input = unescape(line.split('\t').next().unwrap_or(""));
        if input.is_ascii() && validate_email(&input, EmailPolicy::default()).is_ok() {
            accepted += 1;
        }
        if let Err(e) = assert_rfc_valid_if_accepted(&input) {
            panic!("{e}");
        }
    }
    assert!(
        accepted >= 30,
        "only {accepted} accepted ASCII addresses in the table"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn ascii_addresses_the_policy_accepts_are_rfc_valid(
        local in "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\\.[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}){0,3}",
        domain in "([a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?\\.){1,3}[a-zA-Z0-9-]{1,8}",
    ) {
        assert_rfc_valid_if_accepted(&format!("{local}@{domain}"))?;
    }

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

/// Messages write a character as itself and its code point (`'्' U+094D`),
/// never as a Rust escape, and IDNA (UTS #46) decides what a label may hold.
#[test]
fn messages_name_characters_by_code_point_and_idna_decides_labels() {
    let p = EmailPolicy::default();
    let message = |raw: &str| match validate_email(raw, p) {
        Err(r) => r.message,
        Ok(v) => panic!("{raw:?} accepted as {:?}", v.normalized),
    };
    // The virama is a combining mark IDNA allows: Devanagari domains pass.
    assert!(validate_email("user@हिन्दी.example.com", p).is_ok());
    // A label may not begin with one, and the message shows it as written.
    let m = message("user@्example.com");
    assert!(m.contains("\"्example.com\""), "{m}");
    assert!(!m.contains("\\u{"), "{m}");
    let m = message("jane@my_domain.com");
    assert!(m.contains("'_' U+005F"), "{m}");
    let m = message("user@bü_cher.de");
    assert!(
        m.contains("'_' U+005F") && m.contains("\"bü_cher.de\""),
        "{m}"
    );
    let m = message("user@हिन्_दी.com");
    assert!(m.contains("'_' U+005F") && m.contains("हिन्_दी.com"), "{m}");
    // Invisible characters are named by code point alone.
    let m = message("jane\u{a0}doe@example.com");
    assert!(m.contains("(U+00A0)"), "{m}");
    let m = message("jane\u{7}@example.com");
    assert!(m.contains("U+0007"), "{m}");
}
