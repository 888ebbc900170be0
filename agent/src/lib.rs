//! The Shoal agent and the `shoal` command-line tool.
//!
//! This crate owns everything that runs on a workstation: the `shoal` CLI
//! ([`cli`]) and the daemon: discovery, transport, the swarm scheduler and
//! service ([`swarm`]), the chunk store, limits and the transfer queue, the
//! controller session ([`control`]), the local API, Prometheus metrics
//! ([`metrics`]) and logs and traces ([`telemetry`], which the controller
//! uses too).
//! Formats and the wire contract live in `shoal-proto`, fleet management in
//! `shoal-controller`.

pub mod agent;
pub mod alloc_tuning;
pub mod cli;
pub mod config;
pub mod control;
pub mod discovery;
pub mod enroll;
pub mod events;
pub mod limits;
pub mod local_api;
pub mod metrics;
pub mod signal;
pub mod store;
pub mod swarm;
pub mod telemetry;
pub mod transfers;
pub mod transport;
