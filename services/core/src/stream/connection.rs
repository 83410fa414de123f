//! One connection type for both deployments of Redis: a single server, or a
//! Redis Cluster.
//!
//! Every command rowpipe sends names one key (or, for `WAIT`, rides in a
//! pipeline behind the writes it waits for), so the same code runs on
//! both: [`Connection::Single`] is redis-rs's auto-reconnecting
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
        // A failover takes the cluster's node timeout plus an election:
        // retries with backoff span about that before a command fails.
        .retries(8)
        .min_retry_wait(50)
        .max_retry_wait(2_000)
        .build()
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
