//! Generated protobuf messages and tonic services (`shoal.v1`).
//!
//! Logic works on the domain types of this crate; these types stay at the
//! edges and are converted with `TryFrom`.

#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

tonic::include_proto!("shoal.v1");
