//! The features this agent declares to GitLab in `info.features` (`POST /jobs/request`,
//! `POST /runners`). GitLab withholds jobs that need a feature the runner does not declare
//! (e.g. merge-request pipelines need `refspecs`), and a declared feature is a promise: declare
//! only what is implemented, and add a name here in the same change that implements it.
//!
//! Which module honours each feature:
//!
//! | feature | implemented by |
//! |---|---|
//! | `variables` | `executor` (job variables into the build environment) |
//! | `image` | `executor` (job image, runner default when null) |
//! | `services` | `executor::services` (service containers on the per-job network) |
//! | `artifacts` | `artifacts` (archives, dependencies) + `executor` (moves tars) + `gitlab::client` (upload/download) |
//! | `cache` | `cache` (zip store on the agent's disk) + `executor` (moves tars) |
//! | `upload_multiple_artifacts` | `artifacts::upload` (one upload per `artifacts[]` entry) |
//! | `upload_raw_artifacts` | `gitlab::client` (`artifact_format=raw`) |
//! | `refspecs` | `sources` (git fetch with `git_info.refspecs`) |
//! | `masking` | `trace` (masked values become `[MASKED]`) |
//! | `raw_variables` | `executor` (`raw: true` skips `$VAR` expansion) |
//! | `artifacts_exclude` | `artifacts` (`artifacts[].exclude`) |
//! | `multi_build_steps` | `executor` (`steps[]` with `when`/`timeout`) |
//! | `trace_reset` | `trace` (resend from the `416` `Range` offset) |
//! | `trace_checksum` | `trace` (`crc32:` checksum in the final update) |
//! | `trace_size` | `trace` (`output.bytesize` in the final update) |
//! | `cancelable` | runner loop (`Job-Status: canceled` stops the job) |
//! | `return_exit_code` | runner loop (`exit_code` in the final update) |
//! | `service_variables` | `executor` (`services[].variables`) |

/// Feature names sent as `info.features.<name> = true`. Extend this list (and the table
/// above) when a module gains a feature; nothing else needs to change.
pub const DECLARED_FEATURES: &[&str] = &[
    "variables",
    "image",
    "services",
    "artifacts",
    "cache",
    "upload_multiple_artifacts",
    "upload_raw_artifacts",
    "refspecs",
    "masking",
    "raw_variables",
    "artifacts_exclude",
    "multi_build_steps",
    "trace_reset",
    "trace_checksum",
    "trace_size",
    "cancelable",
    "return_exit_code",
    "service_variables",
];

/// `{"<feature>": true, ...}` for every name in [`DECLARED_FEATURES`].
pub fn features_json() -> serde_json::Value {
    serde_json::Value::Object(
        DECLARED_FEATURES
            .iter()
            .map(|name| ((*name).to_owned(), serde_json::Value::Bool(true)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_unique_and_all_true() {
        let json = features_json();
        let map = json.as_object().expect("object");
        assert_eq!(map.len(), DECLARED_FEATURES.len(), "duplicate feature name");
        assert!(map.values().all(|v| v == &serde_json::Value::Bool(true)));
        assert!(map.contains_key("refspecs"));
        assert!(
            !map.contains_key("session"),
            "session server is not implemented"
        );
    }
}
