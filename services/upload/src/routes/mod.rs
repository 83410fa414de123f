//! The HTTP API, one module per route group.
//!
//! Each group's `router()` lists its own routes and handlers;
//! `startup` merges the groups and layers authentication over the
//! ones that need it. Handlers translate between HTTP and the modules that do
//! the work ([`crate::lifecycle`], [`crate::csv_writer`]), so those modules
//! stay free of routing.

pub mod exports;
pub mod health;
pub mod openapi;
pub mod uploads;
