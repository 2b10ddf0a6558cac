//! Files of the data dir and their modes, decided up front so a key file is never readable
//! by others, not even for a moment. Files are replaced with
//! [`drover_runtime::atomic_file::write`] (temp file + rename, exact mode).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of files holding a private key or other secret.
pub const PRIVATE: u32 = 0o600;
/// Mode of files anyone on the host may read (certificates, addresses).
pub const PUBLIC: u32 = 0o644;

/// Creates `dir` (and parents) with mode 0700 if missing; tightens an existing one to 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Sets an existing file readable or writable by group or others back to owner-only
/// (0600); returns the old mode when it changed it. A missing file is left missing.
pub fn make_private(path: &Path) -> std::io::Result<Option<u32>> {
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE))?;
    Ok(Some(mode))
}

/// Creates `path` empty with mode 0600 when missing (SQLite gives its `-wal` and `-shm`
/// files the mode of the database file, so this decides theirs too).
pub fn create_private(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE)
        .open(path)
    {
        Ok(f) => f.set_permissions(std::fs::Permissions::from_mode(PRIVATE)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `path` only if it still holds `contents`: a file another process rewrote since
/// is theirs and stays.
pub fn remove_if_unchanged(path: &Path, contents: &str) -> std::io::Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(now) if now == contents => std::fs::remove_file(path).map(|()| true),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn private_files() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let db = dir.path().join("db");
        create_private(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        std::fs::write(&db, b"x").unwrap();
        create_private(&db).unwrap();
        assert_eq!(
            std::fs::read(&db).unwrap(),
            b"x",
            "an existing file is kept"
        );

        let key = dir.path().join("key");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(make_private(&key).unwrap(), Some(0o644));
        assert_eq!(mode(&key), 0o600);
        assert_eq!(make_private(&key).unwrap(), None);
        assert_eq!(make_private(&dir.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn removes_only_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grpc.addr");
        std::fs::write(&p, "127.0.0.1:2\n").unwrap();
        assert!(!remove_if_unchanged(&p, "127.0.0.1:1\n").unwrap());
        assert!(p.exists());
        assert!(remove_if_unchanged(&p, "127.0.0.1:2\n").unwrap());
        assert!(!p.exists());
        assert!(!remove_if_unchanged(&p, "127.0.0.1:2\n").unwrap());
    }
}
