//! Faults a test injects without touching the shared servers: a database
//! link it can cut ([`proxy::ToggleProxy`]), a Redis of its own it can
//! restart ([`redis::OwnRedis`]), a Redis Cluster of its own whose primaries
//! it can kill ([`redis_cluster::RedisCluster`]), and its own database's
//! privileges and read-only switch ([`database`]).

pub mod database;
pub mod proxy;
pub mod redis;
pub mod redis_cluster;
