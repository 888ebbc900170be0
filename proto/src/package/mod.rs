//! Packages on disk: building a manifest from a file or directory, and
//! checking content on disk against a manifest.

mod create;
mod scan;
mod verify;

pub use create::{CreateError, CreateOptions, create_manifest};
pub use scan::{ScanError, ScannedEntry, scan};
pub use verify::{ContentProblem, ContentReport, VerifyContentError, verify_content};

/// Number of hashing threads to use by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
