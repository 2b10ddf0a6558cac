//! Structure rules read from the source, where the compiler cannot hold them (the scan:
//! `drover_tests::source_scan`, which skips test code and comments).
//!
//! - No bare `tokio::spawn` in `agent/src` and `controller/src`: every task of the agent
//!   goes on its shutdown tree's tracker (`agent/src/shutdown.rs`), every task of the
//!   controller on `drover serve`'s `TaskTracker`, so a stop waits for all of them.
//! - Only the job crate's engine module (`agent/job/src/executor/engine/`) names bollard:
//!   everything else in the crate speaks the executor's own types, so the runtime behind
//!   `ContainerApi` can change without touching the job flow.

use std::path::Path;

use drover_tests::source_scan::{Hit, report, rust_file_count, scan, workspace};

/// What a task may not be started with.
const BARE_SPAWNS: &[&str] = &["tokio::spawn(", "tokio::task::spawn("];

/// Every bare spawn in the non-test code under `root`.
fn bare_spawns(root: &Path) -> Vec<Hit> {
    scan(root, &[], |code| {
        BARE_SPAWNS.iter().any(|p| code.contains(p))
    })
}

#[test]
fn no_bare_tokio_spawn_outside_tests() {
    let ws = workspace();
    assert!(
        rust_file_count(&ws.join("agent/src")) > 50,
        "the agent's sources are read"
    );
    let mut found = bare_spawns(&ws.join("agent/src"));
    found.extend(bare_spawns(&ws.join("controller/src")));
    assert!(
        found.is_empty(),
        "tasks must go on a TaskTracker (agent: crate::shutdown::Tasks):\n{}",
        report(&found)
    );
}

/// The scan finds a spawn and skips test code and comments: it can fail.
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
    let found: Vec<String> = bare_spawns(&src).iter().map(Hit::to_string).collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].ends_with("lib.rs:5: tokio::spawn(async {});"),
        "{found:#?}"
    );
    assert!(found[1].contains("runner/mod.rs:2:"), "{found:#?}");
}

/// The module of the job crate allowed to name bollard, below its `src/`.
const ENGINE_MODULE: &str = "executor/engine/";

/// Every line of the job crate's non-test code outside the engine module naming bollard.
fn bollard_outside_engine(src: &Path) -> Vec<Hit> {
    scan(src, &[ENGINE_MODULE], |code| {
        code.contains("bollard::") || code.trim_start().starts_with("use bollard")
    })
}

#[test]
fn bollard_is_named_only_in_the_engine_module() {
    let src = workspace().join("agent/job/src");
    assert!(src.join(ENGINE_MODULE).is_dir(), "engine module moved?");
    let found = bollard_outside_engine(&src);
    assert!(
        found.is_empty(),
        "bollard named outside agent/job/src/{ENGINE_MODULE}:\n{}",
        report(&found)
    );
}

/// The bollard scan finds a path outside the engine module: it can fail.
#[test]
fn a_bollard_path_outside_the_engine_module_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join(ENGINE_MODULE)).unwrap();
    std::fs::write(
        src.join(ENGINE_MODULE).join("mod.rs"),
        "use bollard::Docker;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("executor/api.rs"),
        "// bollard::Docker in a comment\nfn f(_: bollard::models::HostConfig) {}\n",
    )
    .unwrap();
    std::fs::write(src.join("lib.rs"), "use bollard as b;\n").unwrap();
    let found: Vec<String> = bollard_outside_engine(src)
        .iter()
        .map(|h| {
            let rel = h.path.strip_prefix(src).unwrap().display();
            format!("{rel}:{}: {}", h.line, h.text)
        })
        .collect();
    assert_eq!(
        found,
        vec![
            "executor/api.rs:2: fn f(_: bollard::models::HostConfig) {}".to_string(),
            "lib.rs:1: use bollard as b;".to_string(),
        ]
    );
}
