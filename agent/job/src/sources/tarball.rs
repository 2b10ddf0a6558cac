//! A host directory (the checkout) as a tar for Docker's "put archive": modes, mtimes,
//! symlinks (never followed) and the `.git` directory are kept; sockets and devices are
//! skipped.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::artifacts::{Owner, TarWriter};

/// Writes `dir` to `out` as a tar whose entries sit under `prefix` (e.g. `builds/group/proj`
/// to extract at `/`, or `""` to extract into the project directory itself). Parent
/// directories of `prefix` get their own entries (mode 0755). Returns the entry count.
pub fn write_dir_tar<W: Write>(
    dir: &Path,
    prefix: &str,
    owner: Owner,
    out: W,
) -> std::io::Result<usize> {
    let mut tar = TarWriter::new(out, owner);
    let prefix = prefix.trim_matches('/');
    let mut count = 0;
    if !prefix.is_empty() {
        let parts: Vec<&str> = prefix.split('/').collect();
        for depth in 1..parts.len() {
            tar.dir(&parts[..depth].join("/"), 0o755, 0)?;
            count += 1;
        }
        let meta = fs::metadata(dir)?;
        tar.dir(prefix, meta.mode(), mtime(&meta))?;
        count += 1;
    }
    count += walk(&mut tar, dir, prefix)?;
    tar.finish()?.flush()?;
    Ok(count)
}

fn mtime(meta: &fs::Metadata) -> u64 {
    u64::try_from(meta.mtime()).unwrap_or(0)
}

fn walk<W: Write>(tar: &mut TarWriter<W>, dir: &Path, prefix: &str) -> std::io::Result<usize> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut count = 0;
    for name in names {
        let full = dir.join(&name);
        let name = name.to_string_lossy();
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::symlink_metadata(&full)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&full)?;
            tar.symlink(&rel, &target.to_string_lossy(), mtime(&meta))?;
        } else if ft.is_dir() {
            tar.dir(&rel, meta.mode(), mtime(&meta))?;
            count += walk(tar, &full, &rel)?;
        } else if ft.is_file() {
            let file = fs::File::open(&full)?;
            tar.file(&rel, meta.mode(), mtime(&meta), meta.len(), file)?;
        } else {
            continue;
        }
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keeps_modes_symlinks_and_dot_git() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join(".git/refs")).unwrap();
        fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();

        let mut out = Vec::new();
        write_dir_tar(root, "builds/g/p", Owner::default(), &mut out).unwrap();
        let mut archive = tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let kind = e.header().entry_type();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            seen.push((path, mode, kind, link, data));
        }
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "builds/",
                "builds/g/",
                "builds/g/p/",
                "builds/g/p/.git/",
                "builds/g/p/.git/HEAD",
                "builds/g/p/.git/refs/",
                "builds/g/p/link",
                "builds/g/p/run.sh"
            ]
        );
        let run = seen.iter().find(|s| s.0.ends_with("run.sh")).unwrap();
        assert_eq!(run.1 & 0o777, 0o755);
        assert_eq!(run.4, "#!/bin/sh\n");
        let link = seen.iter().find(|s| s.0.ends_with("link")).unwrap();
        assert_eq!(link.2, tar::EntryType::Symlink);
        assert_eq!(link.3.as_deref(), Some("/etc/passwd"));
    }
}
