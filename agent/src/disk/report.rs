//! What the agent shows of its disk budgets: `<state dir>/disk.json` (read by
//! `drover-agent status`), heartbeats (the `HostHealth` disk part) and metrics.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use drover_job::executor::{GcReport, KindUsage};

/// Use and bound of the local cache dir (each runner's store evicts by size on its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheUsage {
    pub bytes: u64,
    /// The bound of each runner's store.
    pub max_bytes_per_runner: u64,
    pub runners: u64,
}

impl CacheUsage {
    /// The bound of the whole cache dir.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes_per_runner
            .saturating_mul(self.runners.max(1))
    }
}

/// The agent's disk budgets as of the last collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    /// The agent process (to tell a stale file).
    pub pid: u32,
    /// When the last collection ran (RFC 3339).
    pub collected_at: String,
    /// What started it: `start`, `periodic`, `before-job`, `disk-low`.
    pub trigger: String,
    /// Builds volumes.
    pub volumes: KindUsage,
    /// Images the agent pulled (and foreign ones when opted in).
    pub images: KindUsage,
    pub cache: CacheUsage,
    /// What the last collection freed, and how many objects it removed.
    pub last_freed_bytes: u64,
    pub last_removed: u64,
    /// Since the agent started.
    pub freed_total_bytes: u64,
    pub removed_total: u64,
    /// Why the last collection failed, or what it could not remove.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl DiskReport {
    /// Folds a collection into the report.
    pub fn collected(&mut self, r: &GcReport, trigger: &str, at: String) {
        self.pid = std::process::id();
        self.collected_at = at;
        self.trigger = trigger.to_string();
        self.volumes = r.volumes.clone();
        self.images = r.images.clone();
        self.last_freed_bytes = r.freed_bytes;
        self.last_removed = r.removed.len() as u64;
        self.freed_total_bytes = self.freed_total_bytes.saturating_add(r.freed_bytes);
        self.removed_total = self.removed_total.saturating_add(r.removed.len() as u64);
        self.errors = r.errors.clone();
    }
}

/// `<state dir>/disk.json`.
pub fn disk_file(state_dir: &Path) -> PathBuf {
    state_dir.join("disk.json")
}

/// Writes `report` atomically (0644: it holds no secret).
pub fn write(path: &Path, report: &DiskReport) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    drover_runtime::atomic_file::write(path, &bytes, 0o644)
}

/// Reads `<state dir>/disk.json` (`None` when absent).
pub fn read(state_dir: &Path) -> anyhow::Result<Option<DiskReport>> {
    use anyhow::Context;
    let path = disk_file(state_dir);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parse {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Bytes as people read them (`1.5 GiB`, `300 MiB`).
pub fn bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let f = n as f64;
    if f >= GIB {
        format!("{:.1} GiB", f / GIB)
    } else {
        format!("{:.0} MiB", f / MIB)
    }
}

/// The lines `drover-agent status` and `drover-agent gc` print for the budgets.
pub fn render(r: &DiskReport) -> String {
    let kind = |name: &str, u: &KindUsage| {
        format!(
            "  {name:<8} {} of {} ({} kept, {} in use or required{})\n",
            bytes(u.bytes),
            bytes(u.max_bytes),
            u.count,
            u.protected,
            if u.max_idle_secs > 0 {
                format!(", idle limit {}h", u.max_idle_secs / 3600)
            } else {
                String::new()
            }
        )
    };
    let mut out = String::from("disk budgets:\n");
    out.push_str(&kind("volumes", &r.volumes));
    out.push_str(&kind("images", &r.images));
    out.push_str(&format!(
        "  {:<8} {} of {} ({} per runner)\n",
        "cache",
        bytes(r.cache.bytes),
        bytes(r.cache.max_bytes()),
        bytes(r.cache.max_bytes_per_runner)
    ));
    out.push_str(&format!(
        "  last collection {} ({}): freed {} ({} removed); {} freed since start\n",
        r.collected_at,
        r.trigger,
        bytes(r.last_freed_bytes),
        r.last_removed,
        bytes(r.freed_total_bytes)
    ));
    for e in &r.errors {
        out.push_str(&format!("  error: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_job::disk::ItemKind;
    use drover_job::executor::Removed;

    #[test]
    fn a_collection_folds_into_the_report_and_renders_every_budget() {
        let mut r = DiskReport::default();
        let gc = GcReport {
            dry_run: false,
            removed: vec![Removed {
                kind: ItemKind::Volume,
                name: "runner-x-project-1-concurrent-0-cache-ab".into(),
                bytes: 1 << 30,
                why: "over budget".into(),
            }],
            freed_bytes: 1 << 30,
            volumes: KindUsage {
                count: 2,
                bytes: 3 << 30,
                max_bytes: 4 << 30,
                max_idle_secs: 7 * 86400,
                protected: 1,
            },
            images: KindUsage::default(),
            errors: vec![],
        };
        r.collected(&gc, "after-job", "2026-12-05T10:00:00Z".into());
        r.collected(&gc, "periodic", "2026-12-05T10:05:00Z".into());
        r.cache = CacheUsage {
            bytes: 512 << 20,
            max_bytes_per_runner: 5 << 30,
            runners: 2,
        };
        assert_eq!(r.freed_total_bytes, 2 << 30);
        assert_eq!(r.removed_total, 2);
        let text = render(&r);
        assert!(
            text.contains(
                "volumes  3.0 GiB of 4.0 GiB (2 kept, 1 in use or required, idle limit 168h)"
            ),
            "{text}"
        );
        assert!(
            text.contains("cache    512 MiB of 10.0 GiB (5.0 GiB per runner)"),
            "{text}"
        );
        assert!(
            text.contains("last collection 2026-12-05T10:05:00Z (periodic): freed 1.0 GiB (1 removed); 2.0 GiB freed since start"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        write(&disk_file(dir.path()), &r).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(r));
        assert_eq!(read(&dir.path().join("none")).unwrap(), None);
    }
}
