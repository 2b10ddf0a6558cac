//! Artifact transfer with the job's token: `POST /jobs/:id/artifacts` streams an archive
//! up; `GET /jobs/:id/artifacts` streams one into a file, following redirects by hand so
//! the job token never leaves GitLab's origin.

use std::path::Path;

use futures::StreamExt;
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

use super::HttpGitLab;
use super::status::expect_status;
use crate::api::{ArtifactUpload, GitLabError};
use crate::headers;
use crate::stats::endpoint;

/// Redirects followed for artifact downloads (GitLab sends one to object storage).
const MAX_REDIRECTS: usize = 5;

/// `POST /jobs/:id/artifacts` (multipart, `201`) within the transfer timeout.
pub(super) async fn upload_artifacts(
    gl: &HttpGitLab,
    job_id: i64,
    job_token: &SecretString,
    upload: &ArtifactUpload,
) -> Result<(), GitLabError> {
    let ep = endpoint::UPLOAD_ARTIFACTS;
    let file = tokio::fs::File::open(&upload.path)
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
    let mut url = gl.url(ep, &format!("jobs/{job_id}/artifacts"))?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("artifact_format", &upload.artifact_format);
        query.append_pair("artifact_type", &upload.artifact_type);
        if let Some(expire_in) = &upload.expire_in {
            query.append_pair("expire_in", expire_in);
        }
    }
    let req = gl
        .http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .header(headers::JOB_TOKEN, job_token.expose_secret())
        .timeout(gl.transfer_timeout)
        .multipart(form);
    let resp = gl.send(ep, req).await?;
    expect_status(ep, resp, StatusCode::CREATED).await.map(drop)
}

/// `GET /jobs/:id/artifacts` (`200`) into `dest`, removed again when the transfer fails;
/// the bytes written.
pub(super) async fn download_artifacts(
    gl: &HttpGitLab,
    job_id: i64,
    job_token: &SecretString,
    dest: &Path,
) -> Result<u64, GitLabError> {
    let ep = endpoint::DOWNLOAD_ARTIFACTS;
    let origin = gl.url(ep, &format!("jobs/{job_id}/artifacts"))?;
    let mut url = origin.clone();
    let mut hops = 0;
    let resp = loop {
        let mut req = gl
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "*/*")
            .timeout(gl.transfer_timeout);
        if same_origin(&url, &origin) {
            req = req.header(headers::JOB_TOKEN, job_token.expose_secret());
        }
        let resp = gl.send(ep, req).await?;
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
}
