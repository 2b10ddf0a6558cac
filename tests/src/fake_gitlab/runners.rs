//! `/api/v4/runners*`: registration, verification, token reset, unregistration.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::respond::{
    bad_request, forbidden, json_body, json_status, missing, str_field, token_body,
};
use super::state::{RunnerRecord, Shared, State, format_time, random_alnum};

fn expires(t: Option<OffsetDateTime>) -> Value {
    t.map(|t| json!(format_time(t))).unwrap_or(Value::Null)
}

fn tag_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str().map(|s| s.trim().to_owned()))
            .filter(|t| !t.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// Adds a runner made from a registration or creation request `body` (description, tags,
/// `run_untagged`) with a fresh token; returns its id and the `201` answer
/// `{id, token, token_expires_at}`.
fn add_runner(st: &mut State, body: &Map<String, Value>, now: OffsetDateTime) -> (i64, Value) {
    let id = st.next_runner_id;
    st.next_runner_id += 1;
    let tags = tag_list(body.get("tag_list"));
    let runner = RunnerRecord {
        id,
        token: format!("glrt-{}", random_alnum(20)),
        token_expires_at: st.token_expiry(now),
        revoked: false,
        description: str_field(body, "description")
            .unwrap_or_default()
            .to_owned(),
        // GitLab's default: run untagged jobs only when no tags are given.
        run_untagged: body
            .get("run_untagged")
            .and_then(Value::as_bool)
            .unwrap_or(tags.is_empty()),
        tag_list: tags,
        managers: Default::default(),
    };
    let answer = json!({
        "id": runner.id,
        "token": runner.token,
        "token_expires_at": expires(runner.token_expires_at),
    });
    st.runners.insert(id, runner);
    (id, answer)
}

/// `POST /runners`: `201 {id, token, token_expires_at}`, `403` unknown registration token,
/// `400` no token.
pub(crate) async fn register(AxState(shared): AxState<Arc<Shared>>, body: Bytes) -> Response {
    let (body, token) = match token_body(&body) {
        Ok(parsed) => parsed,
        Err(answer) => return *answer,
    };
    let now = OffsetDateTime::now_utc();
    let mut st = shared.lock();
    if !st.registration_tokens.contains(&token) {
        return forbidden(None);
    }
    if let Some(info) = body.get("info") {
        st.infos.push(info.clone());
    }
    let (_, answer) = add_runner(&mut st, &body, now);
    json_status(StatusCode::CREATED, answer)
}

/// `POST /runners/verify`: `200 {id, token, token_expires_at}`; `403` invalid, expired or
/// revoked; `400` no token. A `system_id` creates a runner manager.
pub(crate) async fn verify(AxState(shared): AxState<Arc<Shared>>, body: Bytes) -> Response {
    let (body, token) = match token_body(&body) {
        Ok(parsed) => parsed,
        Err(answer) => return *answer,
    };
    let now = OffsetDateTime::now_utc();
    let mut st = shared.lock();
    let Some(runner) = st.runner_by_token_mut(&token, now) else {
        return forbidden(None);
    };
    if let Some(system_id) = str_field(&body, "system_id") {
        runner.managers.insert(system_id.to_owned());
    }
    json_status(
        StatusCode::OK,
        json!({
            "id": runner.id,
            "token": runner.token,
            "token_expires_at": expires(runner.token_expires_at),
        }),
    )
}

/// `POST /runners/reset_authentication_token`: `201 {token, token_expires_at}`; the old
/// token stops working at once; `403` invalid or expired.
pub(crate) async fn reset_token(AxState(shared): AxState<Arc<Shared>>, body: Bytes) -> Response {
    let (_, token) = match token_body(&body) {
        Ok(parsed) => parsed,
        Err(answer) => return *answer,
    };
    let now = OffsetDateTime::now_utc();
    let mut st = shared.lock();
    let expiry = st.token_expiry(now);
    let Some(runner) = st.runner_by_token_mut(&token, now) else {
        return forbidden(None);
    };
    runner.token = format!("glrt-{}", random_alnum(20));
    runner.token_expires_at = expiry;
    json_status(
        StatusCode::CREATED,
        json!({"token": runner.token, "token_expires_at": expires(runner.token_expires_at)}),
    )
}

/// `DELETE /runners`: `204`; `403` invalid token; `400` no token.
pub(crate) async fn unregister(AxState(shared): AxState<Arc<Shared>>, body: Bytes) -> Response {
    let (_, token) = match token_body(&body) {
        Ok(parsed) => parsed,
        Err(answer) => return *answer,
    };
    let now = OffsetDateTime::now_utc();
    let mut st = shared.lock();
    let Some(id) = st.runner_by_token(&token, now).map(|r| r.id) else {
        return forbidden(None);
    };
    st.runners.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /runners/managers`: `204` removes this `system_id`'s manager; `403` invalid
/// token; `400` no token or system_id; `404` unknown system_id (not confirmed against
/// GitLab's specs).
pub(crate) async fn unregister_manager(
    AxState(shared): AxState<Arc<Shared>>,
    body: Bytes,
) -> Response {
    let (body, token) = match token_body(&body) {
        Ok(parsed) => parsed,
        Err(answer) => return *answer,
    };
    let Some(system_id) = str_field(&body, "system_id") else {
        return missing("system_id");
    };
    let now = OffsetDateTime::now_utc();
    let mut st = shared.lock();
    let Some(runner) = st.runner_by_token_mut(&token, now) else {
        return forbidden(None);
    };
    if runner.managers.remove(system_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        super::respond::message(StatusCode::NOT_FOUND)
    }
}

/// The access token of a REST API call (`PRIVATE-TOKEN`, or `Authorization: Bearer`).
fn access_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    super::respond::header(headers, "private-token").or_else(|| {
        super::respond::header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "))
    })
}

/// `POST /user/runners` (GitLab 15.10+, access token with `create_runner`): `201 {id,
/// token, token_expires_at}`; `401` missing or unknown access token; `400` bad or missing
/// `runner_type`, or no `group_id`/`project_id` for a group/project runner.
pub(crate) async fn create(
    AxState(shared): AxState<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&e),
    };
    let now = OffsetDateTime::now_utc();
    let mut st = shared.lock();
    if !access_token(&headers).is_some_and(|t| st.access_tokens.contains(t)) {
        return super::respond::message(StatusCode::UNAUTHORIZED);
    }
    let Some(runner_type) = str_field(&body, "runner_type") else {
        return missing("runner_type");
    };
    let scope = match runner_type {
        "instance_type" => None,
        "group_type" => Some("group_id"),
        "project_type" => Some("project_id"),
        _ => return bad_request("runner_type does not have a valid value"),
    };
    if let Some(key) = scope
        && body.get(key).and_then(Value::as_i64).is_none()
    {
        return missing(key);
    }
    let (id, answer) = add_runner(&mut st, &body, now);
    st.created_by_access_token.insert(id);
    json_status(StatusCode::CREATED, answer)
}

/// `DELETE /runners/:id` (access token): `204`, whatever the runner's own token's state;
/// `401` missing or unknown access token; `404` no such runner.
pub(crate) async fn delete_by_id(
    AxState(shared): AxState<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let mut st = shared.lock();
    if !access_token(&headers).is_some_and(|t| st.access_tokens.contains(t)) {
        return super::respond::message(StatusCode::UNAUTHORIZED);
    }
    let Ok(id) = id.parse::<i64>() else {
        return super::respond::message(StatusCode::NOT_FOUND);
    };
    match st.runners.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => super::respond::message(StatusCode::NOT_FOUND),
    }
}
