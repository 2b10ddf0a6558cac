//! The controller's upgrade signing key, pinned in the state dir (`upgrade-key.pub`, the
//! 32-byte Ed25519 public key in hex): written at enrollment when the controller sends it,
//! else from the first Welcome carrying it. That Welcome comes over a session whose server
//! certificate chains to the CA pinned at enrollment, the same trust the enrollment answer
//! had. A different key later is refused (and logged); the pinned one stays.

use std::path::{Path, PathBuf};

/// Errors pinning or reading the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("upgrade signing key from the controller is {0} bytes; expected 32")]
    Length(usize),
    #[error(
        "the controller's upgrade signing key {offered} differs from the one pinned in {file} ({pinned}); kept the pinned one"
    )]
    Mismatch {
        file: PathBuf,
        pinned: String,
        offered: String,
    },
    #[error("{file}: {problem}")]
    File { file: PathBuf, problem: String },
}

/// The key file in `state_dir`.
pub fn key_file(state_dir: &Path) -> PathBuf {
    state_dir.join("upgrade-key.pub")
}

/// Pins `key` when none is pinned; the same key again is fine; another is refused.
pub fn pin(state_dir: &Path, key: &[u8]) -> Result<(), KeyError> {
    if key.len() != 32 {
        return Err(KeyError::Length(key.len()));
    }
    let file = key_file(state_dir);
    match pinned(state_dir)? {
        Some(old) if old.as_slice() == key => Ok(()),
        Some(old) => Err(KeyError::Mismatch {
            file,
            pinned: hex::encode(old),
            offered: hex::encode(key),
        }),
        None => drover_runtime::atomic_file::write(&file, hex::encode(key).as_bytes(), 0o600)
            .map_err(|e| KeyError::File {
                file,
                problem: e.to_string(),
            }),
    }
}

/// The pinned key, if any.
pub fn pinned(state_dir: &Path) -> Result<Option<[u8; 32]>, KeyError> {
    let file = key_file(state_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(KeyError::File {
                file,
                problem: e.to_string(),
            });
        }
    };
    let bytes = hex::decode(text.trim()).map_err(|e| KeyError::File {
        file: file.clone(),
        problem: format!("not hex: {e}"),
    })?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::File {
        file,
        problem: format!("{} bytes; expected 32", bytes.len()),
    })?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_once_keeps_it_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pinned(dir.path()).unwrap(), None);
        pin(dir.path(), &[1; 32]).unwrap();
        pin(dir.path(), &[1; 32]).unwrap();
        let e = pin(dir.path(), &[2; 32]).unwrap_err();
        assert!(matches!(e, KeyError::Mismatch { .. }), "{e}");
        assert_eq!(pinned(dir.path()).unwrap(), Some([1; 32]));
        assert!(matches!(pin(dir.path(), &[1; 5]), Err(KeyError::Length(5))));
        std::fs::write(key_file(dir.path()), "zz").unwrap();
        assert!(
            pinned(dir.path())
                .unwrap_err()
                .to_string()
                .contains("upgrade-key.pub")
        );
    }
}
