//! The HTTP listener for people and monitoring (`--http-listen`): the status pages (`/`,
//! `/agents/{id}`), `/metrics` and `/healthz`. Read-only. Beyond loopback every route but
//! `/healthz` needs the token or basic auth ([`auth`]).
//!
//! - [`auth`]: who may read.
//! - [`html`]: escaping and layout; [`pages`]: the pages as pure functions;
//!   [`fleet_jobs`]: the fleet page's jobs panel, drawn with [`svg`] charts.

pub mod auth;
pub mod fleet_jobs;
pub mod html;
pub mod pages;
pub mod svg;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::state::AppState;
use crate::store::{EventFilter, JobFilter};
pub use auth::HttpAuth;

/// OpenMetrics 1.0 text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The server state.
    pub app: AppState,
    /// Who may read.
    pub auth: std::sync::Arc<HttpAuth>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    let protected = Router::new()
        .route("/", get(fleet_page))
        .route("/agents/{id}", get(agent_page))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn query_token(q: Option<&str>) -> Option<String> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn guard(State(s): State<HttpState>, req: Request, next: Next) -> Response {
    let token = query_token(req.uri().query());
    if s.auth.allows(req.headers(), token.as_deref()) {
        return next.run(req).await;
    }
    let mut resp = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    if let Ok(v) = HeaderValue::from_str(s.auth.challenge()) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn internal(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "{what}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{what} failed; see the controller log\n"),
    )
        .into_response()
}

async fn fleet_page(State(s): State<HttpState>, Query(filter): Query<pages::Filter>) -> Response {
    let views = match s.app.health.views().await {
        Ok(v) => v,
        Err(e) => return internal("read agents", e),
    };
    let rollout = super::admin::rollout_status(&s.app)
        .await
        .unwrap_or_default();
    let now = s.app.health.leases.now();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    s.app.health.flush_events().await;
    let since = now - fleet_jobs::WINDOW;
    let read = crate::store::blocking(&s.app.store, move |st| {
        let recent = JobFilter {
            since: Some(since),
            limit: fleet_jobs::MAX_JOBS,
            ..JobFilter::default()
        };
        let running = JobFilter {
            state: "running".into(),
            limit: fleet_jobs::MAX_RUNNING,
            ..JobFilter::default()
        };
        Ok(fleet_jobs::FleetJobs {
            recent: st.list_jobs(&recent)?,
            running: st.list_jobs(&running)?,
            samples: st.list_fleet_samples(since)?,
        })
    });
    let jobs = match read.await {
        Ok(j) => j,
        Err(e) => return internal("read jobs", e),
    };
    Html(pages::fleet(&views, &rollout, &jobs, &filter, now)).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: Option<String>,
}

async fn agent_page(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let view = match s.app.health.view(&id).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Html(html::page(
                    "No such agent",
                    pages::REFRESH_SECS,
                    "",
                    "/",
                    &format!(
                        "<p>No agent with id <span class=\"mono\">{}</span>.</p>",
                        html::esc(&id)
                    ),
                )),
            )
                .into_response();
        }
        Err(e) => return internal("read agent", e),
    };
    s.app.health.sweep().await;
    let filter = |kind: &str, limit| EventFilter {
        agent_id: id.clone(),
        kind: kind.into(),
        limit,
        ..EventFilter::default()
    };
    let (all, job) = (filter("", 50), filter("job", 20));
    let (events, jobs) = crate::store::blocking(&s.app.store, move |s| {
        Ok((
            s.list_events(&all).unwrap_or_default(),
            s.list_events(&job).unwrap_or_default(),
        ))
    })
    .await
    .unwrap_or_default();
    let runners = s.app.fleet.runner_statuses(&id).await;
    let now = s.app.health.leases.now();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    Html(pages::agent(
        &view,
        &runners,
        &events,
        &jobs,
        q.token.as_deref(),
        now,
    ))
    .into_response()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    match s.app.metrics.render(&s.app.health).await {
        Ok(body) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => internal("encode metrics", e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_from_query() {
        assert_eq!(
            super::query_token(Some("state=lost&token=a%26b")),
            Some("a&b".into())
        );
        assert_eq!(super::query_token(Some("state=lost")), None);
        assert_eq!(super::query_token(None), None);
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
    }
}
