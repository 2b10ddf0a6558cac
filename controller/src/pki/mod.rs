//! The controller's PKI: its CA ([`ca`]), the one signing policy that sets every field of
//! an issued certificate ([`policy`]), and the identities certificates carry ([`identity`]).
//!
//! Invariants: the CA key never leaves the controller (it is read from `ca.key`, 0600, and
//! never sent); only [`policy`] decides what goes into a certificate; a CSR contributes its
//! public key and nothing else.

pub mod ca;
pub mod identity;
pub mod policy;

use sha2::{Digest, Sha256};

pub use drover_proto::transport::SERVER_NAME;

/// Lower-case hex SHA-256 of a DER certificate: the CA fingerprint embedded in tokens.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a PKI file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted (`read`, `write`, ...).
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file held no usable certificate or key.
    #[error("parse {what}: {detail}")]
    Parse {
        /// What was parsed (file name or field).
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// rcgen refused to build or sign a certificate.
    #[error("sign certificate: {0}")]
    Sign(#[from] rcgen::Error),
}
