//! Only the executor's engine module (`src/executor/engine/`) names bollard: everything
//! else in the crate speaks the executor's own types, so the runtime behind
//! `ContainerApi` can change without touching the job flow.

use std::path::{Path, PathBuf};

/// The module allowed to name bollard, relative to `src/`.
const ENGINE_MODULE: &str = "executor/engine";

/// Rust files below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read source dir") {
            let path = entry.expect("dir entry").path();
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

/// `file:line` of every line outside the engine module that names a bollard path.
fn offenders(src: &Path) -> Vec<String> {
    let engine = src.join(ENGINE_MODULE);
    let mut found = Vec::new();
    for file in rust_files(src) {
        if file.starts_with(&engine) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source file");
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.contains("bollard::") || code.starts_with("use bollard") {
                let rel = file.strip_prefix(src).unwrap_or(&file);
                found.push(format!("{}:{}: {}", rel.display(), i + 1, code));
            }
        }
    }
    found
}

#[test]
fn bollard_is_named_only_in_the_engine_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert!(src.join(ENGINE_MODULE).is_dir(), "engine module moved?");
    let found = offenders(&src);
    assert!(
        found.is_empty(),
        "bollard named outside src/{ENGINE_MODULE}:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_bollard_path_outside_the_engine_module_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join(ENGINE_MODULE)).expect("engine dir");
    std::fs::create_dir_all(src.join("executor")).expect("executor dir");
    std::fs::write(
        src.join(ENGINE_MODULE).join("mod.rs"),
        "use bollard::Docker;\n",
    )
    .expect("write");
    std::fs::write(
        src.join("executor/api.rs"),
        "// fine\nfn f(_: bollard::models::HostConfig) {}\n",
    )
    .expect("write");
    std::fs::write(src.join("lib.rs"), "use bollard as b;\n").expect("write");
    assert_eq!(
        offenders(src),
        vec![
            "executor/api.rs:2: fn f(_: bollard::models::HostConfig) {}".to_string(),
            "lib.rs:1: use bollard as b;".to_string(),
        ]
    );
}
