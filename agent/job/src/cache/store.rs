//! Caches as zip files on the agent's disk: `<root>/<runner>/project-<id>/<key>.zip`.
//!
//! Writes are atomic (a temporary file in the same directory, renamed into place). The
//! store's total size is bounded: after each save, the least recently used archives (by
//! mtime, which a restore refreshes) are removed until the total fits.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::CacheError;
use super::key::sanitize_key;
use super::remote::Remote;
use crate::artifacts::{
    ArchiveError, Owner, ProjectTar, SelectSpec, archive::write_zip, select, zip_to_tar,
};
use crate::sources::TrackedFiles;

/// The directory, under the cache root, of the caches shared by all runners of a box.
pub const SHARED_DIR: &str = "shared.runners";

/// A reasonable bound when the runner configures none: 5 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// One runner's caches.
#[derive(Debug, Clone)]
pub struct CacheStore {
    dir: PathBuf,
    max_bytes: u64,
    /// The distributed cache behind this store, when `[runners.cache]` sets one.
    remote: Option<Remote>,
}

/// A cache found on restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheHit {
    /// The key that matched (the job's key or a fallback).
    pub key: String,
    pub path: PathBuf,
}

/// What [`CacheStore::save`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    Saved {
        path: PathBuf,
        size: u64,
        entries: usize,
        /// Archives removed to stay within the size bound.
        evicted: Vec<PathBuf>,
    },
    /// Nothing matched `paths`/`untracked`; nothing written.
    Empty { messages: Vec<String> },
    /// The archive alone is larger than the store's bound; not kept.
    TooLarge { size: u64, max_bytes: u64 },
}

impl CacheStore {
    /// The store for `runner` (its name or short token, any text) under `root`, in the
    /// directory [`crate::executor::names::dir_name`] derives, keeping at most `max_bytes`
    /// of archives.
    pub fn new(root: &Path, runner: &str, max_bytes: u64) -> CacheStore {
        CacheStore {
            dir: root.join(crate::executor::names::dir_name(runner)),
            max_bytes,
            remote: None,
        }
    }

    /// The store every runner of the box with `[runners.cache] Shared = true` uses:
    /// `<root>/shared.runners` (a name [`crate::executor::names::dir_name`] never makes).
    pub fn shared(root: &Path, max_bytes: u64) -> CacheStore {
        CacheStore {
            dir: root.join(SHARED_DIR),
            max_bytes,
            remote: None,
        }
    }

    /// This store with `remote` behind it.
    pub fn with_remote(mut self, remote: Option<Remote>) -> CacheStore {
        self.remote = remote;
        self
    }

    /// The distributed cache behind this store, if any.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// The bound of the store's total size in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The directory holding this runner's caches.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the archive for `key` of `project_id` lives; refuses unsafe keys.
    pub fn archive_path(&self, project_id: i64, key: &str) -> Result<PathBuf, CacheError> {
        let key = sanitize_key(key)?;
        Ok(self
            .dir
            .join(format!("project-{project_id}"))
            .join(format!("{key}.zip")))
    }

    /// Finds the first of `keys` with an archive and marks it recently used. Unsafe keys are
    /// skipped with a message in `skipped`.
    pub fn restore(
        &self,
        project_id: i64,
        keys: &[String],
        skipped: &mut Vec<String>,
    ) -> Result<Option<CacheHit>, CacheError> {
        for key in keys {
            let path = match self.archive_path(project_id, key) {
                Ok(p) => p,
                Err(e) => {
                    skipped.push(e.to_string());
                    continue;
                }
            };
            if path.is_file() {
                let file = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .map_err(|e| CacheError::io(&path, e))?;
                file.set_modified(SystemTime::now())
                    .map_err(|e| CacheError::io(&path, e))?;
                return Ok(Some(CacheHit {
                    key: key.clone(),
                    path,
                }));
            }
            skipped.push(format!("cache {key:?} not found"));
        }
        Ok(None)
    }

    /// Converts a restored archive into a tar (entries relative to `CI_PROJECT_DIR`) written
    /// to `out`; refuses entries that escape the project directory.
    pub fn restore_tar<W: std::io::Write>(
        hit: &CacheHit,
        owner: Owner,
        out: W,
    ) -> Result<usize, CacheError> {
        let file = std::fs::File::open(&hit.path).map_err(|e| CacheError::io(&hit.path, e))?;
        Ok(zip_to_tar(std::io::BufReader::new(file), out, owner)?)
    }

    /// Archives the entries of `tar` chosen by `spec` under `key` (blocking IO), then evicts
    /// old archives to stay within the bound.
    pub fn save(
        &self,
        project_id: i64,
        key: &str,
        tar: &ProjectTar,
        spec: &SelectSpec,
        tracked: Option<&TrackedFiles>,
        messages: &mut Vec<String>,
    ) -> Result<SaveOutcome, CacheError> {
        let path = self.archive_path(project_id, key)?;
        let entries = tar.entries()?;
        let selection = select(&entries, spec, tracked);
        messages.extend(selection.messages.iter().cloned());
        if selection.entries.is_empty() {
            return Ok(SaveOutcome::Empty {
                messages: selection.messages,
            });
        }
        let parent = path
            .parent()
            .ok_or_else(|| CacheError::io(&path, std::io::ErrorKind::InvalidInput.into()))?;
        std::fs::create_dir_all(parent).map_err(|e| CacheError::io(parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-cache-")
            .suffix(".zip")
            .tempfile_in(parent)
            .map_err(|e| CacheError::io(parent, e))?;
        let handle = tmp.reopen().map_err(|e| CacheError::io(tmp.path(), e))?;
        let writer = write_zip(tar, &selection.entries, std::io::BufWriter::new(handle))?;
        let file = writer
            .into_inner()
            .map_err(|e| CacheError::io(tmp.path(), e.into_error()))?;
        file.sync_all().map_err(|e| CacheError::io(tmp.path(), e))?;
        let size = file
            .metadata()
            .map_err(|e| CacheError::io(tmp.path(), e))?
            .len();
        if size > self.max_bytes {
            return Ok(SaveOutcome::TooLarge {
                size,
                max_bytes: self.max_bytes,
            });
        }
        tmp.persist(&path)
            .map_err(|e| CacheError::io(&path, e.error))?;
        let evicted = self.evict(&path)?;
        Ok(SaveOutcome::Saved {
            path,
            size,
            entries: selection.entries.len(),
            evicted,
        })
    }

    /// Removes least recently used archives (never `keep`) until the total size fits the
    /// bound. Returns what was removed.
    pub fn evict(&self, keep: &Path) -> Result<Vec<PathBuf>, CacheError> {
        let mut archives = Vec::new();
        collect_archives(&self.dir, &mut archives)?;
        let mut total: u64 = archives.iter().map(|a| a.size).sum();
        archives.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.path.cmp(&b.path)));
        let mut evicted = Vec::new();
        for a in archives {
            if total <= self.max_bytes {
                break;
            }
            if a.path == keep {
                continue;
            }
            match std::fs::remove_file(&a.path) {
                Ok(()) => {}
                // Another job's eviction got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io(&a.path, e)),
            }
            total = total.saturating_sub(a.size);
            evicted.push(a.path);
        }
        Ok(evicted)
    }

    /// Bytes of archives in the store.
    pub fn total_size(&self) -> Result<u64, CacheError> {
        let mut archives = Vec::new();
        collect_archives(&self.dir, &mut archives)?;
        Ok(archives.iter().map(|a| a.size).sum())
    }
}

struct Archive {
    path: PathBuf,
    size: u64,
    mtime: SystemTime,
}

fn collect_archives(dir: &Path, out: &mut Vec<Archive>) -> Result<(), CacheError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CacheError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| CacheError::io(dir, e))?;
        let path = entry.path();
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Renamed or evicted by a concurrent job since read_dir listed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CacheError::io(&path, e)),
        };
        if meta.is_dir() {
            collect_archives(&path, out)?;
        } else if meta.is_file()
            && path.extension().is_some_and(|e| e == "zip")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-cache-"))
        {
            out.push(Archive {
                size: meta.len(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path,
            });
        }
    }
    Ok(())
}

impl From<ArchiveError> for CacheError {
    fn from(e: ArchiveError) -> Self {
        CacheError::Archive(e)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn touch(path: &Path, bytes: usize, age_secs: u64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![0u8; bytes]).unwrap();
        let f = std::fs::File::options().append(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_secs))
            .unwrap();
    }

    #[test]
    fn eviction_removes_least_recently_used_first() {
        let root = tempfile::tempdir().unwrap();
        let store = CacheStore::new(root.path(), "runner-1", 250);
        let old = store.archive_path(1, "old").unwrap();
        let mid = store.archive_path(2, "mid").unwrap();
        let new = store.archive_path(1, "new").unwrap();
        touch(&old, 100, 300);
        touch(&mid, 100, 200);
        touch(&new, 100, 0);
        // Restoring "old" makes it the most recently used.
        let mut skipped = Vec::new();
        let hit = store
            .restore(1, &["missing".into(), "old".into()], &mut skipped)
            .unwrap()
            .unwrap();
        assert_eq!(hit.key, "old");
        assert_eq!(skipped.len(), 1);
        let evicted = store.evict(&new).unwrap();
        assert_eq!(evicted, vec![mid.clone()]);
        assert!(old.exists() && new.exists() && !mid.exists());
        assert_eq!(store.total_size().unwrap(), 200);
    }

    #[test]
    fn runners_with_free_text_names_get_their_own_dirs() {
        let root = tempfile::tempdir().unwrap();
        let a = CacheStore::new(root.path(), "gitlab runner for ci", 1000);
        let b = CacheStore::new(root.path(), "gitlab_runner_for_ci", 1000);
        let c = CacheStore::new(root.path(), "gitlab/runner/for/ci", 1000);
        let dirs = [a.dir(), b.dir(), c.dir()];
        assert!(dirs[0] != dirs[1] && dirs[1] != dirs[2] && dirs[0] != dirs[2]);
        for d in dirs {
            assert_eq!(d.parent(), Some(root.path()), "{}", d.display());
        }
        assert_eq!(b.dir(), root.path().join("gitlab_runner_for_ci"));
    }

    #[test]
    fn unsafe_keys_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let store = CacheStore::new(root.path(), "r", 1000);
        assert!(store.archive_path(1, "../x").is_err());
        let mut skipped = Vec::new();
        assert_eq!(
            store
                .restore(1, &["../../etc".into()], &mut skipped)
                .unwrap(),
            None
        );
        assert!(skipped[0].contains("path separator"));
    }
}
