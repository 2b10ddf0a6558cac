//! Reading a tar of `CI_PROJECT_DIR` (what Docker's "download archive" returns) and choosing
//! which of its entries go into a cache or artifacts archive.
//!
//! Docker names entries after the last component of the requested path (`project/`,
//! `project/src/main.rs`); [`ProjectTar::new`] takes that name as `root` and hands out paths
//! relative to the project directory.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::ArchiveError;
use super::glob::{Glob, normalize_pattern};
use crate::sources::TrackedFiles;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink {
        target: String,
    },
    /// A hard link to an earlier entry (relative path), as Docker writes for shared inodes.
    Hardlink {
        target: String,
    },
}

/// One entry of the project tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectEntry {
    /// Relative to `CI_PROJECT_DIR`, `/`-separated, no trailing slash.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
}

impl ProjectEntry {
    /// Regular files and hard links (which carry file content).
    pub fn is_file(&self) -> bool {
        matches!(self.kind, EntryKind::File | EntryKind::Hardlink { .. })
    }
}

/// A tar file holding `CI_PROJECT_DIR`.
#[derive(Debug, Clone)]
pub struct ProjectTar {
    path: PathBuf,
    root: String,
}

impl ProjectTar {
    /// `path`: the tar file. `root`: the top-level directory name its entries sit under
    /// (the basename of `CI_PROJECT_DIR` for Docker's archive), or `""` when entries are
    /// already relative to the project directory.
    pub fn new(path: impl Into<PathBuf>, root: &str) -> ProjectTar {
        ProjectTar {
            path: path.into(),
            root: root.trim_matches('/').to_string(),
        }
    }

    /// The tar file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn relative(&self, raw: &str) -> Option<String> {
        let trimmed = raw.trim_start_matches("./").trim_end_matches('/');
        let rel = if self.root.is_empty() {
            trimmed
        } else {
            trimmed.strip_prefix(&self.root)?.strip_prefix('/')?
        };
        let rel = rel.trim_start_matches("./");
        if rel.is_empty() || rel == "." {
            None
        } else {
            Some(rel.to_string())
        }
    }

    /// Lists every entry under the project directory, in tar order.
    pub fn entries(&self) -> Result<Vec<ProjectEntry>, ArchiveError> {
        let mut out = Vec::new();
        self.walk(|entry, _| {
            out.push(entry.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` for every entry under the project directory, in tar order, with a reader
    /// over its content (empty for anything but regular files). Content `f` does not read is
    /// skipped by seeking, so a walk costs one header read per entry.
    pub fn walk(
        &self,
        mut f: impl FnMut(&ProjectEntry, &mut dyn Read) -> Result<(), ArchiveError>,
    ) -> Result<(), ArchiveError> {
        let file = File::open(&self.path).map_err(|e| ArchiveError::io(&self.path, e))?;
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| ArchiveError::io(&self.path, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ArchiveError::io(&self.path, e))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(path) = self.relative(&raw) else {
                continue;
            };
            let header = entry.header();
            let mode = header.mode().unwrap_or(0o644) & 0o7777;
            let mtime = header.mtime().unwrap_or(0);
            let size = header.size().unwrap_or(0);
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink {
                    target: link.unwrap_or_default(),
                },
                tar::EntryType::Link => {
                    let target = link.and_then(|l| self.relative(&l)).unwrap_or_default();
                    EntryKind::Hardlink { target }
                }
                // Devices, fifos, pax/gnu extension headers: nothing to archive.
                _ => continue,
            };
            let info = ProjectEntry {
                path,
                kind,
                mode,
                size,
                mtime,
            };
            f(&info, &mut entry)?;
        }
        Ok(())
    }

    /// Streams the content of the regular file at relative `path` (the first one, as a hard
    /// link refers to) into `out`, never holding more than a copy buffer of it. Returns the
    /// number of bytes copied.
    pub fn copy_file(&self, path: &str, out: &mut dyn Write) -> Result<u64, ArchiveError> {
        let mut copied = None;
        self.walk(|entry, reader| {
            if copied.is_none() && entry.path == path && entry.kind == EntryKind::File {
                let n = std::io::copy(reader, out).map_err(|e| ArchiveError::io(&self.path, e))?;
                copied = Some(n);
            }
            Ok(())
        })?;
        copied.ok_or_else(|| ArchiveError::MissingLinkTarget(path.to_string()))
    }
}

/// Which files to take: `paths`/`exclude` globs and `untracked`, as in `.gitlab-ci.yml`.
#[derive(Debug, Clone, Default)]
pub struct SelectSpec {
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub untracked: bool,
    /// Absolute `CI_PROJECT_DIR` inside the container: patterns may start with it.
    pub project_dir: String,
}

/// The result of [`select`]: entries in tar order plus lines for the trace.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub entries: Vec<ProjectEntry>,
    /// `path: found N matching artifact files and directories`, warnings for patterns that
    /// matched nothing or were refused.
    pub messages: Vec<String>,
}

/// Chooses entries like gitlab-runner's archiver: each `paths` pattern selects matching
/// entries and, for directories, everything below them; `untracked` adds every file git does
/// not track (`tracked` = the checkout's `git ls-files`; `None` = nothing is known to be
/// tracked); `exclude` then removes entries that match or sit below a match. `.git` is never
/// taken by `untracked`.
pub fn select(
    entries: &[ProjectEntry],
    spec: &SelectSpec,
    tracked: Option<&TrackedFiles>,
) -> Selection {
    let mut messages = Vec::new();
    let mut roots: HashSet<&str> = HashSet::new();
    for raw in &spec.paths {
        let glob = match normalize_pattern(raw, &spec.project_dir) {
            Ok(p) => Glob::new(&p),
            Err(e) => {
                messages.push(format!("WARNING: {e}"));
                continue;
            }
        };
        let matched: Vec<&str> = entries
            .iter()
            .filter(|e| glob.matches(&e.path))
            .map(|e| e.path.as_str())
            .collect();
        if matched.is_empty() {
            messages.push(format!(
                "WARNING: {raw}: no matching files. Ensure that the artifact path is relative to the working directory ({})",
                spec.project_dir
            ));
            continue;
        }
        let count = entries
            .iter()
            .filter(|e| matched.iter().any(|m| is_self_or_below(&e.path, m)))
            .count();
        messages.push(format!(
            "{raw}: found {count} matching artifact files and directories"
        ));
        roots.extend(matched);
    }

    let mut chosen: BTreeMap<usize, ()> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if roots.iter().any(|r| is_self_or_below(&e.path, r)) {
            chosen.insert(i, ());
        }
    }
    if spec.untracked {
        let mut count = 0;
        for (i, e) in entries.iter().enumerate() {
            if e.kind == EntryKind::Dir || is_self_or_below(&e.path, ".git") {
                continue;
            }
            let untracked = tracked.is_none_or(|t| t.is_untracked(&e.path));
            if untracked {
                count += 1;
                chosen.insert(i, ());
            }
        }
        if tracked.is_none() {
            messages.push(
                "WARNING: untracked: the tracked files are unknown (no git checkout on the agent, e.g. GIT_STRATEGY none); taking every file outside .git".to_string(),
            );
        }
        messages.push(format!("untracked: found {count} files"));
    }

    let mut excluded_count = 0;
    if !spec.exclude.is_empty() {
        let globs: Vec<(String, Glob)> = spec
            .exclude
            .iter()
            .filter_map(|raw| match normalize_pattern(raw, &spec.project_dir) {
                Ok(p) => Some((raw.clone(), Glob::new(&p))),
                Err(e) => {
                    messages.push(format!("WARNING: exclude {e}"));
                    None
                }
            })
            .collect();
        chosen.retain(|&i, _| {
            let path = &entries[i].path;
            let excluded =
                ancestors_and_self(path).any(|p| globs.iter().any(|(_, g)| g.matches(p)));
            if excluded {
                excluded_count += 1;
            }
            !excluded
        });
        if excluded_count > 0 {
            messages.push(format!("excluded {excluded_count} files and directories"));
        }
    }

    Selection {
        entries: chosen.keys().map(|&i| entries[i].clone()).collect(),
        messages,
    }
}

fn is_self_or_below(path: &str, root: &str) -> bool {
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn ancestors_and_self(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .filter(|&(_, c)| c == '/')
        .map(move |(i, _)| &path[..i])
        .chain(std::iter::once(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> ProjectEntry {
        ProjectEntry {
            path: path.to_string(),
            kind,
            mode: 0o644,
            size: 0,
            mtime: 0,
        }
    }

    fn tree() -> Vec<ProjectEntry> {
        vec![
            entry(".git", EntryKind::Dir),
            entry(".git/HEAD", EntryKind::File),
            entry("README.md", EntryKind::File),
            entry("build", EntryKind::Dir),
            entry("build/app", EntryKind::File),
            entry("build/app.o", EntryKind::File),
            entry("build/tmp", EntryKind::Dir),
            entry("build/tmp/scratch", EntryKind::File),
            entry("src", EntryKind::Dir),
            entry("src/main.c", EntryKind::File),
            entry("out.log", EntryKind::File),
        ]
    }

    fn paths(sel: &Selection) -> Vec<&str> {
        sel.entries.iter().map(|e| e.path.as_str()).collect()
    }

    fn spec(paths: &[&str], exclude: &[&str], untracked: bool) -> SelectSpec {
        SelectSpec {
            paths: paths.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            untracked,
            project_dir: "/builds/g/p".to_string(),
        }
    }

    #[test]
    fn directories_are_taken_recursively() {
        let sel = select(&tree(), &spec(&["build/"], &[], false), None);
        assert_eq!(
            paths(&sel),
            vec![
                "build",
                "build/app",
                "build/app.o",
                "build/tmp",
                "build/tmp/scratch"
            ]
        );
        assert!(sel.messages[0].contains("found 5 matching"));
    }

    #[test]
    fn exclude_removes_matches_and_their_contents() {
        let sel = select(
            &tree(),
            &spec(&["build"], &["build/**/*.o", "build/tmp"], false),
            None,
        );
        assert_eq!(paths(&sel), vec!["build", "build/app"]);
    }

    #[test]
    fn globs_and_refused_patterns() {
        let sel = select(
            &tree(),
            &spec(&["**/*.c", "../escape", "nothing*"], &[], false),
            None,
        );
        assert_eq!(paths(&sel), vec!["src/main.c"]);
        assert!(sel.messages.iter().any(|m| m.contains("not a subpath")));
        assert!(
            sel.messages
                .iter()
                .any(|m| m.contains("nothing*: no matching files"))
        );
    }

    #[test]
    fn untracked_skips_tracked_files_and_git_dir() {
        let tracked = TrackedFiles::new(["README.md", "src/main.c"], Vec::<String>::new());
        let sel = select(&tree(), &spec(&[], &[], true), Some(&tracked));
        assert_eq!(
            paths(&sel),
            vec!["build/app", "build/app.o", "build/tmp/scratch", "out.log"]
        );
    }
}
