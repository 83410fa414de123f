//! Whether an accepted row's domain can receive mail, as the consumer's DNS
//! check found it, and what that does to the row's verdict.
//!
//! The check itself (MX, then A/AAAA, cached per domain) is the consumer's
//! (`rowpipe_consumer::mail_domain`); this module is the vocabulary both
//! sides share and the one place a [`DomainVerdict`] changes a
//! [`JudgedRow`]:
//!
//! * [`DomainVerdict::Accepts`]: nothing changes;
//! * [`DomainVerdict::Refuses`]: the row is rejected as `no_mail_domain`,
//!   the reason in its message, with a typo suggestion where one fits;
//! * [`DomainVerdict::Unknown`]: the lookup failed (timeout, SERVFAIL, no
//!   network). A DNS outage is not bad data, so the row is stored as usual
//!   and marked [`Unverified`]; the store records it in `unverified_rows`
//!   (counted as `unverified`, exported by `GET /v1/uploads/{id}/unverified`).

use std::fmt;

use crate::suggest;
use crate::validate::{EmailPolicy, RejectReason};
use crate::verdict::{JudgedRow, RowVerdict};

/// What DNS says about a domain's mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainVerdict {
    /// It has MX records, or none and an A/AAAA address (RFC 5321 §5.1's
    /// implicit MX).
    Accepts,
    /// It cannot receive mail; the text completes "the domain example.org …",
    /// e.g. "does not exist (NXDOMAIN)".
    Refuses(String),
    /// The lookup did not come to an answer.
    Unknown(Unverified),
}

/// Why a row's domain could not be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnverifiedReason {
    /// No answer within `ROWPIPE_DNS_TIMEOUT_MS`.
    Timeout,
    /// The server answered SERVFAIL (or REFUSED, …): it could not say.
    ServerFailure,
    /// Anything else: no resolver reachable, a malformed answer.
    LookupFailed,
}

impl UnverifiedReason {
    pub const ALL: [UnverifiedReason; 3] = [Self::Timeout, Self::ServerFailure, Self::LookupFailed];

    /// The stable code stored in `unverified_rows.reason`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Timeout => "dns_timeout",
            Self::ServerFailure => "dns_server_failure",
            Self::LookupFailed => "dns_lookup_failed",
        }
    }
}

impl fmt::Display for UnverifiedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A stored row whose domain could not be checked, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unverified {
    pub reason: UnverifiedReason,
    /// For a person: "the DNS lookup of example.org timed out after 2000 ms".
    pub message: String,
}

/// The domain of an accepted row's uniqueness key (ASCII, lower case), the
/// name the check looks up; `None` for a rejected row, and for an IP
/// literal (`ROWPIPE_ALLOW_IP_LITERAL`), which names its server itself.
pub fn mail_domain(row: &JudgedRow) -> Option<&str> {
    match &row.verdict {
        RowVerdict::Accept { email, .. } => email
            .rsplit_once('@')
            .map(|(_, d)| d)
            .filter(|d| !d.starts_with('[') && d.parse::<std::net::IpAddr>().is_err()),
        RowVerdict::Reject { .. } => None,
    }
}

/// Apply what DNS said about the row's domain (see the module docs). A
/// rejected row is left as it is.
pub fn apply(row: &mut JudgedRow, verdict: &DomainVerdict, policy: EmailPolicy) {
    let RowVerdict::Accept {
        email, email_raw, ..
    } = &row.verdict
    else {
        return;
    };
    match verdict {
        DomainVerdict::Accepts => {}
        DomainVerdict::Unknown(why) => row.unverified = Some(why.clone()),
        DomainVerdict::Refuses(why) => {
            let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            let mut message = format!("the domain {domain} cannot receive mail: it {why}");
            if let Some(address) = suggest::suggest_address(email_raw, policy) {
                message = suggest::with_suggestion(&message, &address);
            }
            row.verdict = RowVerdict::Reject {
                reason: RejectReason::NoMailDomain,
                message,
                fields: row.verdict.fields_json(),
            };
            row.unverified = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(email: &str) -> JudgedRow {
        JudgedRow {
            upload_id: "u".into(),
            upload_seq: 1,
            row_number: 3,
            verdict: RowVerdict::Accept {
                email: email.to_lowercase(),
                email_raw: email.into(),
                name: Some("Jane".into()),
                attributes: None,
            },
            unverified: None,
        }
    }

    #[test]
    fn a_refused_domain_rejects_the_row_with_its_reason_and_a_suggestion() {
        let mut row = accepted("Jane@gmial.com");
        apply(
            &mut row,
            &DomainVerdict::Refuses("does not exist (NXDOMAIN)".into()),
            EmailPolicy::default(),
        );
        match &row.verdict {
            RowVerdict::Reject {
                reason,
                message,
                fields,
            } => {
                assert_eq!(*reason, RejectReason::NoMailDomain);
                assert_eq!(
                    message,
                    "the domain gmial.com cannot receive mail: it does not exist (NXDOMAIN); did you mean Jane@gmail.com?"
                );
                assert_eq!(fields, r#"{"email":"Jane@gmial.com","name":"Jane"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_domain_keeps_the_row_and_marks_it_unverified() {
        let mut row = accepted("jane@example.org");
        let why = Unverified {
            reason: UnverifiedReason::Timeout,
            message: "timed out".into(),
        };
        apply(
            &mut row,
            &DomainVerdict::Unknown(why.clone()),
            EmailPolicy::default(),
        );
        assert!(matches!(row.verdict, RowVerdict::Accept { .. }));
        assert_eq!(row.unverified, Some(why));
        assert_eq!(mail_domain(&row), Some("example.org"));
        assert_eq!(mail_domain(&accepted("jane@[192.0.2.1]")), None);
        assert_eq!(mail_domain(&accepted("jane@192.0.2.1")), None);
    }
}
