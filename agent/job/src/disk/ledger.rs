//! The last-use ledger: `<state dir>/disk-ledger.json` (0600), replaced atomically under an
//! advisory lock (`disk-ledger.json.lock`), so the running agent and `drover-agent gc` can
//! both update it. Docker keeps no last-use time for volumes or images; this file is it.
//!
//! Bounded: the file is read up to 8 MiB; at most [`MAX_ENTRIES`] volumes and images each
//! (the least recently used dropped first: a dropped entry is seen again as new, which only
//! delays its collection) and [`MAX_REMOVED`] removal notes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest ledger file read.
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Most volume entries and image entries kept (each).
pub const MAX_ENTRIES: usize = 10_000;
/// Most notes of removed builds volumes kept.
pub const MAX_REMOVED: usize = 1_000;

/// How an image came to the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageOrigin {
    /// The agent pulled it for a job or service: collected by last use.
    Pulled,
    /// Drover delivered it to the box (air-gapped image push): never removed.
    Delivered,
    /// A job used it but the agent did not pull it (built or loaded by someone else): left
    /// alone unless the operator opts in (`remove_foreign_images`).
    Seen,
}

/// A builds volume this agent used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// Unix seconds of the last job start that mounted it (or when first seen).
    pub last_used: i64,
}

/// An image, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// The references jobs named it by (`alpine:3.20`).
    pub refs: BTreeSet<String>,
    pub last_used: i64,
    pub origin: ImageOrigin,
}

/// A job running now and what it holds; an entry whose process is gone holds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    pub pid: u32,
    pub volumes: BTreeSet<String>,
    /// Image ids.
    pub images: BTreeSet<String>,
}

/// A builds volume the collector removed: the next job on it says so in its trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedEntry {
    pub at: i64,
    pub why: String,
}

/// The ledger's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerData {
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeEntry>,
    #[serde(default)]
    pub images: BTreeMap<String, ImageEntry>,
    #[serde(default)]
    pub jobs: BTreeMap<i64, JobEntry>,
    #[serde(default)]
    pub removed: BTreeMap<String, RemovedEntry>,
}

impl LedgerData {
    /// Volumes and image ids held by jobs whose process is alive (`alive(pid)`).
    pub fn held(&self, alive: impl Fn(u32) -> bool) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut v = BTreeSet::new();
        let mut i = BTreeSet::new();
        for j in self.jobs.values().filter(|j| alive(j.pid)) {
            v.extend(j.volumes.iter().cloned());
            i.extend(j.images.iter().cloned());
        }
        (v, i)
    }

    /// Drops jobs of dead processes, and the oldest entries beyond the bounds.
    fn bound(&mut self, alive: impl Fn(u32) -> bool) {
        self.jobs.retain(|_, j| alive(j.pid));
        fn trim<V>(m: &mut BTreeMap<String, V>, max: usize, key: impl Fn(&V) -> i64) {
            if m.len() <= max {
                return;
            }
            let mut by_age: Vec<(i64, String)> =
                m.iter().map(|(k, v)| (key(v), k.clone())).collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(m.len() - max) {
                m.remove(&k);
            }
        }
        trim(&mut self.volumes, MAX_ENTRIES, |v| v.last_used);
        trim(&mut self.images, MAX_ENTRIES, |v| v.last_used);
        trim(&mut self.removed, MAX_REMOVED, |v| v.at);
    }
}

/// Why the ledger could not be read or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: larger than {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// The ledger file.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
    pid: u32,
}

impl Ledger {
    /// The ledger at `path`, written by this process.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Ledger {
            path: path.into(),
            pid: std::process::id(),
        }
    }

    /// `<state_dir>/disk-ledger.json`.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Ledger::new(state_dir.join("disk-ledger.json"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The content now (an absent file is empty).
    pub fn read(&self) -> Result<LedgerData, LedgerError> {
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LedgerData::default()),
            Err(e) => return Err(io(e)),
        };
        let mut bytes = Vec::new();
        f.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(LedgerError::TooLarge {
                path: self.path.clone(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| LedgerError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Applies `f` under the lock and writes the result. An unreadable ledger (corrupt, too
    /// large) is started afresh with a warning: every object then counts as first seen now,
    /// which delays collection and never hastens it.
    pub fn update<R>(&self, f: impl FnOnce(&mut LedgerData) -> R) -> Result<R, LedgerError> {
        let lock_path = self.path.with_extension("json.lock");
        let io = |p: &Path, source| LedgerError::Io {
            path: p.to_path_buf(),
            source,
        };
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        lock.lock().map_err(|e| io(&lock_path, e))?;
        let mut data = match self.read() {
            Ok(d) => d,
            Err(e @ (LedgerError::Corrupt { .. } | LedgerError::TooLarge { .. })) => {
                tracing::warn!(error = %e, "disk ledger unreadable; starting it afresh");
                LedgerData::default()
            }
            Err(e) => return Err(e),
        };
        let out = f(&mut data);
        data.bound(pid_alive);
        let bytes = serde_json::to_vec(&data).map_err(|e| LedgerError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        drover_runtime::atomic_file::write(&self.path, &bytes, 0o600)
            .map_err(|e| io(&self.path, e))?;
        drop(lock);
        Ok(out)
    }

    /// Job `job_id` of this process starts on builds volume `volume`; returns the note left
    /// when the collector removed that volume (taken: said once).
    pub fn job_started(
        &self,
        job_id: i64,
        volume: &str,
        now: i64,
    ) -> Result<Option<RemovedEntry>, LedgerError> {
        let pid = self.pid;
        self.update(|d| {
            d.volumes
                .insert(volume.to_string(), VolumeEntry { last_used: now });
            let j = d.jobs.entry(job_id).or_default();
            j.pid = pid;
            j.volumes.insert(volume.to_string());
            d.removed.remove(volume)
        })
    }

    /// Job `job_id` uses image `id`, named `reference`; `pulled` when the agent pulled it
    /// for this job.
    pub fn image_used(
        &self,
        job_id: i64,
        reference: &str,
        id: &str,
        pulled: bool,
        now: i64,
    ) -> Result<(), LedgerError> {
        let pid = self.pid;
        self.update(|d| {
            let e = d
                .images
                .entry(id.to_string())
                .or_insert_with(|| ImageEntry {
                    refs: BTreeSet::new(),
                    last_used: now,
                    origin: ImageOrigin::Seen,
                });
            e.refs.insert(reference.to_string());
            e.last_used = now;
            if pulled && e.origin == ImageOrigin::Seen {
                e.origin = ImageOrigin::Pulled;
            }
            let j = d.jobs.entry(job_id).or_default();
            j.pid = pid;
            j.images.insert(id.to_string());
        })
    }

    /// Job `job_id` ended: what it held is free.
    pub fn job_ended(&self, job_id: i64) -> Result<(), LedgerError> {
        self.update(|d| {
            d.jobs.remove(&job_id);
        })
    }

    /// Drover delivered image `id` (`reference`) to this box: it is never collected.
    pub fn record_delivered(&self, reference: &str, id: &str, now: i64) -> Result<(), LedgerError> {
        self.update(|d| {
            let e = d
                .images
                .entry(id.to_string())
                .or_insert_with(|| ImageEntry {
                    refs: BTreeSet::new(),
                    last_used: now,
                    origin: ImageOrigin::Delivered,
                });
            e.refs.insert(reference.to_string());
            e.origin = ImageOrigin::Delivered;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_are_recorded_held_while_running_and_freed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::in_state_dir(dir.path());
        assert_eq!(l.read().unwrap(), LedgerData::default());
        assert_eq!(l.job_started(7, "vol-a", 100).unwrap(), None);
        l.image_used(7, "alpine:3", "sha256:a", true, 101).unwrap();
        l.image_used(7, "local:1", "sha256:l", false, 101).unwrap();
        let d = l.read().unwrap();
        assert_eq!(d.volumes["vol-a"].last_used, 100);
        assert_eq!(d.images["sha256:a"].origin, ImageOrigin::Pulled);
        assert_eq!(d.images["sha256:l"].origin, ImageOrigin::Seen);
        let (v, i) = d.held(pid_alive);
        assert!(v.contains("vol-a") && i.contains("sha256:a"));
        // A dead process holds nothing.
        let (v, _) = d.held(|_| false);
        assert!(v.is_empty());
        l.job_ended(7).unwrap();
        assert!(l.read().unwrap().held(pid_alive).0.is_empty());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(l.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_removal_note_is_said_once_and_delivered_images_stay_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::in_state_dir(dir.path());
        l.update(|d| {
            d.removed.insert(
                "vol-a".into(),
                RemovedEntry {
                    at: 5,
                    why: "over budget".into(),
                },
            )
        })
        .unwrap();
        assert_eq!(l.job_started(1, "vol-a", 10).unwrap().unwrap().at, 5);
        assert_eq!(l.job_started(2, "vol-a", 11).unwrap(), None);
        l.record_delivered("app:1", "sha256:d", 1).unwrap();
        l.image_used(2, "app:1", "sha256:d", true, 12).unwrap();
        assert_eq!(
            l.read().unwrap().images["sha256:d"].origin,
            ImageOrigin::Delivered
        );
    }

    #[test]
    fn a_corrupt_ledger_starts_afresh_and_dead_jobs_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::in_state_dir(dir.path());
        std::fs::write(l.path(), b"{not json").unwrap();
        assert!(matches!(l.read(), Err(LedgerError::Corrupt { .. })));
        l.update(|d| {
            d.jobs.insert(
                9,
                JobEntry {
                    pid: u32::MAX,
                    ..Default::default()
                },
            );
        })
        .unwrap();
        assert!(l.read().unwrap().jobs.is_empty(), "dead pid dropped");
    }

    #[test]
    fn entries_are_bounded_oldest_first() {
        let mut d = LedgerData::default();
        for i in 0..(MAX_ENTRIES + 5) {
            d.volumes.insert(
                format!("v{i}"),
                VolumeEntry {
                    last_used: i as i64,
                },
            );
        }
        d.bound(|_| true);
        assert_eq!(d.volumes.len(), MAX_ENTRIES);
        assert!(!d.volumes.contains_key("v0") && d.volumes.contains_key("v5"));
    }
}
