//! What the executor asks the engine for, in its own terms: a container to create (image,
//! command, environment, labels, the host settings it sets, network aliases) and the
//! credentials of a pull. The engine module translates these to its client's types; nothing
//! else in the crate knows them.

use std::collections::HashMap;

use secrecy::SecretString;

/// A container to create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    /// The image, by id or name.
    pub image: String,
    /// The command (`None`: the image's).
    pub cmd: Option<Vec<String>>,
    /// The entrypoint (`None`: the image's; empty: none).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value` lines.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `[runners.docker] user` (`None`: the image's).
    pub user: Option<String>,
    /// Whether the container's stdin is opened for one attach, with stdout and stderr
    /// attached and no TTY (script containers fed over stdin).
    pub stdin: bool,
    pub labels: HashMap<String, String>,
    pub host: HostSpec,
    /// Aliases on a user-defined network: `(network, aliases)`.
    pub network_aliases: Option<(String, Vec<String>)>,
}

/// The host settings of a container: the `[runners.docker]` keys that shape it, the
/// builds and per-job volumes, and its log driver. Empty lists and maps set nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSpec {
    pub privileged: Option<bool>,
    /// `host:container[:mode]` bind mounts.
    pub binds: Vec<String>,
    pub mounts: Vec<VolumeMount>,
    pub shm_size: Option<i64>,
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub memory_reservation: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpu_shares: Option<i64>,
    pub network_mode: Option<String>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub devices: Vec<Device>,
    pub security_opt: Vec<String>,
    pub sysctls: HashMap<String, String>,
    pub oom_kill_disable: Option<bool>,
    pub tmpfs: HashMap<String, String>,
    pub ulimits: Vec<Ulimit>,
    pub userns_mode: Option<String>,
    pub runtime: Option<String>,
    /// The log driver (`None`: the engine's default).
    pub log_driver: Option<String>,
}

/// A volume mounted at `target`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeMount {
    pub target: String,
    /// The volume's name; `None` is an anonymous volume.
    pub volume: Option<String>,
    /// Labels the volume gets when the engine creates it (empty: none).
    pub labels: HashMap<String, String>,
}

/// A host device made available in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path_on_host: String,
    pub path_in_container: String,
    /// cgroup permissions, made of `r`, `w` and `m`.
    pub permissions: String,
}

/// A resource limit (`nofile`, `nproc`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// Registry credentials for a pull, from the job payload.
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: SecretString,
    /// The registry as the job names it (`registry.example.com`, `https://index.docker.io/v1/`).
    pub server: String,
}
