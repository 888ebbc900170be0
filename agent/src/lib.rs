//! The Shoal agent and the `shoal` command-line tool.
//!
//! This crate owns everything that runs on a workstation: today the `shoal`
//! CLI's key and package commands ([`cli`]); the daemon's discovery,
//! transport, swarm scheduler, chunk store, controller session ([`control`])
//! and local API grow beside it.
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
pub mod signal;
pub mod store;
pub mod swarm;
pub mod transfers;
pub mod transport;
