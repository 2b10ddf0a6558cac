//! The controller's data directory: what lives where.
//!
//! ```text
//! DATA_DIR/            0700
//!   drover.db          SQLite store
//!   ca.crt             CA certificate (PEM)
//!   ca.key             CA key (0600, never leaves the controller)
//!   admin.crt          admin client certificate (drover://admin/local)
//!   admin.key          its key (0600)
//!   grpc.addr          the bound gRPC address, for the admin CLI
//!   http.addr          the bound HTTP address
//!   secrets.key        master key sealing runner tokens and specs (0600)
//! ```

use std::path::{Path, PathBuf};

/// Paths inside a data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The SQLite database.
    pub fn db(&self) -> PathBuf {
        self.root.join("drover.db")
    }
    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join(crate::pki::ca::CA_CERT_FILE)
    }
    /// The admin client certificate.
    pub fn admin_cert(&self) -> PathBuf {
        self.root.join("admin.crt")
    }
    /// The admin client key (0600).
    pub fn admin_key(&self) -> PathBuf {
        self.root.join("admin.key")
    }
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> PathBuf {
        self.root.join("grpc.addr")
    }
    /// The bound HTTP address.
    pub fn http_addr(&self) -> PathBuf {
        self.root.join("http.addr")
    }
    /// The master key for secrets at rest (0600).
    pub fn secrets_key(&self) -> PathBuf {
        self.root.join("secrets.key")
    }
}
