//! Building archives from selected project entries: zip (artifacts and caches), gzip and raw
//! (reports).
//!
//! What gitlab-runner does and we copy: `zip` keeps directories, files (deflate) and
//! symlinks with their unix modes; `gzip` writes one gzip member per file, concatenated
//! into one stream, each member's header naming the file (GitLab reads every member of a
//! report, so several junit files in one gzip artifact work); `raw` sends exactly one file
//! as is and refuses more.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};

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
        .and_then(|t| zip::DateTime::try_from(time::PrimitiveDateTime::new(t.date(), t.time())).ok())
        .unwrap_or_default()
}

/// Writes the selected entries of `tar` as a zip to `out` (tar order).
pub fn write_zip<W: Write + Seek>(
    tar: &ProjectTar,
    selected: &[ProjectEntry],
    out: W,
) -> Result<W, ArchiveError> {
    let wanted: HashSet<&str> = selected.iter().map(|e| e.path.as_str()).collect();
    let mut zip = zip::ZipWriter::new(out);
    let mut hardlinks = Vec::new();
    tar.walk(|entry, reader| {
        if !wanted.contains(entry.path.as_str()) {
            return Ok(());
        }
        let opts = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip_time(entry.mtime))
            .unix_permissions(entry.mode)
            .large_file(entry.size >= u64::from(u32::MAX));
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
        let content = tar.read_file(target)?;
        let opts = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip_time(link.mtime))
            .unix_permissions(link.mode);
        zip.start_file(link.path.as_str(), opts)?;
        zip.write_all(&content)
            .map_err(|e| ArchiveError::io(tar.path(), e))?;
    }
    Ok(zip.finish()?)
}

/// Writes the selected regular files as concatenated gzip members (one per file) to `out`.
/// Returns how many files were written.
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
    let mut emit = |entry: &ProjectEntry, data: &mut dyn Read| -> Result<(), ArchiveError> {
        let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
        let mut gz = GzBuilder::new()
            .filename(name)
            .mtime(u32::try_from(entry.mtime).unwrap_or(0))
            .write(&mut out, Compression::default());
        std::io::copy(data, &mut gz).map_err(|e| ArchiveError::io(tar.path(), e))?;
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
            _ => emit(entry, reader),
        }
    })?;
    for (entry, target) in hardlinks {
        let content = tar.read_file(&target)?;
        emit(&entry, &mut content.as_slice())?;
    }
    Ok(count)
}

/// Copies the single selected regular file to `out`; refuses zero or several files.
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
        EntryKind::Hardlink { target } => target.clone(),
        _ => file.path.clone(),
    };
    let content = tar.read_file(&source)?;
    out.write_all(&content)
        .map_err(|e| ArchiveError::io(tar.path(), e))?;
    Ok(file.path.clone())
}
