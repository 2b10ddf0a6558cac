//! Job endpoints, with the runner's or the job's token: `POST /jobs/request`,
//! `PUT /jobs/:id` (state updates) and `PATCH /jobs/:id/trace`.

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::HttpGitLab;
use super::info::runner_info;
use super::status::status_error;
use crate::api::{GitLabError, JobRequest, JobUpdate, RunnerAuth, TraceAnswer, UpdateAnswer};
use crate::decode::{JobDecode, decode_job};
use crate::headers;
use crate::stats::endpoint;

/// `POST /jobs/request`: `201` a job, `204` none (with the `X-GitLab-Last-Update` cursor).
pub(super) async fn request_job(
    gl: &HttpGitLab,
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
    let req = gl
        .request(ep, Method::POST, "jobs/request")?
        .header(headers::RUNNER_TOKEN, auth.token.expose_secret())
        .json(&body);
    let resp = gl.send(ep, req).await?;
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

/// `PUT /jobs/:id`: `200` accepted, `202` not complete yet (retry after the interval).
pub(super) async fn update_job(
    gl: &HttpGitLab,
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
    let req = gl
        .request(ep, Method::PUT, &format!("jobs/{job_id}"))?
        .header(headers::JOB_TOKEN, job_token.expose_secret())
        .json(&body);
    let resp = gl.send(ep, req).await?;
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

/// `PATCH /jobs/:id/trace` with `Content-Range`: `202` confirmed, `416` resend from GitLab's
/// size.
pub(super) async fn patch_trace(
    gl: &HttpGitLab,
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
    let req = gl
        .request(ep, Method::PATCH, &format!("jobs/{job_id}/trace"))?
        .header(headers::JOB_TOKEN, job_token.expose_secret())
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .header(
            reqwest::header::CONTENT_RANGE,
            headers::content_range(offset, bytes.len() as u64),
        )
        .body(bytes.to_vec());
    let resp = gl.send(ep, req).await?;
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
