//! When a host counts as degraded. The agent logs and reports these reasons; the controller
//! calls [`degraded_reasons`] on the `HostHealth` of heartbeats (after converting it back),
//! so both sides agree.

use super::HostHealth;

/// Limits below which a host is degraded. A value that could not be read never degrades.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// A filesystem (Docker root, builds dir) with less free than this is low: 2 GiB by
    /// default, about one image pull plus a build.
    pub min_disk_free_bytes: u64,
    /// ... or with less than this fraction of its size free (0.05).
    pub min_disk_free_ratio: f64,
    /// Memory available below this is low (256 MiB).
    pub min_memory_available_bytes: u64,
    /// A clock further than this from the peer's (either way) is skewed (60 s): job token
    /// and certificate checks start failing around there.
    pub max_clock_skew_seconds: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_disk_free_bytes: 2 << 30,
            min_disk_free_ratio: 0.05,
            min_memory_available_bytes: 256 << 20,
            max_clock_skew_seconds: 60.0,
        }
    }
}

/// Why `h` is degraded under `t`, one short lower-case sentence per reason, stable order;
/// empty when healthy.
pub fn degraded_reasons(h: &HostHealth, t: &Thresholds) -> Vec<String> {
    let mut out = Vec::new();
    if h.docker.is_none() {
        out.push("docker engine unreachable".to_string());
    }
    for (what, disk) in [
        ("docker root", &h.docker_disk),
        ("builds dir", &h.builds_disk),
    ] {
        let Some(d) = disk else { continue };
        let ratio = if d.total_bytes == 0 {
            0.0
        } else {
            d.free_bytes as f64 / d.total_bytes as f64
        };
        if d.free_bytes < t.min_disk_free_bytes || ratio < t.min_disk_free_ratio {
            out.push(format!(
                "disk low on {what}: {} free of {} ({:.1}%){}",
                bytes(d.free_bytes),
                bytes(d.total_bytes),
                ratio * 100.0,
                h.disk_budgets
                    .as_ref()
                    .map(after_cleanup)
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(m) = &h.memory
        && m.available_bytes < t.min_memory_available_bytes
    {
        out.push(format!(
            "memory low: {} available of {}",
            bytes(m.available_bytes),
            bytes(m.total_bytes)
        ));
    }
    if let Some(s) = h.clock_skew_seconds
        && s.abs() > t.max_clock_skew_seconds
    {
        out.push(format!("clock skewed by {s:+.0}s"));
    }
    out
}

/// What the last collection freed and what the agent still keeps, for a disk-low reason.
fn after_cleanup(b: &super::DiskBudgets) -> String {
    format!(
        " after cleanup freed {} ({} removed); kept: volumes {} of {}, images {} of {}, cache {} of {}",
        bytes(b.last_freed_bytes),
        b.last_removed,
        bytes(b.volumes.used_bytes),
        bytes(b.volumes.max_bytes),
        bytes(b.images.used_bytes),
        bytes(b.images.max_bytes),
        bytes(b.cache.used_bytes),
        bytes(b.cache.max_bytes),
    )
}

fn bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let f = n as f64;
    if f >= GIB {
        format!("{:.1} GiB", f / GIB)
    } else {
        format!("{:.0} MiB", f / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DiskSpace, DockerStatus, Memory};
    use super::*;

    fn healthy() -> HostHealth {
        HostHealth {
            docker: Some(DockerStatus {
                version: "24.0.7".into(),
                root_dir: "/var/lib/docker".into(),
            }),
            docker_disk: Some(DiskSpace {
                total_bytes: 100 << 30,
                free_bytes: 50 << 30,
            }),
            builds_disk: Some(DiskSpace {
                total_bytes: 100 << 30,
                free_bytes: 50 << 30,
            }),
            memory: Some(Memory {
                total_bytes: 8 << 30,
                available_bytes: 4 << 30,
            }),
            load: None,
            clock_skew_seconds: Some(0.5),
            errors: vec![],
            disk_budgets: None,
        }
    }

    #[test]
    fn healthy_host_has_no_reasons() {
        assert!(degraded_reasons(&healthy(), &Thresholds::default()).is_empty());
        // Unknown values never degrade.
        let unknown = HostHealth {
            docker: healthy().docker,
            ..HostHealth::default()
        };
        assert!(degraded_reasons(&unknown, &Thresholds::default()).is_empty());
    }

    #[test]
    fn each_threshold_names_its_reason() {
        let t = Thresholds::default();
        let mut h = healthy();
        h.docker = None;
        h.builds_disk = Some(DiskSpace {
            total_bytes: 100 << 30,
            free_bytes: 1 << 30,
        });
        h.docker_disk = Some(DiskSpace {
            total_bytes: 1000 << 30,
            free_bytes: 40 << 30,
        });
        h.memory = Some(Memory {
            total_bytes: 8 << 30,
            available_bytes: 100 << 20,
        });
        h.clock_skew_seconds = Some(-90.0);
        assert_eq!(
            degraded_reasons(&h, &t),
            vec![
                "docker engine unreachable",
                "disk low on docker root: 40.0 GiB free of 1000.0 GiB (4.0%)",
                "disk low on builds dir: 1.0 GiB free of 100.0 GiB (1.0%)",
                "memory low: 100 MiB available of 8.0 GiB",
                "clock skewed by -90s",
            ]
        );
    }

    #[test]
    fn limits_are_exclusive() {
        let t = Thresholds {
            min_disk_free_bytes: 10,
            min_disk_free_ratio: 0.1,
            min_memory_available_bytes: 10,
            max_clock_skew_seconds: 5.0,
        };
        let mut h = healthy();
        h.docker_disk = Some(DiskSpace {
            total_bytes: 100,
            free_bytes: 10,
        });
        h.builds_disk = None;
        h.memory = Some(Memory {
            total_bytes: 100,
            available_bytes: 10,
        });
        h.clock_skew_seconds = Some(5.0);
        assert!(degraded_reasons(&h, &t).is_empty());
    }
}
