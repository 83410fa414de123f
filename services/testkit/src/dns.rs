//! An authoritative DNS server of the test's own, on a loopback UDP port,
//! built on hickory-proto's wire format (so it needs nothing installed):
//! each domain is given one of the answers the deliverability check must
//! tell apart ([`Zone`]), and every query it receives is counted, so a test
//! can assert how often a domain was asked.
//!
//! Names it holds no zone for are answered NXDOMAIN. Negative answers carry
//! an SOA whose `minimum` is the server's TTL (the negative TTL, RFC 2308).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the server answers for a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Zone {
    /// MX records (`mx1.<domain>` at preference 10), no address.
    Mx,
    /// No MX, an A and an AAAA record (RFC 5321's implicit MX).
    AddressOnly,
    /// The null MX of RFC 7505: `MX 0 .`.
    NullMx,
    /// The name exists with no MX and no address (only an SOA).
    Empty,
    /// NXDOMAIN, as for every name without a zone.
    NxDomain,
    /// SERVFAIL to every query.
    ServFail,
    /// No answer at all: the query is dropped, so the client times out.
    Silent,
}

/// The server; stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<(String, RecordType), usize>>>,
    task: JoinHandle<()>,
}

impl TestDns {
    /// Start a server holding `zones` (domain → answer), with `ttl` seconds
    /// on every record and as the negative TTL.
    pub async fn start(
        zones: impl IntoIterator<Item = (String, Zone)>,
        ttl: u32,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let zones: HashMap<String, Zone> = zones
            .into_iter()
            .map(|(d, z)| (d.trim_end_matches('.').to_ascii_lowercase(), z))
            .collect();
        let queries: Arc<Mutex<HashMap<(String, RecordType), usize>>> = Arc::default();
        let counted = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(query) = request.queries.first().cloned() else {
                    continue;
                };
                let name = query
                    .name()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                *counted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry((name.clone(), query.query_type()))
                    .or_default() += 1;
                let zone = zones.get(&name).cloned().unwrap_or(Zone::NxDomain);
                let Some(response) = answer(&request, &name, query.query_type(), &zone, ttl) else {
                    continue;
                };
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Ok(Self {
            addr,
            queries,
            task,
        })
    }

    /// `ip:port`, for `ROWPIPE_DNS_SERVERS`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received for `domain` of `record_type`.
    pub fn queries(&self, domain: &str, record_type: RecordType) -> usize {
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(domain.to_ascii_lowercase(), record_type))
            .copied()
            .unwrap_or(0)
    }

    /// Queries received for `domain`, of every type.
    pub fn queries_for(&self, domain: &str) -> usize {
        let domain = domain.to_ascii_lowercase();
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((d, _), _)| *d == domain)
            .map(|(_, n)| n)
            .sum()
    }

    /// Queries received in all.
    pub fn total_queries(&self) -> usize {
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(
    request: &Message,
    name: &str,
    record_type: RecordType,
    zone: &Zone,
    ttl: u32,
) -> Option<Message> {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.queries = request.queries.clone();
    let owner = Name::from_ascii(format!("{name}.")).ok()?;
    let child = |label: &str| Name::from_ascii(format!("{label}.{name}.")).ok();
    let soa = || -> Option<Record> {
        Some(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::SOA(SOA::new(
                child("ns1")?,
                child("hostmaster")?,
                1,
                3600,
                600,
                86400,
                ttl,
            )),
        ))
    };
    let mut answers: Vec<Record> = Vec::new();
    match zone {
        Zone::Silent => return None,
        Zone::ServFail => {
            response.metadata.response_code = ResponseCode::ServFail;
            response.metadata.authoritative = false;
            return Some(response);
        }
        Zone::NxDomain => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.authorities.extend(soa());
            return Some(response);
        }
        Zone::Mx if record_type == RecordType::MX => {
            answers.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::MX(MX::new(10, child("mx1")?)),
            ));
        }
        Zone::NullMx if record_type == RecordType::MX => {
            answers.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::MX(MX::new(0, Name::root())),
            ));
        }
        Zone::AddressOnly if record_type == RecordType::A => {
            answers.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 25))),
            ));
        }
        Zone::AddressOnly if record_type == RecordType::AAAA => {
            answers.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 25))),
            ));
        }
        _ => {}
    }
    if answers.is_empty() {
        // NOERROR with no data: the name exists, this type does not.
        response.authorities.extend(soa());
    }
    response.answers = answers;
    Some(response)
}
