//! A Redis Cluster of the test's own: `redis-server` processes on free
//! ports, joined by `redis-cli --cluster create`, whose primaries a test can
//! kill to watch a replica take over, and restart to watch them rejoin.
//!
//! Each node has its own directory (AOF, `nodes.conf`, `redis.log`) under
//! one temporary directory; dropping the cluster kills every process and
//! removes it. The shared Redis is never touched.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::FromRedisValue;

use crate::services::require_binary;

/// How long the cluster may take to form (or settle after a restart).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one admin command may take before a node counts as not answering.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// `cluster-node-timeout`: how long a primary may be silent before its
/// replicas start a failover (plus an election of about a second).
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// The 16,384 hash slots of a Redis Cluster.
const SLOTS: u64 = 16_384;

/// A Redis Cluster of `primaries` primaries with `replicas_per_primary`
/// replicas each, every node a `redis-server` with AOF (`appendfsync
/// everysec`) on a loopback port of its own.
pub struct RedisCluster {
    nodes: Vec<Node>,
    replicas_per_primary: usize,
    root: PathBuf,
}

struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl RedisCluster {
    /// Start `primaries * (1 + replicas_per_primary)` nodes, create the
    /// cluster over them, and wait until every node reports
    /// `cluster_state:ok` with all slots assigned and every replica's link
    /// to its primary is up.
    pub async fn start(primaries: usize, replicas_per_primary: usize) -> anyhow::Result<Self> {
        require_binary("redis-server")?;
        require_binary("redis-cli")?;
        if primaries < 3 {
            bail!(
                "a Redis Cluster needs at least 3 primaries (redis-cli --cluster create refuses fewer), not {primaries}"
            );
        }
        let count = primaries * (1 + replicas_per_primary);
        let root = std::env::temp_dir().join(format!(
            "rowpipe-redis-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&root)?;
        let mut me = Self {
            nodes: Vec::with_capacity(count),
            replicas_per_primary,
            root,
        };
        // From here on, an error drops `me`, which kills what was started.
        for port in free_cluster_ports(count)? {
            let dir = me.root.join(port.to_string());
            std::fs::create_dir_all(&dir)?;
            me.nodes.push(Node {
                port,
                dir,
                child: None,
            });
        }
        for i in 0..me.nodes.len() {
            me.nodes[i].spawn()?;
        }
        for node in &me.nodes {
            wait_for_ping(node.port).await?;
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &me.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args([
                "--cluster-replicas",
                &replicas_per_primary.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(READY_TIMEOUT, create.output())
            .await
            .context("redis-cli --cluster create did not finish in 30 s")?
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        me.wait_until_ready(READY_TIMEOUT).await?;
        Ok(me)
    }

    /// The seed URLs of every node, comma-separated, as `REDIS_URL` takes
    /// them with `ROWPIPE_REDIS_CLUSTER=true`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| url(n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One node's URL (the first node's, live or not).
    pub fn seed_url(&self) -> String {
        url(self.nodes[0].port)
    }

    /// Every node's port, live or not, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The port of the primary serving `key`'s hash slot, as a live node
    /// sees it (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`).
    pub async fn primary_of(&self, key: &str) -> anyhow::Result<u16> {
        let mut last = None;
        for port in self.live_ports() {
            match slot_primary(port, key).await {
                Ok(Some(primary)) => return Ok(primary),
                Ok(None) => last = Some(anyhow::anyhow!("node {port} has no primary for {key:?}")),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no live node")))
            .with_context(|| format!("finding the primary of {key:?}"))
    }

    /// SIGKILL the process of the primary serving `key`; returns its port.
    pub async fn kill_primary_of(&mut self, key: &str) -> anyhow::Result<u16> {
        let port = self.primary_of(key).await?;
        self.kill_node(port).await?;
        Ok(port)
    }

    /// SIGKILL the node on `port` (a no-op if it is already dead).
    pub async fn kill_node(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self.node_mut(port)?;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        Ok(())
    }

    /// Wait until every live node names one primary other than `old_port`
    /// for `key`'s slot and says `cluster_state:ok`; returns the new
    /// primary's port.
    pub async fn wait_for_failover(
        &self,
        key: &str,
        old_port: u16,
        timeout: Duration,
    ) -> anyhow::Result<u16> {
        let started = Instant::now();
        loop {
            let seen = match self.agreed_primary(key).await {
                Ok(primary) if primary != old_port && self.live_ports().contains(&primary) => {
                    match self.not_ok_nodes().await {
                        Ok(not_ok) if not_ok.is_empty() => return Ok(primary),
                        Ok(not_ok) => format!("new primary {primary}, but {}", not_ok.join("; ")),
                        Err(e) => format!("{e:#}"),
                    }
                }
                Ok(primary) => format!("the primary is still {primary}"),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > timeout {
                bail!(
                    "no failover of {key:?} away from {old_port} within {timeout:?} (node timeout {NODE_TIMEOUT_MS} ms): {seen}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start a killed node again with its own directory and `nodes.conf`,
    /// and wait until it has rejoined (a killed primary whose slots moved
    /// comes back as a replica of its successor) and the cluster is ready
    /// again, as after [`Self::start`].
    pub async fn restart_node(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self.node_mut(port)?;
        if node.child.is_some() {
            bail!("node {port} is running; kill it first");
        }
        node.spawn()?;
        wait_for_ping(port).await?;
        self.wait_until_ready(READY_TIMEOUT).await
    }

    /// The port of the primary whose replica the node on `port` is, with
    /// its replication link up, or `None` for a primary (or a replica whose
    /// link is down).
    pub async fn replica_of(&self, port: u16) -> anyhow::Result<Option<u16>> {
        let info: String = query(port, redis::cmd("INFO").arg("replication")).await?;
        if field(&info, "role") != Some("slave") || field(&info, "master_link_status") != Some("up")
        {
            return Ok(None);
        }
        Ok(field(&info, "master_port").and_then(|p| p.parse().ok()))
    }

    /// `(port, pid)` of every live node.
    pub fn pids(&self) -> Vec<(u16, u32)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.port, n.child.as_ref()?.id())))
            .collect()
    }

    /// `(port, seconds)` of CPU (user + system, from `/proc/<pid>/stat`)
    /// each live node has used since it started, for benchmarks.
    pub fn cpu_seconds(&self) -> Vec<(u16, f64)> {
        self.pids()
            .into_iter()
            .filter_map(|(port, pid)| Some((port, process_cpu_seconds(pid)?)))
            .collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    fn node_mut(&mut self, port: u16) -> anyhow::Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("no node of this cluster on port {port}"))
    }

    /// The primary every live node names for `key`'s slot, or an error if
    /// they disagree (or one has none).
    async fn agreed_primary(&self, key: &str) -> anyhow::Result<u16> {
        let mut agreed = None;
        for port in self.live_ports() {
            let primary = slot_primary(port, key)
                .await?
                .with_context(|| format!("node {port} has no primary for {key:?}"))?;
            match agreed {
                None => agreed = Some(primary),
                Some(p) if p == primary => {}
                Some(p) => bail!("nodes disagree on the primary of {key:?}: {p} and {primary}"),
            }
        }
        agreed.context("no live node")
    }

    /// What keeps each live node from being ready, one line per such node:
    /// `cluster_state` not ok, slots unassigned, or (on a primary) fewer
    /// online replicas than it should have.
    async fn not_ok_nodes(&self) -> anyhow::Result<Vec<String>> {
        let live = self.live_ports();
        let mut not_ok = Vec::new();
        // Every node must see the same slots on the same primaries: a
        // restarted primary says `cluster_state:ok` on its own stale map
        // until it learns that its slots have moved.
        let mut maps = Vec::new();
        for &port in &live {
            match slot_map(port).await {
                Ok(map) => maps.push((port, map)),
                Err(e) => not_ok.push(format!("{port}: {e:#}")),
            }
        }
        if let Some((first, map)) = maps.first()
            && let Some((other, _)) = maps.iter().find(|(_, m)| m != map)
        {
            not_ok.push(format!(
                "{first} and {other} disagree on which primary serves which slots"
            ));
        }
        for &port in &live {
            let info: String = match query(port, redis::cmd("CLUSTER").arg("INFO")).await {
                Ok(info) => info,
                Err(e) => {
                    not_ok.push(format!("{port}: {e:#}"));
                    continue;
                }
            };
            let state = field(&info, "cluster_state").unwrap_or("?");
            let assigned = field(&info, "cluster_slots_assigned").unwrap_or("?");
            if state != "ok" || assigned != SLOTS.to_string() {
                not_ok.push(format!(
                    "{port}: cluster_state:{state}, cluster_slots_assigned:{assigned}"
                ));
                continue;
            }
            let repl: String = query(port, redis::cmd("INFO").arg("replication")).await?;
            if field(&repl, "role") == Some("master") {
                let online = repl
                    .lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .filter(|l| {
                        // Only replicas that are running count: a killed one
                        // lingers in INFO until its link times out.
                        field_in(l, "port")
                            .and_then(|p| p.parse::<u16>().ok())
                            .is_some_and(|p| live.contains(&p))
                    })
                    .count();
                let expected = self.expected_replicas(port).await?;
                if online < expected {
                    not_ok.push(format!(
                        "{port}: primary with {online} of {expected} replicas online"
                    ));
                }
            } else if field(&repl, "master_link_status") != Some("up") {
                not_ok.push(format!(
                    "{port}: replica whose link to {} is {}",
                    field(&repl, "master_port").unwrap_or("?"),
                    field(&repl, "master_link_status").unwrap_or("?")
                ));
            }
        }
        Ok(not_ok)
    }

    /// How many live replicas the primary on `port` should have, by the
    /// cluster's own account (`CLUSTER REPLICAS`), at most the configured
    /// number per primary.
    async fn expected_replicas(&self, port: u16) -> anyhow::Result<usize> {
        let myid: String = query(port, redis::cmd("CLUSTER").arg("MYID")).await?;
        let replicas: Vec<String> =
            query(port, redis::cmd("CLUSTER").arg("REPLICAS").arg(&myid)).await?;
        let live = self.live_ports();
        let running = replicas
            .iter()
            .filter(|line| {
                !line.contains("fail")
                    && line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|addr| {
                            addr.split('@')
                                .next()?
                                .rsplit(':')
                                .next()?
                                .parse::<u16>()
                                .ok()
                        })
                        .is_some_and(|p| live.contains(&p))
            })
            .count();
        Ok(running.min(self.replicas_per_primary))
    }

    async fn wait_until_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let why = match self.not_ok_nodes().await {
                Ok(not_ok) if not_ok.is_empty() => return Ok(()),
                Ok(not_ok) => not_ok.join("; "),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > timeout {
                bail!(
                    "the Redis Cluster under {} was not ready within {timeout:?}: {why}",
                    self.root.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Node {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(self.dir.join("nodes.conf"))
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            // A primary would wait 5 s (the default) for more replicas
            // before a full sync to a new one: most of the cluster's start
            // and of a restarted node's rejoining.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.kill();
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// `count` distinct free loopback ports whose cluster bus ports (+10000)
/// are free too. All are held open until every one is chosen.
fn free_cluster_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut tries = 0;
    while ports.len() < count {
        tries += 1;
        if tries > 200 {
            bail!(
                "found only {} of {count} free port pairs (port, port + 10000)",
                ports.len()
            );
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port > u16::MAX - 10_000 {
            continue;
        }
        let Ok(bus) = std::net::TcpListener::bind(("127.0.0.1", port + 10_000)) else {
            continue;
        };
        ports.push(port);
        held.push((l, bus));
    }
    Ok(ports)
}

/// One admin command to the node on `port`, over a connection of its own.
async fn query<T: FromRedisValue>(port: u16, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let work = async {
        let client = redis::Client::open(url(port))?;
        let mut con = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut con).await
    };
    tokio::time::timeout(ADMIN_TIMEOUT, work)
        .await
        .with_context(|| format!("node {port} did not answer within {ADMIN_TIMEOUT:?}"))?
        .with_context(|| format!("asking node {port}"))
}

async fn wait_for_ping(port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if query::<String>(port, &redis::cmd("PING")).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("redis-server did not start on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The primary the node on `port` names for `key`'s slot.
async fn slot_primary(port: u16, key: &str) -> anyhow::Result<Option<u16>> {
    let slot: i64 = query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await?;
    Ok(slot_map(port)
        .await?
        .into_iter()
        .find(|&(start, end, _)| (start..=end).contains(&slot))
        .map(|(_, _, primary)| primary))
}

/// `(first slot, last slot, primary's port)` of every slot range, as the
/// node on `port` sees them (`CLUSTER SLOTS`), in slot order.
async fn slot_map(port: u16) -> anyhow::Result<Vec<(i64, i64, u16)>> {
    let ranges: Vec<Vec<redis::Value>> = query(port, redis::cmd("CLUSTER").arg("SLOTS")).await?;
    let mut map = Vec::with_capacity(ranges.len());
    for range in ranges {
        // [start, end, [ip, port, id, …] of the primary, replicas…]
        let (Some(start), Some(end), Some(primary)) = (range.first(), range.get(1), range.get(2))
        else {
            continue;
        };
        let node: Vec<redis::Value> = Vec::from_redis_value_ref(primary)?;
        let primary = node
            .get(1)
            .map(i64::from_redis_value_ref)
            .transpose()?
            .context("CLUSTER SLOTS names a primary without a port")?;
        map.push((
            i64::from_redis_value_ref(start)?,
            i64::from_redis_value_ref(end)?,
            u16::try_from(primary)?,
        ));
    }
    map.sort_unstable();
    Ok(map)
}

/// `name:value` of an INFO reply.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// `name=value` of one INFO line such as `slave0:ip=…,port=…,state=online`.
fn field_in<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (_, rest) = line.split_once(':')?;
    rest.split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted
    // after its closing `)`, where the state (field 3) comes first, so
    // utime (14) and stime (15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// `CLK_TCK` (clock ticks per second of `/proc` times), from `getconf`;
/// 100, Linux's value everywhere, if that fails.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::*;

    #[tokio::test]
    async fn a_cluster_of_three_primaries_fails_over_when_one_is_killed() {
        let started = Instant::now();
        let mut cluster = RedisCluster::start(3, 1).await.expect("cluster");
        assert_eq!(cluster.pids().len(), 6);
        assert_eq!(cluster.urls().split(',').count(), 6);
        assert!(cluster.cpu_seconds().iter().all(|&(_, s)| s >= 0.0));
        let formed = started.elapsed();

        let client = redis::cluster::ClusterClient::builder(cluster.urls().split(','))
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .build()
            .expect("cluster client");
        let mut con = client
            .get_async_connection()
            .await
            .expect("cluster connection");
        let key = "rowpipe:testkit:cluster-self-test";
        let () = con.set(key, "before the failover").await.expect("SET");
        // `appendfsync everysec`: the process dying loses nothing written,
        // but the replica must have the write before its primary dies.
        // WAIT counts the replicas that have this connection's writes, so it
        // goes on the SET's connection, to the key's primary (rowpipe's own
        // routed WAIT, as the upload service sends it).
        let primary = cluster.primary_of(key).await.expect("primary");
        let replicated = rowpipe_core::stream::Connection::Cluster(con.clone())
            .wait(key, 1, Duration::from_secs(2))
            .await
            .expect("WAIT");
        assert_eq!(replicated, 1, "the replica acknowledged the write");

        let killed_at = Instant::now();
        let old = cluster.kill_primary_of(key).await.expect("kill");
        assert_eq!(old, primary);
        assert_eq!(cluster.pids().len(), 5);
        let new = cluster
            .wait_for_failover(key, old, Duration::from_secs(15))
            .await
            .expect("failover");
        let failover = killed_at.elapsed();
        assert_ne!(new, old);
        assert_eq!(cluster.primary_of(key).await.expect("primary"), new);

        // The same connection finds the new primary: the dead node's
        // connection fails, the client refreshes its slot map and follows.
        let read_started = Instant::now();
        let value: String = loop {
            match con.get::<_, Option<String>>(key).await {
                Ok(Some(v)) => break v,
                Ok(None) => panic!("the key was lost in the failover"),
                Err(e) if read_started.elapsed() < Duration::from_secs(10) => {
                    eprintln!("read after failover: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no read through the cluster connection after failover: {e}"),
            }
        };
        let read_back = read_started.elapsed();
        assert_eq!(value, "before the failover");
        let () = con
            .set(key, "after the failover")
            .await
            .expect("SET after failover");

        let restarted_at = Instant::now();
        cluster.restart_node(old).await.expect("restart");
        assert_eq!(cluster.pids().len(), 6);
        assert_eq!(cluster.replica_of(old).await.expect("role"), Some(new));
        assert_eq!(cluster.primary_of(key).await.expect("primary"), new);
        let rejoined = restarted_at.elapsed();
        let value: String = con.get(key).await.expect("GET after the rejoin");
        assert_eq!(value, "after the failover");
        eprintln!(
            "cluster formed in {formed:?}, failed over in {failover:?}, \
             read back {read_back:?} after it, old primary rejoined as a replica in {rejoined:?}; \
             {:?} in all",
            started.elapsed()
        );
    }
}
