//! The real `drover-agent run` in fleet mode against an in-test controller that speaks the
//! `AgentControl` service over mTLS with the real controller's CA (the agent is enrolled
//! with the real `drover serve`, which is then stopped), the fake GitLab and real Docker.
//!
//! Proves: a pushed generation is acked and its runner runs a job; a bad generation is
//! refused (Ack applied=false) and the old runner keeps running jobs; a revoked token is
//! reported (`token-invalid`) and a pushed new one brings the unit back; the agent restarted
//! with the controller down keeps running its last generation; `drover-agent status -o json`
//! shows the units. A second test runs the real `drover serve` end to end: `drover runner
//! apply` → registration on the agent's behalf → push → ack → rollout complete → job.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;
use drover_proto::v1::controller_message::Kind as ControllerKind;
use drover_tests::fake_gitlab::FakeGitLab;
use drover_tests::fleet_support;
use drover_tests::harness::{self, Agent, Controller};
use futures::Stream;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(120);

/// What the fake controller saw and what it pushes.
#[derive(Default)]
struct Seen {
    hellos: Vec<u64>,
    messages: Vec<AgentKind>,
    /// Sender to the connected session, if any.
    push: Option<mpsc::Sender<Result<v1::ControllerMessage, Status>>>,
}

#[derive(Clone, Default)]
struct FakeControl {
    seen: Arc<Mutex<Seen>>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl v1::agent_control_server::AgentControl for FakeControl {
    type SessionStream = SessionStream;
    type DownloadBlobStream = Pin<Box<dyn Stream<Item = Result<v1::BlobChunk, Status>> + Send>>;

    async fn download_blob(
        &self,
        _req: Request<v1::DownloadBlobRequest>,
    ) -> Result<Response<Self::DownloadBlobStream>, Status> {
        Err(Status::unimplemented(
            "this fake controller holds no images",
        ))
    }

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let Some(kind) = m.kind else { continue };
                let mut g = seen.lock().unwrap();
                if let AgentKind::Hello(h) = &kind {
                    g.hellos.push(h.applied_generation);
                    let _ = tx.try_send(Ok(v1::ControllerMessage {
                        kind: Some(ControllerKind::Welcome(v1::Welcome {
                            agent_id: String::new(),
                            labels: Default::default(),
                            heartbeat_interval_seconds: 1,
                            upgrade_public_key: Vec::new(),
                        })),
                    }));
                    g.push = Some(tx.clone());
                }
                g.messages.push(kind);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn renew_certificate(
        &self,
        _req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type DownloadBinaryStream = Pin<Box<dyn Stream<Item = Result<v1::BinaryChunk, Status>> + Send>>;

    async fn download_binary(
        &self,
        _req: Request<v1::DownloadBinaryRequest>,
    ) -> Result<Response<Self::DownloadBinaryStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

impl FakeControl {
    fn push(&self, ds: v1::DesiredState) {
        let tx = self.seen.lock().unwrap().push.clone().expect("a session");
        tx.try_send(Ok(v1::ControllerMessage {
            kind: Some(ControllerKind::DesiredState(ds)),
        }))
        .expect("push desired state");
    }

    async fn wait<T>(&self, what: &str, f: impl Fn(&Seen) -> Option<T>) -> T {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = f(&self.seen.lock().unwrap()) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ack(&self, generation: u64) -> v1::Ack {
        self.wait(&format!("ack of generation {generation}"), |s| {
            s.messages.iter().find_map(|m| match m {
                AgentKind::Ack(a) if a.generation == generation => Some(a.clone()),
                _ => None,
            })
        })
        .await
    }
}

/// Serves the fake controller with the real controller's CA on `127.0.0.1:0`.
async fn serve_fake(
    data_dir: &std::path::Path,
    shutdown: CancellationToken,
) -> (String, FakeControl) {
    let ca = drover_controller::pki::ca::Ca::load_or_create(data_dir).expect("controller ca");
    let cert = drover_controller::pki::policy::issue_server(&ca, OffsetDateTime::now_utc())
        .expect("server cert");
    let config = drover_controller::server::tls::server_config(&ca, &cert).expect("tls config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = drover_controller::server::tls::incoming(
        listener,
        Arc::new(config),
        shutdown.clone(),
        tokio_util::task::TaskTracker::new(),
    );
    let control = FakeControl::default();
    let svc = v1::agent_control_server::AgentControlServer::new(control.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
            .await;
    });
    (format!("https://{addr}"), control)
}

fn point_agent_at(agent: &Agent, url: &str) {
    let path = agent.state_dir().join("agent.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["controller"] = serde_json::Value::String(url.to_string());
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn assignment(name: &str, spec: serde_json::Value, token: &str) -> v1::RunnerAssignment {
    v1::RunnerAssignment {
        name: name.into(),
        spec_json: spec.to_string(),
        runner_token: token.into(),
        gitlab_runner_id: 1,
        token_expires_at: None,
        ..Default::default()
    }
}

async fn job_ok(gitlab: &FakeGitLab, image: &str, name: &str, agent: &mut Agent) {
    let agent = &*agent;
    fleet_support::job_ok(gitlab, image, name, &[], || {
        agent
            .proc
            .as_ref()
            .map(|p| p.log_text())
            .unwrap_or_default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_generations_offline_autonomy_and_status() {
    let Some(image) = fleet_support::docker_image().await else {
        return;
    };

    // Enroll with the real controller, then replace it with the in-test one.
    let mut real = Controller::start();
    let token = real.create_token(&["--label", "site=fleet-e2e"]);
    let mut agent = Agent::new();
    agent.enroll_ok(&real.url(), &token);
    real.stop();
    let shutdown = CancellationToken::new();
    let (url, control) = serve_fake(&real.data_dir(), shutdown.clone()).await;
    point_agent_at(&agent, &url);

    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    let runner_token = format!("glrt-fleet-{:08x}", rand::random::<u32>());
    gitlab.add_runner(&runner_token);
    let spec = serde_json::json!({
        "url": gitlab.url(),
        "executor": "docker",
        "docker": {"image": image, "pull_policy": "never"},
    });

    agent.run();
    let hello = control.wait("hello", |s| s.hellos.first().copied()).await;
    assert_eq!(hello, 0);

    // Generation 1: acked, its runner runs a job.
    control.push(v1::DesiredState {
        generation: 1,
        runners: vec![assignment("fleet-e2e", spec.clone(), &runner_token)],
    });
    let ack = control.ack(1).await;
    assert!(ack.applied, "{ack:?}\n{}", agent.proc().log_text());
    job_ok(&gitlab, &image, "first", &mut agent).await;
    let hb = control
        .wait("a heartbeat with the running unit", |s| {
            s.messages.iter().rev().find_map(|m| match m {
                AgentKind::Heartbeat(h)
                    if h.applied_generation == 1
                        && h.runners.iter().any(|r| {
                            r.name == "fleet-e2e" && r.state == "running" && r.jobs_succeeded >= 1
                        })
                        && h.host.as_ref().is_some_and(|x| x.memory_total_bytes > 0) =>
                {
                    Some(h.clone())
                }
                _ => None,
            })
        })
        .await;
    // The heartbeat carries the host: Docker, both disks, memory, load; the agent version
    // and the runner's GitLab contact.
    let host = hb.host.clone().unwrap();
    assert!(
        host.docker_reachable && !host.docker_version.is_empty(),
        "{host:?}"
    );
    assert!(
        host.disk_total_bytes > 0 && host.builds_disk_total_bytes > 0,
        "{host:?}"
    );
    assert!(host.memory_available_bytes > 0, "{host:?}");
    assert!(!hb.agent_version.is_empty());
    assert!(!hb.ips.is_empty());
    let unit = hb.runners.iter().find(|r| r.name == "fleet-e2e").unwrap();
    assert!(unit.last_gitlab_contact.is_some(), "{unit:?}");
    assert_eq!(unit.jobs_succeeded, 1, "{unit:?}");

    // Generation 2 is invalid: refused, the old runner keeps running jobs.
    let mut bad = spec.clone();
    bad["executor"] = serde_json::json!("shell");
    control.push(v1::DesiredState {
        generation: 2,
        runners: vec![assignment("fleet-e2e", bad, &runner_token)],
    });
    let ack = control.ack(2).await;
    assert!(!ack.applied);
    assert!(ack.error.contains("shell"), "{}", ack.error);
    job_ok(&gitlab, &image, "after-refusal", &mut agent).await;

    // The job's end reaches GitLab just before the agent counts it: poll the status file.
    let s = fleet_support::status_until(&agent.state_dir(), |s| {
        s["units"][0]["jobs_succeeded"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(s["applied_generation"], 1, "{s:#}");
    assert_eq!(s["stale"], serde_json::Value::Null, "{s:#}");
    assert_eq!(s["units"][0]["name"], "fleet-e2e", "{s:#}");
    assert_eq!(s["units"][0]["state"], "running", "{s:#}");

    // GitLab revokes the token: the agent reports token-invalid, the "controller" pushes a
    // new token, the unit runs again without anyone touching the box.
    assert!(gitlab.revoke_token(&runner_token));
    let ev = control
        .wait("token-invalid event", |s| {
            s.messages.iter().find_map(|m| match m {
                AgentKind::RunnerEvent(e) if e.kind == "token-invalid" => Some(e.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(ev.runner, "fleet-e2e");
    let new_token = format!("glrt-fleet-{:08x}", rand::random::<u32>());
    gitlab.add_runner(&new_token);
    control.push(v1::DesiredState {
        generation: 3,
        runners: vec![assignment("fleet-e2e", spec.clone(), &new_token)],
    });
    let ack = control.ack(3).await;
    assert!(ack.applied, "{ack:?}");
    job_ok(&gitlab, &image, "new-token", &mut agent).await;

    // Controller down, agent restarted: the last generation keeps running.
    shutdown.cancel();
    agent.proc().kill();
    agent.run();
    job_ok(&gitlab, &image, "offline", &mut agent).await;
    // Written by the restarted agent (not the killed one's stale file).
    let s = fleet_support::status_until(&agent.state_dir(), |s| {
        s["stale"].is_null() && s["units"][0]["state"] == "running"
    })
    .await;
    assert_eq!(s["applied_generation"], 3, "{s:#}");
    assert_eq!(s["units"][0]["state"], "running", "{s:#}");

    // Stale once the agent is gone.
    agent.proc().kill();
    let s = fleet_support::status_json(&agent.state_dir());
    assert!(
        s["stale"].as_str().unwrap_or("").contains("not running"),
        "{s:#}"
    );
}

/// The real `drover serve` pushes a runner spec applied with `drover runner apply` (it
/// registers the runner on the agent's behalf); the real agent acks it, the rollout
/// completes, a job runs, and the controller sees the unit running in heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_controller_rollout_runs_a_job() {
    let Some(image) = fleet_support::docker_image().await else {
        return;
    };
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    gitlab.add_registration_token("GR1348941-fleet-agent-e2e");
    let c = Controller::start();
    let token = c.create_token(&["--label", "site=fleet-agent-e2e"]);
    let mut agent = Agent::new();
    let id = agent.enroll_ok(&c.url(), &token);
    agent.run();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runners.toml");
    std::fs::write(
        &file,
        format!(
            "[[runners]]\nname = \"real-fleet\"\nurl = \"{}\"\n\
             registration_token = \"GR1348941-fleet-agent-e2e\"\nexecutor = \"docker\"\n\
             [runners.selector]\nsite = \"fleet-agent-e2e\"\n\
             [runners.docker]\nimage = \"{image}\"\npull_policy = \"never\"\n",
            gitlab.url()
        ),
    )
    .unwrap();
    let out = c.drover(&[
        "runner",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--strategy",
        "all",
    ]);
    assert!(out.status.success(), "{}", harness::stderr(&out));
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let out = c.drover(&["rollout", "status", "-o", "json"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if s["state"] == "complete" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "rollout never completed: {s:#}\n{}",
            agent.proc().log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    job_ok(&gitlab, &image, "real-controller", &mut agent).await;
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let a = c.agent(&id).unwrap_or_default();
        if a["runners"][0]["state"] == "running" && a["applied_generation"] == 1 {
            assert_eq!(a["runners"][0]["name"], "real-fleet");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "agent never reported the unit: {a:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
