//! Encryption at rest of the secrets the controller holds (runner authentication tokens,
//! registration tokens inside stored specs): ChaCha20-Poly1305 with a 32-byte master key
//! kept in `DATA_DIR/secrets.key` (0600, created on first start).
//!
//! Sealed format: 12-byte random nonce, then ciphertext and tag. The `purpose` string is
//! bound as associated data, so a sealed token cannot be replayed as a sealed spec.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

/// Errors opening the key or a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The key file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes.
    #[error("{path}: expected a 32-byte key, found {len} bytes")]
    BadKey {
        /// The key file.
        path: std::path::PathBuf,
        /// Its length.
        len: usize,
    },
    /// A sealed value did not decrypt (other key, corrupted, or wrong purpose).
    #[error("decrypt {purpose}: wrong key or corrupted value")]
    Open {
        /// What it was sealed for.
        purpose: &'static str,
    },
}

/// The master key. `Debug` never shows it.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    /// The upgrade signing key, derived from the same key (see `upgrade/signing.rs`).
    upgrade_key: std::sync::Arc<crate::upgrade::signing::SigningKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

impl Sealer {
    /// A sealer with `key` (tests).
    pub fn from_key(key: [u8; 32]) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            upgrade_key: std::sync::Arc::new(crate::upgrade::signing::SigningKey::derive(&key)),
        }
    }

    /// The upgrade signing key derived from this key.
    pub fn upgrade_key(&self) -> std::sync::Arc<crate::upgrade::signing::SigningKey> {
        self.upgrade_key.clone()
    }

    /// Loads the key at `path` (which must exist).
    pub fn load(path: &Path) -> Result<Sealer, SecretsError> {
        let bytes = std::fs::read(path).map_err(|source| SecretsError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretsError::BadKey {
                path: path.to_path_buf(),
                len: bytes.len(),
            })?;
        Ok(Sealer::from_key(key))
    }

    /// Loads `path`, creating a random key (0600) when it does not exist. Creation is
    /// exclusive (a complete temp file hard-linked into place), so two processes creating
    /// the same file at once both end up with the one that won.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SecretsError> {
        let io = |action, source| SecretsError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Sealer::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", e)),
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(
            ".{name}.new-{}",
            hex::encode(rand::random::<[u8; 4]>())
        ));
        drover_runtime::atomic_file::write(&tmp, &key, crate::files::PRIVATE)
            .map_err(|e| io("write", e))?;
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Sealer::from_key(key)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Sealer::load(path),
            Err(e) => Err(io("write", e)),
        }
    }

    /// Encrypts `plain` for `purpose`.
    pub fn seal(&self, purpose: &'static str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: purpose.as_bytes(),
                },
            )
            // Encryption fails only for inputs beyond 2^38 bytes.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value sealed for `purpose`.
    pub fn open(&self, purpose: &'static str, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
        if sealed.len() < 12 + 16 {
            return Err(SecretsError::Open { purpose });
        }
        let (nonce, body) = sealed.split_at(12);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Open { purpose })
    }

    /// Seals a secret string.
    pub fn seal_secret(&self, purpose: &'static str, s: &SecretString) -> Vec<u8> {
        self.seal(purpose, s.expose_secret().as_bytes())
    }

    /// Opens a sealed secret string.
    pub fn open_secret(
        &self,
        purpose: &'static str,
        sealed: &[u8],
    ) -> Result<SecretString, SecretsError> {
        let plain = self.open(purpose, sealed)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| SecretsError::Open { purpose })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let s = Sealer::from_key([7; 32]);
        let sealed = s.seal("token", b"glrt-secret");
        assert!(!sealed.windows(11).any(|w| w == b"glrt-secret"));
        assert_eq!(s.open("token", &sealed).unwrap(), b"glrt-secret");
        assert!(s.open("spec", &sealed).is_err(), "purpose is bound");
        assert!(Sealer::from_key([8; 32]).open("token", &sealed).is_err());
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(s.open("token", &bad).is_err());
        assert!(format!("{s:?}").contains("redacted"));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secrets.key");
        let a = Sealer::load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = a.seal("x", b"v");
        let b = Sealer::load_or_create(&p).unwrap();
        assert_eq!(b.open("x", &sealed).unwrap(), b"v");
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            Sealer::load_or_create(&p),
            Err(SecretsError::BadKey { len: 5, .. })
        ));
    }
}
