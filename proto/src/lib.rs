//! Shoal's wire contract and the formats every side shares.
//!
//! This crate owns what agent, controller and CLI must agree on byte for
//! byte: the gRPC services and messages generated from `proto/*.proto`
//! ([`pb`]), the package manifest with its canonical encoding and content id
//! ([`manifest`]), publisher keys and manifest signatures ([`signing`]),
//! chunking and parallel streaming hashing ([`chunking`]), and building or
//! checking a package from files on disk ([`package`]).
//!
//! It does not own networking, storage or policy: those live in the agent
//! and controller crates.

pub mod chunking;
pub mod content_id;
pub mod identity;
pub mod labels;
pub mod manifest;
pub mod package;
pub mod pb;
pub mod pki;
pub mod signing;
pub mod units;

pub use content_id::ContentId;
pub use manifest::{Manifest, ManifestError};
pub use signing::{KeyId, PublicKey, PublisherKey, SignedManifest, TrustedKeys, VerifyError};
