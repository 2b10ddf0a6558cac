//! [`HostHealth`] ⇄ `drover_proto::v1::HostHealth`.
//!
//! Mapping: `disk_*` is the Docker root's filesystem, `builds_disk_*` the builds dir's; an
//! unread value goes out as 0 and a 0 total comes back as "unknown". Probe error texts and
//! the Docker root dir path stay on the agent.

use drover_proto::v1 as pb;

use crate::health::{DiskSpace, DockerStatus, HostHealth, LoadAverage, Memory};

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
        let t = Thresholds::default();
        assert_eq!(degraded_reasons(&back, &t), degraded_reasons(&h, &t));

        let down = pb::HostHealth::from(&HostHealth::default());
        assert!(!down.docker_reachable);
        assert!(HostHealth::from(&down).docker.is_none());
    }
}
