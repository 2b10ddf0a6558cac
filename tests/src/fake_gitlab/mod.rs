//! A fake GitLab that speaks the runner API (`/api/v4/runners*`, `/api/v4/jobs*`) over real
//! HTTP, with an in-process control API for tests. [`FakeGitLab::start_with_control_api`]
//! also serves a JSON control API under `/fake/` for out-of-process use (the `fake-gitlab`
//! binary, the demo); `/fake/*` is NOT part of GitLab's API (see `control_http`).
//!
//! Behaviour follows GitLab's request specs (`spec/requests/api/ci/runner/*_spec.rb`):
//!
//! - Runners: `POST /runners` → `201 {id, token, token_expires_at}`, `403` unknown
//!   registration token, `400` no token. `POST /runners/verify` → `200 {id, token,
//!   token_expires_at}` (`token_expires_at` as `iso8601(3)` or `null`), `403` invalid/expired,
//!   `400` no token; a `system_id` records a runner manager. `POST
//!   /runners/reset_authentication_token` → `201 {token, token_expires_at}` (no `id`), the old
//!   token is refused at once, `403` invalid/expired. `DELETE /runners` → `204`, `403`,
//!   `400`.
//! - `POST /jobs/request`: `403` bad runner token, `201` + payload, else `204` with
//!   `X-GitLab-Last-Update`.
//! - `PUT /jobs/:id`: `403` for an unknown job ("job does not exist anymore"), a wrong token,
//!   or a job that is not running (with `Job-Status: <state>`, e.g. `canceled`, `failed`);
//!   `200` + `Job-Status` otherwise. A canceling (graceful cancel) job answers `200` with
//!   `Job-Status: canceling`. Unrecognized or missing failure reasons of a failed job are
//!   stored as `unknown_failure`, as GitLab does.
//! - `PATCH /jobs/:id/trace`: `403` unknown job, wrong `JOB-TOKEN`, or job not running (with
//!   `Job-Status`); `400` without `Content-Range`; `416` with `Range: 0-<size>` unless the
//!   range starts at the current size; `202` with `Range: 0-<new size>`, `Job-Status` and
//!   `X-GitLab-Trace-Update-Interval`. `403` when the trace would pass `max_trace_size`.
//! - `POST /jobs/:id/artifacts`: `403` unknown job / wrong token / job not running, `413` too
//!   large, `201`.
//!
//! Chosen here without confirming against GitLab's specs (documented so nobody mistakes them
//! for GitLab facts):
//! - `202` on a final `PUT` when `output.checksum`/`output.bytesize` (or the top-level
//!   `checksum`) do not match the trace the fake holds; the job stays running. Real GitLab
//!   answers `202` while its live trace chunks are still being migrated, whatever the
//!   checksum, and then accepts (it only records checksum mismatches in metrics).
//!   [`FakeGitLab::force_update_202`] adds unconditional `202`s.
//! - `Content-Type` of trace patches is recorded ([`JobRecord::trace_content_types`]), not
//!   enforced: GitLab's specs always send `text/plain` and never test another type.
//! - `DELETE /runners/managers` answers `404` for an unknown `system_id`.
//! - `GET /jobs/:id/artifacts` accepts the `JOB-TOKEN` of any known job (GitLab checks the
//!   dependency relation), `403` otherwise, `404` for an unknown job or one without an
//!   archive.
//! - Artifact downloads can be redirected to an unauthenticated object-storage route
//!   ([`FakeGitLab::set_artifact_redirect`]), as GitLab does with object storage.
//! - Long polling: when `long_poll` is set and the runner's `last_update` equals the current
//!   cursor, the request is held until a job is queued or the time is up (Workhorse does
//!   this with Redis).
//! - Faults: `fail_next`/`fail_next_with` (the next N requests), `fail_for` (every request
//!   for a while), `storm` (a seeded share of requests for a while, see `storm.rs`), `delay`
//!   (every answer held); injected answers never reach the handler, except a storm's with
//!   `applied` (the handler runs, then its answer is replaced).
//! - `X-GitLab-Trace-Update-Interval` defaults to `3` (GitLab sends `3` while someone watches
//!   the job, `60` otherwise) so tests run fast.

mod artifacts;
mod control_http;
mod job_spec;
mod jobs;
mod respond;
mod runners;
mod state;
mod storm;
mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State as AxState};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use job_spec::{FAILURE_REASONS, JobSpec};
pub use state::{Endpoint, JobRecord, JobState, RunnerRecord, StoredArtifact};
pub use storm::Storm;

use job_spec::{DependencyInfo, body, build_payload};
use state::{Fault, Shared, random_alnum};

/// A running fake GitLab; stops when dropped.
pub struct FakeGitLab {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    url: String,
}

impl std::fmt::Debug for FakeGitLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGitLab")
            .field("url", &self.url)
            .finish()
    }
}

/// The ids a test needs after enqueueing a job.
#[derive(Debug, Clone)]
pub struct EnqueuedJob {
    pub id: i64,
    pub token: String,
}

/// A job's end as the runner reported it.
#[derive(Debug, Clone)]
pub struct FinalState {
    pub state: JobState,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub trace: Vec<u8>,
}

impl FinalState {
    /// The trace as (lossy) UTF-8.
    pub fn trace_text(&self) -> String {
        String::from_utf8_lossy(&self.trace).into_owned()
    }
}

/// Options for [`FakeGitLab::add_runner_with`].
#[derive(Debug, Clone)]
pub struct NewRunner {
    pub token: String,
    pub token_expires_at: Option<OffsetDateTime>,
    pub tag_list: Vec<String>,
    pub run_untagged: bool,
    pub description: String,
}

impl NewRunner {
    /// A runner with `token`, no expiry, no tags, running untagged jobs.
    pub fn new(token: &str) -> Self {
        NewRunner {
            token: token.to_owned(),
            token_expires_at: None,
            tag_list: Vec::new(),
            run_untagged: true,
            description: "test runner".into(),
        }
    }
}

impl FakeGitLab {
    /// Starts on `127.0.0.1:<free port>`.
    ///
    /// # Panics
    /// When no loopback port can be bound (test setup failure).
    pub async fn start() -> FakeGitLab {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for fake gitlab");
        FakeGitLab::start_on(listener)
    }

    /// Serves on an already-bound listener.
    ///
    /// # Panics
    /// When the listener has no local address.
    pub fn start_on(listener: tokio::net::TcpListener) -> FakeGitLab {
        let addr = listener.local_addr().expect("fake gitlab listener address");
        FakeGitLab::serve(listener, format!("http://{addr}"), false)
    }

    /// Serves on an already-bound listener, telling clients it is at `url` (e.g. a listener
    /// on `0.0.0.0` reached through a veth address).
    pub fn start_on_url(listener: tokio::net::TcpListener, url: String) -> FakeGitLab {
        FakeGitLab::serve(listener, url, false)
    }

    /// Serves on an already-bound listener with, besides the runner API, the JSON control
    /// API under `/fake/` (see `control_http`; not part of GitLab's API). `url` is the base
    /// URL clients reach it at (put into job payloads), e.g. `http://fake-gitlab:8080` when
    /// the listener is bound to `0.0.0.0:8080`.
    pub fn start_with_control_api(listener: tokio::net::TcpListener, url: String) -> FakeGitLab {
        FakeGitLab::serve(listener, url, true)
    }

    /// Starts on `127.0.0.1:<free port>` over HTTPS with `config` (its certificate must name
    /// `127.0.0.1`); [`FakeGitLab::url`] is `https://127.0.0.1:<port>`.
    ///
    /// # Panics
    /// When no loopback port can be bound (test setup failure).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> FakeGitLab {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for fake gitlab");
        let addr = tcp.local_addr().expect("fake gitlab listener address");
        FakeGitLab::serve(
            tls::TlsListener::new(tcp, config),
            format!("https://{addr}"),
            false,
        )
    }

    fn serve<L>(listener: L, url: String, control_api: bool) -> FakeGitLab
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let shared = Shared::new(url.clone());
        let shutdown = CancellationToken::new();
        let mut app = router(Arc::clone(&shared));
        if control_api {
            app = app.merge(control_http::routes(Arc::clone(&shared)));
        }
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                eprintln!("fake gitlab: serve: {e}");
            }
        });
        FakeGitLab {
            shared,
            shutdown,
            url,
        }
    }

    /// `http://127.0.0.1:<port>` (the GitLab URL a runner is configured with).
    pub fn url(&self) -> &str {
        &self.url
    }

    // ---- runners -------------------------------------------------------------------

    /// Accept `token` on `POST /runners`.
    pub fn add_registration_token(&self, token: &str) {
        self.shared
            .lock()
            .registration_tokens
            .insert(token.to_owned());
    }

    /// Accept `token` (`PRIVATE-TOKEN`) on `POST /user/runners` and `DELETE /runners/:id`.
    pub fn add_access_token(&self, token: &str) {
        self.shared.lock().access_tokens.insert(token.to_owned());
    }

    /// Ids of the runners made by `POST /user/runners`.
    pub fn created_runners(&self) -> Vec<i64> {
        self.shared
            .lock()
            .created_by_access_token
            .iter()
            .copied()
            .collect()
    }

    /// A runner created out of band (GitLab 16+ UI workflow) with authentication `token`.
    pub fn add_runner(&self, token: &str) -> i64 {
        self.add_runner_with(NewRunner::new(token))
    }

    pub fn add_runner_with(&self, new: NewRunner) -> i64 {
        let mut st = self.shared.lock();
        let id = st.next_runner_id;
        st.next_runner_id += 1;
        st.runners.insert(
            id,
            RunnerRecord {
                id,
                token: new.token,
                token_expires_at: new.token_expires_at,
                revoked: false,
                description: new.description,
                tag_list: new.tag_list,
                run_untagged: new.run_untagged,
                managers: Default::default(),
            },
        );
        id
    }

    /// Makes `token` expired (now); `false` when no runner has it.
    pub fn expire_token(&self, token: &str) -> bool {
        self.with_runner(token, |r| {
            r.token_expires_at = Some(OffsetDateTime::now_utc() - Duration::from_secs(1))
        })
    }

    /// Sets a runner token's expiry; `false` when no runner has it.
    pub fn set_token_expiry(&self, token: &str, at: Option<OffsetDateTime>) -> bool {
        self.with_runner(token, |r| r.token_expires_at = at)
    }

    /// Revokes `token`: refused everywhere from now on.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.with_runner(token, |r| r.revoked = true)
    }

    fn with_runner(&self, token: &str, f: impl FnOnce(&mut RunnerRecord)) -> bool {
        let mut st = self.shared.lock();
        match st.runners.values_mut().find(|r| r.token == token) {
            Some(r) => {
                f(r);
                true
            }
            None => false,
        }
    }

    /// Lifetime of tokens issued from now on by registration and reset.
    pub fn set_token_lifetime(&self, lifetime: Option<Duration>) {
        self.shared.lock().settings.token_lifetime = lifetime;
    }

    /// All registered runners.
    pub fn runners(&self) -> Vec<RunnerRecord> {
        self.shared.lock().runners.values().cloned().collect()
    }

    /// The runner with this id.
    pub fn runner(&self, id: i64) -> Option<RunnerRecord> {
        self.shared.lock().runners.get(&id).cloned()
    }

    /// `system_id`s recorded for runner `id`.
    pub fn managers(&self, id: i64) -> Vec<String> {
        self.runner(id)
            .map(|r| r.managers.into_iter().collect())
            .unwrap_or_default()
    }

    // ---- jobs ----------------------------------------------------------------------

    /// Queues a job; it goes to the first runner whose tags cover it.
    pub fn enqueue_job(&self, spec: JobSpec) -> EnqueuedJob {
        enqueue(&self.shared, spec)
    }

    /// Cancels a job: later updates/patches get `403` + `Job-Status: canceled`; a pending job
    /// leaves the queue.
    pub fn cancel_job(&self, id: i64) -> bool {
        self.set_state_if(id, |s| !s.is_final(), JobState::Canceled)
    }

    /// Graceful cancel: answers carry `Job-Status: canceling` until the runner's final
    /// update, which ends the job as canceled.
    pub fn cancel_job_gracefully(&self, id: i64) -> bool {
        self.set_state_if(id, |s| s == JobState::Running, JobState::Canceling)
    }

    fn set_state_if(&self, id: i64, when: impl Fn(JobState) -> bool, to: JobState) -> bool {
        let mut st = self.shared.lock();
        let Some(job) = st.jobs.get_mut(&id) else {
            return false;
        };
        if !when(job.state) {
            return false;
        }
        job.state = to;
        st.queue.retain(|j| *j != id);
        drop(st);
        self.shared.changed();
        true
    }

    /// The job as the fake holds it.
    pub fn job(&self, id: i64) -> Option<JobRecord> {
        self.shared.lock().jobs.get(&id).cloned()
    }

    pub fn job_state(&self, id: i64) -> Option<JobState> {
        self.shared.lock().jobs.get(&id).map(|j| j.state)
    }

    /// The trace bytes received so far.
    pub fn trace(&self, id: i64) -> Vec<u8> {
        self.shared
            .lock()
            .jobs
            .get(&id)
            .map(|j| j.trace.clone())
            .unwrap_or_default()
    }

    /// Uploaded artifacts of a job.
    pub fn artifacts(&self, id: i64) -> Vec<StoredArtifact> {
        self.job(id).map(|j| j.artifacts).unwrap_or_default()
    }

    /// Stores an archive for a job directly (a dependency produced elsewhere).
    pub fn put_artifact(&self, id: i64, artifact: StoredArtifact) -> bool {
        let mut st = self.shared.lock();
        match st.jobs.get_mut(&id) {
            Some(job) => {
                job.artifacts.push(artifact);
                true
            }
            None => false,
        }
    }

    /// Waits until the job is success, failed or canceled; `None` on timeout or unknown job.
    pub async fn wait_for_job_finished(&self, id: i64, timeout: Duration) -> Option<FinalState> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.subscribe();
        loop {
            changes.borrow_and_update();
            {
                let st = self.shared.lock();
                let job = st.jobs.get(&id)?;
                if job.state.is_final() {
                    return Some(FinalState {
                        state: job.state,
                        failure_reason: job.failure_reason.clone(),
                        exit_code: job.exit_code,
                        trace: job.trace.clone(),
                    });
                }
            }
            tokio::time::timeout_at(deadline, changes.changed())
                .await
                .ok()?
                .ok()?;
        }
    }

    /// Waits until a runner picked the job up; `false` on timeout.
    pub async fn wait_for_job_running(&self, id: i64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.subscribe();
        loop {
            changes.borrow_and_update();
            if self.job_state(id).is_some_and(|s| s != JobState::Pending) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    // ---- behaviour -----------------------------------------------------------------

    /// Hold `POST /jobs/request` up to `d` when nothing is queued (default: no hold).
    pub fn set_long_poll(&self, d: Duration) {
        self.shared.lock().settings.long_poll = d;
    }

    /// Largest accepted artifacts upload in bytes (default 100 MiB).
    pub fn set_max_artifact_size(&self, bytes: u64) {
        self.shared.lock().settings.max_artifact_size = bytes;
    }

    /// `X-GitLab-Trace-Update-Interval` in seconds (default 3).
    pub fn set_trace_update_interval(&self, secs: u64) {
        self.shared.lock().settings.trace_update_interval = secs;
    }

    /// Answer artifact downloads with `302` to `<base>/_object_storage/jobs/:id/archive`
    /// (`None` serves them directly). `base` may name this server by another host
    /// (`http://localhost:<port>`) to make the redirect cross-origin.
    pub fn set_artifact_redirect(&self, base: Option<&str>) {
        self.shared.lock().settings.artifact_redirect_base = base.map(str::to_owned);
    }

    /// The `JOB-TOKEN` header of every object storage download (`None` = not sent).
    pub fn storage_tokens(&self) -> Vec<Option<String>> {
        self.shared.lock().storage_tokens.clone()
    }

    /// Trace size limit; patches beyond it get `403`.
    pub fn set_max_trace_size(&self, bytes: Option<u64>) {
        self.shared.lock().settings.max_trace_size = bytes;
    }

    /// Answer `status` to the next `count` requests of `endpoint`.
    pub fn fail_next(&self, endpoint: Endpoint, status: u16, count: u32) {
        self.fail_next_with(endpoint, status, count, &[]);
    }

    /// Answer `status` with `headers` (e.g. `Retry-After`, `RateLimit-ResetTime`) to the
    /// next `count` requests of `endpoint`.
    pub fn fail_next_with(
        &self,
        endpoint: Endpoint,
        status: u16,
        count: u32,
        headers: &[(&str, &str)],
    ) {
        let mut st = self.shared.lock();
        let fault = st.faults.entry(endpoint).or_default();
        fault.fail_next = Some((status, count));
        fault.headers = owned_headers(headers);
    }

    /// Answer `status` to every request of `endpoint` for `duration`; returns when the
    /// failures end.
    pub fn fail_for(&self, endpoint: Endpoint, status: u16, duration: Duration) -> Instant {
        let until = Instant::now() + duration;
        let mut st = self.shared.lock();
        let fault = st.faults.entry(endpoint).or_default();
        fault.fail_until = Some((status, until));
        fault.headers.clear();
        until
    }

    /// A 5xx storm on `endpoint` (a share of its requests fail, see [`Storm`]); returns when
    /// it ends. Checked before `fail_for` and `fail_next`.
    pub fn storm(&self, endpoint: Endpoint, storm: &Storm) -> Instant {
        let (raging, until) = storm::Raging::start(storm);
        self.shared.lock().faults.entry(endpoint).or_default().storm = Some(raging);
        until
    }

    /// Delay every answer of `endpoint` (`None` removes the delay).
    pub fn delay(&self, endpoint: Endpoint, delay: Option<Duration>) {
        let mut st = self.shared.lock();
        st.faults.entry(endpoint).or_default().delay = delay;
    }

    /// Drops the last `k` trace bytes of a job, so the runner's next patch gets `416` and
    /// must resend from the smaller size.
    pub fn drop_trace_tail(&self, id: i64, k: usize) -> bool {
        let mut st = self.shared.lock();
        match st.jobs.get_mut(&id) {
            Some(job) => {
                let keep = job.trace.len().saturating_sub(k);
                job.trace.truncate(keep);
                true
            }
            None => false,
        }
    }

    /// Answer the next `count` final updates (`success`/`failed`) of a job with `202`.
    pub fn force_update_202(&self, id: i64, count: u32) {
        self.shared.lock().forced_update_202.insert(id, count);
    }

    // ---- inspection ----------------------------------------------------------------

    /// Requests answered with `status` on `endpoint` (injected faults included).
    pub fn request_count(&self, endpoint: Endpoint, status: u16) -> u64 {
        self.shared
            .lock()
            .counters
            .get(&(endpoint, status))
            .copied()
            .unwrap_or(0)
    }

    /// All counters.
    pub fn request_counts(&self) -> BTreeMap<(Endpoint, u16), u64> {
        self.shared.lock().counters.clone()
    }

    /// `info.features` of every job request, in order.
    pub fn recorded_features(&self) -> Vec<Value> {
        self.shared.lock().features.clone()
    }

    /// `info` of every job request and registration, in order.
    pub fn recorded_infos(&self) -> Vec<Value> {
        self.shared.lock().infos.clone()
    }

    /// Stops serving (also done on drop).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for FakeGitLab {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Queues a job in `shared` (for [`FakeGitLab::enqueue_job`] and the control API).
fn enqueue(shared: &Shared, spec: JobSpec) -> EnqueuedJob {
    let token = spec
        .token
        .clone()
        .unwrap_or_else(|| format!("glcbt-{}", random_alnum(20)));
    let mut st = shared.lock();
    let id = st.next_job_id;
    st.next_job_id += 1;
    let deps: Vec<DependencyInfo> = spec
        .depends_on
        .iter()
        .filter_map(|dep| st.jobs.get(dep))
        .map(|dep| DependencyInfo {
            id: dep.id,
            name: dep.name.clone(),
            token: dep.token.clone(),
            artifacts_file: dep
                .archive()
                .map(|a| (a.filename.clone(), a.content.len() as u64)),
        })
        .collect();
    let payload = build_payload(&spec, id, &token, &shared.url, &deps);
    let body = body(&spec, id, &token, &payload);
    st.jobs.insert(
        id,
        JobRecord {
            id,
            name: spec.name.clone(),
            token: token.clone(),
            tags: spec.tags.clone(),
            payload,
            body,
            state: JobState::Pending,
            runner_id: None,
            failure_reason: None,
            exit_code: None,
            trace: Vec::new(),
            updates: Vec::new(),
            trace_content_types: Vec::new(),
            artifacts: Vec::new(),
            picked_at: None,
            finished_at: None,
        },
    );
    st.queue.push_back(id);
    st.queue_version += 1;
    drop(st);
    shared.changed();
    EnqueuedJob { id, token }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/api/v4/runners",
            post(runners::register).delete(runners::unregister),
        )
        .route("/api/v4/runners/verify", post(runners::verify))
        .route("/api/v4/user/runners", post(runners::create))
        .route("/api/v4/runners/{id}", delete(runners::delete_by_id))
        .route(
            "/api/v4/runners/reset_authentication_token",
            post(runners::reset_token),
        )
        .route(
            "/api/v4/runners/managers",
            delete(runners::unregister_manager),
        )
        .route("/api/v4/jobs/request", post(jobs::request))
        .route("/api/v4/jobs/{id}", put(jobs::update))
        .route("/api/v4/jobs/{id}/trace", patch(jobs::patch_trace))
        .route(
            "/api/v4/jobs/{id}/artifacts",
            post(artifacts::upload).get(artifacts::download),
        )
        .route(
            "/_object_storage/jobs/{id}/archive",
            get(artifacts::object_storage),
        )
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            faults_and_counters,
        ))
        .with_state(shared)
}

fn owned_headers(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// Applies injected faults and delays, then counts the answer per endpoint and status.
async fn faults_and_counters(
    AxState(shared): AxState<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(endpoint) = Endpoint::classify(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let (injected, delay, headers, applied) = {
        let mut st = shared.lock();
        let fault = st.faults.entry(endpoint).or_insert_with(Fault::default);
        let now = Instant::now();
        let mut injected = None;
        let mut headers = fault.headers.clone();
        let mut applied = false;
        if let Some(raging) = &mut fault.storm {
            match raging.draw(now) {
                storm::Draw::Fail(status) => {
                    injected = Some(status);
                    headers = raging.headers.clone();
                    applied = raging.applied;
                }
                storm::Draw::Pass => {}
                storm::Draw::Over => fault.storm = None,
            }
        }
        if injected.is_none()
            && let Some((status, until)) = fault.fail_until
        {
            if now < until {
                injected = Some(status);
            } else {
                fault.fail_until = None;
            }
        }
        if injected.is_none()
            && let Some((status, remaining)) = fault.fail_next
        {
            injected = Some(status);
            fault.fail_next = (remaining > 1).then(|| (status, remaining - 1));
        }
        (injected, fault.delay, headers, applied)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let resp = match injected {
        Some(status) => {
            // Read the request body first, as GitLab behind Workhorse does: an HTTP/1.1
            // server that answers before the body is read closes the connection under the
            // client, which shows as a transport error instead of the injected status.
            if applied {
                let _ = next.run(req).await;
            } else {
                let _ = axum::body::to_bytes(req.into_body(), usize::MAX).await;
            }
            let code = axum::http::StatusCode::from_u16(status)
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = respond::message(code);
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(name.as_bytes()),
                    axum::http::HeaderValue::from_str(&value),
                ) {
                    resp.headers_mut().insert(n, v);
                }
            }
            resp
        }
        None => next.run(req).await,
    };
    let status = resp.status().as_u16();
    *shared
        .lock()
        .counters
        .entry((endpoint, status))
        .or_default() += 1;
    resp.into_response()
}
