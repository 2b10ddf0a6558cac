//! `/api/v4/jobs/request`, `PUT /api/v4/jobs/:id`, `PATCH /api/v4/jobs/:id/trace`.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use time::OffsetDateTime;

use super::job_spec::FAILURE_REASONS;
use super::respond::{bad_request, forbidden, header, json_body, missing, str_field, token_body};
use super::state::{JobState, Shared};

fn last_update_response(version: u64) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
        resp.headers_mut().insert("X-GitLab-Last-Update", v);
    }
    resp
}

/// `POST /jobs/request`: `201` + payload, `204` + `X-GitLab-Last-Update` (after an optional
/// long poll that wakes when a job is queued), `403` bad runner token, `400` no token.
pub(crate) async fn request(AxState(shared): AxState<Arc<Shared>>, body: Bytes) -> Response {
    let (body, token) = match token_body(&body) {
        Ok(parsed) => parsed,
        Err(answer) => return *answer,
    };
    let mut changes = shared.subscribe();
    let long_poll = {
        let now = OffsetDateTime::now_utc();
        let mut st = shared.lock();
        let Some(runner) = st.runner_by_token_mut(&token, now) else {
            return forbidden(None);
        };
        if let Some(system_id) = str_field(&body, "system_id") {
            runner.managers.insert(system_id.to_owned());
        }
        if let Some(info) = body.get("info") {
            st.features
                .push(info.get("features").cloned().unwrap_or(Value::Null));
            st.infos.push(info.clone());
        }
        st.settings.long_poll
    };
    let deadline = tokio::time::Instant::now() + long_poll;
    loop {
        changes.borrow_and_update();
        {
            let now = OffsetDateTime::now_utc();
            let mut st = shared.lock();
            let Some(runner_id) = st.runner_by_token(&token, now).map(|r| r.id) else {
                return forbidden(None);
            };
            if let Some(payload) = st.dequeue_for(runner_id) {
                drop(st);
                shared.changed();
                return (
                    StatusCode::CREATED,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    payload,
                )
                    .into_response();
            }
            let version = st.queue_version;
            let sent = str_field(&body, "last_update");
            // Workhorse holds the request only when the runner's cursor is current.
            let hold = sent == Some(version.to_string().as_str());
            if !hold || tokio::time::Instant::now() >= deadline {
                return last_update_response(version);
            }
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            let version = shared.lock().queue_version;
            return last_update_response(version);
        }
    }
}

fn job_id(raw: &str) -> Option<i64> {
    raw.parse().ok()
}

fn parse_crc32(s: &str) -> Option<u32> {
    let hex = s.strip_prefix("crc32:")?;
    u32::from_str_radix(hex, 16).ok()
}

/// `PUT /jobs/:id`. See the module doc of `fake_gitlab` for the rules.
pub(crate) async fn update(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&e),
    };
    let token = str_field(&body, "token")
        .or_else(|| header(&headers, "job-token"))
        .map(str::to_owned);
    let Some(token) = token else {
        return missing("token");
    };
    let mut st = shared.lock();
    let interval = st.settings.trace_update_interval;
    let Some(id) = job_id(&id).filter(|id| st.jobs.contains_key(id)) else {
        // GitLab: "when job does not exist anymore" → 403.
        return forbidden(None);
    };
    let forced_202 = st.forced_update_202.get(&id).copied().unwrap_or(0);
    let Some(job) = st.jobs.get_mut(&id) else {
        return forbidden(None);
    };
    if job.token != token {
        return forbidden(None);
    }
    if !matches!(job.state, JobState::Running | JobState::Canceling) {
        return forbidden(Some(job.state.as_str()));
    }
    job.updates.push(Value::Object(body.clone()));
    let state = str_field(&body, "state").unwrap_or("running");
    let with_status = |code: StatusCode, s: JobState| {
        let mut resp = code.into_response();
        resp.headers_mut()
            .insert("Job-Status", HeaderValue::from_static(s.as_str()));
        resp
    };
    match state {
        "running" | "pending" => with_status(StatusCode::OK, job.state),
        "success" | "failed" => {
            let output = body.get("output");
            let checksum = output
                .and_then(|o| o.get("checksum"))
                .or_else(|| body.get("checksum"))
                .and_then(Value::as_str);
            let bytesize = output
                .and_then(|o| o.get("bytesize"))
                .and_then(Value::as_u64);
            let held_crc = crc32fast::hash(&job.trace);
            let trace_incomplete = checksum.is_some_and(|c| parse_crc32(c) != Some(held_crc))
                || bytesize.is_some_and(|b| b != job.trace.len() as u64);
            if forced_202 > 0 || trace_incomplete {
                let mut resp = with_status(StatusCode::ACCEPTED, job.state);
                if let Ok(v) = HeaderValue::from_str(&interval.to_string()) {
                    resp.headers_mut()
                        .insert("X-GitLab-Trace-Update-Interval", v);
                }
                if forced_202 > 0 {
                    st.forced_update_202.insert(id, forced_202 - 1);
                }
                return resp;
            }
            job.exit_code = body.get("exit_code").and_then(Value::as_i64);
            job.state = if job.state == JobState::Canceling {
                JobState::Canceled
            } else if state == "success" {
                JobState::Success
            } else {
                JobState::Failed
            };
            if job.state == JobState::Failed {
                // GitLab stores unrecognized (or missing) reasons as unknown_failure.
                let reason = str_field(&body, "failure_reason")
                    .filter(|r| FAILURE_REASONS.contains(r))
                    .unwrap_or("unknown_failure");
                job.failure_reason = Some(reason.to_owned());
            }
            job.finished_at = Some(std::time::Instant::now());
            let final_state = job.state;
            drop(st);
            shared.changed();
            with_status(StatusCode::OK, final_state)
        }
        other => bad_request(&format!("state does not have a valid value: {other}")),
    }
}

/// `start` of a `Content-Range: start-end[/total]` header.
fn range_start(value: &str) -> Option<u64> {
    let (start, _) = value.trim().split_once('-')?;
    start.trim().parse().ok()
}

/// `PATCH /jobs/:id/trace`. See the module doc of `fake_gitlab` for the rules.
pub(crate) async fn patch_trace(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = shared.lock();
    let interval = st.settings.trace_update_interval;
    let max_trace = st.settings.max_trace_size;
    let Some(job) = job_id(&id).and_then(|id| st.jobs.get_mut(&id)) else {
        return forbidden(None);
    };
    if header(&headers, "job-token") != Some(job.token.as_str()) {
        return forbidden(None);
    }
    if !matches!(job.state, JobState::Running | JobState::Canceling) {
        return forbidden(Some(job.state.as_str()));
    }
    job.trace_content_types
        .push(header(&headers, "content-type").map(str::to_owned));
    let Some(range) = header(&headers, "content-range") else {
        return missing("Content-Range");
    };
    let Some(start) = range_start(range) else {
        return bad_request("malformed Content-Range");
    };
    let size = job.trace.len() as u64;
    let range_header = |size: u64| HeaderValue::from_str(&format!("0-{size}")).ok();
    if start != size {
        let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        if let Some(v) = range_header(size) {
            resp.headers_mut().insert("Range", v);
        }
        return resp;
    }
    if max_trace.is_some_and(|max| size + body.len() as u64 > max) {
        return forbidden(None);
    }
    job.trace.extend_from_slice(&body);
    let mut resp = StatusCode::ACCEPTED.into_response();
    let h = resp.headers_mut();
    if let Some(v) = range_header(job.trace.len() as u64) {
        h.insert("Range", v);
    }
    h.insert("Job-Status", HeaderValue::from_static(job.state.as_str()));
    if let Ok(v) = HeaderValue::from_str(&interval.to_string()) {
        h.insert("X-GitLab-Trace-Update-Interval", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(range_start("11-20"), Some(11));
        assert_eq!(range_start("0-34/35"), Some(0));
        assert_eq!(range_start("x-1"), None);
        assert_eq!(range_start("12"), None);
    }

    #[test]
    fn crc32_values() {
        assert_eq!(parse_crc32("crc32:0000abcd"), Some(0xabcd));
        assert_eq!(parse_crc32("crc:12345678"), None);
    }
}
