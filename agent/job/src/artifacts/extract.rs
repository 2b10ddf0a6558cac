//! Turning a zip (a restored cache, a dependency's artifacts) into a tar for Docker's "put
//! archive" into `CI_PROJECT_DIR`, refusing every entry that could land outside it
//! (zip-slip): absolute names, `..` components, symlinks whose target leaves the project
//! directory, and entries that would be written through a symlink of the same archive.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};

use super::ArchiveError;
use super::tar_writer::{Owner, TarWriter};

/// Checks one entry name and returns it as clean relative segments.
fn safe_segments(name: &str) -> Result<Vec<String>, ArchiveError> {
    let unsafe_entry = |reason: &str| ArchiveError::Unsafe {
        entry: name.to_string(),
        reason: reason.to_string(),
    };
    if name.contains('\0') {
        return Err(unsafe_entry("name contains a NUL byte"));
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(unsafe_entry("absolute path"));
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return Err(unsafe_entry("absolute path (drive letter)"));
    }
    let mut segments = Vec::new();
    for seg in name.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => return Err(unsafe_entry("path escapes the project directory (`..`)")),
            s => segments.push(s.to_string()),
        }
    }
    Ok(segments)
}

/// Whether a symlink at `link` (segments) pointing to `target` stays inside the root.
fn symlink_stays_inside(link: &[String], target: &str) -> bool {
    if target.starts_with('/') || target.starts_with('\\') {
        return false;
    }
    let mut depth = link.len().saturating_sub(1) as isize;
    for seg in target.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

fn zip_mtime(dt: Option<zip::DateTime>) -> u64 {
    dt.and_then(|d| time::PrimitiveDateTime::try_from(d).ok())
        .map(|p| p.assume_utc().unix_timestamp())
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(0)
}

/// Converts the zip `input` into a tar written to `out`, entries relative to the extraction
/// directory. Fails on the first unsafe entry, naming it. Returns the number of entries.
pub fn zip_to_tar<R: Read + Seek, W: Write>(
    input: R,
    out: W,
    owner: Owner,
) -> Result<usize, ArchiveError> {
    let mut zip = zip::ZipArchive::new(input)?;
    let mut tar = TarWriter::new(out, owner);
    let mut symlinks: HashSet<String> = HashSet::new();
    let mut written: Vec<String> = Vec::new();
    let mut count = 0;
    for i in 0..zip.len() {
        let mut file = zip.by_index(i)?;
        let name = file.name()?.into_owned();
        let segments = safe_segments(&name)?;
        if segments.is_empty() {
            continue;
        }
        let path = segments.join("/");
        for depth in 1..segments.len() {
            let ancestor = segments[..depth].join("/");
            if symlinks.contains(&ancestor) {
                return Err(ArchiveError::Unsafe {
                    entry: name.clone(),
                    reason: format!("path goes through the symlink {ancestor:?}"),
                });
            }
        }
        let mtime = zip_mtime(file.last_modified());
        let io_err = |e| ArchiveError::Io {
            path: format!("tar entry {path}"),
            source: e,
        };
        if file.is_symlink() {
            let mut target = String::new();
            file.read_to_string(&mut target).map_err(io_err)?;
            if !symlink_stays_inside(&segments, &target) {
                return Err(ArchiveError::Unsafe {
                    entry: name.clone(),
                    reason: format!(
                        "symlink target {target:?} points outside the project directory"
                    ),
                });
            }
            let prefix = format!("{path}/");
            if written.iter().any(|w| w.starts_with(&prefix)) {
                return Err(ArchiveError::Unsafe {
                    entry: name.clone(),
                    reason: "symlink replaces a directory other entries were written into"
                        .to_string(),
                });
            }
            tar.symlink(&path, &target, mtime).map_err(io_err)?;
            symlinks.insert(path.clone());
        } else if file.is_dir() {
            let mode = file.unix_mode().map(|m| m & 0o7777).unwrap_or(0o755);
            tar.dir(&path, mode, mtime).map_err(io_err)?;
        } else {
            let mode = file.unix_mode().map(|m| m & 0o7777).unwrap_or(0o644);
            let size = file.size();
            tar.file(&path, mode, mtime, size, &mut file)
                .map_err(io_err)?;
        }
        written.push(path);
        count += 1;
    }
    tar.finish().map_err(|e| ArchiveError::Io {
        path: "tar stream".to_string(),
        source: e,
    })?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use zip::write::SimpleFileOptions;

    use super::*;

    enum Item<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn zip_of(items: &[Item]) -> Cursor<Vec<u8>> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for item in items {
            let opts = SimpleFileOptions::default().unix_permissions(0o755);
            match item {
                Item::File(n, data) => {
                    w.start_file(*n, opts).unwrap();
                    w.write_all(data).unwrap();
                }
                Item::Dir(n) => w.add_directory(*n, opts).unwrap(),
                Item::Link(n, t) => w.add_symlink(*n, *t, opts).unwrap(),
            }
        }
        let mut c = w.finish().unwrap();
        c.set_position(0);
        c
    }

    fn convert(items: &[Item]) -> Result<Vec<(String, tar::EntryType, Vec<u8>)>, ArchiveError> {
        let mut out = Vec::new();
        zip_to_tar(zip_of(items), &mut out, Owner::default())?;
        let mut archive = tar::Archive::new(out.as_slice());
        let mut entries = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if let Some(l) = e.link_name().unwrap() {
                data = l.to_string_lossy().as_bytes().to_vec();
            }
            entries.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().entry_type(),
                data,
            ));
        }
        Ok(entries)
    }

    fn refused(items: &[Item], entry: &str) {
        match convert(items) {
            Err(ArchiveError::Unsafe { entry: e, .. }) => assert_eq!(e, entry),
            other => panic!("expected refusal of {entry:?}, got {other:?}"),
        }
    }

    #[test]
    fn safe_archive_round_trips() {
        let entries = convert(&[
            Item::Dir("dir/"),
            Item::File("dir/a.txt", b"hello"),
            Item::Link("dir/link", "a.txt"),
            Item::Link("up", "dir/../dir/a.txt"),
        ])
        .unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[1].0, "dir/a.txt");
        assert_eq!(entries[1].2, b"hello");
        assert_eq!(entries[2].1, tar::EntryType::Symlink);
        assert_eq!(entries[2].2, b"a.txt");
    }

    #[test]
    fn zip_slip_entries_are_refused() {
        refused(&[Item::File("../evil", b"x")], "../evil");
        refused(&[Item::File("a/../../evil", b"x")], "a/../../evil");
        refused(&[Item::File("/etc/passwd", b"x")], "/etc/passwd");
        refused(&[Item::File("C:\\evil", b"x")], "C:\\evil");
        refused(&[Item::Link("escape", "../../etc")], "escape");
        refused(&[Item::Link("abs", "/etc/passwd")], "abs");
        refused(&[Item::Link("d/deep", "../../x")], "d/deep");
        refused(
            &[Item::Link("inside", "sub"), Item::File("inside/x", b"x")],
            "inside/x",
        );
        refused(
            &[Item::File("sub/x", b"x"), Item::Link("sub", "other")],
            "sub",
        );
    }

    /// Sets the uncompressed size of every entry (local and central headers) of a zip.
    fn patch_sizes(zip: &mut [u8], size: u32) {
        let le = size.to_le_bytes();
        let mut i = 0;
        while i + 4 <= zip.len() {
            match &zip[i..i + 4] {
                [0x50, 0x4b, 0x03, 0x04] => zip[i + 22..i + 26].copy_from_slice(&le),
                [0x50, 0x4b, 0x01, 0x02] => zip[i + 24..i + 28].copy_from_slice(&le),
                _ => {}
            }
            i += 1;
        }
    }

    /// A stored entry whose declared size differs from its content: the tar entry must
    /// never carry other bytes than its header says, or the extra bytes would be read as
    /// further tar entries (here one that escapes), unchecked.
    #[test]
    fn declared_size_must_match_content() {
        let mut smuggled = Vec::new();
        {
            let mut b = tar::Builder::new(&mut smuggled);
            let mut h = tar::Header::new_ustar();
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Symlink);
            h.as_ustar_mut().unwrap().name[..7].copy_from_slice(b"escaped");
            h.set_link_name("/etc").unwrap();
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        smuggled.truncate(512);
        for declared in [0u32, 100, 4096] {
            let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
            let opts =
                SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            w.start_file("a.txt", opts).unwrap();
            w.write_all(&smuggled).unwrap();
            let mut bytes = w.finish().unwrap().into_inner();
            patch_sizes(&mut bytes, declared);
            let err = zip_to_tar(Cursor::new(bytes), Vec::new(), Owner::default())
                .expect_err("a size that does not match the content is refused");
            assert!(
                err.to_string().contains("a.txt"),
                "declared {declared}: {err}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever the names and link targets, an accepted archive only holds relative
        /// paths without `..`, and its symlinks stay inside the root.
        #[test]
        fn accepted_archives_never_escape(
            names in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec!["a", "b", "..", ".", ""]), 1..5),
                1..6,
            ),
            absolute in proptest::collection::vec(proptest::bool::ANY, 6),
            link_at in proptest::option::of(0usize..6),
        ) {
            let joined: Vec<String> = names
                .iter()
                .zip(&absolute)
                .map(|(segs, abs)| format!("{}{}", if *abs { "/" } else { "" }, segs.join("/")))
                .collect();
            let mut unique = HashSet::new();
            let mut items = Vec::new();
            for (i, n) in joined.iter().enumerate() {
                // The zip writer refuses duplicate names.
                if !unique.insert(n.clone()) {
                    continue;
                }
                if link_at == Some(i) {
                    items.push(Item::Link(n.as_str(), "../x"));
                } else {
                    items.push(Item::File(n.as_str(), b"x"));
                }
            }
            if let Ok(entries) = convert(&items) {
                for (path, kind, data) in entries {
                    proptest::prop_assert!(!path.starts_with('/'), "{}", path);
                    proptest::prop_assert!(!path.split('/').any(|s| s == ".."), "{}", path);
                    if kind == tar::EntryType::Symlink {
                        let segs: Vec<String> = path.split('/').map(str::to_string).collect();
                        let target = String::from_utf8_lossy(&data).into_owned();
                        proptest::prop_assert!(symlink_stays_inside(&segs, &target));
                    }
                }
            }
        }
    }
}
