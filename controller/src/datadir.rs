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
//!   secrets.key        master key sealing runner tokens and specs (0600; SQLite only)
//!   kek.key            with --database and no --secrets-key-file: the key-encryption key
//!                      sealing the replicas' shared secrets in the database (0600)
//!   serve.lock         locked by the one `drover serve` using this dir; holds its pid
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
    /// The default key-encryption key of the replicas' shared secrets (0600).
    pub fn kek(&self) -> PathBuf {
        self.root.join("kek.key")
    }
    /// The CA private key (0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join(crate::pki::ca::CA_KEY_FILE)
    }
    /// The lock file of the serving controller.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("serve.lock")
    }

    /// Takes the data dir for this process: an exclusive lock on `serve.lock`, held until
    /// the returned guard drops (or the process ends, however it ends). A second
    /// controller on the same dir is refused at once, with the pid of the first.
    pub fn lock(&self) -> Result<DataDirLock, LockError> {
        use std::io::{Read, Seek, Write};
        let path = self.lock_file();
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Busy {
                    dir: self.root.clone(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

/// The data dir lock; released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Why the data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another controller holds it.
    #[error(
        "data dir {} is in use by another `drover serve`{}; stop it first or use another --data-dir",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy {
        /// The data dir.
        dir: PathBuf,
        /// The pid the holder wrote, when readable.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or written.
    #[error("lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_holder_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = super::DataDir::new(tmp.path());
        let held = dir.lock().unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(dir.lock_file()).unwrap().trim(),
            pid.to_string()
        );
        // flock locks belong to the open file, so a second open in this process conflicts
        // just as another process would.
        let err = dir.lock().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&tmp.path().display().to_string())
                && text.contains(&format!("pid {pid}")),
            "{text}"
        );
        drop(held);
        dir.lock().unwrap();
    }
}
