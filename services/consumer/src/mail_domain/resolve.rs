//! One domain's lookup, with hickory-resolver: MX first, then (only when
//! the domain exists without MX records) A and AAAA, and the verdict with
//! how long it may be kept.
//!
//! * MX records → accepts; a null MX (RFC 7505: one MX, preference 0,
//!   exchange `.`) → refuses ("accepts no mail");
//! * NXDOMAIN → refuses ("does not exist");
//! * no MX but an A or AAAA address → accepts (RFC 5321 §5.1, the implicit
//!   MX); neither → refuses;
//! * a timeout, SERVFAIL or any other failure → unknown, so the row is
//!   stored `unverified`: an outage of DNS is not bad data.
//!
//! hickory's own cache is off (`cache_size` 0): [`super::cache`] keeps the
//! answers, with the floor and ceiling applied, so each domain is asked
//! once per TTL and the counts at a test server say exactly that.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use rowpipe_core::deliverability::{DomainVerdict, Unverified, UnverifiedReason};

use crate::config::MailDomainConfig;

/// How long answers are kept (see [`MailDomainConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct Ttls {
    pub min: Duration,
    pub max: Duration,
    pub failure: Duration,
}

impl Ttls {
    pub fn from_config(config: &MailDomainConfig) -> Self {
        Self {
            min: Duration::from_secs(config.dns_min_ttl_secs),
            max: Duration::from_secs(config.dns_max_ttl_secs),
            failure: Duration::from_secs(config.dns_failure_ttl_secs),
        }
    }

    fn clamp(&self, ttl_secs: Option<u32>) -> Duration {
        let ttl = Duration::from_secs(ttl_secs.map(u64::from).unwrap_or(0));
        ttl.clamp(self.min, self.max)
    }
}

/// The resolver: `ROWPIPE_DNS_SERVERS` (UDP, then TCP for a truncated
/// answer) or the system's configuration.
pub fn resolver(config: &MailDomainConfig) -> anyhow::Result<TokioResolver> {
    let mut builder = match config.name_servers()? {
        Some(servers) => {
            let name_servers = servers.iter().map(name_server).collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        }
        None => Resolver::builder_tokio().map_err(|e| {
            anyhow::anyhow!(
                "ROWPIPE_CHECK_MAIL_DOMAIN=mx: cannot read the system's resolver configuration \
                 ({e}); set ROWPIPE_DNS_SERVERS"
            )
        })?,
    };
    let options = builder.options_mut();
    options.timeout = config.timeout();
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.preserve_intermediates = false;
    Ok(builder.build()?)
}

fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

/// The verdict on `domain` (ASCII) and how long to keep it. Never longer
/// than `timeout` in all.
pub async fn lookup(
    resolver: &TokioResolver,
    domain: &str,
    timeout: Duration,
    ttls: Ttls,
) -> (DomainVerdict, Duration) {
    let unknown = |reason, message: String| {
        (
            DomainVerdict::Unknown(Unverified { reason, message }),
            ttls.failure,
        )
    };
    let Ok(name) = Name::from_ascii(format!("{domain}.")) else {
        return unknown(
            UnverifiedReason::LookupFailed,
            format!("{domain} is not a name DNS can look up"),
        );
    };
    match tokio::time::timeout(timeout, answer(resolver, name, domain, ttls)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(failure)) => unknown(failure.0, failure.1),
        Err(_) => unknown(
            UnverifiedReason::Timeout,
            format!(
                "the DNS lookup of {domain} got no answer within {} ms",
                timeout.as_millis()
            ),
        ),
    }
}

type Failure = (UnverifiedReason, String);

/// What a query returned: records (with the smallest TTL), or none and
/// whether the name exists, with the negative TTL.
enum Answer<T> {
    Records(Vec<T>, u32),
    NoRecords { nxdomain: bool, ttl: Option<u32> },
}

async fn query<T>(
    resolver: &TokioResolver,
    name: &Name,
    record_type: RecordType,
    domain: &str,
    pick: impl Fn(&RData) -> Option<T>,
) -> Result<Answer<T>, Failure> {
    match resolver.lookup(name.clone(), record_type).await {
        Ok(lookup) => {
            let mut ttl = u32::MAX;
            let mut found = Vec::new();
            for record in lookup.answers() {
                if let Some(v) = pick(&record.data) {
                    ttl = ttl.min(record.ttl);
                    found.push(v);
                }
            }
            if found.is_empty() {
                Ok(Answer::NoRecords {
                    nxdomain: false,
                    ttl: None,
                })
            } else {
                Ok(Answer::Records(found, ttl))
            }
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(none))) => match none.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(Answer::NoRecords {
                nxdomain: none.response_code == ResponseCode::NXDomain,
                ttl: none.negative_ttl,
            }),
            code => Err(server_failure(domain, record_type, code)),
        },
        Err(NetError::Dns(DnsError::ResponseCode(code))) => {
            Err(server_failure(domain, record_type, code))
        }
        Err(NetError::Timeout) => Err((
            UnverifiedReason::Timeout,
            format!("the DNS lookup ({record_type}) of {domain} timed out"),
        )),
        Err(e) => Err((
            UnverifiedReason::LookupFailed,
            format!("the DNS lookup ({record_type}) of {domain} failed: {e}"),
        )),
    }
}

fn server_failure(domain: &str, record_type: RecordType, code: ResponseCode) -> Failure {
    (
        UnverifiedReason::ServerFailure,
        format!(
            "the DNS server answered {} to the {record_type} lookup of {domain}",
            code.to_str()
        ),
    )
}

async fn answer(
    resolver: &TokioResolver,
    name: Name,
    domain: &str,
    ttls: Ttls,
) -> Result<(DomainVerdict, Duration), Failure> {
    let mx = query(resolver, &name, RecordType::MX, domain, |d| match d {
        RData::MX(mx) => Some((mx.preference, mx.exchange.is_root())),
        _ => None,
    })
    .await?;
    match mx {
        Answer::Records(records, ttl) => {
            // RFC 7505 §3: a null MX is the only MX of its domain; one that
            // sits beside real exchanges is ignored, as senders do.
            let verdict = if records
                .iter()
                .all(|&(preference, root)| root && preference == 0)
            {
                DomainVerdict::Refuses("publishes a null MX (RFC 7505): it accepts no mail".into())
            } else {
                DomainVerdict::Accepts
            };
            Ok((verdict, ttls.clamp(Some(ttl))))
        }
        Answer::NoRecords {
            nxdomain: true,
            ttl,
        } => Ok((
            DomainVerdict::Refuses("does not exist (NXDOMAIN)".into()),
            ttls.clamp(ttl),
        )),
        Answer::NoRecords {
            nxdomain: false,
            ttl: mx_ttl,
        } => {
            let is_address = |d: &RData| matches!(d, RData::A(_) | RData::AAAA(_)).then_some(());
            let (a, aaaa) = tokio::join!(
                query(resolver, &name, RecordType::A, domain, is_address),
                query(resolver, &name, RecordType::AAAA, domain, is_address),
            );
            match (a, aaaa) {
                (Ok(Answer::Records(_, ttl)), _) | (_, Ok(Answer::Records(_, ttl))) => {
                    Ok((DomainVerdict::Accepts, ttls.clamp(Some(ttl))))
                }
                (Err(failure), _) | (_, Err(failure)) => Err(failure),
                (
                    Ok(Answer::NoRecords { ttl: a_ttl, .. }),
                    Ok(Answer::NoRecords { ttl: b_ttl, .. }),
                ) => {
                    let ttl = [mx_ttl, a_ttl, b_ttl].into_iter().flatten().min();
                    Ok((
                        DomainVerdict::Refuses(
                            "has no MX record and no A or AAAA address to deliver to".into(),
                        ),
                        ttls.clamp(ttl),
                    ))
                }
            }
        }
    }
}
