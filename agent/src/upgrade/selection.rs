//! The A/B selection: `STATE_DIR/upgrade/selection.json` says which checked binary the
//! launcher runs (`active`; none = the packaged binary, the launcher itself), which one it
//! falls back to (`previous`), and whether the active one has confirmed (its session came
//! up). Written atomically (temp file, fsync, rename) by the agent that switches, by the
//! launcher (boot counter, rollback) and by the new binary when it confirms.
//!
//! [`decide`] is the launcher's choice at each start, as Mender's A/B with a boot counter:
//! an unconfirmed binary gets [`MAX_BOOTS`] start (the counter is written before it
//! starts, so a launcher killed while it runs counts it), then is rolled back; a binary
//! whose file is missing or no longer has its SHA-256 is rolled back; a package installed
//! after the switch (the launcher's version differs from the one recorded) wins when it is
//! not older than the active binary; a selection file that cannot be read or parsed is
//! logged as an error and the packaged binary runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::download::upgrade_dir;
use super::version_order;

/// Starts an unconfirmed binary gets before it is rolled back.
pub const MAX_BOOTS: u32 = 1;

/// A checked binary in `STATE_DIR/upgrade/<sha256>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Lower-case hex.
    pub sha256: String,
    pub version: String,
}

/// A binary the launcher gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub upgrade_id: u64,
    pub sha256: String,
    pub version: String,
    pub reason: String,
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The upgrade that selected `active`.
    pub upgrade_id: u64,
    /// The binary the launcher runs; `None` = the packaged one.
    pub active: Option<Slot>,
    /// What a rollback goes back to; `None` = the packaged binary.
    pub previous: Option<Slot>,
    /// The packaged binary's version when `active` was selected (a different one now means
    /// a package was installed since).
    pub packaged_version: String,
    /// How long `active` has to confirm after it starts.
    pub health_timeout_seconds: u64,
    /// Starts of `active` since it was selected, while unconfirmed.
    pub boots: u32,
    /// `active` connected and reported healthy.
    pub confirmed: bool,
    #[serde(default)]
    pub rolled_back: Option<RolledBack>,
}

/// A failure to read or write the file, naming it.
#[derive(Debug, thiserror::Error)]
#[error("agent upgrade selection {path}: {message}")]
pub struct SelectionError {
    pub path: PathBuf,
    pub message: String,
}

/// The selection file of a state dir.
#[derive(Debug, Clone)]
pub struct SelectionFile {
    path: PathBuf,
}

impl SelectionFile {
    pub fn new(state_dir: &Path) -> SelectionFile {
        SelectionFile {
            path: upgrade_dir(state_dir).join("selection.json"),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> SelectionError {
        SelectionError {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// The selection; `None` when there is none (the packaged binary runs).
    pub fn load(&self) -> Result<Option<Selection>, SelectionError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let s: Selection = serde_json::from_str(&text).map_err(|e| self.error(e))?;
        for slot in s.active.iter().chain(s.previous.iter()) {
            if slot.sha256.len() != 64 || !slot.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(
                    self.error(format!("sha256 {:?} is not 64 hex characters", slot.sha256))
                );
            }
        }
        Ok(Some(s))
    }

    /// Replaces the file atomically (0600).
    pub fn save(&self, s: &Selection) -> Result<(), SelectionError> {
        let bytes = serde_json::to_vec_pretty(s).map_err(|e| self.error(e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.error(e))?;
        }
        drover_runtime::atomic_file::write(&self.path, &bytes, 0o600).map_err(|e| self.error(e))
    }
}

/// Deletes the binaries in `STATE_DIR/upgrade/` that `s` no longer names (once a binary
/// confirmed, only it and the previous one are kept; partial downloads stay, to resume).
/// Returns what could not be deleted.
pub fn prune(state_dir: &Path, s: &Selection) -> Vec<String> {
    let dir = upgrade_dir(state_dir);
    let keep: Vec<&str> = s
        .active
        .iter()
        .chain(s.previous.iter())
        .map(|slot| slot.sha256.as_str())
        .collect();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => return vec![format!("read {}: {e}", dir.display())],
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let binary = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if binary
            && !keep.contains(&name.as_str())
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            errors.push(format!("delete {}: {e}", entry.path().display()));
        }
    }
    errors
}

/// Checks a slot's binary before it runs (a fake in tests).
pub trait Binaries {
    /// The path of `slot`'s binary once it still has its SHA-256; else why not.
    fn check(&self, slot: &Slot) -> Result<PathBuf, String>;
}

/// The binaries in `STATE_DIR/upgrade/`, hashed again before each start.
pub struct DiskBinaries {
    pub state_dir: PathBuf,
}

impl Binaries for DiskBinaries {
    fn check(&self, slot: &Slot) -> Result<PathBuf, String> {
        let path = upgrade_dir(&self.state_dir).join(&slot.sha256);
        let sha = hex::encode(super::download::sha256_of(&path)?);
        if sha != slot.sha256 {
            return Err(format!(
                "binary {} has SHA-256 {sha}, expected {}",
                path.display(),
                slot.sha256
            ));
        }
        Ok(path)
    }
}

/// What the launcher runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// The packaged binary: the launcher runs the agent itself.
    Packaged,
    /// The checked binary at `path`; `confirm_within` when it has not confirmed yet.
    Child {
        slot: Slot,
        path: PathBuf,
        confirm_within: Option<std::time::Duration>,
    },
}

/// The launcher's choice, and the selection to write first (when it changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub launch: Launch,
    pub write: Option<Selection>,
    /// What the launcher logs as a warning (a rollback, the package winning).
    pub notes: Vec<String>,
}

/// The choice at a start from what the file held (`loaded`), the launcher's own version
/// and the binaries on disk. See the module doc.
pub fn decide(
    loaded: Result<Option<Selection>, SelectionError>,
    packaged_version: &str,
    binaries: &dyn Binaries,
) -> Decision {
    let mut d = Decision {
        launch: Launch::Packaged,
        write: None,
        notes: Vec::new(),
    };
    let mut s = match loaded {
        Ok(Some(s)) => s,
        Ok(None) => return d,
        Err(e) => {
            d.notes.push(format!(
                "{e}; running the packaged binary {packaged_version}"
            ));
            return d;
        }
    };
    let mut changed = false;
    if s.packaged_version != packaged_version {
        if let Some(a) = &s.active
            && version_order::compare(packaged_version, &a.version).is_ge()
        {
            d.notes.push(format!(
                "the packaged binary {packaged_version} was installed after the switch to {} and is not older: it runs, the upgraded binaries are dropped",
                a.version
            ));
            s.active = None;
            s.previous = None;
            s.confirmed = true;
            s.boots = 0;
        }
        s.packaged_version = packaged_version.to_string();
        changed = true;
    }
    // At most two rounds: the active binary, then the previous one.
    while let Some(slot) = s.active.clone() {
        let checked = if !s.confirmed && s.boots >= MAX_BOOTS {
            Err(format!(
                "{} did not report healthy within {} start(s) of {}s",
                slot.version, s.boots, s.health_timeout_seconds
            ))
        } else {
            binaries.check(&slot)
        };
        match checked {
            Err(reason) => {
                d.notes.push(rollback(&mut s, reason));
                changed = true;
            }
            Ok(path) => {
                let confirm_within = (!s.confirmed).then(|| {
                    s.boots += 1;
                    changed = true;
                    std::time::Duration::from_secs(s.health_timeout_seconds)
                });
                d.launch = Launch::Child {
                    slot,
                    path,
                    confirm_within,
                };
                break;
            }
        }
    }
    if changed {
        d.write = Some(s);
    }
    d
}

/// Rolls `s` back from its active binary to the previous one (confirmed: it ran before),
/// recording why; returns the line to log.
pub fn rollback(s: &mut Selection, reason: String) -> String {
    let Some(from) = s.active.take() else {
        return reason;
    };
    let to = s.previous.take();
    let line = format!(
        "agent upgrade rolled back from {} to {}: {reason}",
        from.version,
        to.as_ref()
            .map_or_else(|| "the packaged binary".to_string(), |t| t.version.clone())
    );
    s.rolled_back = Some(RolledBack {
        upgrade_id: s.upgrade_id,
        sha256: from.sha256,
        version: from.version,
        reason,
    });
    s.active = to;
    s.confirmed = true;
    s.boots = 0;
    line
}

/// The selection of `to` by an agent now running `running` (`None` = the packaged binary)
/// under `current` (the file as it is, if any).
pub fn switch(
    current: Option<Selection>,
    running: Option<Slot>,
    to: Slot,
    upgrade_id: u64,
    health_timeout_seconds: u64,
    packaged_version: &str,
) -> Selection {
    Selection {
        upgrade_id,
        active: Some(to),
        previous: running,
        packaged_version: current
            .map_or_else(|| packaged_version.to_string(), |c| c.packaged_version),
        health_timeout_seconds,
        boots: 0,
        confirmed: false,
        rolled_back: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    /// Binaries by sha: `Ok` = present and intact.
    struct Fake(HashMap<String, Result<(), String>>);

    impl Binaries for Fake {
        fn check(&self, slot: &Slot) -> Result<PathBuf, String> {
            match self.0.get(&slot.sha256) {
                Some(Ok(())) => Ok(PathBuf::from(format!("/up/{}", slot.sha256))),
                Some(Err(e)) => Err(e.clone()),
                None => Err(format!("binary {} missing", slot.sha256)),
            }
        }
    }

    fn slot(c: char, version: &str) -> Slot {
        Slot {
            sha256: c.to_string().repeat(64),
            version: version.into(),
        }
    }

    fn all_there() -> Fake {
        Fake(HashMap::from([
            ("a".repeat(64), Ok(())),
            ("b".repeat(64), Ok(())),
        ]))
    }

    fn to_b() -> Selection {
        switch(None, None, slot('b', "2.0"), 7, 60, "1.0")
    }

    #[test]
    fn an_unconfirmed_binary_gets_one_counted_start_then_is_rolled_back() {
        let d = decide(Ok(Some(to_b())), "1.0", &all_there());
        assert_eq!(
            d.launch,
            Launch::Child {
                slot: slot('b', "2.0"),
                path: PathBuf::from(format!("/up/{}", "b".repeat(64))),
                confirm_within: Some(Duration::from_secs(60)),
            }
        );
        let counted = d.write.expect("the counter is written before the start");
        assert_eq!(counted.boots, 1);
        // The launcher died while B ran unconfirmed: the next start rolls back.
        let d = decide(Ok(Some(counted)), "1.0", &all_there());
        assert_eq!(d.launch, Launch::Packaged);
        let s = d.write.unwrap();
        assert_eq!(s.active, None);
        let rb = s.rolled_back.unwrap();
        assert_eq!((rb.upgrade_id, rb.version.as_str()), (7, "2.0"));
        assert!(
            rb.reason.contains("did not report healthy"),
            "{}",
            rb.reason
        );
        assert!(
            d.notes[0].contains("to the packaged binary"),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn a_confirmed_binary_runs_with_no_deadline_and_nothing_is_written() {
        let mut s = to_b();
        s.confirmed = true;
        let d = decide(Ok(Some(s)), "1.0", &all_there());
        assert!(matches!(
            d.launch,
            Launch::Child {
                confirm_within: None,
                ..
            }
        ));
        assert_eq!(d.write, None);
    }

    #[test]
    fn a_rollback_goes_to_the_previous_binary_and_past_it_when_that_is_gone() {
        let mut s = switch(None, Some(slot('a', "2.0")), slot('b', "3.0"), 8, 60, "1.0");
        s.boots = 1;
        let d = decide(Ok(Some(s.clone())), "1.0", &all_there());
        match &d.launch {
            Launch::Child {
                slot: to,
                confirm_within,
                ..
            } => {
                assert_eq!(to.version, "2.0");
                assert_eq!(*confirm_within, None, "the previous binary had confirmed");
            }
            other => panic!("{other:?}"),
        }
        let corrupt = Fake(HashMap::from([
            ("a".repeat(64), Err("binary a has SHA-256 x".to_string())),
            ("b".repeat(64), Ok(())),
        ]));
        let d = decide(Ok(Some(s)), "1.0", &corrupt);
        assert_eq!(d.launch, Launch::Packaged);
        assert_eq!(d.notes.len(), 2, "{:?}", d.notes);
        assert!(d.notes[1].contains("SHA-256"), "{:?}", d.notes);
    }

    #[test]
    fn a_newer_or_equal_package_installed_after_the_switch_wins_an_older_one_does_not() {
        let mut s = to_b();
        s.confirmed = true;
        let d = decide(Ok(Some(s.clone())), "2.1", &all_there());
        assert_eq!(d.launch, Launch::Packaged);
        let w = d.write.unwrap();
        assert_eq!((w.active, w.packaged_version.as_str()), (None, "2.1"));
        assert!(d.notes[0].contains("not older"), "{:?}", d.notes);
        assert_eq!(
            decide(Ok(Some(s.clone())), "2.0", &all_there()).launch,
            Launch::Packaged
        );
        // An older package (1.5 after the switch from 1.0 to 2.0) leaves 2.0 running.
        let d = decide(Ok(Some(s.clone())), "1.5", &all_there());
        assert!(matches!(d.launch, Launch::Child { .. }), "{d:?}");
        assert_eq!(d.write.unwrap().packaged_version, "1.5");
        // The same package as at the switch: a downgrade ordered by the controller runs.
        let mut down = switch(None, None, slot('b', "0.9"), 9, 60, "1.0");
        down.confirmed = true;
        assert!(matches!(
            decide(Ok(Some(down)), "1.0", &all_there()).launch,
            Launch::Child { .. }
        ));
    }

    #[test]
    fn a_corrupt_or_bad_file_is_an_error_naming_it_and_the_package_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = SelectionFile::new(dir.path());
        assert_eq!(file.load().unwrap(), None);
        std::fs::create_dir_all(upgrade_dir(dir.path())).unwrap();
        std::fs::write(upgrade_dir(dir.path()).join("selection.json"), "{\"upgr").unwrap();
        let e = file.load().unwrap_err();
        assert!(e.to_string().contains("selection.json"), "{e}");
        let d = decide(Err(e), "1.0", &all_there());
        assert_eq!(d.launch, Launch::Packaged);
        assert_eq!(d.write, None, "a bad file is left for the operator to see");
        assert!(d.notes[0].contains("running the packaged binary 1.0"));

        let mut bad = to_b();
        bad.active = Some(Slot {
            sha256: "../../bin/sh".into(),
            version: "2.0".into(),
        });
        file.save(&bad).unwrap();
        let e = file.load().unwrap_err();
        assert!(e.to_string().contains("../../bin/sh"), "{e}");
        file.save(&to_b()).unwrap();
        assert_eq!(file.load().unwrap(), Some(to_b()));
    }

    #[test]
    fn prune_keeps_the_active_and_previous_binaries_and_partial_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let up = upgrade_dir(dir.path());
        std::fs::create_dir_all(&up).unwrap();
        for name in ["a", "b", "c"].map(|c| c.repeat(64)) {
            std::fs::write(up.join(name), "x").unwrap();
        }
        std::fs::write(up.join(format!("{}.part", "d".repeat(64))), "x").unwrap();
        let s = switch(None, Some(slot('a', "1.5")), slot('b', "2.0"), 7, 60, "1.0");
        SelectionFile::new(dir.path()).save(&s).unwrap();
        assert!(prune(dir.path(), &s).is_empty());
        let mut left: Vec<String> = std::fs::read_dir(&up)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "a".repeat(64),
                "b".repeat(64),
                format!("{}.part", "d".repeat(64)),
                "selection.json".to_string()
            ]
        );
    }
}
