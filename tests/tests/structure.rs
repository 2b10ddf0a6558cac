//! Structure rules read from the source, where the compiler cannot hold them.
//!
//! No bare `tokio::spawn` in `agent/src` and `controller/src` outside tests: every task of
//! the agent goes on its shutdown tree's tracker (`agent/src/shutdown.rs`), every task of the
//! controller on `drover serve`'s `TaskTracker`, so a stop waits for all of them. Test code
//! is skipped: `#[cfg(test)]` items (a `mod x;` declaration skips the file it names, a
//! block is skipped to its closing brace) and files named `tests.rs`.

use std::path::{Path, PathBuf};

/// What a task may not be started with.
const BARE_SPAWNS: &[&str] = &["tokio::spawn(", "tokio::task::spawn("];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.unwrap().path();
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

/// Every bare spawn in the non-test code under `roots`, as `path:line: text`.
fn bare_spawns(roots: &[PathBuf]) -> Vec<String> {
    let mut files = Vec::new();
    for root in roots {
        files.extend(rust_files(root));
    }
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect();
    // Files of modules declared `#[cfg(test)] mod x;` anywhere, then the scan.
    let mut skipped: Vec<PathBuf> = Vec::new();
    for (file, text) in &texts {
        skipped.extend(test_module_paths(file, &non_test_lines(text).1));
    }
    let mut found = Vec::new();
    for (file, text) in &texts {
        if file.file_name().is_some_and(|n| n == "tests.rs")
            || skipped.iter().any(|s| file.starts_with(s))
        {
            continue;
        }
        for (n, line) in non_test_lines(text).0 {
            let code = line.split("//").next().unwrap_or_default();
            if BARE_SPAWNS.iter().any(|p| code.contains(p)) {
                found.push(format!("{}:{n}: {}", file.display(), line.trim()));
            }
        }
    }
    found
}

#[test]
fn no_bare_tokio_spawn_outside_tests() {
    let ws = workspace();
    assert!(
        rust_files(&ws.join("agent/src")).len() > 50,
        "the agent's sources are read"
    );
    let found = bare_spawns(&[ws.join("agent/src"), ws.join("controller/src")]);
    assert!(
        found.is_empty(),
        "tasks must go on a TaskTracker (agent: crate::shutdown::Tasks):\n{}",
        found.join("\n")
    );
}

/// The scan finds a spawn and skips test code: it can fail.
#[test]
fn the_scan_sees_spawns_and_skips_tests() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("runner")).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "mod runner;\n#[cfg(test)]\nmod fake;\nfn go() {\n    tokio::spawn(async {});\n}\n\
         #[cfg(test)]\nmod tests {\n    fn t() { tokio::spawn(async {}); }\n}\n",
    )
    .unwrap();
    std::fs::write(src.join("fake.rs"), "fn f() { tokio::spawn(async {}); }\n").unwrap();
    std::fs::write(
        src.join("runner/mod.rs"),
        "// tokio::spawn( in a comment\nfn r() { tokio::task::spawn(async {}); }\n",
    )
    .unwrap();
    std::fs::write(src.join("runner/tests.rs"), "fn t() { tokio::spawn(x); }\n").unwrap();
    let found = bare_spawns(&[src]);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].ends_with("lib.rs:5: tokio::spawn(async {});"),
        "{found:#?}"
    );
    assert!(found[1].contains("runner/mod.rs:2:"), "{found:#?}");
}
