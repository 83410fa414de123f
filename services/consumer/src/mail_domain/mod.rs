//! The deliverability check (`ROWPIPE_CHECK_MAIL_DOMAIN=mx`): before a
//! batch is stored, the distinct domains of its accepted rows are looked up
//! in DNS, **per domain, not per row**, and each row's verdict follows its
//! domain's (see [`rowpipe_core::deliverability`]).
//!
//! * [`cache`]: one answer per domain, shared by the workers of a process,
//!   kept for its TTL within `ROWPIPE_DNS_MIN_TTL_SECS` and
//!   `ROWPIPE_DNS_MAX_TTL_SECS` (negative answers too), failures for
//!   `ROWPIPE_DNS_FAILURE_TTL_SECS`; concurrent askers share one lookup.
//! * [`resolve`]: one domain's lookup with hickory-resolver (MX, then A/AAAA)
//!   and its verdict; the resolver from `ROWPIPE_DNS_SERVERS` or the system.
//! * this file: [`MailDomains`], the process's check: the bound on lookups in
//!   flight (`ROWPIPE_DNS_CONCURRENCY`), and applying the answers to a batch.
//!
//! A lookup that fails never rejects a row: it is stored and reported as
//! `unverified`. No mailbox is probed (no SMTP `RCPT TO`): see the README.

pub mod cache;
pub mod resolve;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use rowpipe_core::deliverability::{self, DomainVerdict};
use rowpipe_core::store::{Store, StoreError};
use rowpipe_core::validate::EmailPolicy;
use rowpipe_core::verdict::{JudgedRow, RowVerdict};
use tokio::sync::Semaphore;

use crate::config::{CheckMailDomain, Config};
use cache::{DomainCache, Source};
use resolve::Ttls;

/// The check of one process, shared by its workers.
pub struct MailDomains {
    resolver: TokioResolver,
    cache: DomainCache,
    in_flight: Semaphore,
    timeout: Duration,
    ttls: Ttls,
    policy: EmailPolicy,
}

impl MailDomains {
    /// The check `config` asks for, or `None` when it is off.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Arc<Self>>> {
        let md = &config.mail_domain;
        if md.check_mail_domain == CheckMailDomain::Off {
            return Ok(None);
        }
        Ok(Some(Arc::new(Self {
            resolver: resolve::resolver(md)?,
            cache: DomainCache::new(md.dns_cache_size),
            in_flight: Semaphore::new(md.dns_concurrency),
            timeout: md.timeout(),
            ttls: Ttls::from_config(md),
            policy: config.policy(),
        })))
    }

    /// The verdict on one domain (ASCII, lower case): cached, or looked up.
    pub async fn verdict(&self, domain: &str) -> DomainVerdict {
        let (verdict, source) = self
            .cache
            .get(domain, || async {
                // Closed only when the process drops the check: then there
                // is nothing to wait for and the row is unverified.
                let _permit = self.in_flight.acquire().await;
                resolve::lookup(&self.resolver, domain, self.timeout, self.ttls).await
            })
            .await;
        match source {
            Source::Cache => {
                metrics::counter!("rowpipe_consumer_dns_cache_hits_total").increment(1)
            }
            Source::Lookup => {
                let outcome = match &verdict {
                    DomainVerdict::Accepts => "accepts",
                    DomainVerdict::Refuses(_) => "refuses",
                    DomainVerdict::Unknown(u) => u.reason.code(),
                };
                metrics::counter!("rowpipe_consumer_dns_lookups_total", "outcome" => outcome)
                    .increment(1);
            }
        }
        verdict
    }

    /// Look up the batch's distinct domains (at once, within the bound) and
    /// apply each answer to its rows: a refused domain rejects the row as
    /// `no_mail_domain`, an unknown one marks it `unverified`.
    ///
    /// `redelivered` carries the store when the batch may hold entries an
    /// earlier delivery stored (a reclaimed batch): DNS can answer
    /// differently the second time, and a row that is already the stored
    /// row for its email stays accepted, so that its redelivery is only
    /// replayed instead of being recorded a second time as a reject.
    pub async fn check(
        &self,
        rows: &mut [JudgedRow],
        redelivered: Option<&Store>,
    ) -> Result<(), StoreError> {
        let mut domains: Vec<&str> = rows
            .iter()
            .filter_map(deliverability::mail_domain)
            .collect();
        domains.sort_unstable();
        domains.dedup();
        let answers: HashMap<String, DomainVerdict> = futures::future::join_all(
            domains
                .into_iter()
                .map(|d| async move { (d.to_string(), self.verdict(d).await) }),
        )
        .await
        .into_iter()
        .collect();
        let mut unverified = 0u64;
        for row in rows.iter_mut() {
            let Some(verdict) = deliverability::mail_domain(row).and_then(|d| answers.get(d))
            else {
                continue;
            };
            if let (DomainVerdict::Refuses(_), Some(store)) = (verdict, redelivered)
                && store.holds_row(row).await?
            {
                continue;
            }
            deliverability::apply(row, verdict, self.policy);
            if row.unverified.is_some() && matches!(row.verdict, RowVerdict::Accept { .. }) {
                unverified += 1;
            }
        }
        if unverified > 0 {
            metrics::counter!("rowpipe_consumer_rows_unverified_total").increment(unverified);
        }
        Ok(())
    }

    /// Domains in the cache.
    pub fn cached_domains(&self) -> usize {
        self.cache.len()
    }
}
