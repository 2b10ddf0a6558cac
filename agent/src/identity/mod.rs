//! The agent's identity on disk and on the wire.
//!
//! State dir (0700, default `/var/lib/drover-agent`):
//! ```text
//! agent.json   agent id and controller addresses in order of preference (written last:
//!              marks a finished enrollment)
//! agent.key    private key, PKCS#8 PEM, 0600 (generated here, never sent)
//! agent.crt    client certificate issued by the controller
//! ca.crt       the controller CA, pinned by the token's fingerprint at enrollment
//! system_id    the GitLab runner-manager id (`system_id.rs`, also used in standalone mode)
//! ```
//! Invariants: the key never leaves the box; only the controller chooses the agent id
//! (it is read back from the certificate and must match `agent.json`).

pub mod certs;
pub mod system_id;
pub mod tls;
pub mod token;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use time::OffsetDateTime;

/// Errors reading or writing the state dir.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state dir holds no finished enrollment.
    #[error("{0} holds no enrollment: run `drover-agent enroll` first")]
    NotEnrolled(PathBuf),
    /// A file's content is wrong.
    #[error("{path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// `agent.json`: `{"agent_id", "controller", "controllers"}`. `controllers` lists every
/// controller address in order of preference; `controller` is its first entry, the only
/// field an agent.json written before failover has and the one older readers take, so a
/// downgraded agent still connects (to the preferred controller).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AgentFile {
    /// The id the controller chose.
    pub agent_id: String,
    /// The preferred controller's gRPC address, `https://HOST:PORT` (`controllers[0]`).
    pub controller: String,
    /// All controller addresses, preferred first (absent in an older file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<String>,
}

impl AgentFile {
    /// The file for `controllers` (preferred first; at least one).
    pub fn new(agent_id: String, controllers: Vec<String>) -> AgentFile {
        AgentFile {
            agent_id,
            controller: controllers.first().cloned().unwrap_or_default(),
            controllers,
        }
    }

    /// The controller addresses in order of preference, whichever format the file has.
    /// `controller` stays the preferred one: when it differs from `controllers[0]` (the
    /// file was edited by hand, or rewritten by an older agent, as the docs for moving a
    /// controller say), it goes first and the rest keep their order.
    pub fn controllers(&self) -> Vec<String> {
        if self.controllers.is_empty() {
            return vec![self.controller.clone()];
        }
        if self.controller.is_empty() || self.controllers[0] == self.controller {
            return self.controllers.clone();
        }
        let mut all = vec![self.controller.clone()];
        all.extend(
            self.controllers
                .iter()
                .filter(|c| **c != self.controller)
                .cloned(),
        );
        all
    }
}

/// Everything the agent needs to connect.
pub struct Identity {
    /// The id the controller chose (also in the certificate).
    pub agent_id: String,
    /// The controllers' gRPC addresses, `https://HOST:PORT`, preferred first (never empty).
    pub controllers: Vec<String>,
    /// The pinned controller CA, PEM.
    pub ca_pem: String,
    /// The client certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: SecretString,
    /// Start of the certificate's validity.
    pub not_before: OffsetDateTime,
    /// End of the certificate's validity.
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("controllers", &self.controllers)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state dir at `root` (not touched until used).
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }
    /// Its path.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `agent.json`.
    pub fn agent_file(&self) -> PathBuf {
        self.root.join("agent.json")
    }
    /// `agent.key`.
    pub fn key_file(&self) -> PathBuf {
        self.root.join("agent.key")
    }
    /// `agent.crt`.
    pub fn cert_file(&self) -> PathBuf {
        self.root.join("agent.crt")
    }
    /// `ca.crt`.
    pub fn ca_file(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// Creates the directory with mode 0700 (tightening an existing one).
    pub fn create(&self) -> Result<(), StateError> {
        let err = |source| StateError::Io {
            action: "create",
            path: self.root.clone(),
            source,
        };
        if !self.root.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(err)?;
        }
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(err)
    }

    /// Checks, changing nothing, that an enrollment can be stored here, so that a one-time
    /// token is never used up for nothing: the dir (or, when it is missing, its nearest
    /// existing ancestor, where it will be created) must be a directory that takes a new
    /// file; a probe file is created and removed to find out.
    pub fn check_writable(&self) -> Result<(), StateError> {
        let mut dir = self.root.clone();
        loop {
            let at = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.clone()
            };
            match std::fs::metadata(&at) {
                Ok(m) if m.is_dir() => {
                    dir = at;
                    break;
                }
                Ok(_) => {
                    return Err(StateError::Invalid {
                        path: at,
                        detail: "not a directory".to_string(),
                    });
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    match at.parent() {
                        Some(parent) => dir = parent.to_path_buf(),
                        None => {
                            return Err(StateError::Io {
                                action: "inspect",
                                path: at,
                                source: e,
                            });
                        }
                    }
                }
                Err(source) => {
                    return Err(StateError::Io {
                        action: "inspect",
                        path: at,
                        source,
                    });
                }
            }
        }
        let probe = dir.join(format!(".drover-agent-probe-{}", std::process::id()));
        let err = |source| StateError::Io {
            action: "write a file in",
            path: dir.clone(),
            source,
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .map_err(err)?;
        std::fs::remove_file(&probe).map_err(err)
    }

    /// Whether an enrollment finished here.
    pub fn is_enrolled(&self) -> bool {
        self.agent_file().exists()
    }

    /// Writes the key (0600) and certificate as a pair: both go to `*.new` files first, then
    /// are renamed into place, and [`StateDir::load`] finishes an interrupted switch, so a
    /// crash never leaves a key beside a certificate for another key.
    pub fn write_credentials(&self, key_pem: &str, cert_pem: &str) -> Result<(), StateError> {
        let (key_new, cert_new) = (
            self.pending(&self.key_file()),
            self.pending(&self.cert_file()),
        );
        write_atomic(&key_new, key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert_new, cert_pem.as_bytes(), 0o644)?;
        self.finish_pending()
    }

    fn pending(&self, path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".new");
        path.with_file_name(name)
    }

    /// Completes or discards a key/certificate switch a crash interrupted.
    fn finish_pending(&self) -> Result<(), StateError> {
        let (key, cert) = (self.key_file(), self.cert_file());
        let (key_new, cert_new) = (self.pending(&key), self.pending(&cert));
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to).map_err(|source| StateError::Io {
                action: "rename",
                path: from.to_path_buf(),
                source,
            })
        };
        match (key_new.exists(), cert_new.exists()) {
            // Both written: switch to the new pair (key first).
            (true, true) => {
                rename(&key_new, &key)?;
                rename(&cert_new, &cert)
            }
            // The key was moved, the certificate not yet.
            (false, true) => rename(&cert_new, &cert),
            // The certificate never arrived: the old pair is intact.
            (true, false) => std::fs::remove_file(&key_new).map_err(|source| StateError::Io {
                action: "remove",
                path: key_new.clone(),
                source,
            }),
            (false, false) => Ok(()),
        }
    }

    /// Writes the pinned CA.
    pub fn write_ca(&self, ca_pem: &str) -> Result<(), StateError> {
        write_atomic(&self.ca_file(), ca_pem.as_bytes(), 0o644)
    }

    /// Writes `agent.json` (last step of an enrollment).
    pub fn write_agent_file(&self, f: &AgentFile) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(f).map_err(|e| StateError::Invalid {
            path: self.agent_file(),
            detail: e.to_string(),
        })?;
        write_atomic(&self.agent_file(), text.as_bytes(), 0o644)
    }

    /// Loads the identity, checking that the certificate names the recorded agent.
    pub fn load(&self) -> Result<Identity, StateError> {
        if !self.is_enrolled() {
            return Err(StateError::NotEnrolled(self.root.clone()));
        }
        self.finish_pending()?;
        let agent_text = read(&self.agent_file())?;
        let agent: AgentFile =
            serde_json::from_str(&agent_text).map_err(|e| StateError::Invalid {
                path: self.agent_file(),
                detail: e.to_string(),
            })?;
        let controllers = agent.controllers();
        if controllers.iter().any(|c| c.is_empty()) {
            return Err(StateError::Invalid {
                path: self.agent_file(),
                detail: "empty controller address".to_string(),
            });
        }
        let cert_pem = read(&self.cert_file())?;
        let info = certs::inspect(&cert_pem).map_err(|detail| StateError::Invalid {
            path: self.cert_file(),
            detail,
        })?;
        if info.agent_id.as_deref() != Some(agent.agent_id.as_str()) {
            return Err(StateError::Invalid {
                path: self.cert_file(),
                detail: format!(
                    "certificate is for {:?}, agent.json says {:?}",
                    info.agent_id, agent.agent_id
                ),
            });
        }
        Ok(Identity {
            agent_id: agent.agent_id,
            controllers,
            ca_pem: read(&self.ca_file())?,
            cert_pem,
            key_pem: SecretString::from(read(&self.key_file())?),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

fn read(path: &Path) -> Result<String, StateError> {
    std::fs::read_to_string(path).map_err(|source| StateError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` via a temp file and rename, created with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    drover_runtime::atomic_file::write(path, bytes, mode).map_err(|source| StateError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_write_modes() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path().join("state"));
        s.create().unwrap();
        let mode = std::fs::metadata(s.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        s.write_credentials("KEY", "CERT").unwrap();
        let mode = std::fs::metadata(s.key_file())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(s.cert_file()).unwrap(), "CERT");
        assert!(!s.is_enrolled());
        assert!(matches!(s.load(), Err(StateError::NotEnrolled(_))));
    }

    #[test]
    fn interrupted_switch_is_finished_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        s.write_credentials("K1", "C1").unwrap();
        // Crash after the key moved, before the certificate did: roll forward.
        write_atomic(&s.pending(&s.cert_file()), b"C2", 0o644).unwrap();
        write_atomic(&s.key_file(), b"K2", 0o600).unwrap();
        s.finish_pending().unwrap();
        assert_eq!(std::fs::read_to_string(s.cert_file()).unwrap(), "C2");
        // Crash before the certificate was written: the old pair stays.
        write_atomic(&s.pending(&s.key_file()), b"K3", 0o600).unwrap();
        s.finish_pending().unwrap();
        assert_eq!(std::fs::read_to_string(s.key_file()).unwrap(), "K2");
        assert!(!s.pending(&s.key_file()).exists());
    }

    /// An agent.json of the single-controller format still loads; the new format keeps
    /// `controller` (the first address) for older readers.
    #[test]
    fn agent_file_reads_the_old_format_and_writes_one_older_readers_take() {
        let old: AgentFile =
            serde_json::from_str(r#"{"agent_id":"a1","controller":"https://c1:7443"}"#).unwrap();
        assert_eq!(old.controllers(), ["https://c1:7443"]);
        let new = AgentFile::new(
            "a1".into(),
            vec!["https://c1:7443".into(), "https://c2:7443".into()],
        );
        let text = serde_json::to_string(&new).unwrap();
        #[derive(serde::Deserialize)]
        struct OlderReader {
            controller: String,
        }
        let older: OlderReader = serde_json::from_str(&text).unwrap();
        assert_eq!(older.controller, "https://c1:7443");
        let back: AgentFile = serde_json::from_str(&text).unwrap();
        assert_eq!(back.controllers(), ["https://c1:7443", "https://c2:7443"]);
        // `controller` edited by hand (moving to a new controller): it is preferred.
        let edited = AgentFile {
            controller: "https://c3:7443".into(),
            ..back.clone()
        };
        assert_eq!(
            edited.controllers(),
            ["https://c3:7443", "https://c1:7443", "https://c2:7443"]
        );
        let edited = AgentFile {
            controller: "https://c2:7443".into(),
            ..back.clone()
        };
        assert_eq!(edited.controllers(), ["https://c2:7443", "https://c1:7443"]);
    }

    #[test]
    fn check_writable_refuses_files_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        for root in [file.clone(), file.join("state")] {
            let err = StateDir::new(&root).check_writable().unwrap_err();
            assert!(err.to_string().contains("not a directory"), "{err}");
        }
        let err = StateDir::new("/proc/self/state")
            .check_writable()
            .unwrap_err();
        assert!(
            err.to_string().contains("write a file in /proc/self"),
            "{err}"
        );
        // Missing dirs are fine (created later); nothing is left behind.
        let missing = StateDir::new(dir.path().join("a/b"));
        missing.check_writable().unwrap();
        assert!(!dir.path().join("a").exists());
        StateDir::new(dir.path()).check_writable().unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the file remains");
    }
}
