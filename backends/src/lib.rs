//! Lean axum services that sit behind the gateway in tests, benchmarks and the quick start.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod echo;
pub mod token;
