//! `config.toml` top level and `[[runners]]` tables.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{CacheConfig, DiskGcConfig, DockerConfig, GoDuration};

/// A gitlab-runner `config.toml` (standalone mode) or a Drover runner spec file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// Upper bound of jobs running at once across all runners (gitlab-runner default 1).
    pub concurrent: Option<u32>,
    /// Seconds between job requests when GitLab does not long-poll (default 3).
    pub check_interval: Option<u64>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// Prometheus metrics address (`host:port`).
    pub listen_address: Option<String>,
    /// Seconds to wait for jobs on graceful shutdown.
    pub shutdown_timeout: Option<u64>,
    pub session_server: Option<SessionServer>,
    pub runners: Vec<RunnerConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SessionServer {
    pub listen_address: Option<String>,
    pub advertise_address: Option<String>,
    pub session_timeout: Option<u64>,
}

/// One `[[runners]]` table.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RunnerConfig {
    pub name: String,
    /// GitLab base URL, e.g. `https://gitlab.example.com`.
    pub url: String,
    /// Runner authentication token (`glrt-...`) used as is.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_secret")]
    pub token: Option<SecretString>,
    /// Legacy registration token (spec files only; held by the controller).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_secret")]
    pub registration_token: Option<SecretString>,
    /// Drover (spec files only; held by the controller): a GitLab access token with the
    /// `create_runner` scope. The controller creates one runner per agent with
    /// `POST /user/runners` and deletes retired ones by id (even when their own token is
    /// dead).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_secret")]
    pub runner_creation_token: Option<SecretString>,
    /// With `runner_creation_token`: `instance_type` (default), `group_type` (needs
    /// `group_id`) or `project_type` (needs `project_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<i64>,
    /// Token expiry as written by gitlab-runner (`token_expires_at`, a TOML datetime or a
    /// string; gitlab-runner writes `0001-01-01T00:00:00Z` for "never").
    #[serde(deserialize_with = "string_or_datetime")]
    pub token_expires_at: Option<String>,
    #[serde(deserialize_with = "string_or_datetime")]
    pub token_obtained_at: Option<String>,
    pub id: Option<i64>,
    pub executor: String,
    /// Max jobs this runner runs at once (0 = no limit besides `concurrent`).
    pub limit: Option<u32>,
    /// Job requests in flight at once for this runner (gitlab-runner default 1).
    pub request_concurrency: Option<u32>,
    /// Failed job requests in a row after which the runner pauses (gitlab-runner default 3;
    /// Drover pauses only when this or `unhealthy_interval` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_requests_limit: Option<u32>,
    /// How long such a pause lasts (gitlab-runner default `"1h"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_interval: Option<GoDuration>,
    /// Max trace size in KiB (gitlab-runner default 4096).
    pub output_limit: Option<u64>,
    /// Extra job variables, `KEY=value`.
    pub environment: Vec<String>,
    pub pre_build_script: Option<String>,
    pub post_build_script: Option<String>,
    pub pre_get_sources_script: Option<String>,
    pub builds_dir: Option<String>,
    pub cache_dir: Option<String>,
    pub clone_url: Option<String>,
    #[serde(rename = "tls-ca-file")]
    pub tls_ca_file: Option<String>,
    pub shell: Option<String>,
    /// `gitlab-runner register` options (spec files).
    pub tag_list: Vec<String>,
    pub run_untagged: Option<bool>,
    pub locked: Option<bool>,
    pub access_level: Option<String>,
    pub maximum_timeout: Option<u64>,
    pub paused: Option<bool>,
    pub description: Option<String>,
    pub maintenance_note: Option<String>,
    pub custom_build_dir: Option<toml::Table>,
    pub cache: Option<CacheConfig>,
    pub docker: Option<DockerConfig>,
    /// Drover: `[runners.drover_gc]`, the disk budget of builds volumes and pulled images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drover_gc: Option<DiskGcConfig>,
    /// Drover: `[runners.drover_images]`, images checked before a generation is
    /// acknowledged and kept by the disk collector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drover_images: Option<super::DroverImagesConfig>,
    /// Drover: label selector for the agents that run this runner (spec files).
    pub selector: BTreeMap<String, String>,
    /// Feature flags, `FF_*` = bool.
    pub feature_flags: BTreeMap<String, bool>,
}

pub(super) fn ser_secret<S: serde::Serializer>(
    v: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    match v {
        Some(t) => s.serialize_str(t.expose_secret()),
        None => s.serialize_none(),
    }
}

/// gitlab-runner writes times as TOML datetimes; people write strings. Both become RFC 3339
/// text.
fn string_or_datetime<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<toml::Value>::deserialize(d)? {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(toml::Value::Datetime(t)) => Ok(Some(t.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a date-time, found {}",
            other.type_str()
        ))),
    }
}
