//! Wire types stop at the edge: outside the modules listed here, no source file of the
//! controller or the agent names a protobuf type (`drover_proto::v1`). Domain code works on
//! each side's own types; the edge modules convert (`TryFrom` inward, refusing what no
//! conforming peer sends; `From` outward). Test code and comments are not read
//! (`drover_tests::source_scan`).

use std::path::Path;

use drover_tests::source_scan::{Hit, report, scan, workspace};

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
            "server/images.rs",
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
            "control/blobs.rs",
            "cli/enroll.rs",
        ],
    ),
    // Job execution knows nothing of the controller.
    ("agent/job/src", &[]),
];

/// Every line of non-test code under `root`, outside the `allowed` paths, naming a wire type.
fn offenders(root: &Path, allowed: &[&str]) -> Vec<Hit> {
    scan(root, allowed, |code| {
        code.contains("v1::") || code.contains("proto::v1")
    })
}

#[test]
fn wire_types_stop_at_the_edge() {
    let root = workspace();
    let mut all = Vec::new();
    for (dir, allowed) in SIDES {
        all.extend(offenders(&root.join(dir), allowed));
    }
    assert!(
        all.is_empty(),
        "wire types outside the edge modules (convert in the side's wire module instead):\n{}",
        report(&all)
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
    assert!(
        found[0]
            .to_string()
            .ends_with("domain.rs:2: fn f(_: &v1::Heartbeat) {}")
    );
}
