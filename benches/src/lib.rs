//! End-to-end load bench: starts the echo backend, the gateways, redis-server and nginx, drives
//! load, reports.
//!
//! The binary `loadbench` (src/bin/loadbench.rs) wires these modules together:
//! `stack` starts the echo and the gateways, `nginx` and `redis` the outside processes, `jwt`
//! mints the tokens of the JWT scenarios, `load` generates the requests over `client`
//! connections, `procs` measures the processes, `hist` turns samples into percentiles, `report`
//! prints them, `plot` draws them and `wrk` cross-checks them.

pub mod client;
pub mod hist;
pub mod jwt;
pub mod load;
pub mod nginx;
pub mod plot;
pub mod procs;
pub mod redis;
pub mod report;
pub mod stack;
pub mod wrk;
