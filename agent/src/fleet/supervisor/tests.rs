use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::clock::{FakeClock, TokioClock};
use crate::fleet::desired::{Applied, Raw};
use crate::fleet::drain_file;
use crate::fleet::messages::{DrainDeadline, JobState, RunnerEventKind};
use crate::fleet::report::{self, UnitReport};
use crate::runner::fake_executor::FakeExecutor;
use drover_gitlab::fake::{Call, FakeGitLab, job};
use drover_gitlab::{
    ArtifactUpload, GitLabError, JobRequest, JobUpdate, RegisterOptions, RunnerAuth,
    RunnerCredentials, TraceAnswer, UpdateAnswer,
};

/// A GitLab that knows which runner tokens are valid (verify and job request answer `403`
/// to others), rotates them, and notes what the agent's state file held when a rotated
/// token was first used. Jobs are the [`FakeGitLab`]'s.
struct TokenGitLab {
    jobs: FakeGitLab,
    valid: Mutex<HashSet<String>>,
    /// The token `reset_token` hands out next.
    next_token: Mutex<String>,
    next_expiry: Mutex<Option<String>>,
    /// Tokens handed out by `reset_token`, not used yet.
    fresh: Mutex<HashSet<String>>,
    /// For each fresh token's first use: did the state file hold it already?
    persisted_before_use: Mutex<Vec<bool>>,
    state_file: PathBuf,
    resets: Mutex<u32>,
    /// `reset_token` answers 500 while set.
    reset_down: Mutex<bool>,
}

impl TokenGitLab {
    fn new(state_file: PathBuf, valid: &[&str]) -> Self {
        TokenGitLab {
            jobs: FakeGitLab::new(),
            valid: Mutex::new(valid.iter().map(|s| s.to_string()).collect()),
            next_token: Mutex::new("glrt-rotated".into()),
            next_expiry: Mutex::new(None),
            fresh: Mutex::new(HashSet::new()),
            persisted_before_use: Mutex::new(Vec::new()),
            state_file,
            resets: Mutex::new(0),
            reset_down: Mutex::new(false),
        }
    }

    fn check(&self, token: &SecretString, endpoint: &'static str) -> Result<(), GitLabError> {
        let t = token.expose_secret().to_string();
        if self.fresh.lock().unwrap().remove(&t) {
            let file = std::fs::read_to_string(&self.state_file).unwrap_or_default();
            self.persisted_before_use
                .lock()
                .unwrap()
                .push(file.contains(&t));
        }
        if self.valid.lock().unwrap().contains(&t) {
            Ok(())
        } else {
            Err(GitLabError::Forbidden {
                endpoint,
                job_status: None,
            })
        }
    }

    fn revoke(&self, token: &str) {
        self.valid.lock().unwrap().remove(token);
    }

    fn allow(&self, token: &str) {
        self.valid.lock().unwrap().insert(token.to_string());
    }

    fn verifies(&self) -> usize {
        self.jobs
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Verify { .. }))
            .count()
    }

    fn requests(&self) -> usize {
        self.jobs
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::RequestJob { .. }))
            .count()
    }
}

#[async_trait]
impl GitLab for TokenGitLab {
    async fn register(
        &self,
        t: &SecretString,
        o: &RegisterOptions,
    ) -> Result<RunnerCredentials, GitLabError> {
        self.jobs.register(t, o).await
    }
    async fn verify(&self, auth: &RunnerAuth) -> Result<RunnerCredentials, GitLabError> {
        let r = self.jobs.verify(auth).await;
        self.check(&auth.token, "verify")?;
        r
    }
    async fn reset_token(&self, token: &SecretString) -> Result<RunnerCredentials, GitLabError> {
        self.check(token, "reset token")?;
        if *self.reset_down.lock().unwrap() {
            return Err(GitLabError::Status {
                endpoint: "reset token",
                status: 500,
                body: "internal server error".into(),
            });
        }
        *self.resets.lock().unwrap() += 1;
        let new = self.next_token.lock().unwrap().clone();
        self.revoke(token.expose_secret());
        self.allow(&new);
        self.fresh.lock().unwrap().insert(new.clone());
        Ok(RunnerCredentials {
            id: Some(42),
            token: SecretString::from(new),
            token_expires_at: self.next_expiry.lock().unwrap().clone(),
        })
    }
    async fn unregister(&self, t: &SecretString) -> Result<(), GitLabError> {
        self.jobs.unregister(t).await
    }
    async fn request_job(
        &self,
        auth: &RunnerAuth,
        last_update: Option<&str>,
    ) -> Result<JobRequest, GitLabError> {
        self.check(&auth.token, "request job")?;
        self.jobs.request_job(auth, last_update).await
    }
    async fn update_job(
        &self,
        id: i64,
        t: &SecretString,
        u: &JobUpdate,
    ) -> Result<UpdateAnswer, GitLabError> {
        self.jobs.update_job(id, t, u).await
    }
    async fn patch_trace(
        &self,
        id: i64,
        t: &SecretString,
        offset: u64,
        bytes: &[u8],
    ) -> Result<TraceAnswer, GitLabError> {
        self.jobs.patch_trace(id, t, offset, bytes).await
    }
    async fn upload_artifacts(
        &self,
        id: i64,
        t: &SecretString,
        u: &ArtifactUpload,
    ) -> Result<(), GitLabError> {
        self.jobs.upload_artifacts(id, t, u).await
    }
    async fn download_artifacts(
        &self,
        id: i64,
        t: &SecretString,
        dest: &std::path::Path,
    ) -> Result<u64, GitLabError> {
        self.jobs.download_artifacts(id, t, dest).await
    }
}

struct FakeDocker {
    up: AtomicBool,
    /// Images missing on this fake box: a runner naming one is refused by pre-flight.
    absent: Mutex<Vec<String>>,
    /// How long each job runs.
    hold: Duration,
    /// How long pre-flight takes (a slow engine), in milliseconds.
    preflight_ms: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl DockerDep for FakeDocker {
    async fn ping(&self) -> Result<crate::health::DockerStatus, String> {
        if self.up.load(Ordering::SeqCst) {
            Ok(crate::health::DockerStatus {
                version: "20.10.24".into(),
                root_dir: "/var/lib/docker".into(),
            })
        } else {
            Err("connection refused (fake)".into())
        }
    }
    async fn executor(&self) -> anyhow::Result<Arc<dyn Executor>> {
        Ok(Arc::new(FakeExecutor {
            hold: self.hold,
            ..FakeExecutor::default()
        }))
    }
    async fn preflight(
        &self,
        runners: &[drover_proto::spec::RunnerConfig],
    ) -> Result<Vec<String>, String> {
        let slow = self.preflight_ms.load(Ordering::SeqCst);
        if slow > 0 {
            tokio::time::sleep(Duration::from_millis(slow)).await;
        }
        if let Some(first) = runners.first()
            && !self.up.load(Ordering::SeqCst)
        {
            return Err(format!(
                "runner {:?}: docker engine does not answer (fake)",
                first.name
            ));
        }
        let absent = self.absent.lock().unwrap().clone();
        for r in runners {
            for image in drover_job::disk::required_images(std::iter::once(r)) {
                if absent.contains(&image) {
                    return Err(format!(
                        "runner {:?}: image {image:?} is not present and pull_policy is \"never\"",
                        r.name
                    ));
                }
            }
        }
        Ok(Vec::new())
    }
}

struct Harness {
    desired: mpsc::UnboundedSender<DesiredState>,
    commands: mpsc::UnboundedSender<Command>,
    out: mpsc::Receiver<ToController>,
    /// Every message read from `out` so far.
    seen: Vec<ToController>,
    report: watch::Receiver<Report>,
    gl: Arc<TokenGitLab>,
    docker: Arc<FakeDocker>,
    ips: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    /// Cancel to stop gracefully (SIGQUIT).
    graceful: CancellationToken,
    /// What the systemd watchdog's health check reads.
    liveness: Liveness,
    task: tokio::task::JoinHandle<()>,
}

const SPEC: &str =
    r#"{"url":"http://gitlab.test","executor":"docker","docker":{"image":"busybox"}}"#;
const WAIT: Duration = Duration::from_secs(10);

// Tests that show "nothing happened" run on paused time (`start_paused`): a `sleep` there
// lets every task run until all wait while tokio's clock moves on, and the units' clock
// (`TokioClock`, or a `FakeClock` moved by hand) follows it, so "no restart in 300 ms" is
// fifteen supervisor ticks on any machine, not whatever a slow one managed.

fn assignment(name: &str, token: &str) -> Raw {
    Raw {
        name: name.into(),
        spec_json: SPEC.into(),
        runner_token: token.into(),
        gitlab_runner_id: 11,
        token_expires_at: None,
        token_obtained_at: None,
        ..Default::default()
    }
}

fn state(generation: u64, runners: Vec<Raw>) -> DesiredState {
    DesiredState {
        generation,
        runners,
    }
}

/// An ack as the tests read it.
#[derive(Debug)]
struct Ack {
    generation: u64,
    applied: bool,
    error: String,
}

/// A runner event as the tests read it.
#[derive(Debug)]
struct Event {
    runner: String,
    message: String,
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        start_limit_burst: 5,
        start_limit_interval: Duration::from_secs(60),
        watchdog: Duration::from_secs(60),
    }
}

async fn start(dir: tempfile::TempDir, gl: Arc<TokenGitLab>, docker_up: bool) -> Harness {
    start_with(dir, gl, docker_up, policy(), Duration::ZERO).await
}

async fn start_with(
    dir: tempfile::TempDir,
    gl: Arc<TokenGitLab>,
    docker_up: bool,
    policy: RestartPolicy,
    hold: Duration,
) -> Harness {
    start_clocked(
        dir,
        gl,
        docker_up,
        policy,
        hold,
        Arc::new(TokioClock::new()),
    )
    .await
}

async fn start_clocked(
    dir: tempfile::TempDir,
    gl: Arc<TokenGitLab>,
    docker_up: bool,
    policy: RestartPolicy,
    hold: Duration,
    clock: Arc<dyn Clock>,
) -> Harness {
    let (out_tx, out) = mpsc::channel(256);
    let (report_tx, report) = watch::channel(Report::default());
    let (desired, desired_rx) = mpsc::unbounded_channel();
    let docker = Arc::new(FakeDocker {
        up: AtomicBool::new(docker_up),
        absent: Mutex::new(Vec::new()),
        hold,
        preflight_ms: Default::default(),
    });
    let ips = Arc::new(Mutex::new(vec!["10.0.0.1".to_string()]));
    let ips_fn = ips.clone();
    let g = gl.clone();
    let deps = Deps {
        gitlab: Arc::new(move |_| Ok(g.clone() as Arc<dyn GitLab>)),
        docker: docker.clone(),
        store: Store::new(dir.path()),
        status_path: Some(report::status_file(dir.path())),
        system_id: "s_0123456789ab".into(),
        agent_id: "agent-fleet-test".into(),
        outbound: out_tx,
        report: report_tx,
        ips: Arc::new(move || ips_fn.lock().unwrap().clone()),
        on_ips_changed: None,
        timings: Timings {
            tick: Duration::from_millis(20),
            docker_ping: Duration::from_millis(20),
            ip_poll: Duration::from_millis(50),
            apply_timeout: Duration::from_secs(2),
            status_every: Duration::from_millis(100),
            token_invalid_repeat: Duration::from_millis(300),
            policy,
            tune: Some(Arc::new(|s: &mut RunnerSettings| {
                s.check_interval = Duration::from_millis(20);
                s.upload.interval = Duration::from_millis(20);
                s.upload.keepalive = Duration::from_millis(100);
                s.backoff_min = Duration::from_millis(5);
                s.backoff_max = Duration::from_millis(20);
            })),
        },
        clock,
    };
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let graceful = CancellationToken::new();
    let liveness = Liveness::new();
    let mut sup = Supervisor::new(deps)
        .with_commands(commands_rx)
        .with_graceful_stop(graceful.clone())
        .with_liveness(liveness.clone());
    sup.restore().await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(sup.run(desired_rx, stop.clone(), Duration::from_secs(5)));
    Harness {
        desired,
        commands,
        out,
        seen: Vec::new(),
        report,
        gl,
        docker,
        ips,
        dir,
        stop,
        graceful,
        liveness,
        task,
    }
}

impl Harness {
    /// Reads the next message (noting it in `seen`); panics at `end` naming `what`.
    async fn next_message(&mut self, end: tokio::time::Instant, what: &str) -> ToController {
        let m = tokio::time::timeout_at(end, self.out.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} in time"))
            .expect("outbound open");
        self.seen.push(m.clone());
        m
    }

    /// Reads messages until the next ack.
    async fn ack(&mut self) -> Ack {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            if let ToController::Ack {
                generation,
                refused,
            } = self.next_message(end, "an ack").await
            {
                return Ack {
                    generation,
                    applied: refused.is_none(),
                    error: refused.unwrap_or_default(),
                };
            }
        }
    }

    /// Pushes generation `generation` with `runners`; returns its ack.
    async fn push(&mut self, generation: u64, runners: Vec<Raw>) -> Ack {
        self.desired.send(state(generation, runners)).unwrap();
        self.ack().await
    }

    /// Pushes generation 1 with runner `a` on token `glrt-a`; waits until it runs.
    async fn run_a(&mut self) {
        let ack = self.push(1, vec![assignment("a", "glrt-a")]).await;
        assert!(ack.applied, "{ack:?}");
        self.wait_report("a running", |r| is_running(r, "a")).await;
    }

    /// Queues job `id` (`true`) and waits until unit `a` has succeeded one job.
    async fn job_on_a(&mut self, id: i64, what: &str) {
        self.gl.jobs.push_job(job(id, &["true"]));
        self.wait_report(what, |r| unit(r, "a").jobs_succeeded == 1)
            .await;
    }

    /// Reads messages until one matches `f` (or returns one seen already).
    async fn message(&mut self, f: impl Fn(&ToController) -> bool) -> ToController {
        if let Some(k) = self.seen.iter().find(|k| f(k)) {
            return k.clone();
        }
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let kind = self.next_message(end, "the message").await;
            if f(&kind) {
                return kind;
            }
        }
    }

    /// The first runner event of `kind` (seen already, or read now).
    async fn runner_event(&mut self, kind: RunnerEventKind) -> Event {
        match self
            .message(|m| matches!(m, ToController::Event { kind: k, .. } if *k == kind))
            .await
        {
            ToController::Event {
                runner, message, ..
            } => Event { runner, message },
            _ => unreachable!("message matched a runner event"),
        }
    }

    async fn wait_report(&mut self, what: &str, f: impl Fn(&Report) -> bool) -> Report {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            {
                let r = self.report.borrow_and_update();
                if f(&r) {
                    return r.clone();
                }
            }
            if tokio::time::timeout_at(end, self.report.changed())
                .await
                .is_err()
            {
                panic!(
                    "{what}: not reached; last report {:#?}",
                    *self.report.borrow()
                );
            }
        }
    }

    async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        self.task.await.unwrap();
        self.dir
    }
}

/// The unit `name` (an empty report while it does not exist yet).
fn unit(r: &Report, name: &str) -> UnitReport {
    r.units
        .iter()
        .find(|u| u.name == name)
        .cloned()
        .unwrap_or_default()
}

fn is_running(r: &Report, name: &str) -> bool {
    r.units
        .iter()
        .any(|u| u.name == name && u.state == "running")
}

fn new_gl(dir: &tempfile::TempDir, valid: &[&str]) -> Arc<TokenGitLab> {
    Arc::new(TokenGitLab::new(dir.path().join("applied.json"), valid))
}

/// A supervisor in a fresh dir whose GitLab accepts only `glrt-a`.
async fn start_a(docker_up: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    start(dir, gl, docker_up).await
}

#[tokio::test]
async fn pushed_generation_is_acked_persisted_and_runs_jobs() {
    let mut h = start_a(true).await;
    let ack = h.push(1, vec![assignment("a", "glrt-a")]).await;
    assert!(ack.applied, "{ack:?}");
    assert_eq!(ack.generation, 1);
    h.wait_report("a running", |r| is_running(r, "a")).await;
    h.gl.jobs.push_job(job(5, &["echo hi"]));
    let r = h
        .wait_report("job done", |r| unit(r, "a").jobs_succeeded == 1)
        .await;
    assert_eq!(r.applied_generation, 1);
    assert_eq!(unit(&r, "a").gitlab_runner_id, 11);
    assert!(unit(&r, "a").log.iter().any(|l| l.contains("job 5")));
    h.message(|k| {
        matches!(
            k,
            ToController::Job {
                job_id: 5,
                state: JobState::Running,
                ..
            }
        )
    })
    .await;
    h.message(|k| {
        matches!(
            k,
            ToController::Job {
                job_id: 5,
                state: JobState::Success,
                ..
            }
        )
    })
    .await;
    let saved = Store::new(h.dir.path()).load().unwrap().unwrap();
    assert_eq!(saved.generation, 1);
    assert_eq!(saved.runners[0].runner_token, "glrt-a");
    let status: Report =
        serde_json::from_slice(&std::fs::read(report::status_file(h.dir.path())).unwrap()).unwrap();
    assert_eq!(status.units.len(), 1);
    // The same generation again is acked without touching the unit.
    let before = h.gl.verifies();
    assert!(h.push(1, vec![assignment("a", "glrt-a")]).await.applied);
    assert_eq!(h.gl.verifies(), before);
    h.stop().await;
}

#[tokio::test]
async fn refused_generations_leave_the_running_units_untouched() {
    let mut h = start_a(true).await;
    h.run_a().await;
    let verifies = h.gl.verifies();

    // Invalid spec for b: refused, nothing changes.
    let mut bad = assignment("b", "glrt-b");
    bad.spec_json = r#"{"url":"http://gitlab.test","executor":"shell"}"#.into();
    let ack = h.push(2, vec![assignment("a", "glrt-a"), bad]).await;
    assert!(!ack.applied);
    assert_eq!(ack.generation, 2);
    assert!(
        ack.error.contains("runner \"b\"") && ack.error.contains("shell"),
        "{}",
        ack.error
    );

    // A token GitLab refuses: refused after the verify round, nothing changes.
    let ack = h
        .push(
            3,
            vec![assignment("a", "glrt-a"), assignment("b", "glrt-nope")],
        )
        .await;
    assert!(!ack.applied);
    assert!(
        ack.error.contains("runner b: gitlab refused the token"),
        "{}",
        ack.error
    );

    let r = h.report.borrow().clone();
    assert_eq!(r.applied_generation, 1);
    assert_eq!(r.units.len(), 1);
    assert!(is_running(&r, "a"));
    assert!(
        r.last_refusal
            .as_deref()
            .unwrap_or("")
            .contains("generation 3")
    );
    // a was not restarted: only b's verify happened.
    assert_eq!(h.gl.verifies(), verifies + 1);
    assert_eq!(
        Store::new(h.dir.path()).load().unwrap().unwrap().generation,
        1
    );
    // a still runs jobs.
    h.job_on_a(9, "job after refusal").await;

    // A good generation replaces a by b; a is removed.
    h.gl.allow("glrt-b");
    assert!(h.push(4, vec![assignment("b", "glrt-b")]).await.applied);
    let r = h
        .wait_report("b running, a gone", |r| {
            r.units.len() == 1 && is_running(r, "b")
        })
        .await;
    assert_eq!(r.applied_generation, 4);
    h.stop().await;
}

#[tokio::test]
async fn restart_runs_the_persisted_generation_without_a_controller() {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    let mut h = start(dir, gl.clone(), true).await;
    assert!(h.push(7, vec![assignment("a", "glrt-a")]).await.applied);
    let dir = h.stop().await;

    // No desired state is ever pushed now.
    let mut h = start(dir, gl, true).await;
    let r = h
        .wait_report("a running from the file", |r| is_running(r, "a"))
        .await;
    assert_eq!(r.applied_generation, 7);
    h.job_on_a(3, "job").await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn forbidden_job_request_degrades_until_a_new_token_arrives() {
    let mut h = start_a(true).await;
    h.run_a().await;
    h.gl.revoke("glrt-a");
    let ev = h.runner_event(RunnerEventKind::TokenInvalid).await;
    assert_eq!(ev.runner, "a");
    let r = h
        .wait_report("degraded", |r| unit(r, "a").state == "degraded")
        .await;
    assert!(unit(&r, "a").last_error.as_deref().unwrap().contains("403"));
    // No crash loop: nothing is requested with the dead token any more.
    let (verifies, requests) = (h.gl.verifies(), h.gl.requests());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((h.gl.verifies(), h.gl.requests()), (verifies, requests));
    assert_eq!(h.report.borrow().units[0].state, "degraded");
    // While it waits, the report repeats (the controller may have rate-limited the first).
    let count = |h: &Harness| {
        h.seen
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    ToController::Event {
                        kind: RunnerEventKind::TokenInvalid,
                        ..
                    }
                )
            })
            .count()
    };
    while count(&h) < 2 {
        let end = tokio::time::Instant::now() + WAIT;
        h.next_message(end, "a repeated token-invalid").await;
    }

    // The controller re-registers and pushes a new token.
    h.gl.allow("glrt-a2");
    assert!(h.push(2, vec![assignment("a", "glrt-a2")]).await.applied);
    h.wait_report("running again", |r| is_running(r, "a")).await;
    h.job_on_a(4, "job").await;
    h.stop().await;
}

/// A state file with generation 2 running runner `a` on `glrt-a` (gitlab runner 11),
/// obtained and expiring at these times.
fn save_a(dir: &tempfile::TempDir, obtained: OffsetDateTime, expires: OffsetDateTime) {
    Store::new(dir.path())
        .save(&Applied {
            generation: 2,
            runners: vec![Raw {
                name: "a".into(),
                spec_json: SPEC.into(),
                runner_token: "glrt-a".into(),
                gitlab_runner_id: 11,
                token_expires_at: Some(rfc3339(expires)),
                token_obtained_at: Some(rfc3339(obtained)),
                ..Default::default()
            }],
        })
        .unwrap();
}

#[tokio::test]
async fn token_rotation_persists_before_use_and_tells_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    *gl.next_expiry.lock().unwrap() = Some("2099-01-01T00:00:00Z".into());
    // A token obtained long ago that expires soon: rotation is due at once.
    let now = OffsetDateTime::now_utc();
    save_a(
        &dir,
        now - time::Duration::hours(10),
        now + time::Duration::hours(1),
    );
    let mut h = start(dir, gl, true).await;
    let m = h
        .message(|k| matches!(k, ToController::TokenRotated { .. }))
        .await;
    let ToController::TokenRotated {
        runner,
        token,
        token_expires_at,
        gitlab_runner_id,
    } = m
    else {
        unreachable!()
    };
    assert_eq!(runner, "a");
    assert_eq!(token.expose_secret(), "glrt-rotated");
    assert_eq!(gitlab_runner_id, 42);
    assert_eq!(
        OffsetDateTime::parse(
            &token_expires_at.unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .unwrap()
        .unix_timestamp(),
        OffsetDateTime::parse(
            "2099-01-01T00:00:00Z",
            &time::format_description::well_known::Rfc3339
        )
        .unwrap()
        .unix_timestamp()
    );
    let r = h
        .wait_report("running on the new token", |r| {
            is_running(r, "a")
                && r.units[0].token_expires_at.as_deref() == Some("2099-01-01T00:00:00Z")
        })
        .await;
    assert_eq!(unit(&r, "a").gitlab_runner_id, 42);
    h.job_on_a(8, "job").await;
    assert_eq!(*h.gl.resets.lock().unwrap(), 1);
    let used = h.gl.persisted_before_use.lock().unwrap().clone();
    assert_eq!(
        used,
        vec![true],
        "the file held the new token before its first use"
    );
    let saved = Store::new(h.dir.path()).load().unwrap().unwrap();
    assert_eq!(saved.runners[0].runner_token, "glrt-rotated");

    // A push that still carries the old token keeps the rotated one.
    assert!(h.push(3, vec![assignment("a", "glrt-a")]).await.applied);
    let saved = Store::new(h.dir.path()).load().unwrap().unwrap();
    assert_eq!(saved.generation, 3);
    assert_eq!(saved.runners[0].runner_token, "glrt-rotated");
    h.stop().await;
}

/// Issue 14 item 5: heartbeats say when a token is rotated and why its last rotation
/// failed, so the controller degrades the agent only for a rotation overdue or failing.
#[tokio::test]
async fn reports_carry_the_rotation_point_and_a_failed_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    *gl.reset_down.lock().unwrap() = true;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let obtained = now - time::Duration::seconds(35);
    let expires = now + time::Duration::seconds(5);
    save_a(&dir, obtained, expires);
    let mut h = start(dir, gl, true).await;
    let r = h
        .wait_report("a failed rotation", |r| {
            unit(r, "a").token_rotation_error.is_some()
        })
        .await;
    let u = unit(&r, "a");
    assert_eq!(
        u.token_rotate_at.as_deref(),
        Some(rfc3339(obtained + time::Duration::seconds(30)).as_str())
    );
    let error = u.token_rotation_error.as_deref().unwrap_or_default();
    assert!(error.contains("500"), "{error}");
    // With 5 s left the retry comes within seconds, not a minute later; a success clears
    // the error.
    *h.gl.reset_down.lock().unwrap() = false;
    h.wait_report("rotated on the retry", |r| {
        let u = unit(r, "a");
        u.token_rotation_error.is_none() && u.token_expires_at.as_deref() != Some(&rfc3339(expires))
    })
    .await;
    h.stop().await;
}

/// Runs runner `a` with a 4 h token obtained `age` ago, on `clock`, until it runs and the
/// rotation point is anchored; returns the harness.
async fn run_a_clocked(age: time::Duration, clock: Arc<FakeClock>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    *gl.next_expiry.lock().unwrap() = Some("2099-01-01T00:00:00Z".into());
    let obtained = clock.now() - age;
    save_a(&dir, obtained, obtained + time::Duration::hours(4));
    let mut h = start_clocked(dir, gl, true, policy(), Duration::ZERO, clock).await;
    h.wait_report("a running", |r| is_running(r, "a")).await;
    // A few ticks: the rotation point is anchored on the clock as it stands.
    tokio::time::sleep(Duration::from_millis(200)).await;
    h
}

fn resets(h: &Harness) -> u32 {
    *h.gl.resets.lock().unwrap()
}

/// Issue 20: the wall clock jumps +1 h past a token's rotation point (75 % of its 4 h, 30
/// min away): the token is rotated at once, once.
#[tokio::test(start_paused = true)]
async fn a_forward_clock_jump_past_the_rotation_point_rotates_at_once() {
    let clock = Arc::new(FakeClock::new(OffsetDateTime::now_utc()));
    let mut h = run_a_clocked(time::Duration::minutes(150), clock.clone()).await;
    assert_eq!(resets(&h), 0, "not due before the jump");
    clock.jump(time::Duration::hours(1));
    let m = h
        .message(|k| matches!(k, ToController::TokenRotated { .. }))
        .await;
    assert!(
        matches!(m, ToController::TokenRotated { token, .. } if token.expose_secret() == "glrt-rotated")
    );
    h.wait_report("running on the new token", |r| {
        unit(r, "a").token_expires_at.as_deref() == Some("2099-01-01T00:00:00Z")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(resets(&h), 1, "one rotation, no storm");
    h.stop().await;
}

/// Issue 20: the wall clock jumps −1 h 10 min before a token's rotation point: no rotation
/// before the 10 minutes passed, and not an hour later either.
#[tokio::test(start_paused = true)]
async fn a_backward_clock_jump_neither_advances_nor_delays_rotation() {
    let clock = Arc::new(FakeClock::new(OffsetDateTime::now_utc()));
    let mut h = run_a_clocked(time::Duration::minutes(170), clock.clone()).await;
    clock.jump(time::Duration::hours(-1));
    clock.advance(Duration::from_secs(9 * 60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(resets(&h), 0, "not due before its point");
    clock.advance(Duration::from_secs(60));
    h.message(|k| matches!(k, ToController::TokenRotated { .. }))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(resets(&h), 1, "one rotation, no storm");
    h.stop().await;
}

#[tokio::test]
async fn ip_change_is_reported_and_restarts_loops_without_verify() {
    let mut h = start_a(true).await;
    h.run_a().await;
    let verifies = h.gl.verifies();
    *h.ips.lock().unwrap() = vec!["10.0.0.2".to_string()];
    let e = h.runner_event(RunnerEventKind::IpsChanged).await;
    assert!(e.message.contains("10.0.0.2"), "{}", e.message);
    h.wait_report("loop restarted", |r| {
        unit(r, "a")
            .log
            .iter()
            .any(|l| l.contains("job loop restarted"))
    })
    .await;
    // The new loop's job requests tell GitLab the new address; nothing is verified.
    let requests = h.gl.requests();
    let end = tokio::time::Instant::now() + WAIT;
    while h.gl.requests() <= requests {
        assert!(
            tokio::time::Instant::now() < end,
            "no job request after the change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.gl.verifies(), verifies);
    h.job_on_a(6, "job after the ip change").await;
    // A 403 on the restarted loop's job request follows the token-invalid path.
    h.gl.revoke("glrt-a");
    *h.ips.lock().unwrap() = vec!["10.0.0.3".to_string()];
    h.runner_event(RunnerEventKind::TokenInvalid).await;
    h.wait_report("degraded", |r| unit(r, "a").state == "degraded")
        .await;
    h.stop().await;
}

#[tokio::test]
async fn only_403_on_the_verify_of_a_new_token_refuses_it() {
    // gitlab-runner's VerifyRunner (`network/gitlab.go`): 403 = the token is dead, any
    // other answer is logged and ignored.
    let mut h = start_a(true).await;
    h.gl.jobs
        .fail_next(drover_gitlab::fake::Endpoint::Verify, 1, 404);
    assert!(h.push(1, vec![assignment("a", "glrt-a")]).await.applied);
    h.wait_report("a running", |r| is_running(r, "a")).await;
    h.gl.jobs
        .fail_next(drover_gitlab::fake::Endpoint::Verify, 1, 502);
    h.gl.allow("glrt-b");
    let ack = h
        .push(
            2,
            vec![assignment("a", "glrt-a"), assignment("b", "glrt-b")],
        )
        .await;
    assert!(ack.applied, "{ack:?}");
    let ack = h
        .push(
            3,
            vec![assignment("a", "glrt-a"), assignment("c", "glrt-dead")],
        )
        .await;
    assert!(
        !ack.applied && ack.error.contains("gitlab refused the token"),
        "{ack:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn units_wait_for_docker_instead_of_crash_looping() {
    // The generation persisted before a restart starts without pre-flight (it passed it
    // when it was applied), while Docker is not up yet.
    let dir = tempfile::tempdir().unwrap();
    persist_one(&dir, "glrt-a");
    let gl = new_gl(&dir, &["glrt-a"]);
    let mut h = start(dir, gl, false).await;
    h.wait_report("waiting", |r| unit(r, "a").state == "waiting-for-docker")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.report.borrow().units[0].state, "waiting-for-docker");
    h.docker.up.store(true, Ordering::SeqCst);
    h.wait_report("running once docker answers", |r| is_running(r, "a"))
        .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn preflight_refuses_a_missing_image_and_keeps_the_running_generation() {
    let mut h = start_a(true).await;
    assert!(h.push(1, vec![assignment("a", "glrt-a")]).await.applied);
    h.wait_report("running", |r| is_running(r, "a")).await;
    h.docker.absent.lock().unwrap().push("app:9".to_string());
    let mut b = assignment("b", "glrt-b");
    b.spec_json = r#"{"url":"http://gitlab.test","executor":"docker","docker":{"image":"busybox","pull_policy":"never"},"drover_images":{"required":["app:9"]}}"#.into();
    let ack = h.push(2, vec![assignment("a", "glrt-a"), b]).await;
    assert!(!ack.applied, "{ack:?}");
    assert!(
        ack.error
            .contains("runner \"b\": image \"app:9\" is not present and pull_policy is \"never\""),
        "{ack:?}"
    );
    // The running generation stays: a runs, b never started.
    assert_eq!(h.report.borrow().applied_generation, 1);
    assert!(is_running(&h.report.borrow(), "a"));
    assert!(h.report.borrow().units.iter().all(|u| u.name != "b"));
    // Docker silent: a changed generation is refused too, naming the runner.
    h.docker.up.store(false, Ordering::SeqCst);
    let ack = h.push(3, vec![assignment("c", "glrt-c")]).await;
    assert!(
        !ack.applied
            && ack
                .error
                .contains("runner \"c\": docker engine does not answer"),
        "{ack:?}"
    );
    h.stop().await;
}

fn persist_one(dir: &tempfile::TempDir, token: &str) {
    Store::new(dir.path())
        .save(&Applied {
            generation: 1,
            runners: vec![Raw {
                name: "a".into(),
                spec_json: SPEC.into(),
                runner_token: token.into(),
                gitlab_runner_id: 11,
                token_expires_at: None,
                token_obtained_at: None,
                ..Default::default()
            }],
        })
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_loop_that_keeps_stalling_hits_the_start_limit() {
    let dir = tempfile::tempdir().unwrap();
    persist_one(&dir, "glrt-a");
    let gl = new_gl(&dir, &["glrt-a"]);
    // A failed job request never ends a loop; one that hangs past the watchdog does.
    gl.jobs.set_request_delay(Duration::from_secs(30));
    let mut p = policy();
    p.watchdog = Duration::from_millis(100);
    let mut h = start_with(dir, gl, true, p, Duration::ZERO).await;
    let r = h
        .wait_report("stopped by the start limit", |r| {
            r.units.iter().any(|u| u.state == "stopped")
        })
        .await;
    let e = unit(&r, "a").last_error.clone().unwrap();
    assert!(
        e.contains("start limit hit") && e.contains("watchdog"),
        "{e}"
    );
    assert_eq!(h.gl.requests(), 5, "one job request per start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.gl.requests(), 5, "a stopped unit does not start again");
    h.runner_event(RunnerEventKind::Backoff).await;
    h.stop().await;
}

#[tokio::test]
async fn the_watchdog_restarts_a_stalled_job_request_loop() {
    let dir = tempfile::tempdir().unwrap();
    persist_one(&dir, "glrt-a");
    let gl = new_gl(&dir, &["glrt-a"]);
    // Job requests hang far longer than the watchdog allows.
    gl.jobs.set_request_delay(Duration::from_secs(30));
    let mut p = policy();
    p.watchdog = Duration::from_millis(200);
    let mut h = start_with(dir, gl, true, p, Duration::ZERO).await;
    h.wait_report("restarted by the watchdog", |r| {
        r.units
            .iter()
            .any(|u| u.log.iter().any(|l| l.contains("watchdog")))
    })
    .await;
    let end = tokio::time::Instant::now() + WAIT;
    while h.gl.requests() < 2 {
        assert!(
            tokio::time::Instant::now() < end,
            "no restart after the stall"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn drain_lets_running_jobs_finish_and_takes_no_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a", "glrt-b"]);
    let mut h = start_with(dir, gl, true, policy(), Duration::from_millis(1500)).await;
    let ack = h
        .push(
            1,
            vec![assignment("a", "glrt-a"), assignment("b", "glrt-b")],
        )
        .await;
    assert!(ack.applied);
    h.wait_report("both running", |r| is_running(r, "a") && is_running(r, "b"))
        .await;
    h.gl.jobs.push_job(job(21, &["sleep"]));
    h.wait_report("job taken", |r| r.units.iter().any(|u| u.jobs_running == 1))
        .await;
    h.commands.send(Command::Drain { deadline: None }).unwrap();
    let r = h
        .wait_report("draining", |r| {
            r.draining && r.units.iter().any(|u| u.state == "draining")
        })
        .await;
    // The idle unit stops at once (or drains its empty loop); the busy one drains.
    let busy = r
        .units
        .iter()
        .find(|u| u.jobs_running == 1)
        .unwrap()
        .name
        .clone();
    assert_eq!(unit(&r, &busy).state, "draining");
    h.gl.jobs.push_job(job(22, &["never"]));
    let r = h
        .wait_report("both stopped", |r| {
            r.units.iter().all(|u| u.state == "stopped")
        })
        .await;
    assert_eq!(
        unit(&r, &busy).jobs_succeeded,
        1,
        "the running job finished"
    );
    assert_eq!(h.gl.jobs.queued(), 1, "no job taken after the drain");
    h.runner_event(RunnerEventKind::Draining).await;
    // A generation pushed while draining is acked and persisted, but nothing starts.
    let ack = h.push(2, vec![assignment("a", "glrt-a")]).await;
    assert!(ack.applied && ack.generation == 2, "{ack:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = h.report.borrow().clone();
    assert_eq!(r.applied_generation, 2);
    assert_eq!(unit(&r, "a").state, "stopped");
    assert_eq!(h.gl.jobs.queued(), 1);
    h.stop().await;
}

/// Issue 20: the wall clock jumps an hour either way while a loop's job request hangs: the
/// watchdog, timed on the monotonic clock, does not fire (before, a +1 h jump fired it);
/// it fires once the monotonic clock passed it.
#[tokio::test(start_paused = true)]
async fn a_wall_clock_jump_does_not_fire_the_watchdog() {
    let clock = Arc::new(FakeClock::new(OffsetDateTime::now_utc()));
    let dir = tempfile::tempdir().unwrap();
    persist_one(&dir, "glrt-a");
    let gl = new_gl(&dir, &["glrt-a"]);
    gl.jobs.set_request_delay(Duration::from_secs(30));
    let mut h = start_clocked(dir, gl, true, policy(), Duration::ZERO, clock.clone()).await;
    let fired = |r: &Report| {
        r.units
            .iter()
            .any(|u| u.log.iter().any(|l| l.contains("watchdog")))
    };
    h.wait_report("a starting", |r| !r.units.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    clock.jump(time::Duration::hours(1));
    clock.advance(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.jump(time::Duration::hours(-2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !fired(&h.report.borrow()),
        "the watchdog fired on a wall-clock jump"
    );
    assert_eq!(h.gl.requests(), 1, "no restart");
    clock.advance(Duration::from_secs(31));
    h.wait_report("restarted by the watchdog", fired).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_drain_deadline_cancels_running_jobs_with_a_trace_line_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    let mut h = start_with(dir, gl, true, policy(), Duration::from_secs(600)).await;
    assert!(h.push(1, vec![assignment("a", "glrt-a")]).await.applied);
    h.wait_report("running", |r| is_running(r, "a")).await;
    h.gl.jobs.push_job(job(31, &["long"]));
    h.wait_report("job taken", |r| unit(r, "a").jobs_running == 1)
        .await;
    h.commands
        .send(Command::Drain {
            deadline: Some(DrainDeadline::After(Duration::from_secs(3))),
        })
        .unwrap();
    h.wait_report("draining", |r| r.draining).await;
    let drained = drain_file::DrainFile::new(h.dir.path()).load().unwrap();
    assert!(drained.and_then(|d| d.deadline).is_some(), "{drained:?}");
    // Before the deadline the job still runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.gl.jobs.job(31).unwrap().state, "running");
    let end = tokio::time::Instant::now() + WAIT;
    let done = loop {
        let j = h.gl.jobs.job(31).unwrap();
        if j.state != "running" {
            break j;
        }
        assert!(tokio::time::Instant::now() < end, "job never canceled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, "failed");
    let trace = String::from_utf8_lossy(&done.trace);
    assert!(trace.contains("aborted: agent is draining"), "{trace}");
    let r = h
        .wait_report("stopped", |r| unit(r, "a").state == "stopped")
        .await;
    assert!(r.draining);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_survives_a_restart_and_undrain_takes_jobs_again() {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    let mut h = start_with(dir, gl.clone(), true, policy(), Duration::from_millis(200)).await;
    assert!(h.push(1, vec![assignment("a", "glrt-a")]).await.applied);
    h.wait_report("running", |r| is_running(r, "a")).await;
    h.commands.send(Command::Drain { deadline: None }).unwrap();
    h.wait_report("stopped", |r| r.draining && unit(r, "a").state == "stopped")
        .await;
    let dir = h.stop().await;
    assert!(dir.path().join("drain.json").exists());

    // A new agent process on the same state dir drains before any unit starts.
    let mut h = start_with(dir, gl, true, policy(), Duration::from_millis(200)).await;
    h.gl.jobs.push_job(job(41, &["quick"]));
    let r = h
        .wait_report("restored draining", |r| {
            r.draining && unit(r, "a").state == "stopped"
        })
        .await;
    assert_eq!(r.applied_generation, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.gl.jobs.queued(), 1, "no job taken while draining");
    assert!(!is_running(&h.report.borrow().clone(), "a"));

    h.commands.send(Command::Undrain).unwrap();
    h.wait_report("taking jobs again", |r| !r.draining && is_running(r, "a"))
        .await;
    h.wait_report("job done", |r| unit(r, "a").jobs_succeeded == 1)
        .await;
    assert_eq!(h.gl.jobs.queued(), 0);
    assert_eq!(h.gl.jobs.job(41).unwrap().state, "success");
    assert!(!h.dir.path().join("drain.json").exists());
    // Undrain when not draining changes nothing.
    h.commands.send(Command::Undrain).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(is_running(&h.report.borrow().clone(), "a"));
    h.stop().await;
}

/// Runner `a` running job `id` (each job lasting `hold`), then a graceful stop asked
/// and the report saying draining.
async fn gracefully_stopping_with_job(id: i64, hold: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    let mut h = start_with(dir, gl, true, policy(), hold).await;
    assert!(h.push(1, vec![assignment("a", "glrt-a")]).await.applied);
    h.wait_report("running", |r| is_running(r, "a")).await;
    h.gl.jobs.push_job(job(id, &["long"]));
    h.wait_report("job taken", |r| unit(r, "a").jobs_running == 1)
        .await;
    h.graceful.cancel();
    h.wait_report("draining", |r| r.draining).await;
    h
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_lets_the_running_job_finish_takes_no_new_one_and_ends() {
    let h = gracefully_stopping_with_job(51, Duration::from_secs(2)).await;
    h.gl.jobs.push_job(job(52, &["quick"]));
    let end = tokio::time::Instant::now() + WAIT;
    while !h.task.is_finished() {
        assert!(tokio::time::Instant::now() < end, "the run never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!h.stop.is_cancelled(), "ended by itself");
    let done = h.gl.jobs.job(51).unwrap();
    assert_eq!(done.state, "success");
    assert_eq!(h.gl.jobs.queued(), 1, "no job taken while stopping");
    assert!(
        !h.dir.path().join("drain.json").exists(),
        "a stop is not a drain: the next start takes jobs"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_graceful_stop_cancels_jobs_saying_the_agent_is_stopping() {
    let h = gracefully_stopping_with_job(61, Duration::from_secs(600)).await;
    // An undrain from the controller does not restart units while stopping.
    h.commands.send(Command::Undrain).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.report.borrow().draining);
    assert_eq!(h.gl.jobs.job(61).unwrap().state, "running");
    h.stop.cancel();
    let end = tokio::time::Instant::now() + WAIT;
    let done = loop {
        let j = h.gl.jobs.job(61).unwrap();
        if j.state != "running" {
            break j;
        }
        assert!(tokio::time::Instant::now() < end, "job never canceled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, "failed");
    let trace = String::from_utf8_lossy(&done.trace);
    assert!(trace.contains("aborted: agent is stopping"), "{trace}");
}

/// A generation whose pre-flight waits on a slow engine (8 s, bounded by its own timeout):
/// the loop beats the watchdog's liveness meanwhile, so systemd (here a 3 s `WatchdogSec`)
/// does not kill an agent that is only waiting. Without the beats it went 8 s stale.
#[tokio::test(start_paused = true)]
async fn a_slow_pre_flight_keeps_the_watchdog_fed() {
    let dir = tempfile::tempdir().unwrap();
    let gl = new_gl(&dir, &["glrt-a"]);
    let mut h = start_with(dir, gl, true, policy(), Duration::ZERO).await;
    h.docker.preflight_ms.store(8_000, Ordering::SeqCst);
    let watchdog = Duration::from_secs(3);
    let (liveness, done) = (h.liveness.clone(), CancellationToken::new());
    let watch = tokio::spawn({
        let done = done.clone();
        async move {
            let mut stale_at = Vec::new();
            let started = tokio::time::Instant::now();
            while !done.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !liveness.is_fresh(watchdog) {
                    stale_at.push(started.elapsed());
                }
            }
            stale_at
        }
    });
    let started = tokio::time::Instant::now();
    let ack = h.push(1, vec![assignment("a", "glrt-a")]).await;
    let took = started.elapsed();
    done.cancel();
    assert!(ack.applied, "{ack:?}");
    assert!(
        took >= Duration::from_secs(8),
        "the pre-flight took {took:?}"
    );
    let stale_at = watch.await.unwrap();
    assert!(stale_at.is_empty(), "liveness went stale at {stale_at:?}");
    h.stop().await;
}
