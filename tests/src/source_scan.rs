//! Structure rules read from the source, where the compiler cannot hold them
//! (`tests/tests/structure.rs`, `tests/tests/wire_boundary.rs`): the non-test lines of a
//! source tree that match a pattern.
//!
//! Test code is skipped: `#[cfg(test)]` items (a `mod x;` declaration skips the file it
//! names, a block is skipped to its closing brace) and files named `tests.rs`. So are
//! comments (what follows `//` on a line).

use std::fmt;
use std::path::{Path, PathBuf};

/// A matching line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The file, `root` joined with its path below it.
    pub path: PathBuf,
    /// The line number, from 1.
    pub line: usize,
    /// The line, trimmed.
    pub text: String,
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.text)
    }
}

/// `hits`, a line each (for an assertion's message).
pub fn report(hits: &[Hit]) -> String {
    hits.iter().map(|h| format!("{h}\n")).collect()
}

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every line of non-test code under `root` whose code (before any `//`) `matches`, in
/// files outside `allowed`: paths below `root`, each a file or a directory ending in `/`.
/// Panics when `root` holds no `.rs` file, so a moved tree cannot pass unread.
pub fn scan(root: &Path, allowed: &[&str], matches: impl Fn(&str) -> bool) -> Vec<Hit> {
    let texts: Vec<(PathBuf, String)> = rust_files(root)
        .into_iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            (f, text)
        })
        .collect();
    assert!(!texts.is_empty(), "no sources under {}", root.display());
    // Files of modules declared `#[cfg(test)] mod x;` anywhere, then the scan.
    let mut skipped: Vec<PathBuf> = Vec::new();
    for (file, text) in &texts {
        skipped.extend(test_module_paths(file, &non_test_lines(text).1));
    }
    let mut found = Vec::new();
    for (file, text) in &texts {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .to_string_lossy()
            .replace('\\', "/");
        if file.file_name().is_some_and(|n| n == "tests.rs")
            || skipped.iter().any(|s| file.starts_with(s))
            || allowed
                .iter()
                .any(|a| rel == *a || (a.ends_with('/') && rel.starts_with(a)))
        {
            continue;
        }
        for (n, line) in non_test_lines(text).0 {
            let code = line.split("//").next().unwrap_or_default();
            if matches(code) {
                found.push(Hit {
                    path: file.clone(),
                    line: n,
                    text: line.trim().to_string(),
                });
            }
        }
    }
    found
}

/// The number of `.rs` files under `dir`.
pub fn rust_file_count(dir: &Path) -> usize {
    rust_files(dir).len()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("read {}: {e}", d.display()))
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The lines of `text` outside `#[cfg(test)]` items, numbered from 1, and the names of the
/// modules declared test-only (`#[cfg(test)] mod x;`).
fn non_test_lines(text: &str) -> (Vec<(usize, &str)>, Vec<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::new();
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "#[cfg(test)]" {
            kept.push((i + 1, lines[i]));
            i += 1;
            continue;
        }
        // Skip further attributes, then the item.
        i += 1;
        while i < lines.len() && lines[i].trim_start().starts_with("#[") {
            i += 1;
        }
        let Some(item) = lines.get(i) else { break };
        let item = item.trim();
        if item.ends_with(';') {
            if let Some(name) = item
                .trim_end_matches(';')
                .split_whitespace()
                .skip_while(|w| *w != "mod")
                .nth(1)
            {
                test_mods.push(name.to_string());
            }
            i += 1;
            continue;
        }
        let mut depth = 0i64;
        let mut opened = false;
        while i < lines.len() {
            for c in lines[i].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            i += 1;
            if opened && depth <= 0 {
                break;
            }
        }
    }
    (kept, test_mods)
}

/// `file`'s test-only child modules as paths (`x.rs`, `x/mod.rs` or the `x/` dir).
fn test_module_paths(file: &Path, names: &[String]) -> Vec<PathBuf> {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let parent = file.parent().unwrap_or(Path::new(""));
    let dir = if matches!(stem, "mod" | "lib" | "main") {
        parent.to_path_buf()
    } else {
        parent.join(stem)
    };
    names
        .iter()
        .flat_map(|n| [dir.join(format!("{n}.rs")), dir.join(n)])
        .collect()
}
