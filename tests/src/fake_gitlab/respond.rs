//! Response shapes GitLab's Grape API uses.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

/// `{"message": "403 Forbidden"}`-style error, as Grape's `error!` renders it.
pub(crate) fn message(status: StatusCode) -> Response {
    let text = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    (status, axum::Json(json!({"message": text}))).into_response()
}

/// `400 {"error": "<what> is missing"}`, Grape's answer to a missing required parameter.
pub(crate) fn missing(what: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": format!("{what} is missing")})),
    )
        .into_response()
}

/// `400 {"error": ...}`.
pub(crate) fn bad_request(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error}))).into_response()
}

/// `403`, with `Job-Status` when the job's state is known.
pub(crate) fn forbidden(job_status: Option<&str>) -> Response {
    let mut resp = message(StatusCode::FORBIDDEN);
    if let Some(s) = job_status {
        resp.headers_mut()
            .insert("Job-Status", HeaderValue::from_static(static_state(s)));
    }
    resp
}

fn static_state(s: &str) -> &'static str {
    match s {
        "pending" => "pending",
        "running" => "running",
        "canceling" => "canceling",
        "canceled" => "canceled",
        "success" => "success",
        _ => "failed",
    }
}

pub(crate) fn json_status(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A request body as a JSON object (runners send JSON); `Err` is the reason for a `400`.
pub(crate) fn json_body(body: &Bytes) -> Result<Map<String, Value>, String> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("body must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON body: {e}")),
    }
}

/// A JSON object body with a non-empty `token` (the runner API's auth), or the `400` to
/// answer.
pub(crate) fn token_body(body: &Bytes) -> Result<(Map<String, Value>, String), Box<Response>> {
    let body = json_body(body).map_err(|e| Box::new(bad_request(&e)))?;
    let token = str_field(&body, "token")
        .ok_or_else(|| Box::new(missing("token")))?
        .to_owned();
    Ok((body, token))
}

/// A non-empty string field of a JSON body.
pub(crate) fn str_field<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    body.get(key)?.as_str().filter(|s| !s.is_empty())
}

/// A header as text.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}
