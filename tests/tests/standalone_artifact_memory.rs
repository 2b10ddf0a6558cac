//! The real `drover-agent run --config` uploads artifacts holding a large file and a hard
//! link to it: the link's content is streamed from the project tar, so the agent's peak
//! memory stays far below the file's size (it read the whole file before: 1.06 GB peak for
//! an 800 MB file).

mod standalone_support;

use std::io::Read;
use std::time::Duration;

use drover_tests::fake_gitlab::JobState;
use drover_tests::procstat;
use standalone_support::start;

const MIB: u64 = 1 << 20;
/// The linked file: zeros, so the uploaded zip stays small.
const FILE_MIB: u64 = 256;
/// Peak resident memory allowed to the agent (a debug build runs at a few tens of MiB).
const PEAK_LIMIT_MIB: u64 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_linked_artifact_is_streamed() {
    let Some(e) = start("artifact-memory", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(
            e.job("big-artifact")
                .script([format!(
                    "mkdir out && dd if=/dev/zero of=out/big bs=1M count={FILE_MIB} 2>/dev/null && ln out/big out/big-link"
                )])
                .artifact_paths(["out/"]),
        )
        .id;
    let f = e.finished(id, Duration::from_secs(300)).await;
    assert_eq!(
        f.state,
        JobState::Success,
        "{}\n{}",
        f.trace_text(),
        e.agent.stderr()
    );
    let pid = e.agent.pid().expect("agent running");
    let peak = procstat::memory(pid).expect("agent memory").hwm_kib * 1024;
    eprintln!(
        "agent peak RSS {} MiB after a {FILE_MIB} MiB hard-linked artifact",
        peak / MIB
    );

    let artifacts = e.gitlab.artifacts(id);
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(artifacts[0].content.clone())).unwrap();
    let mut link = zip.by_name("out/big-link").unwrap();
    assert_eq!(link.size(), FILE_MIB * MIB);
    let mut head = [1u8; 16];
    link.read_exact(&mut head).unwrap();
    assert_eq!(head, [0u8; 16]);
    drop(link);
    assert!(
        peak < PEAK_LIMIT_MIB * MIB,
        "agent peak RSS {} MiB for a {FILE_MIB} MiB hard-linked artifact",
        peak / MIB
    );
}
