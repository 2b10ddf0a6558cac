//! The hook through which the repository gets into the build directory.
//!
//! The executor owns `GIT_STRATEGY=none|empty`; for `clone` and `fetch` it asks a
//! [`SourcesProvider`] (implemented outside this module) for a tar archive of the checked-out
//! tree and extracts it into `CI_PROJECT_DIR`.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::api::ArchiveStream;
use crate::gitlab::types::JobResponse;
use crate::trace::TraceSink;

/// `GIT_STRATEGY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitStrategy {
    /// Fresh checkout into an emptied directory.
    Clone,
    /// Update what the builds volume already holds.
    Fetch,
    /// Leave the directory as it is.
    None,
    /// Empty the directory, check out nothing.
    Empty,
}

impl GitStrategy {
    /// From the job's `GIT_STRATEGY` value; unset → `fetch` when GitLab allows it, else `clone`.
    pub fn from_variable(value: Option<&str>, allow_git_fetch: bool) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(if allow_git_fetch {
                GitStrategy::Fetch
            } else {
                GitStrategy::Clone
            }),
            Some("clone") => Ok(GitStrategy::Clone),
            Some("fetch") => Ok(GitStrategy::Fetch),
            Some("none") => Ok(GitStrategy::None),
            Some("empty") => Ok(GitStrategy::Empty),
            Some(other) => Err(format!(
                "unknown GIT_STRATEGY {other:?} (use clone, fetch, none or empty)"
            )),
        }
    }

    /// The variable's value.
    pub fn as_str(self) -> &'static str {
        match self {
            GitStrategy::Clone => "clone",
            GitStrategy::Fetch => "fetch",
            GitStrategy::None => "none",
            GitStrategy::Empty => "empty",
        }
    }
}

/// Produces the job's checked-out repository.
#[async_trait]
pub trait SourcesProvider: Send + Sync {
    /// A tar archive of the checked-out tree, paths relative to `CI_PROJECT_DIR`. For
    /// `Clone` the executor empties the directory first; for `Fetch` the archive is extracted
    /// over what is there. Progress lines go to `trace`. Must return promptly when `cancel`
    /// fires.
    async fn checkout(
        &self,
        job: &JobResponse,
        strategy: GitStrategy,
        trace: &TraceSink,
        cancel: CancellationToken,
    ) -> Result<ArchiveStream, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_strategy_defaults_on_allow_git_fetch() {
        assert_eq!(
            GitStrategy::from_variable(None, true),
            Ok(GitStrategy::Fetch)
        );
        assert_eq!(
            GitStrategy::from_variable(None, false),
            Ok(GitStrategy::Clone)
        );
        assert_eq!(
            GitStrategy::from_variable(Some("none"), true),
            Ok(GitStrategy::None)
        );
        assert_eq!(
            GitStrategy::from_variable(Some("empty"), true),
            Ok(GitStrategy::Empty)
        );
        assert!(GitStrategy::from_variable(Some("rsync"), true).is_err());
    }
}
