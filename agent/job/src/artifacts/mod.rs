//! Job artifacts and the archive plumbing that caches share: collecting files from a tar of
//! `CI_PROJECT_DIR`, building zip/gzip/raw archives, uploading them through the
//! [`GitLab`](drover_gitlab::GitLab) trait, and turning dependency artifacts (zips) into tar
//! streams for Docker's "put archive", refusing entries that escape the project directory.
//!
//! Invariant: no Docker here. The executor downloads the project directory as a tar
//! ([`ProjectTar`]) and uploads the tars this module writes; everything in between happens on
//! host files.

pub mod archive;
pub mod dependencies;
pub mod extract;
pub mod glob;
pub mod project_tar;
pub mod tar_writer;
pub mod upload;
pub mod when;

use std::path::Path;

pub use archive::ArtifactFormat;
pub use dependencies::{DependencyArchive, DependencyError, download_dependencies};
pub use extract::zip_to_tar;
pub use project_tar::{EntryKind, ProjectEntry, ProjectTar, SelectSpec, Selection, select};
pub use tar_writer::{Owner, TarWriter};
pub use upload::{
    ArtifactsError, BuiltArtifact, Retry, build_artifact, upload_artifact, upload_job_artifacts,
};
pub use when::When;

/// Errors reading or writing archives.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("archive entry {entry:?} refused: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("hard link target {0:?} not found in the project archive")]
    MissingLinkTarget(String),
    #[error("artifact_format raw takes exactly one file, found {}: {files:?}", .files.len())]
    RawNeedsOneFile { files: Vec<String> },
    #[error("unknown artifact_format {0:?} (expected zip, gzip or raw)")]
    UnknownFormat(String),
}

impl ArchiveError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ArchiveError {
        ArchiveError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
