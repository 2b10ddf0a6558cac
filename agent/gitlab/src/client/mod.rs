//! [`HttpGitLab`]: the [`GitLab`] trait over HTTP(S) with reqwest and rustls (ring).
//!
//! Status mapping (from GitLab's request specs, `spec/requests/api/ci/runner/`):
//! `403` → [`GitLabError::Forbidden`] (with the `Job-Status` header on job endpoints),
//! `404` → `NotFound`, `409` → `Conflict`, `413` → `TooLarge`, a retried status (`429`,
//! `503`, ...) with `RateLimit-ResetTime` or `Retry-After` → `RetryLater` carrying the wait,
//! other unexpected statuses → `Status` with a short body excerpt; no answer → `Transport`; a
//! body that does not parse → `Decode`. What each caller does with them: `STATUS.md`. Tokens travel only in bodies and `JOB-TOKEN`/`RUNNER-TOKEN` headers; they are
//! never logged and the client holds none.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::api::{
    ArtifactUpload, GitLab, GitLabError, JobRequest, JobUpdate, RegisterOptions, RunnerAuth,
    RunnerCredentials, TraceAnswer, UpdateAnswer, retried_status,
};
use super::decode::{JobDecode, decode_job};
use super::features::features_json;
use super::headers;
use super::stats::{ApiStats, NO_RESPONSE, endpoint};

/// Longest body excerpt kept in [`GitLabError::Status`].
const BODY_EXCERPT: usize = 200;

/// How the HTTP client is built.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra CA certificates (PEM) trusted besides the system roots (`tls-ca-file`).
    pub tls_ca_file: Option<PathBuf>,
    /// Whole-request timeout of API calls; must exceed GitLab's ~50 s long poll of
    /// `/jobs/request`.
    pub request_timeout: Duration,
    /// Whole-request timeout of artifact uploads and downloads, which move whole archives.
    pub transfer_timeout: Duration,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls_ca_file: None,
            request_timeout: Duration::from_secs(70),
            transfer_timeout: Duration::from_secs(3600),
            user_agent: format!(
                "drover-agent {} ({}; {}/{})",
                env!("CARGO_PKG_VERSION"),
                revision(),
                std::env::consts::OS,
                architecture()
            ),
        }
    }
}

/// Errors building an [`HttpGitLab`].
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("gitlab url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("read tls-ca-file {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tls-ca-file {path}: {reason}")]
    BadCaFile { path: PathBuf, reason: String },
    #[error("tls setup for gitlab url {url}: {reason}")]
    Tls { url: String, reason: String },
    #[error("http client for gitlab url {url}: {source}")]
    Build {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

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
        let api = api_url(base_url)?;
        let tls = tls_config(base_url, opts.tls_ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(opts.request_timeout)
            .connect_timeout(Duration::from_secs(30))
            .user_agent(opts.user_agent)
            // Redirects are followed by hand (artifact downloads only), so a job token is
            // never forwarded to another origin such as object storage.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| ClientBuildError::Build {
                url: base_url.to_owned(),
                source,
            })?;
        Ok(HttpGitLab {
            api,
            http,
            stats: Arc::new(ApiStats::default()),
            transfer_timeout: opts.transfer_timeout,
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

    /// `POST /user/runners` with an access token (`PRIVATE-TOKEN`, `create_runner` scope):
    /// creates a runner of `runner_type` (`instance_type`, `group_type` with `group_id`,
    /// `project_type` with `project_id`) and answers `201 {id, token, token_expires_at}`.
    /// The runner API's replacement for registration tokens (the controller's use).
    pub async fn create_runner(
        &self,
        access_token: &SecretString,
        runner_type: &str,
        scope_id: Option<i64>,
        opts: &RegisterOptions,
    ) -> Result<RunnerCredentials, GitLabError> {
        let ep = endpoint::CREATE_RUNNER;
        let mut body = json!({
            "runner_type": runner_type,
            "description": opts.description,
            "tag_list": opts.tag_list.join(","),
            "run_untagged": opts.run_untagged,
            "locked": opts.locked,
            "paused": opts.paused,
        });
        match (runner_type, scope_id) {
            ("group_type", Some(id)) => body["group_id"] = json!(id),
            ("project_type", Some(id)) => body["project_id"] = json!(id),
            _ => {}
        }
        if let Some(level) = &opts.access_level {
            body["access_level"] = json!(level);
        }
        if let Some(max) = opts.maximum_timeout {
            body["maximum_timeout"] = json!(max);
        }
        if let Some(note) = &opts.maintenance_note {
            body["maintenance_note"] = json!(note);
        }
        let req = self
            .request(ep, Method::POST, "user/runners")?
            .header("PRIVATE-TOKEN", access_token.expose_secret())
            .json(&body);
        let resp = self.send(ep, req).await?;
        let resp = expect_status(ep, resp, StatusCode::CREATED).await?;
        Ok(decode::<CredentialsBody>(ep, resp).await?.into())
    }

    /// `DELETE /runners/:id` with an access token (`204`): removes a runner whatever its own
    /// token's state.
    pub async fn delete_runner(
        &self,
        access_token: &SecretString,
        id: i64,
    ) -> Result<(), GitLabError> {
        let ep = endpoint::DELETE_RUNNER;
        let req = self
            .request(ep, Method::DELETE, &format!("runners/{id}"))?
            .header("PRIVATE-TOKEN", access_token.expose_secret());
        let resp = self.send(ep, req).await?;
        expect_status(ep, resp, StatusCode::NO_CONTENT)
            .await
            .map(drop)
    }

    /// `DELETE /runners/managers` `{token, system_id}`: removes only this machine's runner
    /// manager entry (`204`).
    pub async fn unregister_manager(&self, auth: &RunnerAuth) -> Result<(), GitLabError> {
        let ep = endpoint::UNREGISTER_RUNNER_MANAGER;
        let body = json!({"token": auth.token.expose_secret(), "system_id": auth.system_id});
        let resp = self
            .send(
                ep,
                self.request(ep, Method::DELETE, "runners/managers")?
                    .json(&body),
            )
            .await?;
        expect_status(ep, resp, StatusCode::NO_CONTENT)
            .await
            .map(drop)
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

/// `<base>/api/v4/` from a GitLab URL; only http and https.
fn api_url(base_url: &str) -> Result<Url, ClientBuildError> {
    let invalid = |reason: String| ClientBuildError::InvalidUrl {
        url: base_url.to_owned(),
        reason,
    };
    let mut url = Url::parse(base_url.trim()).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the url are not supported".into()));
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{path}/api/v4/"));
    Ok(url)
}

/// rustls with the ring provider, trusting the system roots plus `ca_file`.
fn tls_config(
    base_url: &str,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the tls-ca-file may be all we need, and a
    // missing root shows as a clear certificate error on the first request.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientBuildError::ReadCaFile {
            path: path.to_owned(),
            source,
        })?;
        let bad = |reason: String| ClientBuildError::BadCaFile {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("parse pem: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("add certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Tls {
            url: base_url.to_owned(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The build revision, from `DROVER_GIT_REVISION` at compile time.
fn revision() -> &'static str {
    option_env!("DROVER_GIT_REVISION").unwrap_or("unknown")
}

/// This machine's architecture in Go's `GOARCH` spelling, as GitLab shows it.
pub fn architecture() -> &'static str {
    goarch(std::env::consts::ARCH)
}

fn goarch(rust_arch: &'static str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// `info` sent with registration and job requests.
fn runner_info() -> serde_json::Value {
    json!({
        "name": "drover-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "revision": revision(),
        "platform": "linux",
        "architecture": architecture(),
        "executor": "docker",
        "shell": "bash",
        "features": features_json(),
    })
}

/// Maps a non-success status to a [`GitLabError`].
async fn status_error(ep: &'static str, resp: reqwest::Response) -> GitLabError {
    let status = resp.status();
    match status {
        StatusCode::FORBIDDEN => GitLabError::Forbidden {
            endpoint: ep,
            job_status: headers::job_status(resp.headers()),
        },
        StatusCode::NOT_FOUND => GitLabError::NotFound { endpoint: ep },
        StatusCode::CONFLICT => GitLabError::Conflict { endpoint: ep },
        StatusCode::PAYLOAD_TOO_LARGE => GitLabError::TooLarge { endpoint: ep },
        _ => {
            let code = status.as_u16();
            let after = retried_status(code)
                .then(|| headers::retry_wait(resp.headers(), time::OffsetDateTime::now_utc()))
                .flatten();
            let body = excerpt(&resp.text().await.unwrap_or_default());
            match after {
                Some(after) => GitLabError::RetryLater {
                    endpoint: ep,
                    status: code,
                    after,
                    body,
                },
                None => GitLabError::Status {
                    endpoint: ep,
                    status: code,
                    body,
                },
            }
        }
    }
}

fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(BODY_EXCERPT) {
        Some((i, _)) => format!("{}...", &body[..i]),
        None => body.to_owned(),
    }
}

async fn expect_status(
    ep: &'static str,
    resp: reqwest::Response,
    want: StatusCode,
) -> Result<reqwest::Response, GitLabError> {
    if resp.status() == want {
        Ok(resp)
    } else {
        Err(status_error(ep, resp).await)
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    ep: &'static str,
    resp: reqwest::Response,
) -> Result<T, GitLabError> {
    let bytes = resp.bytes().await.map_err(|e| GitLabError::Transport {
        endpoint: ep,
        source: Box::new(e.without_url()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| GitLabError::Decode {
        endpoint: ep,
        message: e.to_string(),
    })
}

/// `{id, token, token_expires_at}` as GitLab sends it.
#[derive(Deserialize)]
struct CredentialsBody {
    #[serde(default)]
    id: Option<i64>,
    token: String,
    #[serde(default)]
    token_expires_at: Option<String>,
}

impl From<CredentialsBody> for RunnerCredentials {
    fn from(b: CredentialsBody) -> Self {
        RunnerCredentials {
            id: b.id,
            token: SecretString::from(b.token),
            // Older GitLab versions send Go's zero time for "never".
            token_expires_at: b
                .token_expires_at
                .filter(|t| !t.is_empty() && !t.starts_with("0001-01-01")),
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
        let ep = endpoint::REGISTER_RUNNER;
        let mut body = json!({
            "token": registration_token.expose_secret(),
            "description": opts.description,
            "tag_list": opts.tag_list.join(","),
            "run_untagged": opts.run_untagged,
            "locked": opts.locked,
            "paused": opts.paused,
            "info": runner_info(),
        });
        if let Some(level) = &opts.access_level {
            body["access_level"] = json!(level);
        }
        if let Some(max) = opts.maximum_timeout {
            body["maximum_timeout"] = json!(max);
        }
        if let Some(note) = &opts.maintenance_note {
            body["maintenance_note"] = json!(note);
        }
        let resp = self
            .send(ep, self.request(ep, Method::POST, "runners")?.json(&body))
            .await?;
        let resp = expect_status(ep, resp, StatusCode::CREATED).await?;
        Ok(decode::<CredentialsBody>(ep, resp).await?.into())
    }

    async fn verify(&self, auth: &RunnerAuth) -> Result<RunnerCredentials, GitLabError> {
        let ep = endpoint::VERIFY_RUNNER;
        let body = json!({"token": auth.token.expose_secret(), "system_id": auth.system_id});
        let resp = self
            .send(
                ep,
                self.request(ep, Method::POST, "runners/verify")?
                    .json(&body),
            )
            .await?;
        let resp = expect_status(ep, resp, StatusCode::OK).await?;
        Ok(decode::<CredentialsBody>(ep, resp).await?.into())
    }

    async fn reset_token(&self, token: &SecretString) -> Result<RunnerCredentials, GitLabError> {
        let ep = endpoint::RESET_TOKEN;
        let body = json!({"token": token.expose_secret()});
        let req = self.request(ep, Method::POST, "runners/reset_authentication_token")?;
        let resp = self.send(ep, req.json(&body)).await?;
        let resp = expect_status(ep, resp, StatusCode::CREATED).await?;
        Ok(decode::<CredentialsBody>(ep, resp).await?.into())
    }

    async fn unregister(&self, token: &SecretString) -> Result<(), GitLabError> {
        let ep = endpoint::UNREGISTER_RUNNER;
        let body = json!({"token": token.expose_secret()});
        let resp = self
            .send(ep, self.request(ep, Method::DELETE, "runners")?.json(&body))
            .await?;
        expect_status(ep, resp, StatusCode::NO_CONTENT)
            .await
            .map(drop)
    }

    async fn request_job(
        &self,
        auth: &RunnerAuth,
        last_update: Option<&str>,
    ) -> Result<JobRequest, GitLabError> {
        let ep = endpoint::REQUEST_JOB;
        let mut body = json!({
            "token": auth.token.expose_secret(),
            "system_id": auth.system_id,
            "info": runner_info(),
        });
        if let Some(cursor) = last_update {
            body["last_update"] = json!(cursor);
        }
        let req = self
            .request(ep, Method::POST, "jobs/request")?
            .header(headers::RUNNER_TOKEN, auth.token.expose_secret())
            .json(&body);
        let resp = self.send(ep, req).await?;
        match resp.status() {
            StatusCode::CREATED => {
                let body = resp.bytes().await.map_err(|e| GitLabError::Transport {
                    endpoint: ep,
                    source: Box::new(e.without_url()),
                })?;
                Ok(match decode_job(&body) {
                    JobDecode::Job(job) => JobRequest::Job(job),
                    JobDecode::Unrunnable(job) => JobRequest::Unrunnable(job),
                    JobDecode::Lost { reason } => JobRequest::Lost { reason },
                })
            }
            StatusCode::NO_CONTENT => Ok(JobRequest::NoJob {
                last_update: headers::last_update(resp.headers()),
            }),
            _ => Err(status_error(ep, resp).await),
        }
    }

    async fn update_job(
        &self,
        job_id: i64,
        job_token: &SecretString,
        update: &JobUpdate,
    ) -> Result<UpdateAnswer, GitLabError> {
        let ep = endpoint::UPDATE_JOB;
        let mut body = json!({
            "token": job_token.expose_secret(),
            "state": update.state,
        });
        if let Some(reason) = update.failure_reason {
            body["failure_reason"] = json!(reason);
        }
        if let Some(code) = update.exit_code {
            body["exit_code"] = json!(code);
        }
        if update.checksum.is_some() || update.bytesize.is_some() {
            let mut output = json!({});
            if let Some(sum) = &update.checksum {
                // Top-level `checksum` for GitLab versions before `output` existed.
                body["checksum"] = json!(sum);
                output["checksum"] = json!(sum);
            }
            if let Some(size) = update.bytesize {
                output["bytesize"] = json!(size);
            }
            body["output"] = output;
        }
        let req = self
            .request(ep, Method::PUT, &format!("jobs/{job_id}"))?
            .header(headers::JOB_TOKEN, job_token.expose_secret())
            .json(&body);
        let resp = self.send(ep, req).await?;
        let job_status = headers::job_status(resp.headers());
        match resp.status() {
            StatusCode::OK => Ok(UpdateAnswer {
                accepted: true,
                retry_after: None,
                job_status,
            }),
            StatusCode::ACCEPTED => Ok(UpdateAnswer {
                accepted: false,
                retry_after: headers::trace_update_interval(resp.headers()),
                job_status,
            }),
            _ => Err(status_error(ep, resp).await),
        }
    }

    async fn patch_trace(
        &self,
        job_id: i64,
        job_token: &SecretString,
        offset: u64,
        bytes: &[u8],
    ) -> Result<TraceAnswer, GitLabError> {
        let ep = endpoint::PATCH_TRACE;
        if bytes.is_empty() {
            // The trait forbids empty patches (GitLab would treat one as a status probe);
            // nothing to store, so nothing to send.
            return Ok(TraceAnswer::Accepted {
                job_status: None,
                update_interval: None,
            });
        }
        let req = self
            .request(ep, Method::PATCH, &format!("jobs/{job_id}/trace"))?
            .header(headers::JOB_TOKEN, job_token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .header(
                reqwest::header::CONTENT_RANGE,
                headers::content_range(offset, bytes.len() as u64),
            )
            .body(bytes.to_vec());
        let resp = self.send(ep, req).await?;
        match resp.status() {
            StatusCode::ACCEPTED => Ok(TraceAnswer::Accepted {
                job_status: headers::job_status(resp.headers()),
                update_interval: headers::trace_update_interval(resp.headers()),
            }),
            StatusCode::RANGE_NOT_SATISFIABLE => match headers::range_size(resp.headers()) {
                Some(remote_size) => Ok(TraceAnswer::RangeMismatch { remote_size }),
                None => Err(GitLabError::Decode {
                    endpoint: ep,
                    message: "416 without a valid `Range: 0-<size>` header".into(),
                }),
            },
            _ => Err(status_error(ep, resp).await),
        }
    }

    async fn upload_artifacts(
        &self,
        job_id: i64,
        job_token: &SecretString,
        upload: &ArtifactUpload,
    ) -> Result<(), GitLabError> {
        let ep = endpoint::UPLOAD_ARTIFACTS;
        let file =
            tokio::fs::File::open(&upload.path)
                .await
                .map_err(|e| GitLabError::Transport {
                    endpoint: ep,
                    source: format!("open artifacts file {}: {e}", upload.path.display()).into(),
                })?;
        let len = file
            .metadata()
            .await
            .map_err(|e| GitLabError::Transport {
                endpoint: ep,
                source: format!("stat artifacts file {}: {e}", upload.path.display()).into(),
            })?
            .len();
        let stream = tokio_util::io::ReaderStream::new(file);
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
                .file_name(upload.filename.clone())
                .mime_str("application/octet-stream")
                .map_err(|e| GitLabError::Transport {
                    endpoint: ep,
                    source: Box::new(e.without_url()),
                })?;
        let form = reqwest::multipart::Form::new().part("file", part);
        // Format, type and expiry go in the query string, as gitlab-runner sends them:
        // Workhorse reads `artifact_format` from there before the body reaches Rails.
        let mut url = self.url(ep, &format!("jobs/{job_id}/artifacts"))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("artifact_format", &upload.artifact_format);
            query.append_pair("artifact_type", &upload.artifact_type);
            if let Some(expire_in) = &upload.expire_in {
                query.append_pair("expire_in", expire_in);
            }
        }
        let req = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(headers::JOB_TOKEN, job_token.expose_secret())
            .timeout(self.transfer_timeout)
            .multipart(form);
        let resp = self.send(ep, req).await?;
        expect_status(ep, resp, StatusCode::CREATED).await.map(drop)
    }

    async fn download_artifacts(
        &self,
        job_id: i64,
        job_token: &SecretString,
        dest: &Path,
    ) -> Result<u64, GitLabError> {
        let ep = endpoint::DOWNLOAD_ARTIFACTS;
        let origin = self.url(ep, &format!("jobs/{job_id}/artifacts"))?;
        let mut url = origin.clone();
        let mut hops = 0;
        let resp = loop {
            let mut req = self
                .http
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "*/*")
                .timeout(self.transfer_timeout);
            if same_origin(&url, &origin) {
                req = req.header(headers::JOB_TOKEN, job_token.expose_secret());
            }
            let resp = self.send(ep, req).await?;
            if !resp.status().is_redirection() || hops == MAX_REDIRECTS {
                break resp;
            }
            let Some(next) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
            else {
                break resp;
            };
            url = next;
            hops += 1;
        };
        let resp = expect_status(ep, resp, StatusCode::OK).await?;
        let result = write_body(ep, resp, dest).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }
}

/// Redirects followed for artifact downloads (GitLab sends one to object storage).
const MAX_REDIRECTS: usize = 5;

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Streams a response body into `dest` (created or truncated); returns the bytes written.
async fn write_body(
    ep: &'static str,
    resp: reqwest::Response,
    dest: &Path,
) -> Result<u64, GitLabError> {
    let io_err = |what: &str, e: std::io::Error| GitLabError::Transport {
        endpoint: ep,
        source: format!("{what} {}: {e}", dest.display()).into(),
    };
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| io_err("create", e))?;
    let mut written = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| GitLabError::Transport {
            endpoint: ep,
            source: Box::new(e.without_url()),
        })?;
        file.write_all(&chunk)
            .await
            .map_err(|e| io_err("write", e))?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(|e| io_err("write", e))?;
    file.sync_all().await.map_err(|e| io_err("sync", e))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_forms() {
        let u = |s: &str| api_url(s).map(|u| u.to_string());
        assert_eq!(
            u("https://gitlab.example.com").unwrap(),
            "https://gitlab.example.com/api/v4/"
        );
        assert_eq!(
            u("https://gitlab.example.com/").unwrap(),
            "https://gitlab.example.com/api/v4/"
        );
        assert_eq!(
            u("http://127.0.0.1:8080/gitlab/").unwrap(),
            "http://127.0.0.1:8080/gitlab/api/v4/"
        );
        let err = api_url("ftp://x").unwrap_err().to_string();
        assert!(err.contains("ftp://x") && err.contains("scheme"), "{err}");
        assert!(api_url("not a url").is_err());
        assert!(api_url("https://user:pw@gitlab.example.com").is_err());
    }

    #[test]
    fn origins() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(
            &u("https://g.example/a"),
            &u("https://g.example:443/b")
        ));
        assert!(!same_origin(
            &u("https://g.example/a"),
            &u("http://g.example/a")
        ));
        assert!(!same_origin(
            &u("https://g.example/a"),
            &u("https://s3.example/a")
        ));
        assert!(!same_origin(
            &u("https://g.example/a"),
            &u("https://g.example:8443/a")
        ));
    }

    #[test]
    fn goarch_names() {
        assert_eq!(goarch("x86_64"), "amd64");
        assert_eq!(goarch("aarch64"), "arm64");
        assert_eq!(goarch("x86"), "386");
    }

    #[test]
    fn runner_info_shape() {
        let info = runner_info();
        assert_eq!(info["name"], "drover-agent");
        assert_eq!(info["platform"], "linux");
        assert_eq!(info["executor"], "docker");
        assert_eq!(info["shell"], "bash");
        assert_eq!(info["features"]["refspecs"], true);
    }

    #[test]
    fn excerpt_is_bounded_on_char_boundaries() {
        let long = "é".repeat(500);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), BODY_EXCERPT + 3);
        assert_eq!(excerpt("  short  "), "short");
    }

    #[test]
    fn credentials_zero_time_is_never() {
        let c: RunnerCredentials = CredentialsBody {
            id: Some(1),
            token: "t".into(),
            token_expires_at: Some("0001-01-01T00:00:00Z".into()),
        }
        .into();
        assert!(c.token_expires_at.is_none());
    }

    #[test]
    fn missing_ca_file_is_named() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let err = HttpGitLab::new(
            "https://gitlab.example.com",
            ClientOptions {
                tls_ca_file: Some("/nonexistent/ca.pem".into()),
                ..ClientOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn ca_file_without_certs_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a pem").unwrap();
        let err = HttpGitLab::new(
            "https://gitlab.example.com",
            ClientOptions {
                tls_ca_file: Some(path.clone()),
                ..ClientOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no certificate"), "{err}");
    }

    #[test]
    fn debug_shows_no_secrets() {
        let c = HttpGitLab::new("http://127.0.0.1:1", ClientOptions::default()).unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("127.0.0.1:1/api/v4/"), "{d}");
    }
}
