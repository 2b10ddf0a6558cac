//! Host health: what the agent reports about its box besides the runners (Docker, disk,
//! memory, load, clock skew).
//!
//! - [`probe`]: the [`HostProbe`] seam (`/proc/meminfo`, `/proc/loadavg`, `statvfs`) and its
//!   fake.
//! - [`skew`]: [`ClockSkew`], fed with the `Date` header of controller/GitLab answers.
//! - [`thresholds`]: [`Thresholds`] and [`degraded_reasons`], the one place that decides
//!   when a host is degraded (the controller calls the same function on heartbeats).
//! - The conversion to and from the wire is `crate::control::wire::host`.
//!
//! Invariant: nothing here talks to Docker; the caller passes what
//! [`drover_job::executor::DockerExecutor::ping`] returned.

pub mod probe;
pub mod skew;
pub mod thresholds;

use std::path::PathBuf;

pub use probe::{DiskSpace, FakeProbe, HostProbe, LoadAverage, Memory, ProbeError, ProcProbe};
pub use skew::ClockSkew;
pub use thresholds::{Thresholds, degraded_reasons};

/// The Docker engine as the last ping saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerStatus {
    /// Engine version (`24.0.7`).
    pub version: String,
    /// `DockerRootDir` of `docker info` (`/var/lib/docker`): its filesystem holds images and
    /// volumes, so its free space is what jobs run out of.
    pub root_dir: PathBuf,
}

/// One health snapshot of this host. `None` fields could not be read (the reason is in
/// [`HostHealth::errors`]), which is different from a zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostHealth {
    /// `None` when the engine did not answer the last ping.
    pub docker: Option<DockerStatus>,
    /// Filesystem of the Docker root dir.
    pub docker_disk: Option<DiskSpace>,
    /// Filesystem of the agent's builds/cache dir.
    pub builds_disk: Option<DiskSpace>,
    pub memory: Option<Memory>,
    pub load: Option<LoadAverage>,
    /// Local clock minus the peer's clock, in seconds; `None` before any peer answered.
    pub clock_skew_seconds: Option<f64>,
    /// Why a probe failed (`read /proc/meminfo: ...`), for logs and `last_error`.
    pub errors: Vec<String>,
    /// What the agent keeps between jobs against its budgets, as of the last collection
    /// (`None` before the first).
    pub disk_budgets: Option<DiskBudgets>,
}

/// Use of one budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetUse {
    pub used_bytes: u64,
    pub max_bytes: u64,
    /// Objects counted (volumes, images; 0 for the cache dir).
    pub count: u64,
}

/// The three disk budgets (builds volumes, pulled images, local cache) and the last
/// collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskBudgets {
    pub volumes: BudgetUse,
    pub images: BudgetUse,
    pub cache: BudgetUse,
    /// When the last collection ran (RFC 3339).
    pub collected_at: String,
    pub last_freed_bytes: u64,
    pub last_removed: u64,
}

impl DiskBudgets {
    /// From the keeper's report.
    pub fn from_report(r: &crate::disk::DiskReport) -> Self {
        DiskBudgets {
            volumes: BudgetUse {
                used_bytes: r.volumes.bytes,
                max_bytes: r.volumes.max_bytes,
                count: r.volumes.count,
            },
            images: BudgetUse {
                used_bytes: r.images.bytes,
                max_bytes: r.images.max_bytes,
                count: r.images.count,
            },
            cache: BudgetUse {
                used_bytes: r.cache.bytes,
                max_bytes: r.cache.max_bytes(),
                count: 0,
            },
            collected_at: r.collected_at.clone(),
            last_freed_bytes: r.last_freed_bytes,
            last_removed: r.last_removed,
        }
    }
}

/// What [`collect`] needs to know about this host.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    /// The agent's builds/cache dir.
    pub builds_dir: Option<PathBuf>,
}

/// Takes a snapshot: memory, load and the two filesystems through `probe`; `docker` and
/// `skew` as the caller last saw them.
pub fn collect(
    probe: &dyn HostProbe,
    docker: Option<DockerStatus>,
    skew: &ClockSkew,
    opts: &CollectOptions,
) -> HostHealth {
    let mut errors = Vec::new();
    let memory = keep(&mut errors, probe.memory());
    let load = keep(&mut errors, probe.load());
    let docker_disk = match &docker {
        Some(d) => keep(&mut errors, probe.disk(&d.root_dir)),
        None => None,
    };
    let builds_disk = match opts.builds_dir.as_deref() {
        Some(p) => keep(&mut errors, probe.disk(p)),
        None => None,
    };
    HostHealth {
        docker,
        docker_disk,
        builds_disk,
        memory,
        load,
        clock_skew_seconds: skew.estimate_seconds(),
        errors,
        disk_budgets: None,
    }
}

fn keep<T>(errors: &mut Vec<String>, r: Result<T, ProbeError>) -> Option<T> {
    r.map_err(|e| errors.push(e.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_reads_every_probe_and_keeps_errors() {
        let probe = FakeProbe::default()
            .with_memory(Memory {
                total_bytes: 8 << 30,
                available_bytes: 2 << 30,
            })
            .with_disk(
                "/var/lib/docker",
                DiskSpace {
                    total_bytes: 100,
                    free_bytes: 40,
                },
            );
        let docker = DockerStatus {
            version: "24.0.7".into(),
            root_dir: "/var/lib/docker".into(),
        };
        let h = collect(
            &probe,
            Some(docker.clone()),
            &ClockSkew::default(),
            &CollectOptions {
                builds_dir: Some("/srv/builds".into()),
            },
        );
        assert_eq!(h.docker, Some(docker));
        assert_eq!(h.docker_disk.map(|d| d.free_bytes), Some(40));
        assert_eq!(h.memory.map(|m| m.available_bytes), Some(2 << 30));
        assert_eq!(h.builds_disk, None);
        assert_eq!(h.load, None);
        assert_eq!(h.clock_skew_seconds, None);
        assert_eq!(h.errors.len(), 2, "{:?}", h.errors);
        assert!(h.errors.iter().any(|e| e.contains("/srv/builds")));
    }
}
