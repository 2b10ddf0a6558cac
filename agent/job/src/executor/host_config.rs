//! `[runners.docker]` → the build container's [`HostSpec`]: a pure mapping, every bad value
//! rejected with the key and value named.

use std::collections::HashMap;

use drover_proto::spec::DockerConfig;

use super::ExecutorError;
use super::spec::{Device, HostSpec, Ulimit, VolumeMount};

/// Maps the `[runners.docker]` keys that shape the build container. Mounts for the builds
/// directory are added by the caller.
pub fn host_config(cfg: &DockerConfig) -> Result<HostSpec, ExecutorError> {
    let (binds, mounts) = volumes(&cfg.volumes)?;
    let map = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    };
    Ok(HostSpec {
        privileged: cfg.privileged,
        binds,
        mounts,
        shm_size: match cfg.shm_size {
            Some(s) if s < 0 => {
                return Err(ExecutorError::config(
                    "shm_size",
                    s.to_string(),
                    "must not be negative",
                ));
            }
            s => s.filter(|s| *s > 0),
        },
        memory: opt_size("memory", cfg.memory.as_deref(), false)?,
        memory_swap: opt_size("memory_swap", cfg.memory_swap.as_deref(), true)?,
        memory_reservation: opt_size(
            "memory_reservation",
            cfg.memory_reservation.as_deref(),
            false,
        )?,
        nano_cpus: cfg.cpus.as_deref().map(nano_cpus).transpose()?,
        cpuset_cpus: cfg.cpuset_cpus.clone().filter(|s| !s.is_empty()),
        cpu_shares: cfg.cpu_shares,
        network_mode: cfg.network_mode.clone().filter(|s| !s.is_empty()),
        extra_hosts: cfg.extra_hosts.clone(),
        dns: cfg.dns.clone(),
        dns_search: cfg.dns_search.clone(),
        cap_add: cfg.cap_add.clone(),
        cap_drop: cfg.cap_drop.clone(),
        devices: cfg
            .devices
            .iter()
            .map(|d| device(d))
            .collect::<Result<Vec<_>, _>>()?,
        security_opt: cfg.security_opt.clone(),
        sysctls: map(&cfg.sysctls),
        oom_kill_disable: cfg.oom_kill_disable,
        tmpfs: map(&cfg.tmpfs),
        ulimits: cfg
            .ulimit
            .iter()
            .map(|(k, v)| ulimit(k, v))
            .collect::<Result<Vec<_>, _>>()?,
        userns_mode: cfg.userns_mode.clone().filter(|s| !s.is_empty()),
        runtime: cfg.runtime.clone().filter(|s| !s.is_empty()),
        ..Default::default()
    })
}

/// `host:container[:mode]` → binds; a bare container path → an anonymous volume mount.
fn volumes(vols: &[String]) -> Result<(Vec<String>, Vec<VolumeMount>), ExecutorError> {
    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    for v in vols {
        let parts: Vec<&str> = v.split(':').collect();
        match parts.as_slice() {
            [path] if path.starts_with('/') => mounts.push(VolumeMount {
                target: path.to_string(),
                ..Default::default()
            }),
            [host, target] | [host, target, _] if !host.is_empty() && target.starts_with('/') => {
                binds.push(v.clone())
            }
            _ => {
                return Err(ExecutorError::config(
                    "volumes",
                    v.clone(),
                    "expected host:container[:mode] or an absolute container path",
                ));
            }
        }
    }
    Ok((binds, mounts))
}

fn opt_size(
    key: &'static str,
    v: Option<&str>,
    allow_unlimited: bool,
) -> Result<Option<i64>, ExecutorError> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some("-1") if allow_unlimited => Ok(Some(-1)),
        Some(s) => drover_proto::spec::parse_size(s)
            .map(|n| Some(i64::try_from(n).unwrap_or(i64::MAX)))
            .map_err(|e| ExecutorError::config(key, s, e.to_string())),
    }
}

/// `cpus = "1.5"` → NanoCpus.
fn nano_cpus(s: &str) -> Result<i64, ExecutorError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| ExecutorError::config("cpus", s, "expected a number of CPUs like 1.5"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(ExecutorError::config(
            "cpus",
            s,
            "must be a positive number",
        ));
    }
    Ok((v * 1e9).round() as i64)
}

/// `/dev/x[:/dev/y[:rwm]]`.
fn device(d: &str) -> Result<Device, ExecutorError> {
    let parts: Vec<&str> = d.split(':').collect();
    let bad = |reason: &str| ExecutorError::config("devices", d, reason);
    let (host, cont, perms) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, c] if c.starts_with('/') => (*h, *c, "rwm"),
        [h, p] => (*h, *h, *p),
        [h, c, p] => (*h, *c, *p),
        _ => return Err(bad("expected /dev/host[:/dev/container[:rwm]]")),
    };
    if !host.starts_with('/') || !cont.starts_with('/') {
        return Err(bad("device paths must be absolute"));
    }
    if perms.is_empty() || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(bad("permissions must be made of r, w and m"));
    }
    Ok(Device {
        path_on_host: host.to_string(),
        path_in_container: cont.to_string(),
        permissions: perms.to_string(),
    })
}

/// `ulimit = { nofile = "1024:2048" }` (soft[:hard]).
fn ulimit(name: &str, v: &str) -> Result<Ulimit, ExecutorError> {
    let bad = || {
        ExecutorError::config(
            "ulimit",
            format!("{name}={v}"),
            "expected soft[:hard] numbers",
        )
    };
    let (soft, hard) = match v.split_once(':') {
        Some((s, h)) => (s, h),
        None => (v, v),
    };
    let soft: i64 = soft.trim().parse().map_err(|_| bad())?;
    let hard: i64 = hard.trim().parse().map_err(|_| bad())?;
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> DockerConfig {
        toml::from_str(toml_text).expect("docker config")
    }

    fn err(toml_text: &str) -> String {
        host_config(&cfg(toml_text))
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn empty_config_sets_nothing() {
        let hc = host_config(&DockerConfig::default()).expect("hc");
        assert_eq!(hc, HostSpec::default());
    }

    #[test]
    fn maps_every_key() {
        let hc = host_config(&cfg(r#"
            privileged = true
            volumes = ["/srv/cache:/cache:ro", "/data", "/a:/b"]
            shm_size = 67108864
            memory = "512m"
            memory_swap = "1g"
            memory_reservation = "256M"
            cpus = "1.5"
            cpuset_cpus = "0-1"
            cpu_shares = 512
            network_mode = "host"
            extra_hosts = ["db:10.0.0.5"]
            dns = ["1.1.1.1"]
            dns_search = ["example.internal"]
            cap_add = ["NET_ADMIN"]
            cap_drop = ["MKNOD"]
            devices = ["/dev/fuse", "/dev/kvm:/dev/kvm2:rw"]
            security_opt = ["no-new-privileges"]
            sysctls = { "net.ipv4.ip_forward" = "1" }
            oom_kill_disable = true
            tmpfs = { "/run" = "rw,size=64m" }
            ulimit = { nofile = "1024:2048", nproc = "512" }
            userns_mode = "host"
            runtime = "runc"
        "#))
        .expect("hc");
        assert_eq!(hc.privileged, Some(true));
        assert_eq!(
            hc.binds,
            vec!["/srv/cache:/cache:ro".to_string(), "/a:/b".to_string()]
        );
        let m = hc.mounts;
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].target, "/data");
        assert_eq!(m[0].volume, None);
        assert_eq!(hc.shm_size, Some(64 << 20));
        assert_eq!(hc.memory, Some(512 << 20));
        assert_eq!(hc.memory_swap, Some(1 << 30));
        assert_eq!(hc.memory_reservation, Some(256 << 20));
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(hc.cpu_shares, Some(512));
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert_eq!(hc.extra_hosts, vec!["db:10.0.0.5".to_string()]);
        assert_eq!(hc.dns, vec!["1.1.1.1".to_string()]);
        assert_eq!(hc.dns_search, vec!["example.internal".to_string()]);
        assert_eq!(hc.cap_add, vec!["NET_ADMIN".to_string()]);
        assert_eq!(hc.cap_drop, vec!["MKNOD".to_string()]);
        let d = hc.devices;
        assert_eq!(d[0].path_on_host, "/dev/fuse");
        assert_eq!(d[0].path_in_container, "/dev/fuse");
        assert_eq!(d[0].permissions, "rwm");
        assert_eq!(d[1].path_in_container, "/dev/kvm2");
        assert_eq!(d[1].permissions, "rw");
        assert_eq!(hc.security_opt, vec!["no-new-privileges".to_string()]);
        assert_eq!(hc.sysctls["net.ipv4.ip_forward"], "1");
        assert_eq!(hc.oom_kill_disable, Some(true));
        assert_eq!(hc.tmpfs["/run"], "rw,size=64m");
        let u = hc.ulimits;
        let nofile = u.iter().find(|u| u.name == "nofile").expect("nofile");
        assert_eq!((nofile.soft, nofile.hard), (1024, 2048));
        let nproc = u.iter().find(|u| u.name == "nproc").expect("nproc");
        assert_eq!((nproc.soft, nproc.hard), (512, 512));
        assert_eq!(hc.userns_mode.as_deref(), Some("host"));
        assert_eq!(hc.runtime.as_deref(), Some("runc"));
    }

    #[test]
    fn memory_swap_may_be_unlimited() {
        let hc = host_config(&cfg(r#"memory_swap = "-1""#)).expect("hc");
        assert_eq!(hc.memory_swap, Some(-1));
    }

    #[test]
    fn bad_values_name_the_key_and_value() {
        let e = err(r#"memory = "lots""#);
        assert!(e.contains("memory") && e.contains("\"lots\""), "{e}");
        let e = err(r#"memory_reservation = "5q""#);
        assert!(e.contains("memory_reservation") && e.contains("5q"), "{e}");
        let e = err(r#"cpus = "many""#);
        assert!(e.contains("cpus") && e.contains("many"), "{e}");
        let e = err(r#"cpus = "0""#);
        assert!(e.contains("cpus"), "{e}");
        let e = err(r#"devices = ["dev/fuse"]"#);
        assert!(e.contains("devices") && e.contains("dev/fuse"), "{e}");
        let e = err(r#"devices = ["/dev/fuse:/dev/f:rwx"]"#);
        assert!(e.contains("devices"), "{e}");
        let e = err(r#"ulimit = { nofile = "a:b" }"#);
        assert!(e.contains("ulimit") && e.contains("nofile=a:b"), "{e}");
        let e = err(r#"volumes = ["relative"]"#);
        assert!(e.contains("volumes") && e.contains("relative"), "{e}");
        let e = err(r#"volumes = ["/a:relative"]"#);
        assert!(e.contains("volumes"), "{e}");
        let e = err("shm_size = -1");
        assert!(e.contains("shm_size"), "{e}");
    }
}
