//! `<state dir>/drain.json`: the controller said drain, kept across agent restarts until it
//! says undrain. Absent = not draining.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::write_atomic;

/// A drain in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// When the jobs still running are canceled; `None` = they finish.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub deadline: Option<OffsetDateTime>,
}

/// A failure to read or write the file, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DrainFileError {
    pub path: PathBuf,
    pub message: String,
}

/// The file beside the applied generation.
#[derive(Debug, Clone)]
pub struct DrainFile {
    path: PathBuf,
}

impl DrainFile {
    /// The file in `state_dir`.
    pub fn new(state_dir: &Path) -> DrainFile {
        DrainFile {
            path: state_dir.join("drain.json"),
        }
    }

    /// The drain in force, `None` when the agent is not draining.
    pub fn load(&self) -> Result<Option<Drain>, DrainFileError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| self.error(e))
    }

    /// Persists `drain` atomically (0600).
    pub fn save(&self, drain: &Drain) -> Result<(), DrainFileError> {
        let bytes = serde_json::to_vec_pretty(drain).map_err(|e| self.error(e))?;
        write_atomic(&self.path, &bytes, 0o600).map_err(|e| self.error(e))
    }

    /// Forgets the drain (undrain); a missing file is fine.
    pub fn clear(&self) -> Result<(), DrainFileError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> DrainFileError {
        DrainFileError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_drain_loads_back_and_clear_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = DrainFile::new(dir.path());
        assert_eq!(f.load().unwrap(), None);
        let d = Drain {
            deadline: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()),
        };
        f.save(&d).unwrap();
        assert_eq!(f.load().unwrap(), Some(d));
        f.save(&Drain { deadline: None }).unwrap();
        assert_eq!(f.load().unwrap(), Some(Drain { deadline: None }));
        f.clear().unwrap();
        assert_eq!(f.load().unwrap(), None);
        f.clear().unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("drain.json"), "{nope").unwrap();
        let e = DrainFile::new(dir.path()).load().unwrap_err();
        assert!(e.to_string().contains("drain.json"), "{e}");
    }
}
