//! A consistent copy of a live SQLite store (`drover backup`), made with SQLite's online
//! backup API while the controller keeps writing.
//!
//! Every page is copied in one backup step, which reads under one read transaction: in WAL
//! mode that does not stop the controller's writers, and the copy is the database as of
//! one commit. The copy goes to a temp file beside the target (0600: it holds sealed
//! runner tokens and the enrollment token hashes), is checked (`PRAGMA integrity_check`)
//! and synced, then takes the target's name: by a hard link that fails when the target
//! exists (no overwrite unless asked), or a rename when overwriting is asked for.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// How often a busy or locked source is tried again before giving up.
const BUSY_TRIES: u32 = 100;
/// The wait between those tries.
const BUSY_WAIT: Duration = Duration::from_millis(100);

/// Why a backup failed; nothing is left at the target.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The database to copy is not there.
    #[error("no database at {0}")]
    NoDatabase(PathBuf),
    /// The target exists and overwriting was not asked for.
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    /// SQLite failed.
    #[error("back up {from} into {to}: {source}")]
    Sqlite {
        /// The database copied.
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The source stayed busy.
    #[error("back up {0}: the database stayed busy for {1:?}")]
    Busy(PathBuf, Duration),
    /// The copy failed its integrity check.
    #[error("backup of {from} failed its integrity check: {detail}")]
    Corrupt {
        /// The database copied.
        from: PathBuf,
        /// What `integrity_check` said.
        detail: String,
    },
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a backup copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    /// Pages of the copy.
    pub pages: i64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Copies the database at `db` into `target` (see the module doc); `overwrite` replaces an
/// existing target.
pub fn backup(db: &Path, target: &Path, overwrite: bool) -> Result<BackupInfo, BackupError> {
    if !db.is_file() {
        return Err(BackupError::NoDatabase(db.to_path_buf()));
    }
    if !overwrite && target.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(target.to_path_buf()));
    }
    let temp = temp_path(target);
    let result = copy_into(db, target, &temp).and_then(|info| {
        publish(&temp, target, overwrite)?;
        Ok(info)
    });
    let _ = std::fs::remove_file(&temp);
    result
}

fn temp_path(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn copy_into(db: &Path, target: &Path, temp: &Path) -> Result<BackupInfo, BackupError> {
    let sql = |source| BackupError::Sqlite {
        from: db.to_path_buf(),
        to: target.to_path_buf(),
        source,
    };
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io {
            action,
            path,
            source,
        }
    };
    // Created here with 0600 whatever the umask; SQLite then writes into it.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .map_err(io("create", temp))?;
    let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    source.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
    let mut copy = Connection::open(temp).map_err(sql)?;
    {
        let backup = Backup::new(&source, &mut copy).map_err(sql)?;
        let mut tries = 0;
        loop {
            // -1: every page in one step, so under one read transaction.
            match backup.step(-1).map_err(sql)? {
                StepResult::Done => break,
                StepResult::More => continue,
                StepResult::Busy | StepResult::Locked => {
                    tries += 1;
                    if tries >= BUSY_TRIES {
                        return Err(BackupError::Busy(db.to_path_buf(), BUSY_WAIT * BUSY_TRIES));
                    }
                    std::thread::sleep(BUSY_WAIT);
                }
                _ => continue,
            }
        }
    }
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(sql)?;
    if check != "ok" {
        return Err(BackupError::Corrupt {
            from: db.to_path_buf(),
            detail: check,
        });
    }
    let pages: i64 = copy
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(sql)?;
    copy.close().map_err(|(_, e)| sql(e))?;
    let file = std::fs::File::open(temp).map_err(io("open", temp))?;
    file.sync_all().map_err(io("sync", temp))?;
    let bytes = file.metadata().map_err(io("inspect", temp))?.len();
    Ok(BackupInfo { pages, bytes })
}

fn publish(temp: &Path, target: &Path, overwrite: bool) -> Result<(), BackupError> {
    let io = |action, source| BackupError::Io {
        action,
        path: target.to_path_buf(),
        source,
    };
    if overwrite {
        std::fs::rename(temp, target).map_err(|e| io("write", e))?;
    } else {
        std::fs::hard_link(temp, target).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(target.to_path_buf())
            } else {
                io("write", e)
            }
        })?;
    }
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn db_with_rows(path: &Path, n: i64) {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        for i in 0..n {
            c.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
    }

    fn rows(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn copies_a_database_0600_and_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let (db, out) = (dir.path().join("drover.db"), dir.path().join("b.db"));
        db_with_rows(&db, 50);
        let info = backup(&db, &out, false).unwrap();
        assert!(info.pages > 0 && info.bytes > 0);
        assert_eq!(rows(&out), 50);
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = backup(&db, &out, false).unwrap_err();
        assert!(matches!(e, BackupError::Exists(_)));
        assert!(e.to_string().contains("b.db exists; pass --force"), "{e}");
        backup(&db, &out, true).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(names.is_empty(), "temp files left: {names:?}");
        let e = backup(&dir.path().join("missing.db"), &out, true).unwrap_err();
        assert!(e.to_string().contains("no database at"), "{e}");
        let e = backup(&db, Path::new("/proc/self/nope/b.db"), false).unwrap_err();
        assert!(e.to_string().contains("/proc/self/nope"), "{e}");
    }

    /// Writers commit throughout the backup: the copy is whole (one commit's state) and
    /// passes the integrity check.
    #[test]
    fn a_copy_taken_under_writes_is_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        db_with_rows(&db, 2000);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Two rows per transaction: a torn copy would hold an odd count.
                    c.execute_batch(
                        "BEGIN; INSERT INTO t (v) VALUES ('a'); INSERT INTO t (v) VALUES ('b'); COMMIT;",
                    )
                    .unwrap();
                    n += 2;
                }
                n
            })
        };
        for i in 0..5 {
            let out = dir.path().join(format!("b{i}.db"));
            backup(&db, &out, false).unwrap();
            assert_eq!(rows(&out) % 2, 0, "copy {i} holds half a transaction");
            assert!(rows(&out) >= 2000);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 0);
    }
}
