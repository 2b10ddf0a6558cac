//! [`HttpGitLab`]: the [`GitLab`] trait over HTTP(S) with reqwest and rustls (ring).
//!
//! Layout: this file holds the client, how a request is made and sent, and the trait
//! implementation, which hands each call to the file of its endpoint group:
//! - `build.rs`: [`ClientOptions`], [`ClientBuildError`], the API URL and the reqwest client;
//!   `tls.rs` its rustls configuration (system roots read once per process, plus the
//!   `tls-ca-file`).
//! - `status.rs`: the one mapping of HTTP statuses to [`GitLabError`] (`STATUS.md` says what
//!   each caller does with them).
//! - `lifecycle.rs`: register, verify, reset token, unregister, create, delete.
//! - `jobs.rs`: job requests, job updates, trace patches.
//! - `artifacts.rs`: artifact uploads and downloads.
//! - `info.rs`: the `info` this runner sends about itself.
//!
//! No answer is [`GitLabError::Transport`]. Tokens travel only in bodies and
//! `JOB-TOKEN`/`RUNNER-TOKEN` headers; they are never logged and the client holds none.

mod artifacts;
mod build;
mod info;
mod jobs;
mod lifecycle;
mod status;
mod tls;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, Url};
use secrecy::SecretString;

pub use self::build::{ClientBuildError, ClientOptions};
pub use self::info::architecture;
pub use self::tls::tls_config;
use crate::api::{
    ArtifactUpload, GitLab, GitLabError, JobRequest, JobUpdate, RegisterOptions, RunnerAuth,
    RunnerCredentials, TraceAnswer, UpdateAnswer,
};
use crate::stats::{ApiStats, NO_RESPONSE};

/// The GitLab runner API client for one GitLab instance.
///
/// Holds no token: every call gets the runner or job token it needs. Cloning is cheap and
/// shares the connection pool and [`ApiStats`].
#[derive(Clone)]
pub struct HttpGitLab {
    /// `<gitlab url>/api/v4/`, always ending in `/`.
    api: Url,
    http: reqwest::Client,
    stats: Arc<ApiStats>,
    /// [`ClientOptions::transfer_timeout`].
    transfer_timeout: Duration,
}

impl std::fmt::Debug for HttpGitLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGitLab")
            .field("api", &self.api.as_str())
            .finish_non_exhaustive()
    }
}

impl HttpGitLab {
    /// A client for the GitLab at `base_url` (`https://gitlab.example.com/`, with or without
    /// a path prefix and trailing slash).
    pub fn new(base_url: &str, opts: ClientOptions) -> Result<Self, ClientBuildError> {
        let api = build::api_url(base_url)?;
        let transfer_timeout = opts.transfer_timeout;
        let http = build::http_client(base_url, opts)?;
        Ok(HttpGitLab {
            api,
            http,
            stats: Arc::new(ApiStats::default()),
            transfer_timeout,
        })
    }

    /// Request counters per endpoint and status, shared with clones of this client.
    pub fn stats(&self) -> Arc<ApiStats> {
        Arc::clone(&self.stats)
    }

    /// The API base, `<gitlab url>/api/v4/`.
    pub fn api_url(&self) -> &str {
        self.api.as_str()
    }

    fn url(&self, ep: &'static str, path: &str) -> Result<Url, GitLabError> {
        self.api.join(path).map_err(|e| GitLabError::Transport {
            endpoint: ep,
            source: Box::new(e),
        })
    }

    fn request(
        &self,
        ep: &'static str,
        method: Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, GitLabError> {
        Ok(self
            .http
            .request(method, self.url(ep, path)?)
            .header(reqwest::header::ACCEPT, "application/json"))
    }

    /// Sends, counts the answer, and turns "no answer" into [`GitLabError::Transport`].
    async fn send(
        &self,
        ep: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, GitLabError> {
        match req.send().await {
            Ok(resp) => {
                self.stats.record(ep, resp.status().as_u16());
                Ok(resp)
            }
            Err(e) => {
                self.stats.record(ep, NO_RESPONSE);
                Err(GitLabError::Transport {
                    endpoint: ep,
                    source: Box::new(e.without_url()),
                })
            }
        }
    }
}

#[async_trait]
impl GitLab for HttpGitLab {
    async fn register(
        &self,
        registration_token: &SecretString,
        opts: &RegisterOptions,
    ) -> Result<RunnerCredentials, GitLabError> {
        lifecycle::register(self, registration_token, opts).await
    }

    async fn verify(&self, auth: &RunnerAuth) -> Result<RunnerCredentials, GitLabError> {
        lifecycle::verify(self, auth).await
    }

    async fn reset_token(&self, token: &SecretString) -> Result<RunnerCredentials, GitLabError> {
        lifecycle::reset_token(self, token).await
    }

    async fn unregister(&self, token: &SecretString) -> Result<(), GitLabError> {
        lifecycle::unregister(self, token).await
    }

    async fn request_job(
        &self,
        auth: &RunnerAuth,
        last_update: Option<&str>,
    ) -> Result<JobRequest, GitLabError> {
        jobs::request_job(self, auth, last_update).await
    }

    async fn update_job(
        &self,
        job_id: i64,
        job_token: &SecretString,
        update: &JobUpdate,
    ) -> Result<UpdateAnswer, GitLabError> {
        jobs::update_job(self, job_id, job_token, update).await
    }

    async fn patch_trace(
        &self,
        job_id: i64,
        job_token: &SecretString,
        offset: u64,
        bytes: &[u8],
    ) -> Result<TraceAnswer, GitLabError> {
        jobs::patch_trace(self, job_id, job_token, offset, bytes).await
    }

    async fn upload_artifacts(
        &self,
        job_id: i64,
        job_token: &SecretString,
        upload: &ArtifactUpload,
    ) -> Result<(), GitLabError> {
        artifacts::upload_artifacts(self, job_id, job_token, upload).await
    }

    async fn download_artifacts(
        &self,
        job_id: i64,
        job_token: &SecretString,
        dest: &Path,
    ) -> Result<u64, GitLabError> {
        artifacts::download_artifacts(self, job_id, job_token, dest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secrets() {
        let c = HttpGitLab::new("http://127.0.0.1:1", ClientOptions::default()).unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("127.0.0.1:1/api/v4/"), "{d}");
    }
}
