//! Wire types stop at the edge: outside the modules listed here, no source file of the
//! controller or the agent names a protobuf type (`drover_proto::v1`). Domain code works on
//! each side's own types; the edge modules convert (`TryFrom` inward, refusing what no
//! conforming peer sends; `From` outward).

use std::path::{Path, PathBuf};

/// Crate source roots and the paths under them (a file, or a directory ending in `/`)
/// that may name wire types.
const SIDES: &[(&str, &[&str])] = &[
    (
        "controller/src",
        &[
            // The edge: every conversion, and what must fit one message.
            "wire/",
            // The gRPC services, which receive and answer wire messages.
            "server/admin.rs",
            "server/agent_control.rs",
            "server/enrollment.rs",
            "server/catch_panic.rs",
            "server/mod.rs",
            // The admin CLI, a gRPC client printing what the controller answers.
            "cli/",
        ],
    ),
    (
        "agent/src",
        &[
            // The edge: every conversion.
            "control/wire/",
            // The session with the controller and enrollment, which send and receive.
            "control/mod.rs",
            "cli/enroll.rs",
        ],
    ),
    // Job execution knows nothing of the controller.
    ("agent/job/src", &[]),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("read dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `file:line: text` of every line outside the allowed paths that names a wire type.
fn offenders(root: &Path, allowed: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    let mut out = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .replace('\\', "/");
        if allowed
            .iter()
            .any(|a| rel == *a || (a.ends_with('/') && rel.starts_with(a)))
        {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.contains("v1::") || code.contains("proto::v1") {
                out.push(format!("{}:{}: {}", f.display(), n + 1, code));
            }
        }
    }
    out
}

#[test]
fn wire_types_stop_at_the_edge() {
    let root = workspace_root();
    let mut all = Vec::new();
    for (dir, allowed) in SIDES {
        all.extend(offenders(&root.join(dir), allowed));
    }
    assert!(
        all.is_empty(),
        "wire types outside the edge modules (convert in the side's wire module instead):\n{}",
        all.join("\n")
    );
}

#[test]
fn the_check_sees_a_wire_type() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("wire")).expect("mkdir");
    std::fs::write(dir.path().join("wire/mod.rs"), "use drover_proto::v1;\n").expect("write");
    std::fs::write(
        dir.path().join("domain.rs"),
        "// v1::Heartbeat in a comment is fine\nfn f(_: &v1::Heartbeat) {}\n",
    )
    .expect("write");
    let found = offenders(dir.path(), &["wire/"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("domain.rs:2: fn f(_: &v1::Heartbeat) {}"));
}
