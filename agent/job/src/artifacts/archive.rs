//! Building archives from selected project entries: zip (artifacts and caches), gzip and raw
//! (reports).
//!
//! What gitlab-runner does and we copy: `zip` keeps directories, files (deflate) and
//! symlinks with their unix modes; `gzip` writes one gzip member per file, concatenated
//! into one stream, each member's header carrying the file's base name and, as comment, its
//! relative path (gitlab-runner's `helpers/archives/gzip_create.go`; GitLab reads every
//! member of a report, so several junit files in one gzip artifact work); `raw` sends
//! exactly one file as is and refuses more. Upload file names follow gitlab-runner's
//! `artifactFilename`: `<name>.zip`, `<name>.gz`, `<name>` for raw, `name` defaulting to
//! `artifacts`.

use std::collections::{HashMap, HashSet};
use std::io::{Seek, Write};

use flate2::{Compression, GzBuilder};
use zip::write::SimpleFileOptions;

use super::ArchiveError;
use super::project_tar::{EntryKind, ProjectEntry, ProjectTar};

/// `artifact_format` of an artifacts entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactFormat {
    Zip,
    Gzip,
    Raw,
}

impl ArtifactFormat {
    /// Parses the payload's `artifact_format` (`None`/empty = `zip`).
    pub fn parse(value: Option<&str>) -> Result<ArtifactFormat, ArchiveError> {
        match value.map(str::trim).unwrap_or("") {
            "" | "zip" => Ok(ArtifactFormat::Zip),
            "gzip" => Ok(ArtifactFormat::Gzip),
            "raw" => Ok(ArtifactFormat::Raw),
            other => Err(ArchiveError::UnknownFormat(other.to_string())),
        }
    }

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactFormat::Zip => "zip",
            ArtifactFormat::Gzip => "gzip",
            ArtifactFormat::Raw => "raw",
        }
    }
}

fn zip_time(mtime: u64) -> zip::DateTime {
    i64::try_from(mtime)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            zip::DateTime::try_from(time::PrimitiveDateTime::new(t.date(), t.time())).ok()
        })
        .unwrap_or_default()
}

fn zip_options(entry: &ProjectEntry, size: u64) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip_time(entry.mtime))
        .unix_permissions(entry.mode)
        .large_file(size >= u64::from(u32::MAX))
}

/// Writes the selected entries of `tar` as a zip to `out` (tar order, hard links last). File
/// content is streamed: a hard link's content is copied from its target's tar entry, never
/// read into memory.
pub fn write_zip<W: Write + Seek>(
    tar: &ProjectTar,
    selected: &[ProjectEntry],
    out: W,
) -> Result<W, ArchiveError> {
    let wanted: HashSet<&str> = selected.iter().map(|e| e.path.as_str()).collect();
    let mut zip = zip::ZipWriter::new(out);
    let mut hardlinks = Vec::new();
    // Sizes of regular files, for the zip64 flag of the hard links to them.
    let mut sizes: HashMap<String, u64> = HashMap::new();
    tar.walk(|entry, reader| {
        if entry.kind == EntryKind::File {
            sizes.entry(entry.path.clone()).or_insert(entry.size);
        }
        if !wanted.contains(entry.path.as_str()) {
            return Ok(());
        }
        let opts = zip_options(entry, entry.size);
        match &entry.kind {
            EntryKind::Dir => zip.add_directory(format!("{}/", entry.path), opts)?,
            EntryKind::File => {
                zip.start_file(entry.path.as_str(), opts)?;
                std::io::copy(reader, &mut zip).map_err(|e| ArchiveError::io(tar.path(), e))?;
            }
            EntryKind::Symlink { target } => {
                zip.add_symlink(entry.path.as_str(), target.as_str(), opts)?
            }
            EntryKind::Hardlink { .. } => hardlinks.push(entry.clone()),
        }
        Ok(())
    })?;
    for link in hardlinks {
        let EntryKind::Hardlink { target } = &link.kind else {
            continue;
        };
        let size = *sizes
            .get(target)
            .ok_or_else(|| ArchiveError::MissingLinkTarget(target.clone()))?;
        zip.start_file(link.path.as_str(), zip_options(&link, size))?;
        tar.copy_file(target, &mut zip)?;
    }
    Ok(zip.finish()?)
}

/// Writes the selected regular files as concatenated gzip members (one per file) to `out`,
/// streaming their content. Returns how many files were written.
pub fn write_gzip<W: Write>(
    tar: &ProjectTar,
    selected: &[ProjectEntry],
    mut out: W,
) -> Result<usize, ArchiveError> {
    let wanted: HashSet<&str> = selected
        .iter()
        .filter(|e| e.is_file())
        .map(|e| e.path.as_str())
        .collect();
    let mut count = 0;
    let mut emit = |entry: &ProjectEntry,
                    content: &mut dyn FnMut(&mut dyn Write) -> Result<(), ArchiveError>|
     -> Result<(), ArchiveError> {
        let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
        let mut gz = GzBuilder::new()
            .filename(name)
            .comment(entry.path.as_str())
            .mtime(u32::try_from(entry.mtime).unwrap_or(0))
            .write(&mut out, Compression::default());
        content(&mut gz)?;
        gz.finish().map_err(|e| ArchiveError::io(tar.path(), e))?;
        count += 1;
        Ok(())
    };
    let mut hardlinks = Vec::new();
    tar.walk(|entry, reader| {
        if !wanted.contains(entry.path.as_str()) {
            return Ok(());
        }
        match &entry.kind {
            EntryKind::Hardlink { target } => {
                hardlinks.push((entry.clone(), target.clone()));
                Ok(())
            }
            _ => emit(entry, &mut |gz| {
                std::io::copy(reader, gz).map_err(|e| ArchiveError::io(tar.path(), e))?;
                Ok(())
            }),
        }
    })?;
    for (entry, target) in hardlinks {
        emit(&entry, &mut |gz| tar.copy_file(&target, gz).map(|_| ()))?;
    }
    Ok(count)
}

/// Streams the single selected regular file to `out`; refuses zero or several files.
/// Returns the file's relative path.
pub fn write_raw<W: Write>(
    tar: &ProjectTar,
    selected: &[ProjectEntry],
    mut out: W,
) -> Result<String, ArchiveError> {
    let files: Vec<&ProjectEntry> = selected.iter().filter(|e| e.is_file()).collect();
    let [file] = files.as_slice() else {
        return Err(ArchiveError::RawNeedsOneFile {
            files: files.iter().map(|e| e.path.clone()).collect(),
        });
    };
    let source = match &file.kind {
        EntryKind::Hardlink { target } => target.as_str(),
        _ => file.path.as_str(),
    };
    tar.copy_file(source, &mut out)?;
    Ok(file.path.clone())
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read};

    use super::*;
    use crate::artifacts::project_tar::{SelectSpec, select};

    /// A tar shaped like Docker's archive of `/builds/g/proj`.
    fn project_tar(dir: &tempfile::TempDir) -> ProjectTar {
        let path = dir.path().join("project.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if link.is_empty() {
                b.append_data(&mut h, name, data).unwrap();
            } else {
                b.append_link(&mut h, name, link).unwrap();
            }
        };
        add("proj/", tar::EntryType::Directory, 0o755, b"", "");
        add("proj/out/", tar::EntryType::Directory, 0o755, b"", "");
        add(
            "proj/out/app",
            tar::EntryType::Regular,
            0o755,
            b"binary",
            "",
        );
        add(
            "proj/out/latest",
            tar::EntryType::Symlink,
            0o777,
            b"",
            "app",
        );
        add(
            "proj/out/copy",
            tar::EntryType::Link,
            0o755,
            b"",
            "proj/out/app",
        );
        add(
            "proj/report-a.xml",
            tar::EntryType::Regular,
            0o644,
            b"<a/>",
            "",
        );
        add(
            "proj/report-b.xml",
            tar::EntryType::Regular,
            0o644,
            b"<b/>",
            "",
        );
        b.finish().unwrap();
        ProjectTar::new(path, "proj")
    }

    fn chosen(tar: &ProjectTar, paths: &[&str]) -> Vec<ProjectEntry> {
        let spec = SelectSpec {
            paths: paths.iter().map(|s| s.to_string()).collect(),
            project_dir: "/builds/g/proj".into(),
            ..SelectSpec::default()
        };
        select(&tar.entries().unwrap(), &spec, None).entries
    }

    #[test]
    fn zip_keeps_dirs_modes_symlinks_and_hardlink_content() {
        let dir = tempfile::tempdir().unwrap();
        let tar = project_tar(&dir);
        let out = write_zip(&tar, &chosen(&tar, &["out"]), Cursor::new(Vec::new())).unwrap();
        let mut zip = zip::ZipArchive::new(Cursor::new(out.into_inner())).unwrap();
        let names: Vec<String> = (0..zip.len())
            .map(|i| zip.by_index(i).unwrap().name().unwrap().into_owned())
            .collect();
        assert_eq!(names, vec!["out/", "out/app", "out/latest", "out/copy"]);
        let mut app = zip.by_name("out/app").unwrap();
        assert_eq!(app.unix_mode().unwrap() & 0o777, 0o755);
        let mut s = String::new();
        app.read_to_string(&mut s).unwrap();
        assert_eq!(s, "binary");
        drop(app);
        let mut latest = zip.by_name("out/latest").unwrap();
        assert!(latest.is_symlink());
        let mut target = String::new();
        latest.read_to_string(&mut target).unwrap();
        assert_eq!(target, "app");
        drop(latest);
        let mut copy = zip.by_name("out/copy").unwrap();
        let mut s = String::new();
        copy.read_to_string(&mut s).unwrap();
        assert_eq!(s, "binary");
    }

    #[test]
    fn gzip_writes_one_member_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let tar = project_tar(&dir);
        let mut out = Vec::new();
        let n = write_gzip(&tar, &chosen(&tar, &["report-*.xml"]), &mut out).unwrap();
        assert_eq!(n, 2);
        // Each member decodes on its own, in order, with its file name in the header.
        let mut rest = out.as_slice();
        let mut members = Vec::new();
        while !rest.is_empty() {
            let mut gz = flate2::bufread::GzDecoder::new(rest);
            let mut s = String::new();
            gz.read_to_string(&mut s).unwrap();
            let name = gz
                .header()
                .unwrap()
                .filename()
                .map(|f| String::from_utf8_lossy(f).into_owned());
            members.push((name.unwrap(), s));
            rest = gz.into_inner();
        }
        assert_eq!(
            members,
            vec![
                ("report-a.xml".to_string(), "<a/>".to_string()),
                ("report-b.xml".to_string(), "<b/>".to_string())
            ]
        );
    }

    #[test]
    fn raw_takes_exactly_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let tar = project_tar(&dir);
        let mut out = Vec::new();
        let name = write_raw(&tar, &chosen(&tar, &["report-a.xml"]), &mut out).unwrap();
        assert_eq!(name, "report-a.xml");
        assert_eq!(out, b"<a/>");
        let err = write_raw(&tar, &chosen(&tar, &["report-*.xml"]), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("exactly one file"), "{err}");
        assert!(matches!(
            ArtifactFormat::parse(Some("tar")),
            Err(ArchiveError::UnknownFormat(_))
        ));
    }
}
