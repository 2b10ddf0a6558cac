//! The real agent whose state dir (caches, in-flight records, tars in transit) is a small
//! tmpfs that fills up while it serves jobs, then gets its space back.
//!
//! Needs root (to mount the tmpfs): skipped with the reason printed otherwise, failed under
//! CI. Builds volumes live in Docker, not on the tmpfs: a full Docker root is not covered.

mod standalone_support;

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drover_agent::health::{DiskSpace, HostProbe, ProcProbe};
use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, JobState};
use drover_tests::scrape::{http_get, metrics_addr_in};
use drover_tests::standalone_agent::AgentOptions;
use serde_json::json;
use standalone_support::{DEFAULT_LOG, E2e, start_with};

const JOB_WAIT: Duration = Duration::from_secs(60);
/// The probe runs every 15 s: a metric follows the disk within two rounds.
const PROBE_WAIT: Duration = Duration::from_secs(40);

/// A tmpfs of `size` mounted on a fresh temp dir; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (reason printed) when not root; panics under CI, which must not skip.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        if !is_root() {
            let why = "mounting a tmpfs needs root";
            assert!(
                !drover_tests::images::in_ci(),
                "{test}: {why} (CI is set: the test must not skip)"
            );
            eprintln!("skipping {test}: {why}");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.path().display());
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn space(&self) -> DiskSpace {
        ProcProbe::default().disk(self.path()).expect("statvfs")
    }

    /// Writes `name` until the filesystem refuses (ENOSPC); returns its path.
    fn fill(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let mut f = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0x5a_u8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => panic!("fill {}: {e}", path.display()),
            }
        }
        // Partial blocks: fill byte by byte.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
        path
    }
}

/// Whether this process runs as root (`Uid:` of `/proc/self/status`, effective id second).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            Some(line.split_whitespace().nth(2)? == "0")
        })
        .unwrap_or(false)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A job that prints `job-started`, waits `pause` seconds, writes 512 KiB of random bytes
/// into `vendor/` and caches it.
fn cached_job(e: &E2e, name: &str, pause: u32) -> JobSpec {
    e.job(name)
        .script([
            "echo job-started".to_string(),
            format!("sleep {pause}"),
            "mkdir -p vendor".to_string(),
            "dd if=/dev/urandom of=vendor/blob bs=1024 count=512 2>/dev/null".to_string(),
            "echo job-script-done".to_string(),
        ])
        .cache_json(
            json!({"key": "deps", "paths": ["vendor/"], "policy": "pull-push",
            "when": "on_success", "untracked": false}),
        )
}

/// Files under `dir` (recursively) whose name starts with `.` or ends with `.tmp*`: what an
/// interrupted atomic write would leave.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in rd.flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            out.extend(temp_files(&p));
        } else if name.starts_with('.') || name.starts_with("drover-") {
            out.push(p);
        }
    }
    out
}

fn zips(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(zips(&p));
        } else if p.extension().is_some_and(|x| x == "zip") {
            out.push(p);
        }
    }
    out
}

async fn builds_free_metric(addr: &str) -> Option<u64> {
    let body = http_get(addr, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with("drover_agent_host_disk_free_bytes{disk=\"builds\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Waits until the `builds` disk metric satisfies `ok`; returns how long it took.
async fn wait_builds_free(addr: &str, ok: impl Fn(u64) -> bool, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let v = builds_free_metric(addr).await;
        if v.is_some_and(&ok) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROBE_WAIT,
            "{what}: builds disk free = {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn trace(gitlab: &FakeGitLab, id: i64) -> String {
    String::from_utf8_lossy(&gitlab.trace(id)).into_owned()
}

/// Job `id` succeeds, its script ran, and its trace has the disk-full warning.
async fn assert_full_disk_warning(e: &E2e, id: i64) {
    let f = e.finished(id, JOB_WAIT).await;
    let t = trace(&e.gitlab, id);
    assert_eq!(f.state, JobState::Success, "{t}\n{}", e.agent.stderr());
    assert!(t.contains("job-script-done"), "{t}");
    let warning = t
        .lines()
        .find(|l| l.contains("WARNING") && l.contains("No space left"))
        .unwrap_or_else(|| panic!("no disk-full warning in trace:\n{t}"));
    eprintln!("trace warning: {warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_disk_full_then_space_returns() {
    let Some(fs) = Tmpfs::mount("state_disk_full", "8m") else {
        return;
    };
    let options = AgentOptions {
        log_filter: DEFAULT_LOG.to_string(),
        args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        state_dir: Some(fs.path().to_path_buf()),
    };
    let Some(e) = start_with("diskfull", 1, "", options).await else {
        return;
    };
    let addr = {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(a) = metrics_addr_in(&e.agent.stderr()) {
                break a;
            }
            assert!(
                Instant::now() < end,
                "no metrics address:\n{}",
                e.agent.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let total = fs.space().total_bytes;
    // The probe reports the state dir's filesystem (the tmpfs), not the root disk's.
    wait_builds_free(&addr, |v| v <= total, "state dir probed").await;

    // A state file written before the disk fills.
    let state_file = fs.path().join("applied.json");
    drover_runtime::atomic_file::write(&state_file, b"{\"generation\":1}", 0o600).unwrap();

    // The disk fills while a job runs: its cache save fails with a warning in the trace;
    // the job's result stands, and its in-flight record (written before) is removed.
    let id = e.gitlab.enqueue_job(cached_job(&e, "mid", 8)).id;
    e.wait_for_tick(id, "job-started").await;
    let filler = fs.fill("filler");
    assert!(fs.space().free_bytes < 4096, "after fill: {:?}", fs.space());
    assert_full_disk_warning(&e, id).await;

    // Between jobs, the disk still full (what the first job freed, its in-flight record and
    // tars, filled too): the in-flight record cannot be written either; the error names the
    // file and the job still runs and is reported.
    let record = fs.path().join("inflight").join(format!("{id}.json"));
    let end = Instant::now() + Duration::from_secs(10);
    while record.exists() {
        assert!(Instant::now() < end, "{} never removed", record.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let filler_2 = fs.fill("filler-2");
    let id = e.gitlab.enqueue_job(cached_job(&e, "full", 0)).id;
    assert_full_disk_warning(&e, id).await;
    let log = e.agent.stderr();
    let inflight_line = log
        .lines()
        .find(|l| l.contains("in-flight record") && l.contains("No space left"))
        .unwrap_or_else(|| panic!("no in-flight record error in the log:\n{log}"));
    assert!(
        inflight_line.contains(&fs.path().display().to_string()),
        "{inflight_line}"
    );
    eprintln!("agent log: {inflight_line}");
    assert!(
        zips(fs.path()).is_empty(),
        "cache zip written on a full disk"
    );
    assert_eq!(
        temp_files(fs.path()),
        Vec::<PathBuf>::new(),
        "temp files left"
    );
    wait_builds_free(&addr, |v| v < 64 << 10, "full disk seen").await;
    // The agent says why the host is degraded (on an 8 MiB tmpfs it is below the 2 GiB
    // floor from the start; the reason names the state dir's disk).
    let log = e.agent.stderr();
    let degraded = log
        .lines()
        .find(|l| l.contains("host degraded") && l.contains("disk low on builds dir"))
        .unwrap_or_else(|| panic!("no degraded reason in the log:\n{log}"));
    eprintln!("agent log: {degraded}");

    // A state write on the full disk fails and leaves the old file whole.
    let big = vec![b'x'; 1 << 20];
    let err = drover_runtime::atomic_file::write(&state_file, &big, 0o600).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert_eq!(std::fs::read(&state_file).unwrap(), b"{\"generation\":1}");
    assert_eq!(
        temp_files(fs.path()),
        Vec::<PathBuf>::new(),
        "temp files left"
    );

    // Space returns: the next job saves its cache, the metric follows.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&filler_2).unwrap();
    let freed = Instant::now();
    let id = e.gitlab.enqueue_job(cached_job(&e, "recovered", 0)).id;
    let f = e.finished(id, JOB_WAIT).await;
    let t = trace(&e.gitlab, id);
    assert_eq!(f.state, JobState::Success, "{t}");
    assert!(!t.contains("No space left"), "{t}");
    assert_eq!(zips(fs.path()).len(), 1, "{t}");
    eprintln!(
        "figure: job after space returned finished in {:?}",
        freed.elapsed()
    );
    let seen = wait_builds_free(&addr, |v| v > 4 << 20, "space back seen").await;
    eprintln!("figure: metric saw the space back {seen:?} after the job");
    assert_eq!(
        temp_files(fs.path()),
        Vec::<PathBuf>::new(),
        "temp files left"
    );
}
