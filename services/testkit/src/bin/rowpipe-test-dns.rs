//! The test's DNS server ([`rowpipe_testkit::TestDns`]) as a program, for
//! the benchmark (`scripts/bench.py --mail-domain`), which runs the real
//! binaries and so needs a server outside its own process.
//!
//! `rowpipe-test-dns --ttl 3600 --mx a.example --mx b.example …` serves MX
//! records for the names given (NXDOMAIN for any other), prints
//! `listening 127.0.0.1:PORT` on its first line, and when its standard
//! input closes prints the queries it received as JSON
//! (`{"total": N, "by_name": {"a.example": 1, …}}`) and exits.

use std::collections::BTreeMap;

use rowpipe_testkit::{TestDns, Zone};
use tokio::io::AsyncReadExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut ttl: u32 = 3600;
    let mut names: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ttl" => {
                ttl = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--ttl needs a value"))?
                    .parse()?
            }
            "--mx" => names.push(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("--mx needs a domain"))?,
            ),
            other => anyhow::bail!("unknown argument {other:?}; usage: --ttl SECS --mx DOMAIN …"),
        }
    }
    let dns = TestDns::start(names.iter().map(|n| (n.clone(), Zone::Mx)), ttl).await?;
    println!("listening {}", dns.addr());
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    let by_name: BTreeMap<&str, usize> = names
        .iter()
        .map(|n| (n.as_str(), dns.queries_for(n)))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "total": dns.total_queries(), "by_name": by_name })
    );
    Ok(())
}
