//! One connection type for both deployments of Redis: a single server, or a
//! Redis Cluster.
//!
//! Every command rowpipe sends names one key (the two that name none,
//! `WAIT` and the readiness `PING`, are routed here: [`Connection::wait`],
//! [`Connection::ping`]; `WAIT` also rides in a pipeline behind the writes
//! it waits for), so the same code runs on both: [`Connection::Single`] is redis-rs's auto-reconnecting
//! `ConnectionManager`; [`Connection::Cluster`] is its cluster connection,
//! which discovers the topology from the seed nodes, sends each command to
//! the primary of its key's slot, follows `MOVED` and `ASK`, and refreshes
//! the slot map after a failover, so a program follows a new primary
//! without a restart. A pipeline goes whole to the node of its first key:
//! the upload keeps each pipeline to one shard.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

/// Where Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    /// One server's URL, or the seed nodes of a cluster.
    pub urls: Vec<String>,
    /// Whether `urls` are cluster nodes.
    pub cluster: bool,
}

/// A connection to Redis, whichever deployment it is.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How long a command may wait for its reply on the shared connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisTarget {
    /// One server.
    pub fn single(url: &str) -> Self {
        Self {
            urls: vec![url.to_string()],
            cluster: false,
        }
    }

    /// The shared connection for non-blocking commands (XADD, XACK,
    /// XINFO…).
    pub async fn connect(&self) -> redis::RedisResult<Connection> {
        self.open(RESPONSE_TIMEOUT).await
    }

    /// A dedicated connection for `XREADGROUP BLOCK block`: its response
    /// timeout is longer than the block, so a quiet stream is not mistaken
    /// for an outage.
    pub async fn connect_blocking(&self, block: Duration) -> redis::RedisResult<Connection> {
        self.open(block + RESPONSE_TIMEOUT).await
    }

    async fn open(&self, response_timeout: Duration) -> redis::RedisResult<Connection> {
        if self.cluster {
            return Ok(Connection::Cluster(
                cluster_client(&self.urls, response_timeout)?
                    .get_async_connection()
                    .await?,
            ));
        }
        let url = self.urls.first().map(String::as_str).unwrap_or_default();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        Ok(Connection::Single(
            super::client(url)?
                .get_connection_manager_with_config(config)
                .await?,
        ))
    }
}

/// A cluster client whose node connections send at once and probe a quiet
/// peer, as single-server ones do (see [`super::client`]). Credentials and
/// TLS come from the first seed URL (a cluster has one set for all nodes).
fn cluster_client(
    urls: &[String],
    response_timeout: Duration,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    let mut infos = Vec::with_capacity(urls.len());
    for url in urls {
        infos.push(url.as_str().into_connection_info()?);
    }
    let tcp = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(super::keepalive())
        .set_user_timeout(super::USER_TIMEOUT);
    ClusterClientBuilder::new(infos)
        .tcp_settings(tcp)
        .connection_timeout(CONNECTION_TIMEOUT)
        .response_timeout(response_timeout)
        // A few quick retries with backoff (about 1.5 s in all) ride out a
        // redirection or a refreshed slot map. A failover takes longer (the
        // cluster's node timeout, 15 s by default, plus an election): its
        // commands fail, and the callers' own retries carry them (the
        // upload's write attempts, the consumer loop's backoff).
        .retries(8)
        .min_retry_wait(50)
        .max_retry_wait(2_000)
        .build()
}

impl Connection {
    /// `PING`: whether Redis answers. On a cluster one node is asked (at
    /// random; redis-rs would otherwise ask every primary), so that a
    /// primary failing over does not make every client unready.
    pub async fn ping(&mut self) -> redis::RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Self::Single(con) => ping.query_async::<Value>(con).await.map(drop),
            Self::Cluster(con) => con
                .route_command(ping, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                .await
                .map(drop),
        }
    }

    /// `WAIT replicas timeout` on the primary that holds `key`: how many
    /// replicas have acknowledged this connection's writes to it so far.
    /// (A bare `WAIT` on a cluster connection would go to every primary
    /// and answer the least of their counts.)
    pub async fn wait(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Self::Single(con) => wait.query_async(con).await,
            Self::Cluster(con) => {
                let slot = super::shards::slot(key.as_bytes());
                let route = Route::new(slot, SlotAddr::Master);
                let reply = con
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply)?)
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(con) => con.req_packed_command(cmd),
            Self::Cluster(con) => con.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(con) => con.req_packed_commands(pipeline, offset, count),
            Self::Cluster(con) => con.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(con) => con.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}
