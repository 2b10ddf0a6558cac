//! `AgentControl`: the long-lived session stream and certificate renewal. The agent's id
//! comes only from its certificate.

use std::pin::Pin;

use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;
use drover_proto::v1::controller_message::Kind as ControllerKind;
use futures::Stream;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::auth;
use super::state::AppState;
use crate::fleet::Claim;
use crate::fleet::messages::{Ack, JobEvent, RunnerEvent, TokenRotated};
use crate::health::report::Heartbeat;
use crate::pki::identity::Identity;
use crate::pki::policy;
use crate::store::{self, EventRecord, Facts};
use crate::timefmt;
use crate::wire;
use crate::wire::images::ImageReport;

/// The AgentControl service.
pub struct AgentControlService {
    /// Shared state.
    pub state: AppState,
}

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

/// How long a new session may take to send its hello.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::ControllerMessage, Status>> + Send>>;
type DownloadStream = Pin<Box<dyn Stream<Item = Result<v1::BinaryChunk, Status>> + Send>>;

#[tonic::async_trait]
impl v1::agent_control_server::AgentControl for AgentControlService {
    type SessionStream = SessionStream;
    type DownloadBinaryStream = DownloadStream;

    async fn download_binary(
        &self,
        req: Request<v1::DownloadBinaryRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        self.state.serving()?;
        let agent = auth::enrolled_agent(&self.state.store, auth::agent_id(&req)?).await?;
        let r = req.into_inner();
        if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(
                "sha256: not 64 hexadecimal characters",
            ));
        }
        let Some(binary) = self
            .state
            .upgrades
            .downloadable(&agent.id, &r.sha256)
            .await?
        else {
            return Err(Status::not_found(format!(
                "binary {} is in no running upgrade sent to agent {}",
                r.sha256, agent.id
            )));
        };
        if r.offset > binary.size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of binary {} ({} bytes)",
                r.offset, r.sha256, binary.size
            )));
        }
        let (tx, rx) = mpsc::channel::<Result<v1::BinaryChunk, Status>>(2);
        let upgrades = self.state.upgrades.clone();
        let stop = self.state.shutdown.clone();
        self.state.tasks.spawn(async move {
            let mut offset = r.offset;
            while offset < binary.size {
                let data = tokio::select! {
                    _ = stop.cancelled() => break,
                    d = upgrades.chunk(&binary.sha256, offset) => d,
                };
                let msg = match data {
                    Ok(d) if d.is_empty() => Err(Status::data_loss(format!(
                        "binary {} is cut short at {offset} bytes",
                        binary.sha256
                    ))),
                    Ok(d) => Ok(v1::BinaryChunk { offset, data: d }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = msg.is_err();
                if let Ok(c) = &msg {
                    offset += c.data.len() as u64;
                }
                if tx.send(msg).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type DownloadBlobStream = super::images::BlobStream;

    async fn download_blob(
        &self,
        req: Request<v1::DownloadBlobRequest>,
    ) -> Result<Response<Self::DownloadBlobStream>, Status> {
        self.state.serving()?;
        let agent = auth::enrolled_agent(&self.state.store, auth::agent_id(&req)?).await?;
        super::images::download(&self.state, &agent.id, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        self.state.serving()?;
        let agent = auth::enrolled_agent(&self.state.store, auth::agent_id(&req)?).await?;
        let id = agent.id.clone();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 30 s"))??;
        let hello = match first {
            Some(v1::AgentMessage {
                kind: Some(AgentKind::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::failed_precondition(
                    "the first message of a session must be hello",
                ));
            }
        };
        let facts = hello.facts.as_ref().map(Facts::from);
        let instance: String = hello.instance.chars().take(64).collect();
        let live_within = time::Duration::try_from(self.state.heartbeat_interval * 2)
            .unwrap_or(time::Duration::MAX)
            .max(time::Duration::seconds(2));
        if let Err(d) = self.state.health.leases.admit(&id, &instance, live_within) {
            let from = facts.as_ref().map_or_else(String::new, |f| {
                format!(" (host {}, {})", f.hostname, f.ips.join(","))
            });
            tracing::warn!(agent = %id, instance = %instance, connected = %d.connected, "refused a second process with this agent's identity");
            self.state.health.agent_event(
                &id,
                "duplicate-identity",
                "",
                format!(
                    "refused a session from process {instance}{from}: process {} holds this identity's session",
                    d.connected
                ),
            );
            return Err(Status::already_exists(format!(
                "duplicate identity: another process of agent {id} is connected; two agents must not share a state dir (enroll this one with its own token)"
            )));
        }
        let hello_upgrade = hello.upgrade.clone();
        let (seen_id, seen_facts, applied) = (id.clone(), facts.clone(), hello.applied_generation);
        store::blocking(&self.state.store, move |s| {
            s.agent_seen(&seen_id, now(), seen_facts.as_ref(), None, Some(applied))
        })
        .await?;
        let guard = self.state.sessions.register(&id, &self.state.shutdown);
        let hello_ips = facts.as_ref().map(|f| f.ips.clone()).unwrap_or_default();
        let lease = self
            .state
            .health
            .leases
            .hello(&id, hello.applied_generation, &hello_ips);
        tracing::info!(agent = %id, "agent connected");
        self.state.health.agent_event(
            &id,
            "agent-connected",
            "",
            format!(
                "connected (agent {}, generation {})",
                facts
                    .as_ref()
                    .map(|f| f.agent_version.as_str())
                    .filter(|v| !v.is_empty())
                    .unwrap_or("unknown version"),
                hello.applied_generation
            ),
        );

        let (tx, rx) = mpsc::channel::<Result<v1::ControllerMessage, Status>>(16);
        let welcome = v1::ControllerMessage {
            kind: Some(ControllerKind::Welcome(v1::Welcome {
                agent_id: id.clone(),
                labels: agent.labels.clone().into_iter().collect(),
                heartbeat_interval_seconds: u32::try_from(
                    self.state.heartbeat_interval.as_secs().max(1),
                )
                .unwrap_or(u32::MAX),
                upgrade_public_key: self.state.upgrades.public_key(),
            })),
        };
        if tx.send(Ok(welcome)).await.is_err() {
            return Err(Status::cancelled("agent went away"));
        }
        if let Some(r) = hello_upgrade {
            on_upgrade_report(&self.state, &id, &r).await;
        }
        let state = self.state.clone();
        // An agent silent for three heartbeat intervals is gone (e.g. its network dropped
        // without closing TCP): end the session so it shows as lost.
        let idle_limit = self
            .state
            .heartbeat_interval
            .max(std::time::Duration::from_secs(1))
            * 3;
        let tasks = self.state.tasks.clone();
        tasks.clone().spawn(async move {
            let idle = tokio::time::sleep(idle_limit);
            tokio::pin!(idle);
            // A newly connected agent may be next in a rollout.
            let fleet = state.fleet.clone();
            tasks.spawn(async move { fleet.reconcile().await });
            let mut last_sent: Option<v1::DesiredState> = None;
            let mut last_upgrade: Option<v1::Upgrade> = None;
            let mut drain_sent: super::drains::Sent = None;
            // Images told to fetch on this session (see `images::send_fetches`).
            let mut fetches_sent = std::collections::HashSet::new();
            let fleet_work = fleet_worker(&state, &id);
            guard.kick.notify_one();
            let end = loop {
                tokio::select! {
                    _ = guard.cancel.cancelled() => break "closed by controller",
                    _ = tx.closed() => break "agent went away",
                    _ = &mut idle => break "no heartbeat for three intervals",
                    _ = guard.kick.notified() => {
                        // Store reads below may hang while the database is unreachable: a
                        // session closed meanwhile (a detached replica) must still end.
                        let kick = async {
                            // One batched read for every session kicked meanwhile.
                            let look = match state.session_reads.look(&id).await {
                                Ok(l) => l,
                                Err(e) => {
                                    tracing::warn!(agent = %id, error = %e, "desired state");
                                    return Ok(());
                                }
                            };
                            // The drain first: a generation pushed to an agent that lost its
                            // drain file must not start taking jobs before it hears it.
                            if let Some(drain) = super::drains::due(look.read.drain.clone(), &mut drain_sent) {
                                tracing::info!(agent = %id, draining = drain.is_some(), "sending drain state");
                                let cmd = wire::drains::drain_command_out(drain.as_ref(), OffsetDateTime::now_utc());
                                let msg = v1::ControllerMessage {
                                    kind: Some(ControllerKind::Command(cmd)),
                                };
                                if tx.send(Ok(msg)).await.is_err() {
                                    return Err("agent went away");
                                }
                            }
                            match state.fleet.desired_from(&id, &look.read).await {
                                Ok(Some(ds)) if last_sent.as_ref() != Some(&v1::DesiredState::from(ds.clone())) => {
                                    let ds = v1::DesiredState::from(ds);
                                    tracing::info!(agent = %id, generation = ds.generation, runners = ds.runners.len(), "pushing desired state");
                                    let msg = v1::ControllerMessage {
                                        kind: Some(ControllerKind::DesiredState(ds.clone())),
                                    };
                                    if tx.send(Ok(msg)).await.is_err() {
                                        return Err("agent went away");
                                    }
                                    last_sent = Some(ds);
                                }
                                Ok(_) => {}
                                Err(e) => tracing::warn!(agent = %id, error = %e, "desired state"),
                            }
                            match state.upgrades.command_for(look.upgrade.clone(), &id).await {
                                Ok(Some(c)) if last_upgrade.as_ref() != Some(&v1::Upgrade::from(c.clone())) => {
                                    let c = v1::Upgrade::from(c);
                                    tracing::info!(agent = %id, upgrade = c.upgrade_id, version = %c.version, "sending upgrade");
                                    let msg = v1::ControllerMessage {
                                        kind: Some(ControllerKind::Command(v1::Command {
                                            kind: Some(v1::command::Kind::Upgrade(c.clone())),
                                        })),
                                    };
                                    if tx.send(Ok(msg)).await.is_err() {
                                        return Err("agent went away");
                                    }
                                    last_upgrade = Some(c);
                                }
                                Ok(_) => {}
                                Err(e) => tracing::warn!(agent = %id, error = %e, "upgrade command"),
                            }
                            if super::images::send_fetches(&state, &id, &look.read.deliveries, &tx, &mut fetches_sent).await.is_err() {
                                return Err("agent went away");
                            }
                            Ok(())
                        };
                        tokio::select! {
                            _ = guard.cancel.cancelled() => break "closed by controller",
                            r = kick => if let Err(why) = r { break why; },
                        }
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => {
                            idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
                            handle(&state, &id, m, &fleet_work).await;
                        }
                        Ok(None) => break "agent closed the stream",
                        Err(_) => break "stream error",
                    },
                }
            };
            if guard.cancel.is_cancelled() {
                let lookup = id.clone();
                let revoked = matches!(
                    store::blocking(&state.store, move |s| s.get_agent(&lookup)).await,
                    Ok(Some(a)) if a.revoked_at.is_some()
                );
                let status = if revoked {
                    Status::unauthenticated(format!("agent {id} was revoked"))
                } else if let Err(detached) = state.serving() {
                    detached
                } else if state.shutdown.is_cancelled() {
                    Status::unavailable("controller is shutting down")
                } else {
                    Status::aborted("a newer session of this agent replaced this one")
                };
                let _ = tx.send(Err(status)).await;
            }
            drop(guard);
            // The last contact reaches the store with the next batch.
            if state.health.leases.disconnected(&id, lease) {
                state
                    .health
                    .agent_event(&id, "agent-disconnected", "", end.to_string());
            }
            // A rolling rollout does not wait for an agent that left.
            state.fleet.reconcile().await;
            tracing::info!(agent = %id, reason = end, "agent disconnected");
        });
        let out: SessionStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(out))
    }

    async fn renew_certificate(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        self.state.serving()?;
        let agent = auth::enrolled_agent(&self.state.store, auth::agent_id(&req)?).await?;
        let csr = policy::verify_csr(&req.get_ref().csr_der)?;
        let issued = policy::sign_client(
            &self.state.ca,
            &csr,
            &Identity::Agent(agent.id.clone()),
            now(),
            self.state.cert_ttl,
        )?;
        let (renewed, serial, not_after) =
            (agent.id.clone(), issued.serial.clone(), issued.not_after);
        store::blocking(&self.state.store, move |s| {
            s.agent_cert_renewed(&renewed, &serial, not_after)
        })
        .await?;
        tracing::info!(agent = %agent.id, not_after = %timefmt::rfc3339(issued.not_after), "certificate renewed");
        Ok(Response::new(v1::RenewResponse {
            certificate_pem: issued.pem,
            ca_pem: self.state.ca.cert_pem().to_string(),
            not_after: Some(timefmt::to_proto(issued.not_after)),
        }))
    }
}

/// Agent reports the fleet handles off the session loop.
enum FleetWork {
    Ack(Ack),
    Event(RunnerEvent),
    Rotated(TokenRotated),
}

/// Runs the fleet work of one session in arrival order until the session ends. What the
/// fleet refuses of an agent's claims is recorded as an `agent-claim-refused` event.
fn fleet_worker(state: &AppState, id: &str) -> mpsc::UnboundedSender<FleetWork> {
    let (tx, mut rx) = mpsc::unbounded_channel::<FleetWork>();
    let fleet = state.fleet.clone();
    let health = state.health.clone();
    let id = id.to_string();
    state.tasks.spawn(async move {
        while let Some(w) = rx.recv().await {
            let (runner, claim) = match w {
                FleetWork::Ack(ack) => {
                    fleet.on_ack(&id, &ack).await;
                    continue;
                }
                FleetWork::Event(ev) => {
                    let claim = fleet.on_runner_event(&id, &ev).await;
                    (ev.runner, claim)
                }
                FleetWork::Rotated(t) => {
                    let claim = fleet.on_token_rotated(&id, &t).await;
                    if let Claim::Accepted(how) = &claim {
                        health.agent_event(
                            &id,
                            "runner-token-rotated",
                            &clip_runner(&t.runner),
                            format!("runner token rotated ({how})"),
                        );
                    }
                    (t.runner, claim)
                }
            };
            if let Claim::Refused(why) = claim {
                health.agent_event(&id, "agent-claim-refused", &clip_runner(&runner), why);
            }
        }
    });
    tx
}

/// A runner name from an agent, as events keep it.
fn clip_runner(runner: &str) -> String {
    runner.chars().take(100).collect()
}

/// Records an agent's upgrade report (a bad one is refused as any bad message is).
async fn on_upgrade_report(state: &AppState, id: &str, r: &v1::UpgradeReport) {
    match crate::upgrade::step::Report::try_from(r) {
        Ok(report) => {
            if let Err(e) = state.upgrades.report(id, report).await {
                tracing::warn!(agent = %id, error = %e, "upgrade report");
            }
        }
        Err(e) => refused(state, id, "upgrade report", &e),
    }
}

/// Applies one message of an open session. A heartbeat touches only the lease table;
/// what must be durable (IP and generation changes) is written at once.
async fn handle(
    state: &AppState,
    id: &str,
    m: v1::AgentMessage,
    fleet_work: &mpsc::UnboundedSender<FleetWork>,
) {
    let health = &state.health;
    let result = match m.kind {
        Some(AgentKind::Heartbeat(hb)) => match (hb.upgrade.clone(), Heartbeat::try_from(hb)) {
            (upgrade, Ok(hb)) => {
                if let Some(r) = upgrade {
                    on_upgrade_report(state, id, &r).await;
                }
                on_heartbeat(state, id, hb).await
            }
            (_, Err(e)) => {
                refused(state, id, "heartbeat", &e);
                Ok(())
            }
        },
        // Fleet work may call GitLab: it runs on the session's fleet worker, in order, so
        // heartbeats keep flowing meanwhile.
        Some(AgentKind::Ack(ack)) => {
            health.leases.touch(id);
            if ack.applied {
                health.leases.applied(id, ack.generation);
                health.agent_event(
                    id,
                    "rollout",
                    "",
                    format!("applied generation {}", ack.generation),
                );
            } else {
                health.agent_event(
                    id,
                    "rollout",
                    "",
                    format!("refused generation {}: {}", ack.generation, ack.error),
                );
            }
            let _ = fleet_work.send(FleetWork::Ack(Ack::from(ack)));
            Ok(())
        }
        Some(AgentKind::TokenRotated(t)) => {
            match TokenRotated::try_from(t) {
                Ok(t) => {
                    health.leases.touch(id);
                    let _ = fleet_work.send(FleetWork::Rotated(t));
                }
                Err(e) => refused(state, id, "token rotation", &e),
            }
            Ok(())
        }
        Some(AgentKind::RunnerEvent(ev)) => {
            let ev = match RunnerEvent::try_from(ev) {
                Ok(ev) => ev,
                Err(e) => {
                    refused(state, id, "runner event", &e);
                    return;
                }
            };
            health.leases.touch(id);
            let kind = &ev.kind;
            health.record(EventRecord {
                at: ev.at,
                agent_id: id.to_string(),
                kind: format!("runner-{kind}"),
                runner: clip_runner(&ev.runner),
                message: ev.message.clone(),
                ..EventRecord::default()
            });
            let _ = fleet_work.send(FleetWork::Event(ev));
            Ok(())
        }
        Some(AgentKind::JobEvent(j)) => {
            let j = JobEvent::from(j);
            health.leases.touch(id);
            let reason = if j.failure_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", j.failure_reason)
            };
            health.record(EventRecord {
                at: j.at,
                agent_id: id.to_string(),
                kind: "job".into(),
                runner: j.runner.chars().take(100).collect(),
                message: format!("job {} {}{reason}", j.job_id, j.state),
                job_id: j.job_id,
                job_state: j.state.as_str().to_string(),
                ..EventRecord::default()
            });
            if let Some(row) = health.record_job(id, &j) {
                state.metrics.job(&row);
            }
            Ok(())
        }
        Some(AgentKind::ImageLoaded(l)) => {
            health.leases.touch(id);
            match ImageReport::try_from(l) {
                Ok(r) => super::images::on_report(state, id, r).await,
                Err(e) => refused(state, id, "image report", &e),
            }
            Ok(())
        }
        Some(AgentKind::ImageProgress(p)) => {
            health.leases.touch(id);
            match ImageReport::try_from(p) {
                Ok(r) => super::images::on_report(state, id, r).await,
                Err(e) => refused(state, id, "image progress", &e),
            }
            Ok(())
        }
        Some(AgentKind::Hello(_)) => {
            tracing::debug!(agent = %id, "ignoring a second hello");
            Ok(())
        }
        None => {
            health.leases.touch(id);
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::warn!(agent = %id, error = %e, "record agent message");
    }
}

/// A heartbeat: the lease table and the fleet's runner statuses; IP and generation changes
/// are written at once.
async fn on_heartbeat(state: &AppState, id: &str, hb: Heartbeat) -> Result<(), store::StoreError> {
    let health = &state.health;
    state.fleet.on_heartbeat(id, &hb.runners);
    let out = health.leases.heartbeat(id, &hb, &hb.ips);
    if let Some(gap) = out.gap {
        state.metrics.heartbeat_gap(gap);
    }
    if let Some((old, new)) = &out.ips_changed {
        tracing::info!(agent = %id, ?old, ?new, "agent ip addresses changed");
        if !old.is_empty() {
            health.agent_event(
                id,
                "agent-ips-changed",
                "",
                format!("{} -> {}", old.join(","), new.join(",")),
            );
        }
    }
    if out.ips_changed.is_some() || out.generation_changed {
        let seen_id = id.to_string();
        let ips = out.ips_changed.map(|(_, new)| new);
        let applied = out.generation_changed.then_some(hb.applied_generation);
        store::blocking(&state.store, move |s| {
            s.agent_seen(&seen_id, now(), None, ips.as_deref(), applied)
        })
        .await
    } else {
        Ok(())
    }
}

/// A message no conforming agent sends: logged, and counted as contact.
fn refused(state: &AppState, id: &str, what: &str, e: &crate::wire::WireError) {
    tracing::warn!(agent = %id, error = %e, "refused {what} from agent");
    state.health.leases.touch(id);
}
