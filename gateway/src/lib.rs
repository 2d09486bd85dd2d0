//! The gateway engine: configuration pipeline, router, proxy request path and listeners.
//!
//! The `gateway` binary (main.rs) is a thin CLI over this library.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access_log;
pub mod auth;
pub mod config;
pub mod dev_certs;
pub mod limit;
pub mod metrics;
pub mod proxy;
mod random;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
mod stall;
pub mod telemetry;
pub(crate) mod text;
mod throttle;
pub mod timefmt;
pub mod tls;
pub mod upstream;
pub mod worker;
