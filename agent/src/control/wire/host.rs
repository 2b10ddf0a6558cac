//! [`HostHealth`] ⇄ `drover_proto::v1::HostHealth`.
//!
//! Mapping: `disk_*` is the Docker root's filesystem, `builds_disk_*` the builds dir's; an
//! unread value goes out as 0 and a 0 total comes back as "unknown". Probe error texts and
//! the Docker root dir path stay on the agent.

use drover_proto::v1 as pb;

use crate::health::{
    BudgetUse, DiskBudgets, DiskSpace, DockerStatus, HostHealth, LoadAverage, Memory,
};

impl From<&HostHealth> for pb::HostHealth {
    fn from(h: &HostHealth) -> Self {
        let disk = |d: &Option<DiskSpace>| d.map_or((0, 0), |d| (d.free_bytes, d.total_bytes));
        let (disk_free_bytes, disk_total_bytes) = disk(&h.docker_disk);
        let (builds_disk_free_bytes, builds_disk_total_bytes) = disk(&h.builds_disk);
        pb::HostHealth {
            docker_reachable: h.docker.is_some(),
            docker_version: h
                .docker
                .as_ref()
                .map(|d| d.version.clone())
                .unwrap_or_default(),
            disk_free_bytes,
            disk_total_bytes,
            memory_available_bytes: h.memory.map_or(0, |m| m.available_bytes),
            memory_total_bytes: h.memory.map_or(0, |m| m.total_bytes),
            load1: h.load.map_or(0.0, |l| l.one),
            builds_disk_free_bytes,
            builds_disk_total_bytes,
            clock_skew_seconds: h.clock_skew_seconds.unwrap_or(0.0),
            disk_budgets: h.disk_budgets.as_ref().map(pb::DiskBudgets::from),
        }
    }
}

fn use_out(u: &BudgetUse) -> pb::DiskBudgetUse {
    pb::DiskBudgetUse {
        used_bytes: u.used_bytes,
        max_bytes: u.max_bytes,
        count: u.count,
    }
}

fn use_in(u: Option<&pb::DiskBudgetUse>) -> BudgetUse {
    u.map(|u| BudgetUse {
        used_bytes: u.used_bytes,
        max_bytes: u.max_bytes,
        count: u.count,
    })
    .unwrap_or_default()
}

impl From<&DiskBudgets> for pb::DiskBudgets {
    fn from(b: &DiskBudgets) -> Self {
        pb::DiskBudgets {
            volumes: Some(use_out(&b.volumes)),
            images: Some(use_out(&b.images)),
            cache: Some(use_out(&b.cache)),
            collected_at: super::rfc3339_out(Some(&b.collected_at)),
            last_freed_bytes: b.last_freed_bytes,
            last_removed: b.last_removed,
            agents: 0,
        }
    }
}

impl From<&pb::DiskBudgets> for DiskBudgets {
    fn from(p: &pb::DiskBudgets) -> Self {
        DiskBudgets {
            volumes: use_in(p.volumes.as_ref()),
            images: use_in(p.images.as_ref()),
            cache: use_in(p.cache.as_ref()),
            collected_at: p
                .collected_at
                .as_ref()
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default(),
            last_freed_bytes: p.last_freed_bytes,
            last_removed: p.last_removed,
        }
    }
}

/// What the controller can rebuild from a heartbeat, to run
/// [`crate::health::degraded_reasons`] on it. Only the 1-minute load travels; a zero clock skew
/// reads as "in sync".
impl From<&pb::HostHealth> for HostHealth {
    fn from(p: &pb::HostHealth) -> Self {
        let disk = |free, total| {
            (total > 0).then_some(DiskSpace {
                total_bytes: total,
                free_bytes: free,
            })
        };
        HostHealth {
            docker: p.docker_reachable.then(|| DockerStatus {
                version: p.docker_version.clone(),
                root_dir: Default::default(),
            }),
            docker_disk: disk(p.disk_free_bytes, p.disk_total_bytes),
            builds_disk: disk(p.builds_disk_free_bytes, p.builds_disk_total_bytes),
            memory: (p.memory_total_bytes > 0).then_some(Memory {
                total_bytes: p.memory_total_bytes,
                available_bytes: p.memory_available_bytes,
            }),
            load: Some(LoadAverage {
                one: p.load1,
                five: 0.0,
                fifteen: 0.0,
            }),
            clock_skew_seconds: Some(p.clock_skew_seconds),
            errors: Vec::new(),
            disk_budgets: p.disk_budgets.as_ref().map(DiskBudgets::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Thresholds, degraded_reasons};

    #[test]
    fn round_trip_keeps_what_degrades() {
        let h = HostHealth {
            docker: Some(DockerStatus {
                version: "24.0.7".into(),
                root_dir: "/var/lib/docker".into(),
            }),
            docker_disk: Some(DiskSpace {
                total_bytes: 100 << 30,
                free_bytes: 1 << 30,
            }),
            builds_disk: None,
            memory: Some(Memory {
                total_bytes: 8 << 30,
                available_bytes: 1 << 30,
            }),
            load: Some(LoadAverage {
                one: 1.5,
                five: 1.0,
                fifteen: 0.5,
            }),
            clock_skew_seconds: Some(-2.0),
            errors: vec!["read /proc/x: gone".into()],
            disk_budgets: Some(DiskBudgets {
                volumes: BudgetUse {
                    used_bytes: 3 << 30,
                    max_bytes: 4 << 30,
                    count: 7,
                },
                collected_at: "2026-01-02T03:04:05Z".into(),
                last_freed_bytes: 5 << 30,
                last_removed: 2,
                ..Default::default()
            }),
        };
        let p = pb::HostHealth::from(&h);
        assert!(p.docker_reachable);
        assert_eq!(p.docker_version, "24.0.7");
        assert_eq!(p.disk_free_bytes, 1 << 30);
        assert_eq!(p.builds_disk_total_bytes, 0);
        assert_eq!(p.load1, 1.5);
        assert_eq!(p.clock_skew_seconds, -2.0);
        let back = HostHealth::from(&p);
        assert_eq!(back.builds_disk, None);
        assert_eq!(back.docker_disk, h.docker_disk);
        assert_eq!(back.disk_budgets, h.disk_budgets);
        let t = Thresholds::default();
        assert_eq!(degraded_reasons(&back, &t), degraded_reasons(&h, &t));
        let low = degraded_reasons(&h, &t);
        assert!(
            low[0].contains(
                "after cleanup freed 5.0 GiB (2 removed); kept: volumes 3.0 GiB of 4.0 GiB"
            ),
            "{low:?}"
        );

        let down = pb::HostHealth::from(&HostHealth::default());
        assert!(!down.docker_reachable);
        assert!(HostHealth::from(&down).docker.is_none());
    }
}
