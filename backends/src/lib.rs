//! Lean axum services that sit behind the gateway in tests, benchmarks and the quick start: echo,
//! and the shop trio auth, product and cart, which check tokens themselves (`jwt_check`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod api;
pub mod auth;
pub mod cart;
pub mod echo;
pub mod jwt_check;
pub mod product;
pub mod service;
pub mod token;
