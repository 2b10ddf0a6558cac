//! Disk hygiene: keeps this agent's builds volumes and pulled images within the budget of
//! `[runners.drover_gc]` (see `drover_job::disk` for the rules and the ledger), and reports
//! the three budgets (volumes, images, local cache) to `drover-agent status`
//! (`disk.json`), heartbeats and metrics.
//!
//! When it collects: at start, after jobs end (coalesced), every [`GC_INTERVAL`], before a job when free space is below
//! the disk-low threshold (the job's trace says what was freed), when the host probe finds
//! the disk low (then the degraded reason says what was freed and what remains), and on
//! demand (`drover-agent gc`, which runs the same collection from another process; the
//! ledger is shared through its lock).

pub mod report;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use drover_job::disk::{DiskBudget, DiskHook, Ledger, required_images};
use drover_job::executor::{ConnectOptions, DockerExecutor, GcReport, GcRequest};
use drover_job::trace::TraceSink;
use drover_proto::spec::RunnerConfig;
use tokio_util::sync::CancellationToken;

use crate::health::{HostProbe, Thresholds};
use crate::metrics::Metrics;
pub use report::{CacheUsage, DiskReport};

/// How often the collector runs besides its triggers.
pub const GC_INTERVAL: Duration = Duration::from_secs(300);
/// Disk-low collections from the host probe are at most this often (the probe runs every
/// 15 s; a collection walks every volume).
pub const DISK_LOW_SPACING: Duration = Duration::from_secs(60);
/// Freed beyond the threshold when the disk is low, so the next job does not collect again.
const HEADROOM: u64 = 256 << 20;

/// Where the keeper works.
pub struct KeeperOptions {
    pub agent_id: String,
    /// `disk-ledger.json` and `disk.json` live here.
    pub state_dir: PathBuf,
    /// The executor's data dir (`cache/` below it).
    pub data_dir: PathBuf,
    /// Bound of each runner's cache store.
    pub cache_max_bytes: u64,
    pub probe: Arc<dyn HostProbe>,
    pub thresholds: Thresholds,
    pub metrics: Option<Metrics>,
    /// A connected executor (standalone); `None` connects on first use (fleet).
    pub docker: Option<DockerExecutor>,
    /// Write `disk.json` and metrics after each collection (off for `drover-agent gc`,
    /// which runs beside the agent).
    pub publish: bool,
    /// Where the runner set comes from at each collection when it is not pushed with
    /// [`DiskKeeper::set_runners`] (fleet mode reads its applied generation).
    pub runners_source: Option<Box<dyn Fn() -> Option<Vec<RunnerConfig>> + Send + Sync>>,
}

/// The collector and the budgets it reports. Cheap to clone.
#[derive(Clone)]
pub struct DiskKeeper {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskKeeper")
            .field("agent_id", &self.inner.opts.agent_id)
            .field("ledger", &self.inner.ledger.path())
            .finish_non_exhaustive()
    }
}

struct Inner {
    opts: KeeperOptions,
    ledger: Ledger,
    docker: tokio::sync::Mutex<Option<DockerExecutor>>,
    docker_root: Mutex<Option<PathBuf>>,
    runners: Mutex<Vec<RunnerConfig>>,
    report: Mutex<Option<DiskReport>>,
    last_disk_low: Mutex<Option<Instant>>,
    /// One collection at a time.
    pass: tokio::sync::Mutex<()>,
    /// A job ended: the run loop collects (requests coalesce).
    job_ended: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_rfc3339() -> String {
    crate::inflight::now_rfc3339()
}

impl DiskKeeper {
    pub fn new(mut opts: KeeperOptions) -> Self {
        let docker = opts.docker.take();
        DiskKeeper {
            inner: Arc::new(Inner {
                ledger: Ledger::in_state_dir(&opts.state_dir),
                opts,
                docker: tokio::sync::Mutex::new(docker),
                docker_root: Mutex::new(None),
                runners: Mutex::new(Vec::new()),
                report: Mutex::new(None),
                last_disk_low: Mutex::new(None),
                pass: tokio::sync::Mutex::new(()),
                job_ended: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The ledger jobs record their uses in (give it to the executor).
    pub fn ledger(&self) -> Ledger {
        self.inner.ledger.clone()
    }

    /// The runners whose `[runners.drover_gc]` and required images apply from now on.
    pub fn set_runners(&self, runners: &[RunnerConfig]) {
        *lock(&self.inner.runners) = runners.to_vec();
    }

    fn runners(&self) -> Vec<RunnerConfig> {
        if let Some(src) = &self.inner.opts.runners_source
            && let Some(r) = src()
        {
            return r;
        }
        lock(&self.inner.runners).clone()
    }

    /// The budget in force.
    pub fn budget(&self) -> DiskBudget {
        DiskBudget::from_runners(&self.runners())
    }

    /// The budgets as of the last collection.
    pub fn report(&self) -> Option<DiskReport> {
        lock(&self.inner.report).clone()
    }

    async fn docker(&self) -> anyhow::Result<DockerExecutor> {
        let mut d = self.inner.docker.lock().await;
        if let Some(d) = d.as_ref() {
            return Ok(d.clone());
        }
        let e = DockerExecutor::connect(ConnectOptions::default())
            .await
            .context("connect to the docker engine")?;
        *d = Some(e.clone());
        Ok(e)
    }

    /// Bytes to free so every disk (Docker root, data dir) is back above the disk-low
    /// threshold, plus a margin; 0 when none is low.
    pub fn need_bytes(&self) -> u64 {
        let root = lock(&self.inner.docker_root).clone();
        let t = &self.inner.opts.thresholds;
        let mut need = 0u64;
        let dirs = [root, Some(self.inner.opts.data_dir.clone())];
        for dir in dirs.iter().flatten() {
            let probe_at = existing_ancestor(dir);
            let Ok(d) = self.inner.opts.probe.disk(&probe_at) else {
                continue;
            };
            let by_ratio = (d.total_bytes as f64 * t.min_disk_free_ratio) as u64;
            let floor = t.min_disk_free_bytes.max(by_ratio);
            if d.free_bytes < floor {
                need = need.max(floor - d.free_bytes + HEADROOM);
            }
        }
        need
    }

    /// One collection. `trigger` says why (`start`, `periodic`, `before-job`, `disk-low`,
    /// `manual`). A dry run removes nothing and changes no file.
    pub async fn collect(
        &self,
        trigger: &str,
        need_bytes: u64,
        dry_run: bool,
    ) -> anyhow::Result<GcReport> {
        let _one = self.inner.pass.lock().await;
        let docker = self.docker().await?;
        if lock(&self.inner.docker_root).is_none()
            && let Ok(info) = docker.ping().await
        {
            *lock(&self.inner.docker_root) = Some(info.root_dir);
        }
        let runners = self.runners();
        let required = required_images(&runners);
        let req = GcRequest {
            agent_id: &self.inner.opts.agent_id,
            budget: DiskBudget::from_runners(&runners),
            required_images: &required,
            need_bytes,
            dry_run,
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        let r = docker
            .collect_garbage(&self.inner.ledger, &req)
            .await
            .context("disk collection")?;
        if dry_run || !self.inner.opts.publish {
            return Ok(r);
        }
        for x in &r.removed {
            tracing::info!(
                kind = x.kind.as_str(),
                name = %x.name,
                bytes = x.bytes,
                why = %x.why,
                trigger,
                "disk collector removed"
            );
        }
        for e in &r.errors {
            tracing::warn!(error = %e, "disk collector");
        }
        let cache = CacheUsage {
            bytes: dir_size(&drover_job::cache::default_cache_root(
                &self.inner.opts.data_dir,
            )),
            max_bytes_per_runner: self.inner.opts.cache_max_bytes,
            runners: runners.len() as u64,
        };
        let report = {
            let mut g = lock(&self.inner.report);
            let mut rep = g.clone().unwrap_or_default();
            rep.collected(&r, trigger, now_rfc3339());
            rep.cache = cache;
            *g = Some(rep.clone());
            rep
        };
        if let Some(m) = &self.inner.opts.metrics {
            m.set_disk(&report, &r);
        }
        if let Err(e) = report::write(&report::disk_file(&self.inner.opts.state_dir), &report) {
            tracing::warn!(error = %e, "write disk.json");
        }
        Ok(r)
    }

    /// The host probe found a disk low: collect (at most every [`DISK_LOW_SPACING`]).
    /// Returns what was freed, when a collection ran.
    pub async fn on_disk_low(&self) -> Option<GcReport> {
        {
            let mut last = lock(&self.inner.last_disk_low);
            if last.is_some_and(|t| t.elapsed() < DISK_LOW_SPACING) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let need = self.need_bytes();
        match self.collect("disk-low", need, false).await {
            Ok(r) => {
                tracing::warn!(
                    freed = r.freed_bytes,
                    removed = r.removed.len(),
                    "disk low: collected"
                );
                Some(r)
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "disk low: collection failed");
                None
            }
        }
    }

    /// Collects at start, after jobs end (coalesced), and every `every`, until `stop`.
    pub async fn run(self, every: Duration, stop: CancellationToken) {
        let mut trigger = "start";
        loop {
            let need = self.need_bytes();
            if let Err(e) = self.collect(trigger, need, false).await {
                tracing::warn!(error = %format!("{e:#}"), "disk collection failed; will retry");
            }
            trigger = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => "periodic",
                _ = self.inner.job_ended.notified() => "after-job",
            };
        }
    }
}

#[async_trait]
impl DiskHook for DiskKeeper {
    async fn before_job(&self, trace: &TraceSink) {
        let need = self.need_bytes();
        if need == 0 {
            return;
        }
        match self.collect("before-job", need, false).await {
            Ok(r) => trace.write_line(&format!(
                "\x1b[0;33mFree disk space is low: Drover's disk collector freed {} ({} removed) before this job{}\x1b[0;m",
                report::bytes(r.freed_bytes),
                r.removed.len(),
                if self.need_bytes() > 0 {
                    "; space is still low"
                } else {
                    ""
                }
            )),
            Err(e) => trace.write_line(&format!(
                "\x1b[0;33mWARNING: free disk space is low and the disk collector failed: {e:#}\x1b[0;m"
            )),
        }
    }

    fn after_job(&self) {
        // `notify_one` keeps one permit: jobs ending during a collection make one more.
        self.inner.job_ended.notify_one();
    }
}

/// `dir`, else its nearest existing ancestor (the data dir may not exist yet).
fn existing_ancestor(dir: &Path) -> PathBuf {
    let mut p = dir;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(q) => p = q,
            None => return dir.to_path_buf(),
        }
    }
}

/// Bytes of the files below `dir` (symlinks not followed; unreadable entries skipped).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total = total.saturating_add(m.len());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{DiskSpace, FakeProbe};

    fn keeper(probe: FakeProbe, data: &Path) -> DiskKeeper {
        DiskKeeper::new(KeeperOptions {
            agent_id: "a".into(),
            state_dir: data.to_path_buf(),
            data_dir: data.to_path_buf(),
            cache_max_bytes: 1 << 30,
            probe: Arc::new(probe),
            thresholds: Thresholds::default(),
            metrics: None,
            docker: None,
            runners_source: None,
            publish: true,
        })
    }

    #[test]
    fn need_is_the_deficit_below_the_threshold_plus_headroom() {
        let dir = tempfile::tempdir().unwrap();
        let gib = 1u64 << 30;
        let k = keeper(
            FakeProbe::default().with_disk(
                dir.path(),
                DiskSpace {
                    total_bytes: 32 * gib,
                    free_bytes: 10 * gib,
                },
            ),
            dir.path(),
        );
        assert_eq!(k.need_bytes(), 0);
        let k = keeper(
            FakeProbe::default().with_disk(
                dir.path(),
                DiskSpace {
                    total_bytes: 32 * gib,
                    free_bytes: gib,
                },
            ),
            dir.path(),
        );
        // Threshold 2 GiB (5 % of 32 GiB is 1.6 GiB): 1 GiB short.
        assert_eq!(k.need_bytes(), gib + HEADROOM);
    }

    #[test]
    fn the_budget_follows_the_runners_set_or_read() {
        let dir = tempfile::tempdir().unwrap();
        let k = keeper(FakeProbe::default(), dir.path());
        assert_eq!(k.budget(), DiskBudget::default());
        let r: RunnerConfig =
            toml::from_str("name = \"r\"\n[drover_gc]\nvolumes_max_size = \"1g\"\n").unwrap();
        k.set_runners(std::slice::from_ref(&r));
        assert_eq!(k.budget().volumes.max_bytes, 1 << 30);
    }

    #[test]
    fn dir_size_adds_files_below() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/x"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("y"), vec![0u8; 24]).unwrap();
        assert_eq!(dir_size(dir.path()), 1024);
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
    }
}
