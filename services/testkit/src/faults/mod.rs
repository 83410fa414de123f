//! Faults a test injects without touching the shared servers: a database
//! link it can cut ([`proxy::ToggleProxy`]) and a Redis of its own it can
//! restart ([`redis::OwnRedis`]).

pub mod proxy;
pub mod redis;
