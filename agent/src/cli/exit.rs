//! Exit codes scripts can rely on (BSD sysexits where one fits) and the
//! error type every command returns.

use std::fmt;

/// Everything checked out.
pub const OK: u8 = 0;
/// The check ran and failed: content differs, signature invalid, key untrusted.
pub const FAILED: u8 = 1;
/// Bad command line (also what clap uses).
pub const USAGE: u8 = 2;
/// Input is malformed: a manifest or key file that cannot be parsed.
pub const DATA: u8 = 65;
/// An input file does not exist.
pub const NO_INPUT: u8 = 66;
/// A required service is not available.
pub const UNAVAILABLE: u8 = 69;
/// A bug in Shoal.
pub const SOFTWARE: u8 = 70;
/// An output file cannot be created (exists, or no permission).
pub const CANT_CREATE: u8 = 73;
/// Reading or writing failed.
pub const IO: u8 = 74;

/// A failed command: what to tell the user and which code to exit with.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl CliError {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }

    pub fn usage(msg: impl fmt::Display) -> Self {
        Self::new(USAGE, anyhow::anyhow!("{msg}"))
    }

    /// Classifies an I/O error: missing input, or a general I/O failure.
    pub fn io(error: std::io::Error, context: impl fmt::Display) -> Self {
        let code = match error.kind() {
            std::io::ErrorKind::NotFound => NO_INPUT,
            _ => IO,
        };
        Self::new(code, anyhow::Error::new(error).context(context.to_string()))
    }

    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.error = self.error.context(context.to_string());
        self
    }
}

impl From<shoal_proto::ManifestError> for CliError {
    fn from(e: shoal_proto::ManifestError) -> Self {
        Self::new(DATA, e)
    }
}

impl From<shoal_proto::VerifyError> for CliError {
    fn from(e: shoal_proto::VerifyError) -> Self {
        let code = match e {
            shoal_proto::VerifyError::Manifest(_) => DATA,
            _ => FAILED,
        };
        Self::new(code, e)
    }
}

impl From<shoal_proto::signing::KeyError> for CliError {
    fn from(e: shoal_proto::signing::KeyError) -> Self {
        use shoal_proto::signing::KeyError;
        let code = match &e {
            KeyError::Io { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => NO_INPUT,
            KeyError::Io { .. } | KeyError::Random(_) => IO,
            _ => DATA,
        };
        Self::new(code, e)
    }
}

impl From<shoal_proto::package::CreateError> for CliError {
    fn from(e: shoal_proto::package::CreateError) -> Self {
        use shoal_proto::package::{CreateError, ScanError};
        let code = match &e {
            CreateError::Scan(ScanError::Io { cause, .. }) | CreateError::Io { cause, .. }
                if cause.kind() == std::io::ErrorKind::NotFound =>
            {
                NO_INPUT
            }
            CreateError::Manifest(_) | CreateError::Scan(_) => DATA,
            _ => IO,
        };
        Self::new(code, e)
    }
}

impl From<shoal_proto::package::VerifyContentError> for CliError {
    fn from(e: shoal_proto::package::VerifyContentError) -> Self {
        use shoal_proto::package::VerifyContentError;
        let code = match &e {
            VerifyContentError::Io { cause, .. }
                if cause.kind() == std::io::ErrorKind::NotFound =>
            {
                NO_INPUT
            }
            _ => IO,
        };
        Self::new(code, e)
    }
}
