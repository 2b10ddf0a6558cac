//! Which files git tracks in a checkout, so `untracked: true` (artifacts, caches) can take
//! everything else. Computed on the host work dir after checkout with
//! `git ls-files --stage -z`; the job's own commits or `git add` inside the container are not
//! seen (they are rare in CI and gitlab-runner's helper has the same blind spot for files
//! staged after its `ls-files` run).

use std::collections::HashSet;

/// The tracked paths of a checkout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackedFiles {
    files: HashSet<String>,
    /// Submodule paths: everything below them belongs to another repository.
    gitlinks: Vec<String>,
}

impl TrackedFiles {
    /// From explicit lists of tracked files and submodule paths.
    pub fn new<F, G>(files: F, gitlinks: G) -> TrackedFiles
    where
        F: IntoIterator,
        F::Item: Into<String>,
        G: IntoIterator,
        G::Item: Into<String>,
    {
        TrackedFiles {
            files: files.into_iter().map(Into::into).collect(),
            gitlinks: gitlinks.into_iter().map(Into::into).collect(),
        }
    }

    /// Parses `git ls-files --stage -z` output (`<mode> <object> <stage>\t<path>\0`...).
    pub fn parse_ls_files_stage(output: &[u8]) -> TrackedFiles {
        let mut files = HashSet::new();
        let mut gitlinks = Vec::new();
        for record in output.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            let text = String::from_utf8_lossy(record);
            let Some((meta, path)) = text.split_once('\t') else {
                continue;
            };
            if meta.starts_with("160000 ") {
                gitlinks.push(path.to_string());
            } else {
                files.insert(path.to_string());
            }
        }
        TrackedFiles { files, gitlinks }
    }

    /// Whether `path` (relative to the project directory) is a file git does not track.
    pub fn is_untracked(&self, path: &str) -> bool {
        if self.files.contains(path) {
            return false;
        }
        !self.gitlinks.iter().any(|g| {
            path == g
                || path
                    .strip_prefix(g.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stage_output() {
        let out =
            b"100644 aaaa 0\tREADME.md\x00100755 bbbb 0\tbin/run\x00160000 cccc 0\tvendor/lib\0";
        let t = TrackedFiles::parse_ls_files_stage(out);
        assert!(!t.is_untracked("README.md"));
        assert!(!t.is_untracked("bin/run"));
        assert!(!t.is_untracked("vendor/lib/x.c"));
        assert!(t.is_untracked("vendor/library"));
        assert!(t.is_untracked("build/out"));
    }
}
