//! Typo suggestions for a rejected address's domain: `jane@gmial.com` →
//! "did you mean jane@gmail.com?".
//!
//! The targets are data in the repository: `data/common_mail_domains.txt`
//! (the domains most addresses are at) and `data/tlds.txt` (every real
//! top-level domain, from the Public Suffix List). A suggestion is made
//! only at a small edit distance, counted as Damerau-Levenshtein (optimal
//! string alignment: an insertion, a deletion, a substitution or a swap of
//! two neighbours is one edit):
//!
//! 1. a domain written exactly as a common one gets none;
//! 2. a top-level domain that is not real is corrected to a common one one
//!    edit away, if exactly one is (`.con` → `.com`, `.ogr` → `.org`); a real
//!    one is never touched (`.co`, `.cm` and `.om` are countries);
//! 3. the domain (with its TLD corrected) is then compared with the common
//!    domains: one within **1** edit, or within **2** when the common
//!    domain is at least 10 characters long (`hotmail.com`, `outlook.com`;
//!    a short one such as `gmx.de` or `me.com` is too near other real
//!    domains for two edits to mean a typo), is suggested if no other
//!    common domain is as near. A tie suggests nothing: a guess between two
//!    providers is worse than none.
//!
//! The suggested address must pass the email policy itself, or none is
//! given. Where a reject carries one, its message ends with
//! `did you mean …?` ([`with_suggestion`]) and the rejects export reads it
//! back from there ([`suggestion_in`]), so the message and the export's
//! `suggestion` column can never disagree.

use std::collections::HashSet;
use std::sync::LazyLock;

use crate::validate::{EmailPolicy, validate_email};

static COMMON_DOMAINS_TEXT: &str = include_str!("../data/common_mail_domains.txt");
static TLDS_TEXT: &str = include_str!("../data/tlds.txt");

/// Top-level domains a wrong one is corrected to, most used first.
const COMMON_TLDS: [&str; 30] = [
    "com", "net", "org", "edu", "gov", "de", "uk", "fr", "it", "es", "nl", "ru", "br", "ca", "au",
    "jp", "in", "info", "biz", "io", "me", "ch", "at", "be", "pl", "se", "no", "dk", "fi", "cz",
];

fn data_lines(text: &'static str) -> impl Iterator<Item = &'static str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
}

static COMMON_DOMAINS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| data_lines(COMMON_DOMAINS_TEXT).collect());
static COMMON_DOMAIN_SET: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| COMMON_DOMAINS.iter().copied().collect());
static TLDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| data_lines(TLDS_TEXT).collect());

/// The common mail domains suggestions point to (the data file's entries).
pub fn common_domains() -> &'static [&'static str] {
    &COMMON_DOMAINS
}

/// Whether `tld` (ASCII, lower case) is a real top-level domain.
pub fn is_known_tld(tld: &str) -> bool {
    TLDS.contains(tld)
}

/// The longest edit distance at which `common` is suggested.
fn max_distance(common: &str) -> usize {
    if common.len() >= 10 { 2 } else { 1 }
}

/// The domain a mistyped `domain` was probably meant to be, if it is near
/// exactly one common mail domain or has a TLD that does not exist one edit
/// from a common one. `None` for a domain that is fine as written, or too
/// far from anything to guess.
pub fn suggest_domain(domain: &str) -> Option<String> {
    let written = domain.trim().to_lowercase();
    let written = if written.is_ascii() {
        written
    } else {
        idna::domain_to_ascii(&written).ok()?
    };
    if written.len() < 4 || COMMON_DOMAIN_SET.contains(written.as_str()) {
        return None;
    }
    let tld_fixed = correct_tld(&written);
    let candidate = tld_fixed.as_deref().unwrap_or(&written);
    if COMMON_DOMAIN_SET.contains(candidate) {
        return Some(candidate.to_string());
    }
    nearest_common(candidate).map(str::to_string).or(tld_fixed)
}

/// `domain` with its TLD corrected, if that TLD is not a real one and
/// exactly one common TLD is one edit away.
fn correct_tld(domain: &str) -> Option<String> {
    let (rest, tld) = domain.rsplit_once('.')?;
    if rest.is_empty() || tld.is_empty() || is_known_tld(tld) {
        return None;
    }
    let near: Vec<&str> = COMMON_TLDS
        .iter()
        .copied()
        .filter(|t| edit_distance_within(tld, t, 1) <= 1)
        .collect();
    match near.as_slice() {
        [only] => Some(format!("{rest}.{only}")),
        _ => None,
    }
}

/// The one common domain nearest to `domain` within its allowed distance;
/// `None` when there is none, or a tie.
fn nearest_common(domain: &str) -> Option<&'static str> {
    let mut best: Option<(usize, &'static str)> = None;
    let mut tied = false;
    for &common in COMMON_DOMAINS.iter() {
        // Lengths further apart than the allowed distance cannot be near.
        if domain.len().abs_diff(common.len()) > max_distance(common) {
            continue;
        }
        let d = edit_distance_within(domain, common, max_distance(common));
        if d > max_distance(common) {
            continue;
        }
        match best {
            Some((b, _)) if d > b => {}
            Some((b, _)) if d == b => tied = true,
            _ => {
                best = Some((d, common));
                tied = false;
            }
        }
    }
    best.filter(|_| !tied).map(|(_, c)| c)
}

/// Damerau-Levenshtein distance (optimal string alignment) over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    edit_distance_within(a, b, usize::MAX)
}

/// [`edit_distance`] when it is at most `bound`, else some value above
/// `bound`. Every rejected row is compared with every common domain, so
/// the work stops as soon as the bound is out of reach, and ASCII text
/// (every domain, once IDNA has run) is compared byte by byte without
/// collecting characters.
fn edit_distance_within(a: &str, b: &str, bound: usize) -> usize {
    if a.is_ascii() && b.is_ascii() {
        osa_distance(a.as_bytes(), b.as_bytes(), bound)
    } else {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        osa_distance(&a, &b, bound)
    }
}

fn osa_distance<T: PartialEq>(a: &[T], b: &[T], bound: usize) -> usize {
    let over = bound.saturating_add(1);
    if a.len().abs_diff(b.len()) > bound {
        return over;
    }
    // Three rows: the one before the previous is needed for a swap. Domains
    // fit the stack buffer.
    const STACK: usize = 64;
    let width = b.len() + 1;
    let mut on_stack = [0usize; 3 * STACK];
    let mut on_heap = Vec::new();
    let rows: &mut [usize] = if width <= STACK {
        &mut on_stack[..3 * width]
    } else {
        on_heap.resize(3 * width, 0);
        &mut on_heap
    };
    let (mut before, rest) = rows.split_at_mut(width);
    let (mut previous, mut current) = rest.split_at_mut(width);
    for (j, v) in previous.iter_mut().enumerate() {
        *v = j;
    }
    let mut previous_min = 0;
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            current[j] = d;
        }
        // Every later cell comes from this row or the one before it, each
        // step adding 0 or more: once both are past the bound, so is the end.
        let current_min = current.iter().copied().min().unwrap_or(0);
        if current_min > bound && previous_min > bound {
            return over;
        }
        previous_min = current_min;
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The address as the sender probably meant it (`jane@gmail.com` for
/// `jane@gmial.com`), if its domain has a suggestion and the corrected
/// address passes `policy`.
pub fn suggest_address(raw: &str, policy: EmailPolicy) -> Option<String> {
    let (local, domain) = raw.trim().rsplit_once('@')?;
    if local.is_empty() {
        return None;
    }
    let domain = suggest_domain(domain)?;
    let address = format!("{local}@{domain}");
    validate_email(&address, policy).ok()?;
    Some(address)
}

const SUGGESTION_PREFIX: &str = "; did you mean ";

/// A reject's message with its suggestion: `…; did you mean jane@gmail.com?`.
pub fn with_suggestion(message: &str, address: &str) -> String {
    format!("{message}{SUGGESTION_PREFIX}{address}?")
}

/// The suggestion a message ends with ([`with_suggestion`]), if any.
pub fn suggestion_in(message: &str) -> Option<&str> {
    let (_, tail) = message.rsplit_once(SUGGESTION_PREFIX)?;
    tail.strip_suffix('?').filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_edit_distance_is_exact_within_its_bound_and_above_it_otherwise() {
        let words = [
            "",
            "a",
            "ab",
            "ba",
            "abc",
            "gmail.com",
            "gmial.com",
            "gmail.co",
            "gnail.cmo",
            "hotmail.com",
            "hotmai.co",
            "yahoo.com",
            "yahooo.com",
            "outlook.com",
            "zürich.ch",
            "zurich.ch",
            "ca",
            "abcdefghij",
        ];
        for a in words {
            for b in words {
                let exact = edit_distance(a, b);
                for bound in 0..5 {
                    let d = edit_distance_within(a, b, bound);
                    if exact <= bound {
                        assert_eq!(d, exact, "{a:?} {b:?} within {bound}");
                    } else {
                        assert!(d > bound, "{a:?} {b:?} within {bound}: {d}");
                    }
                }
            }
        }
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one_edit() {
        assert_eq!(edit_distance("gmial.com", "gmail.com"), 1);
        assert_eq!(edit_distance("hotmial.com", "hotmail.com"), 1);
        assert_eq!(edit_distance("yahooo.com", "yahoo.com"), 1);
        assert_eq!(edit_distance("gmail.com", "gmail.com"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("hotmai.co", "hotmail.com"), 2);
    }

    #[test]
    fn the_data_files_load_and_every_common_domain_has_a_real_tld() {
        assert!(common_domains().len() >= 100);
        for d in common_domains() {
            let tld = d.rsplit('.').next().unwrap_or_default();
            assert!(is_known_tld(tld), "{d}: .{tld} is not in data/tlds.txt");
            assert_eq!(
                suggest_domain(d),
                None,
                "{d} is common and must not be corrected"
            );
        }
        assert!(is_known_tld("com") && is_known_tld("co") && !is_known_tld("con"));
    }

    #[test]
    fn a_tie_between_two_common_domains_suggests_nothing() {
        // "gmx.ta" is one swap from gmx.at and two or more from the other
        // gmx domains: unique.
        assert_eq!(suggest_domain("gmx.ta").as_deref(), Some("gmx.at"));
        // "136.com" is one swap from 163.com and one substitution from
        // 126.com: which was meant cannot be told.
        assert_eq!(suggest_domain("136.com"), None);
        // "hotmail.de" and "hotmail.fr" are both common: "hotmail.dr" is one
        // edit from hotmail.de and from hotmail.fr.
        assert_eq!(suggest_domain("hotmail.dr"), None);
    }

    #[test]
    fn a_suggestion_round_trips_through_the_message() {
        let m = with_suggestion("the domain gmial.com does not exist", "jane@gmail.com");
        assert_eq!(
            m,
            "the domain gmial.com does not exist; did you mean jane@gmail.com?"
        );
        assert_eq!(suggestion_in(&m), Some("jane@gmail.com"));
        assert_eq!(suggestion_in("the address has no @"), None);
    }

    #[test]
    fn the_suggested_address_must_itself_be_valid() {
        let p = EmailPolicy::default();
        assert_eq!(
            suggest_address("jane@gmial.com", p).as_deref(),
            Some("jane@gmail.com")
        );
        assert_eq!(
            suggest_address("bob@example.con", p).as_deref(),
            Some("bob@example.com")
        );
        assert_eq!(suggest_address("ja ne@gmial.com", p), None);
        assert_eq!(suggest_address("@gmial.com", p), None);
        assert_eq!(suggest_address("jane@example.com", p), None);
    }
}
