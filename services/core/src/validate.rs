//! The rules a row's fields are judged by, and every reason a row can be
//! rejected for.
//!
//! This module owns the reason codes ([`RejectReason`]) of both halves of a
//! row's judgement, the email policy, the normalization of the uniqueness
//! key and the cleaning of the name. It decides nothing about a whole row:
//! the upload service's intake applies the shape rules (ragged rows,
//! over-long fields, undecodable bytes) and [`crate::verdict::judge`]
//! applies these rules to a stream entry's fields.
//!
//! # Email policy
//!
//! RFC 5321/5322/6531 syntax is checked by the `email_address` crate; on top of
//! it rowpipe applies a practical policy for mail that real people receive:
//! the domain must have at least two labels, a TLD that is not numeric, no
//! IP literals and no quoted local parts (both configurable). Checks run in a
//! fixed order so every rejected address gets exactly one reason.
//!
//! # Normalization (the uniqueness key)
//!
//! Trimmed, Unicode NFC, lower-cased as a whole, and the domain in its ASCII
//! (punycode) form, so `User@Bücher.de` and `user@xn--bcher-kva.de` collide.
//! Plus-tags and dots are *not* folded: `a.b+x@example.com` and
//! `ab@example.com` are different mailboxes under the RFC.

use std::fmt;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Why a row was not inserted. The string form is the machine-readable code
/// stored in `rejected_rows.reason` and shown to the third party.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    MissingEmail,
    InvalidSyntax,
    MultipleAt,
    WhitespaceInside,
    InvalidDomain,
    IpLiteralDomain,
    QuotedLocalPart,
    TooLong,
    RaggedRow,
    FieldTooLong,
    TooManyColumns,
    RowTooLong,
    BadEncoding,
    ProcessingFailed,
    /// A quoted field that does not close before the end of the file or
    /// within the field limit (the intake resumes on the next line).
    UnterminatedQuote,
    /// The domain cannot receive mail: it does not exist (NXDOMAIN),
    /// publishes a null MX (RFC 7505), or has neither MX nor A/AAAA records.
    /// Only given when the consumer's deliverability check is on
    /// (`ROWPIPE_CHECK_MAIL_DOMAIN=mx`).
    NoMailDomain,
}

impl RejectReason {
    /// Every reason, for metrics and documentation.
    pub const ALL: [RejectReason; 16] = [
        Self::MissingEmail,
        Self::InvalidSyntax,
        Self::MultipleAt,
        Self::WhitespaceInside,
        Self::InvalidDomain,
        Self::IpLiteralDomain,
        Self::QuotedLocalPart,
        Self::TooLong,
        Self::RaggedRow,
        Self::FieldTooLong,
        Self::TooManyColumns,
        Self::RowTooLong,
        Self::BadEncoding,
        Self::ProcessingFailed,
        Self::UnterminatedQuote,
        Self::NoMailDomain,
    ];

    /// The stable code, e.g. `invalid_domain`.
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingEmail => "missing_email",
            Self::InvalidSyntax => "invalid_syntax",
            Self::MultipleAt => "multiple_at",
            Self::WhitespaceInside => "whitespace_inside",
            Self::InvalidDomain => "invalid_domain",
            Self::IpLiteralDomain => "ip_literal_domain",
            Self::QuotedLocalPart => "quoted_local_part",
            Self::TooLong => "too_long",
            Self::RaggedRow => "ragged_row",
            Self::FieldTooLong => "field_too_long",
            Self::TooManyColumns => "too_many_columns",
            Self::RowTooLong => "row_too_long",
            Self::BadEncoding => "bad_encoding",
            Self::ProcessingFailed => "processing_failed",
            Self::UnterminatedQuote => "unterminated_quote",
            Self::NoMailDomain => "no_mail_domain",
        }
    }

    /// Parse a code back (from a stream entry or a database row).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected row's reason code plus a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Policy switches on top of RFC syntax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmailPolicy {
    /// Accept `user@[192.0.2.1]` and `user@192.0.2.1` (default: reject).
    pub allow_ip_literal: bool,
    /// Accept `"john smith"@example.com` (default: reject).
    pub allow_quoted_local_part: bool,
}

/// An address that passed the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidEmail {
    /// The uniqueness key: NFC, lower-cased, ASCII domain.
    pub normalized: String,
}

/// Longest local part in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_OCTETS: usize = 64;
/// Longest address in octets (RFC 5321 path limit minus the angle brackets).
pub const MAX_ADDRESS_OCTETS: usize = 254;
/// Longest name kept, in characters.
pub const MAX_NAME_CHARS: usize = 512;

fn is_trimmable(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}' || c == '\u{200b}'
}

fn reject<T>(reason: RejectReason, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection::new(reason, message))
}

/// Judge an email field as written in the file.
pub fn validate_email(raw: &str, policy: EmailPolicy) -> Result<ValidEmail, Rejection> {
    use RejectReason::*;
    let trimmed = raw.trim_matches(is_trimmable);
    if trimmed.is_empty() {
        return reject(MissingEmail, "the email field is empty");
    }
    // ASCII text is already in NFC: the common case costs no copy.
    let nfc: std::borrow::Cow<'_, str> = if trimmed.is_ascii() {
        std::borrow::Cow::Borrowed(trimmed)
    } else {
        std::borrow::Cow::Owned(trimmed.nfc().collect())
    };
    let nfc: &str = &nfc;
    // One pass over the bytes clears the common case: printable ASCII with
    // no whitespace or bracket. Anything else takes the character checks, in
    // their order, so the message names the first problem.
    let suspect = |b: u8| {
        !b.is_ascii() || b.is_ascii_whitespace() || b.is_ascii_control() || b"<>()".contains(&b)
    };
    if nfc.bytes().any(suspect) {
        screen_characters(nfc)?;
    }
    if nfc.starts_with('"') {
        if !policy.allow_quoted_local_part {
            return reject(
                QuotedLocalPart,
                "quoted local parts (\"…\"@domain) are not accepted",
            );
        }
        return validate_quoted(nfc);
    }
    let at_count = nfc.matches('@').count();
    if at_count == 0 {
        return reject(InvalidSyntax, "the address has no @");
    }
    if at_count > 1 {
        return reject(
            MultipleAt,
            format!("the address has {at_count} @ signs; exactly one is expected"),
        );
    }
    let (local, domain) = nfc.split_once('@').unwrap_or((nfc, ""));
    if local.is_empty() {
        return reject(InvalidSyntax, "nothing before the @");
    }
    if domain.is_empty() {
        return reject(InvalidSyntax, "nothing after the @");
    }
    if domain.starts_with('[') || is_dotted_quad(domain) {
        if !policy.allow_ip_literal {
            return reject(
                IpLiteralDomain,
                format!("IP address domains ({domain}) are not accepted"),
            );
        }
        return validate_literal(local, domain);
    }
    if local.len() > MAX_LOCAL_OCTETS {
        return reject(
            TooLong,
            format!(
                "the part before the @ is {} octets; at most {MAX_LOCAL_OCTETS} are allowed",
                local.len()
            ),
        );
    }
    if nfc.len() > MAX_ADDRESS_OCTETS {
        return reject(
            TooLong,
            format!(
                "the address is {} octets; at most {MAX_ADDRESS_OCTETS} are allowed",
                nfc.len()
            ),
        );
    }
    let ascii_domain = ascii_domain(domain)?;
    if local.len() + 1 + ascii_domain.len() > MAX_ADDRESS_OCTETS {
        return reject(
            TooLong,
            format!(
                "the address is longer than {MAX_ADDRESS_OCTETS} octets once the domain is in ASCII form"
            ),
        );
    }
    check_dot_atom(local)?;
    let normalized = normalize_parts(local, &ascii_domain);
    // Belt and braces where Unicode is involved: the RFC parser must agree
    // with the policy above (case folding changes nothing it checks). On
    // plain ASCII the checks above are stricter than RFC 5321's dot-atom (a
    // property test, `ascii_addresses_the_policy_accepts_are_rfc_valid`,
    // holds the two together), so a second parse would cost time and could
    // not reject anything.
    if !nfc.is_ascii()
        && let Err(e) = email_address::EmailAddress::parse_with_options(&normalized, rfc_options())
    {
        return reject(InvalidSyntax, format!("not a valid address: {e}"));
    }
    Ok(ValidEmail { normalized })
}

/// What the RFC cross-check of [`validate_email`] asks of an address.
pub fn rfc_options() -> email_address::Options {
    email_address::Options::default()
        .with_required_tld()
        .without_domain_literal()
        .without_display_text()
}

/// The character checks of [`validate_email`], for text that is not plain
/// printable ASCII.
fn screen_characters(nfc: &str) -> Result<(), Rejection> {
    use RejectReason::*;
    if let Some(c) = nfc.chars().find(|c| c.is_whitespace()) {
        return reject(
            WhitespaceInside,
            format!("the address contains whitespace ({})", describe_char(c)),
        );
    }
    if let Some(c) = nfc.chars().find(|c| c.is_control()) {
        return reject(
            InvalidSyntax,
            format!(
                "the address contains a control character ({})",
                describe_char(c)
            ),
        );
    }
    if let Some(c) = nfc.chars().find(|c| matches!(c, '<' | '>' | '(' | ')')) {
        return reject(
            InvalidSyntax,
            format!(
                "the address contains {}; write the bare address without brackets or comments",
                describe_char(c)
            ),
        );
    }
    Ok(())
}

fn normalize_parts(local: &str, ascii_domain: &str) -> String {
    let mut out = String::with_capacity(local.len() + 1 + ascii_domain.len());
    if local.is_ascii() {
        out.push_str(local);
        out.make_ascii_lowercase();
    } else {
        out.extend(local.to_lowercase().nfc());
    }
    out.push('@');
    let at = out.len();
    out.push_str(ascii_domain);
    out[at..].make_ascii_lowercase();
    out
}

/// Lower-cased ASCII form of a domain, with the label rules applied.
///
/// What a label may hold is IDNA's to say (UTS #46, with the STD3 ASCII
/// rules: ASCII labels are letters, digits and '-'), not "letters and
/// digits": scripts written with combining marks (the Devanagari virama
/// U+094D, Thai vowel signs, …) are valid in domain names, and UTS #46 also
/// maps what it maps (upper case, full-width forms, ideographic full stops).
/// Hyphen positions, label lengths and the TLD are checked afterwards, on
/// the ASCII form, so their messages can be specific.
fn ascii_domain(domain: &str) -> Result<String, Rejection> {
    use RejectReason::InvalidDomain;
    if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return reject(
            InvalidDomain,
            format!(
                "the domain {} has an empty label (a leading, trailing or double dot)",
                quoted(domain)
            ),
        );
    }
    // Plain ASCII host names (the common case) only need lower-casing; IDNA
    // is for everything else, `xn--` labels included (they must decode).
    let plain = domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !domain
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"xn--"));
    let ascii = if plain {
        domain.to_ascii_lowercase()
    } else {
        match uts46_to_ascii(domain) {
            Ok(a) => a,
            Err(()) => return reject(InvalidDomain, idna_refusal(domain)),
        }
    };
    if !ascii.contains('.') {
        return reject(
            InvalidDomain,
            format!(
                "the domain {} has no dot; a public domain such as example.com is expected",
                quoted(domain)
            ),
        );
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return reject(
                InvalidDomain,
                format!("the domain {} has an empty label", quoted(domain)),
            );
        }
        if label.len() > 63 {
            return reject(
                InvalidDomain,
                format!(
                    "a label of the domain {} is longer than 63 octets",
                    quoted(domain)
                ),
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return reject(
                InvalidDomain,
                format!(
                    "a label of the domain {} starts or ends with '-'",
                    quoted(domain)
                ),
            );
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return reject(
                InvalidDomain,
                format!(
                    "the domain {} has characters not allowed in a host name",
                    quoted(domain)
                ),
            );
        }
    }
    let tld = ascii.rsplit('.').next().unwrap_or_default();
    if tld.len() < 2 || tld.bytes().all(|b| b.is_ascii_digit()) {
        return reject(
            InvalidDomain,
            format!(
                "the top-level domain {} of {} is not valid",
                quoted(tld),
                quoted(domain)
            ),
        );
    }
    Ok(ascii)
}

/// UTS #46 ToASCII as a mail domain needs it: STD3 ASCII rules, hyphen
/// positions and lengths left to [`ascii_domain`]'s own checks.
fn uts46_to_ascii(domain: &str) -> Result<String, ()> {
    use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
    Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map(|a| a.into_owned())
        .map_err(|_| ())
}

/// Why UTS #46 refused a domain, naming the character where one is to
/// blame. The IDNA crate says only that it failed, so each character is
/// tried in the smallest labels it could stand in: a character no such
/// label accepts is one IDNA does not allow at all (`_`, `!`, emoji, …); a
/// combining mark is fine after a letter and a right-to-left letter on its
/// own, so neither is blamed for a rule about its place in a label.
fn idna_refusal(domain: &str) -> String {
    let disallowed = |c: char| {
        [format!("{c}"), format!("a{c}"), format!("{c}a")]
            .iter()
            .all(|probe| uts46_to_ascii(probe).is_err())
    };
    if let Some(c) = domain
        .chars()
        .filter(|c| *c != '.')
        .find(|c| disallowed(*c))
    {
        return format!(
            "the domain {} contains {}, which IDNA (UTS #46) does not allow in a domain name",
            quoted(domain),
            describe_char(c)
        );
    }
    if domain.to_ascii_lowercase().contains("xn--") {
        return format!(
            "the domain {} has an xn-- label that is not valid punycode of a valid label",
            quoted(domain)
        );
    }
    format!(
        "the domain {} is not a valid internationalized domain name (UTS #46): a label may not \
         begin with a combining mark, mix left-to-right and right-to-left letters, or hold a \
         joiner where none belongs",
        quoted(domain)
    )
}

/// A character for a message: itself in quotes and its code point,
/// `'्' U+094D`, so a reader sees it and can look it up. Characters that
/// show as nothing or move the text around (controls, spaces, zero-width and
/// direction marks) are given by code point alone.
pub fn describe_char(c: char) -> String {
    let invisible = c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
    if invisible {
        format!("U+{:04X}", c as u32)
    } else {
        format!("'{c}' U+{:04X}", c as u32)
    }
}

/// Text from the file in a message: in double quotes, as written (no Rust
/// escapes), with anything invisible given by code point.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match describe_char(c) {
            d if d.starts_with('U') => {
                out.push('<');
                out.push_str(&d);
                out.push('>');
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

fn check_dot_atom(local: &str) -> Result<(), Rejection> {
    use RejectReason::InvalidSyntax;
    if local.starts_with('.') || local.ends_with('.') {
        return reject(
            InvalidSyntax,
            "the part before the @ starts or ends with a dot",
        );
    }
    if local.contains("..") {
        return reject(InvalidSyntax, "the part before the @ has two dots in a row");
    }
    if let Some(c) = local.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || *c == '.'
            || ATEXT_SPECIALS.contains(*c)
            || (!c.is_ascii() && c.is_alphanumeric())
            || (!c.is_ascii() && is_combining(*c)))
    }) {
        return reject(
            InvalidSyntax,
            format!(
                "the part before the @ contains {}, which is not allowed there",
                describe_char(c)
            ),
        );
    }
    Ok(())
}

fn is_combining(c: char) -> bool {
    unicode_normalization::char::is_combining_mark(c)
}

fn is_dotted_quad(domain: &str) -> bool {
    let parts: Vec<&str> = domain.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Only reached when the policy allows quoted local parts.
fn validate_quoted(address: &str) -> Result<ValidEmail, Rejection> {
    let options = email_address::Options::default()
        .with_required_tld()
        .without_display_text();
    match email_address::EmailAddress::parse_with_options(address, options) {
        Ok(parsed) => {
            let domain = ascii_domain(parsed.domain())?;
            Ok(ValidEmail {
                normalized: normalize_parts(parsed.local_part(), &domain),
            })
        }
        Err(e) => reject(
            RejectReason::InvalidSyntax,
            format!("not a valid address: {e}"),
        ),
    }
}

/// Only reached when the policy allows IP literals.
fn validate_literal(local: &str, domain: &str) -> Result<ValidEmail, Rejection> {
    check_dot_atom(local)?;
    let inner = domain.trim_start_matches('[').trim_end_matches(']');
    let inner_ip = inner.strip_prefix("IPv6:").unwrap_or(inner);
    if inner_ip.parse::<std::net::IpAddr>().is_err() {
        return reject(
            RejectReason::IpLiteralDomain,
            format!("{domain} is not a valid IP address"),
        );
    }
    Ok(ValidEmail {
        normalized: format!("{}@{}", local.to_lowercase(), domain.to_ascii_lowercase()),
    })
}

/// The normalized key of an address, or `None` if the policy rejects it.
pub fn normalize_email(raw: &str, policy: EmailPolicy) -> Option<String> {
    validate_email(raw, policy).ok().map(|v| v.normalized)
}

/// Clean a free-text field (a name): trimmed, control characters removed,
/// line breaks and tabs turned into spaces. Empty becomes `None`: a missing
/// name stays missing, it is never invented.
pub fn clean_text(raw: &str) -> Option<String> {
    // The common case, printable ASCII with nothing to trim, is one copy.
    if raw.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !raw.starts_with(' ')
        && !raw.ends_with(' ')
    {
        return (!raw.is_empty()).then(|| raw.to_string());
    }
    let cleaned: String = raw
        .chars()
        .filter_map(|c| match c {
            '\t' | '\n' | '\r' => Some(' '),
            c if c.is_control() || c == '\u{feff}' => None,
            c => Some(c),
        })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        None
    } else if trimmed.is_ascii() {
        Some(trimmed.to_string())
    } else {
        Some(trimmed.nfc().collect())
    }
}

/// A name that passed: cleaned and bounded.
pub fn validate_name(raw: Option<&str>) -> Result<Option<String>, Rejection> {
    let Some(name) = raw.and_then(clean_text) else {
        return Ok(None);
    };
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return reject(
            RejectReason::FieldTooLong,
            format!("the name is {chars} characters; at most {MAX_NAME_CHARS} are kept"),
        );
    }
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(raw: &str) -> Option<&'static str> {
        validate_email(raw, EmailPolicy::default())
            .err()
            .map(|r| r.reason.code())
    }

    #[test]
    fn idn_domains_in_unicode_and_punycode_share_one_key() {
        let a = normalize_email("User@Bücher.de", EmailPolicy::default());
        let b = normalize_email("user@xn--bcher-kva.de", EmailPolicy::default());
        assert_eq!(a.as_deref(), Some("user@xn--bcher-kva.de"));
        assert_eq!(a, b);
    }

    #[test]
    fn plus_tags_and_dots_are_not_folded() {
        let p = EmailPolicy::default();
        assert_ne!(
            normalize_email("a.b+x@example.com", p),
            normalize_email("ab@example.com", p)
        );
    }

    #[test]
    fn policy_switches_admit_literals_and_quoted_parts() {
        let open = EmailPolicy {
            allow_ip_literal: true,
            allow_quoted_local_part: true,
        };
        assert!(validate_email("user@[192.0.2.1]", open).is_ok());
        assert!(validate_email("\"john smith\"@example.com", open).is_err());
        assert!(validate_email("\"john.smith\"@example.com", open).is_ok());
        assert_eq!(reason("user@[192.0.2.1]"), Some("ip_literal_domain"));
        assert_eq!(reason("\"john\"@example.com"), Some("quoted_local_part"));
    }

    #[test]
    fn names_lose_control_characters_and_stay_missing_when_blank() {
        assert_eq!(
            clean_text("  Zoë\u{0007} Müller\n"),
            Some("Zoë Müller".into())
        );
        assert_eq!(clean_text(" \t "), None);
        assert!(validate_name(Some(&"x".repeat(MAX_NAME_CHARS + 1))).is_err());
    }
}
