//! Request counts per GitLab API endpoint and HTTP status, kept by
//! [`super::client::HttpGitLab`] and read by metrics
//! (`gitlab_runner_api_request_statuses_total{endpoint,status}`).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Endpoint names, as gitlab-runner labels them.
pub mod endpoint {
    pub const REGISTER_RUNNER: &str = "register_runner";
    pub const VERIFY_RUNNER: &str = "verify_runner";
    pub const RESET_TOKEN: &str = "reset_token";
    pub const UNREGISTER_RUNNER: &str = "unregister_runner";
    pub const UNREGISTER_RUNNER_MANAGER: &str = "unregister_runner_manager";
    pub const CREATE_RUNNER: &str = "create_runner";
    pub const DELETE_RUNNER: &str = "delete_runner";
    pub const REQUEST_JOB: &str = "request_job";
    pub const UPDATE_JOB: &str = "update_job";
    pub const PATCH_TRACE: &str = "patch_trace";
    pub const UPLOAD_ARTIFACTS: &str = "upload_artifacts";
    pub const DOWNLOAD_ARTIFACTS: &str = "download_artifacts";
}

/// Status recorded when no HTTP answer arrived (connection refused, timeout, TLS failure).
pub const NO_RESPONSE: u16 = 0;

/// Counters keyed by (endpoint, status). Cheap to update; a snapshot copies them.
#[derive(Debug, Default)]
pub struct ApiStats {
    counts: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

/// One counter from [`ApiStats::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiStat {
    pub endpoint: &'static str,
    /// HTTP status, or [`NO_RESPONSE`].
    pub status: u16,
    pub count: u64,
}

impl ApiStats {
    /// Counts one request to `endpoint` answered with `status`.
    pub fn record(&self, endpoint: &'static str, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((endpoint, status)).or_default() += 1;
    }

    /// All counters, ordered by endpoint then status.
    pub fn snapshot(&self) -> Vec<ApiStat> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .map(|(&(endpoint, status), &count)| ApiStat {
                endpoint,
                status,
                count,
            })
            .collect()
    }

    /// The count for one (endpoint, status) pair.
    pub fn get(&self, endpoint: &str, status: u16) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .filter(|((e, s), _)| *e == endpoint && *s == status)
            .map(|(_, c)| *c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_endpoint_and_status() {
        let stats = ApiStats::default();
        stats.record(endpoint::REQUEST_JOB, 204);
        stats.record(endpoint::REQUEST_JOB, 204);
        stats.record(endpoint::REQUEST_JOB, 201);
        stats.record(endpoint::PATCH_TRACE, NO_RESPONSE);
        assert_eq!(stats.get(endpoint::REQUEST_JOB, 204), 2);
        assert_eq!(stats.get(endpoint::REQUEST_JOB, 201), 1);
        assert_eq!(stats.get(endpoint::UPDATE_JOB, 200), 0);
        let snap = stats.snapshot();
        assert_eq!(snap.len(), 3);
        assert_eq!(
            snap[0],
            ApiStat {
                endpoint: endpoint::PATCH_TRACE,
                status: NO_RESPONSE,
                count: 1
            }
        );
    }
}
