//! `[runners.docker]`: exactly gitlab-runner's keys.

use serde::{Deserialize, Serialize};

/// `[runners.docker]` settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DockerConfig {
    pub host: Option<String>,
    pub tls_verify: Option<bool>,
    pub tls_cert_path: Option<String>,
    /// Default image when the job names none.
    pub image: Option<String>,
    pub privileged: Option<bool>,
    pub services_privileged: Option<bool>,
    pub disable_entrypoint_overwrite: Option<bool>,
    pub oom_kill_disable: Option<bool>,
    pub disable_cache: Option<bool>,
    /// `host:container[:mode]` binds or bare container paths (anonymous volumes).
    pub volumes: Vec<String>,
    /// Bytes.
    pub shm_size: Option<i64>,
    pub pull_policy: Option<PullPolicyList>,
    pub allowed_pull_policies: Vec<PullPolicy>,
    pub allowed_images: Vec<String>,
    pub allowed_services: Vec<String>,
    pub cache_dir: Option<String>,
    pub network_mode: Option<String>,
    /// e.g. `512m`, `2g`.
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub memory_reservation: Option<String>,
    /// e.g. `1.5`.
    pub cpus: Option<String>,
    pub cpuset_cpus: Option<String>,
    pub cpu_shares: Option<i64>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub devices: Vec<String>,
    pub security_opt: Vec<String>,
    pub sysctls: std::collections::BTreeMap<String, String>,
    pub helper_image: Option<String>,
    /// Seconds (gitlab-runner default 30).
    pub wait_for_services_timeout: Option<i64>,
    pub user: Option<String>,
    pub userns_mode: Option<String>,
    pub links: Vec<String>,
    pub services: Vec<toml::Table>,
    pub tmpfs: std::collections::BTreeMap<String, String>,
    pub services_tmpfs: std::collections::BTreeMap<String, String>,
    pub network_mtu: Option<u32>,
    pub runtime: Option<String>,
    pub ulimit: std::collections::BTreeMap<String, String>,
}

/// One pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Every accepted value, as written in `config.toml`.
    pub const ALLOWED: &'static [&'static str] = &["always", "if-not-present", "never"];

    /// The `config.toml` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        }
    }
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(PullPolicy::Always),
            "if-not-present" => Ok(PullPolicy::IfNotPresent),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown pull policy {other:?}, expected one of: {}",
                PullPolicy::ALLOWED.join(", ")
            )),
        }
    }
}

impl<'de> Deserialize<'de> for PullPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `pull_policy`: a string or a list, as gitlab-runner accepts ("try in order").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PullPolicyList {
    One(PullPolicy),
    Many(Vec<PullPolicy>),
}

impl<'de> Deserialize<'de> for PullPolicyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PullPolicyList;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "a pull policy or a list of them ({})",
                    PullPolicy::ALLOWED.join(", ")
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map(PullPolicyList::One).map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(p) = seq.next_element::<PullPolicy>()? {
                    out.push(p);
                }
                Ok(PullPolicyList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl PullPolicyList {
    /// The policies in order; gitlab-runner's default is `always`.
    pub fn policies(&self) -> Vec<PullPolicy> {
        match self {
            PullPolicyList::One(p) => vec![*p],
            PullPolicyList::Many(v) => v.clone(),
        }
    }
}
