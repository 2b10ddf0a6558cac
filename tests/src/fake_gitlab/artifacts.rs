//! `POST /api/v4/jobs/:id/artifacts` (multipart upload) and `GET /api/v4/jobs/:id/artifacts`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Multipart, Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::respond::{bad_request, forbidden, header, json_status, message, missing};
use super::state::{JobState, Shared, StoredArtifact};

/// Upload: `201`; `403` unknown job, wrong token or job not running; `413` above the
/// configured maximum; `400` no `file` part. `artifact_format`, `artifact_type` and
/// `expire_in` are read from the query string (where gitlab-runner sends them) or from
/// multipart fields (Grape merges both).
pub(crate) async fn upload(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return forbidden(None);
    };
    let max = {
        let st = shared.lock();
        let Some(job) = st.jobs.get(&id) else {
            return forbidden(None);
        };
        let token = header(&headers, "job-token").or(query.get("token").map(String::as_str));
        if token != Some(job.token.as_str()) {
            return forbidden(None);
        }
        if !matches!(job.state, JobState::Running | JobState::Canceling) {
            return forbidden(Some(job.state.as_str()));
        }
        st.settings.max_artifact_size
    };
    let mut fields: HashMap<String, String> = query.clone();
    let mut file: Option<(String, Vec<u8>)> = None;
    let mut too_large = false;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return bad_request(&format!("malformed multipart body: {e}")),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            let filename = field.file_name().unwrap_or("artifacts").to_owned();
            let mut content = Vec::new();
            let mut received = 0u64;
            let mut field = field;
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        // Past the limit the rest is read and dropped, so the client sees
                        // the 413 instead of a reset connection.
                        received += chunk.len() as u64;
                        if received <= max {
                            content.extend_from_slice(&chunk);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return bad_request(&format!("read file part: {e}")),
                }
            }
            if received > max {
                too_large = true;
            }
            file = Some((filename, content));
        } else {
            match field.text().await {
                Ok(text) => {
                    fields.insert(name, text);
                }
                Err(e) => return bad_request(&format!("read field {name}: {e}")),
            }
        }
    }
    if too_large {
        return message(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let Some((filename, content)) = file else {
        return missing("file");
    };
    let artifact = StoredArtifact {
        filename,
        artifact_format: fields.get("artifact_format").cloned(),
        artifact_type: fields.get("artifact_type").cloned(),
        expire_in: fields.get("expire_in").cloned(),
        content: content.into(),
    };
    let mut st = shared.lock();
    let Some(job) = st.jobs.get_mut(&id) else {
        return forbidden(None);
    };
    job.artifacts.push(artifact);
    json_status(StatusCode::CREATED, json!({"id": id}))
}

/// Download the job's archive: `200` with the bytes; `403` when `JOB-TOKEN` is not the token
/// of any known job; `404` unknown job or no archive.
pub(crate) async fn download(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let st = shared.lock();
    let token = header(&headers, "job-token").unwrap_or_default();
    if token.is_empty() || !st.jobs.values().any(|j| j.token == token) {
        return forbidden(None);
    }
    let Some(job) = id.parse::<i64>().ok().and_then(|id| st.jobs.get(&id)) else {
        return message(StatusCode::NOT_FOUND);
    };
    let Some(archive) = job.archive() else {
        return message(StatusCode::NOT_FOUND);
    };
    if let Some(base) = &st.settings.artifact_redirect_base {
        let location = format!(
            "{}/_object_storage/jobs/{}/archive",
            base.trim_end_matches('/'),
            job.id
        );
        let mut resp = StatusCode::FOUND.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert("Location", v);
        }
        return resp;
    }
    archive_response(archive)
}

/// `GET /_object_storage/jobs/:id/archive`: the archive without any authentication, as a
/// presigned object storage URL serves it; records the `JOB-TOKEN` header it got (a client
/// must not send it here).
pub(crate) async fn object_storage(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut st = shared.lock();
    st.storage_tokens
        .push(header(&headers, "job-token").map(str::to_owned));
    let Some(archive) = id
        .parse::<i64>()
        .ok()
        .and_then(|id| st.jobs.get(&id))
        .and_then(|j| j.archive())
    else {
        return message(StatusCode::NOT_FOUND);
    };
    archive_response(archive)
}

fn archive_response(archive: &StoredArtifact) -> Response {
    let mut resp = (StatusCode::OK, archive.content.clone()).into_response();
    resp.headers_mut().insert(
        "Content-Type",
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        archive.filename.replace('"', "")
    )) {
        resp.headers_mut().insert("Content-Disposition", v);
    }
    resp
}
