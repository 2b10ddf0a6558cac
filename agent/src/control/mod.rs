//! The control stream: connect with the agent certificate, say hello, heartbeat, renew the
//! certificate at ~2/3 of its lifetime, reconnect with backoff and jitter when the
//! controller is away. A controller that refuses the agent's identity (revoked, unknown)
//! ends the loop with an error: retrying cannot help.
//!
//! The stream carries fleet mode through a [`Link`]: desired states and commands (drain) go
//! in, acks, events and rotated tokens come out (queued while disconnected), and
//! Hello/heartbeats carry the applied generation and the runner units from the latest
//! [`Report`]; heartbeats also carry the latest host health snapshot, the agent version and
//! the IPs. The controller's `Date` header at each session start feeds the clock skew.
//!
//! When the host's addresses change, a stream made from the old address is dead (it would
//! only time out much later): the session ends at once and a new one is made; a message
//! taken from the queue at that moment is kept for the next session.
//!
//! Renewal and expiry read the [`Clock`]: the renewal point is a [`Deadline`] on both the
//! wall and the monotonic clock, looked at every [`RENEW_RECHECK`], so a wall clock that
//! jumps forward past it renews at once and one that jumps back does not delay it. A
//! renewal follows the last one in this process by at least a sixth of the certificate's
//! lifetime, so a clock far ahead of the controller's (which makes every new certificate
//! look two-thirds spent) cannot make a renewal storm. A certificate the clock says expired
//! is a clear error at the next connect: enroll again.
//!
//! Which controller is dialed is [`endpoints`]' choice: `agent.json` may list several
//! (replicas), a name may resolve to several addresses; a session that ends or an attempt
//! that fails moves to the next endpoint after a full-jitter backoff, and a session on a
//! lower-preference controller probes the preferred one after a random 5–15 min and moves
//! back only if it answers. `controller.json` ([`connection`]) says where it is connected.

pub mod blobs;
pub mod connection;
pub mod endpoints;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use drover_proto::v1;
use drover_proto::v1::agent_control_client::AgentControlClient;
use drover_proto::v1::agent_message::Kind as AgentKind;
use drover_proto::v1::controller_message::Kind as ControllerKind;
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::clock::{Clock, Deadline};
use crate::fleet::messages::{Command, DesiredState, ToController};
use crate::fleet::report::Report;
use crate::health::{ClockSkew, HostHealth};
use crate::host_facts::{self, HostFacts};
use crate::identity::{Identity, StateDir, certs, tls};
use drover_runtime::backoff::{Backoff, Jitter};
use endpoints::{Endpoint, Failover, Resolver, SystemResolver};

/// How a session ended without a fatal error.
#[derive(Debug)]
enum SessionEnd {
    /// The certificate was renewed; reconnect at once with the new one.
    Renewed,
    /// The host's addresses changed; reconnect at once from the new one.
    IpsChanged,
    /// The preferred controller answered a failback probe: reconnect there at once.
    FellBack(Endpoint, Channel),
}

/// Why a session ended with an error.
#[derive(Debug)]
enum SessionError {
    /// Retrying cannot help (revoked, unknown agent, expired certificate).
    Fatal(anyhow::Error),
    /// Try again after a backoff. `established` says a Welcome was received.
    Transient {
        error: anyhow::Error,
        established: bool,
    },
}

fn transient(established: bool) -> impl FnOnce(anyhow::Error) -> SessionError {
    move |error| SessionError::Transient { error, established }
}

fn from_status(s: tonic::Status, agent_id: &str, established: bool) -> SessionError {
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => SessionError::Fatal(anyhow::anyhow!(
            "controller refused agent {agent_id}: {}",
            s.message()
        )),
        _ => SessionError::Transient {
            error: anyhow::anyhow!("{} ({:?})", s.message(), s.code()),
            established,
        },
    }
}

/// What the stream carries for fleet mode.
pub struct Link {
    /// Desired states from the controller, in order.
    pub desired: mpsc::UnboundedSender<DesiredState>,
    /// Commands from the controller (drain, undrain), in order.
    pub commands: mpsc::UnboundedSender<Command>,
    /// Image fetches from the controller, for the image fetcher.
    pub images: mpsc::UnboundedSender<crate::images::FetchImage>,
    /// The current session's channel (the image fetcher downloads blobs on it).
    pub channel: watch::Sender<Option<Channel>>,
    /// Messages for the controller; read only while a session is up, so they wait in the
    /// channel while the controller is away.
    pub outbound: mpsc::Receiver<ToController>,
    /// The latest report (applied generation, units) for Hello and heartbeats.
    pub report: watch::Receiver<Report>,
    /// The latest host health snapshot, for heartbeats.
    pub health: watch::Receiver<HostHealth>,
    /// Fed with the controller's `Date` header.
    pub skew: Arc<ClockSkew>,
    /// Where "now" comes from (certificate expiry and renewal).
    pub clock: Arc<dyn Clock>,
    /// Binary upgrades: orders in, progress out (Hello, heartbeats).
    pub upgrader: Arc<crate::upgrade::Upgrader>,
}

/// A binary's bytes from the controller's `DownloadBinary`, over the session's channel;
/// a stream that ended or failed is opened again from the offset asked for.
struct GrpcSource {
    channel: Channel,
    stream: Option<(u64, tonic::Streaming<v1::BinaryChunk>)>,
}

#[async_trait::async_trait]
impl crate::upgrade::download::Source for GrpcSource {
    async fn next(&mut self, sha256: &str, offset: u64) -> Result<Option<Vec<u8>>, String> {
        let reuse = matches!(&self.stream, Some((at, _)) if *at == offset);
        if !reuse {
            let s = AgentControlClient::new(self.channel.clone())
                .max_decoding_message_size(drover_proto::MAX_MESSAGE_BYTES)
                .download_binary(v1::DownloadBinaryRequest {
                    sha256: sha256.to_string(),
                    offset,
                })
                .await
                .map_err(|s| format!("download binary {sha256}: {} ({:?})", s.message(), s.code()))?
                .into_inner();
            self.stream = Some((offset, s));
        }
        let Some((at, stream)) = self.stream.as_mut() else {
            return Ok(None);
        };
        match stream.message().await {
            Ok(Some(c)) if c.offset == *at => {
                *at += c.data.len() as u64;
                Ok(Some(c.data))
            }
            Ok(Some(c)) => {
                self.stream = None;
                Err(format!(
                    "the controller sent offset {} where {offset} was expected",
                    c.offset
                ))
            }
            Ok(None) => {
                self.stream = None;
                Ok(None)
            }
            Err(s) => {
                self.stream = None;
                Err(format!(
                    "download binary {sha256}: {} ({:?})",
                    s.message(),
                    s.code()
                ))
            }
        }
    }
}

/// How often a session looks at the renewal point besides its timer: a wall clock that
/// jumps past it is noticed this late at most.
pub const RENEW_RECHECK: Duration = Duration::from_secs(5);

/// When the current certificate is renewed (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Renewal {
    /// Two thirds of the certificate's lifetime.
    point: Deadline,
    /// Monotonic time before which it is not renewed again (after a renewal).
    not_before: Duration,
}

impl Renewal {
    /// The renewal of `identity`'s certificate; `last` is the monotonic time of this
    /// process's last renewal.
    fn plan(identity: &Identity, clock: &dyn Clock, last: Option<Duration>) -> Renewal {
        let lifetime =
            Duration::try_from(identity.not_after - identity.not_before).unwrap_or(Duration::ZERO);
        Renewal {
            point: Deadline::new(
                certs::renew_at(identity.not_before, identity.not_after),
                clock,
            ),
            not_before: last.map_or(Duration::ZERO, |l| l + lifetime / 6),
        }
    }

    /// How long until it is due (zero: renew now).
    fn remaining(&self, clock: &dyn Clock) -> Duration {
        let gap = self.not_before.saturating_sub(clock.monotonic());
        self.point.remaining(clock).max(gap)
    }

    /// How long the session sleeps before looking again.
    fn check_in(&self, clock: &dyn Clock) -> Duration {
        self.remaining(clock).min(RENEW_RECHECK)
    }
}

/// A certificate the clock says expired cannot connect: a clear error naming what to do.
fn check_not_expired(identity: &Identity, clock: &dyn Clock) -> anyhow::Result<()> {
    if clock.now() >= identity.not_after {
        anyhow::bail!(
            "certificate of agent {} expired at {}; enroll again with a new token",
            identity.agent_id,
            certs::rfc3339(identity.not_after)
        );
    }
    Ok(())
}

/// Runs sessions until `shutdown` or a fatal refusal.
pub async fn run(
    state: StateDir,
    mut link: Link,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let window = endpoints::failback_window(std::env::var(endpoints::FAILBACK_ENV).ok().as_deref())
        .map_err(anyhow::Error::msg)?;
    let resolver = SystemResolver;
    let mut failover = Failover::new(window);
    let mut backoff =
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(Jitter::Full);
    // This process's id in every Hello: the controller tells a reconnect of this process
    // from a second process with the same identity (a copied state dir), which it refuses.
    let instance = format!("{:016x}", rand::random::<u64>());
    // Messages taken from the queue that the last session could not send.
    let mut pending: Vec<v1::AgentMessage> = Vec::new();
    // Monotonic time of the last renewal.
    let mut renewed: Option<Duration> = None;
    // A channel to the preferred controller that a failback probe opened.
    let mut probed: Option<(Endpoint, Channel)> = None;
    let mut shown = Shown::new(state.root());
    loop {
        let identity = state.load()?;
        check_not_expired(&identity, &*link.clock)?;
        let renewal = Renewal::plan(&identity, &*link.clock, renewed);
        let attempt = async {
            let (endpoint, channel) = match probed.take() {
                Some(p) => p,
                None => connect(&identity, &resolver, &mut failover).await?,
            };
            let mut ctx = SessionCtx {
                state: &state,
                identity: &identity,
                instance: &instance,
                endpoint: &endpoint,
                failover: &mut failover,
                resolver: &resolver,
                shown: &mut shown,
            };
            session(&mut ctx, channel, &mut link, &mut pending, renewal).await
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = attempt => r,
        };
        match result {
            Ok(SessionEnd::Renewed) => {
                renewed = Some(link.clock.monotonic());
                backoff.reset();
                continue;
            }
            Ok(SessionEnd::IpsChanged) => {
                tracing::info!("host addresses changed; reconnecting to the controller");
                backoff.reset();
                continue;
            }
            Ok(SessionEnd::FellBack(endpoint, channel)) => {
                tracing::info!(controller = %endpoint, "preferred controller answers; moving back to it");
                failover.fell_back(&endpoint);
                probed = Some((endpoint, channel));
                backoff.reset();
                continue;
            }
            Err(SessionError::Fatal(e)) => {
                shown.disconnected(&format!("{e:#}"));
                return Err(e);
            }
            Err(SessionError::Transient { error, established }) => {
                failover.failed();
                if established {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                shown.disconnected(&format!("{error:#}"));
                tracing::warn!(
                    attempt = backoff.attempt(),
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %format!("{error:#}"),
                    "controller connection failed; trying the next controller endpoint"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// What a session needs besides the link.
struct SessionCtx<'a> {
    state: &'a StateDir,
    identity: &'a Identity,
    instance: &'a str,
    endpoint: &'a Endpoint,
    failover: &'a mut Failover,
    resolver: &'a dyn Resolver,
    shown: &'a mut Shown,
}

/// `controller.json` as the loop last wrote it (rewritten only when it changes).
struct Shown {
    root: std::path::PathBuf,
    connected: bool,
    since: String,
}

impl Shown {
    fn new(root: &std::path::Path) -> Shown {
        Shown {
            root: root.to_path_buf(),
            connected: true,
            since: String::new(),
        }
    }

    fn write(&self, c: &connection::Connection) {
        if let Err(e) = connection::write(&self.root, c) {
            tracing::warn!(error = %format!("{e:#}"), "cannot record the controller connection");
        }
    }

    fn connected(&mut self, endpoint: &Endpoint) {
        self.connected = true;
        self.since = certs::rfc3339(OffsetDateTime::now_utc());
        self.write(&connection::Connection {
            pid: std::process::id(),
            controller: Some(endpoint.controller.clone()),
            address: Some(endpoint.addr.to_string()),
            preferred: endpoint.rank == 0,
            since: self.since.clone(),
            last_error: None,
        });
    }

    fn disconnected(&mut self, error: &str) {
        if self.connected {
            self.connected = false;
            self.since = certs::rfc3339(OffsetDateTime::now_utc());
        }
        self.write(&connection::Connection {
            pid: std::process::id(),
            controller: None,
            address: None,
            preferred: false,
            since: self.since.clone(),
            last_error: Some(error.to_string()),
        });
    }
}

/// Resolves the controller addresses and dials the endpoint `failover` chooses.
async fn connect(
    identity: &Identity,
    resolver: &dyn Resolver,
    failover: &mut Failover,
) -> Result<(Endpoint, Channel), SessionError> {
    let (list, errors) = endpoints::resolve(&identity.controllers, resolver).await;
    for e in &errors {
        tracing::warn!(error = %e, "controller address not resolved");
    }
    let Some(endpoint) = failover.choose(&list).cloned() else {
        return Err(transient(false)(anyhow::anyhow!(
            "no controller address resolved: {}",
            errors.join("; ")
        )));
    };
    let channel = dial(identity, &endpoint)
        .await
        .with_context(|| format!("controller {}", endpoint.controller))
        .map_err(transient(false))?;
    Ok((endpoint, channel))
}

async fn dial(identity: &Identity, endpoint: &Endpoint) -> anyhow::Result<Channel> {
    let config = tls::agent_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    Ok(drover_proto::transport::dial(&endpoint.addr.to_string(), config).await?)
}

/// How long a failback probe may take in all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Dials the preferred controller's endpoints in turn; the first that answers (TLS with
/// this agent's certificate, verified as the controller) is returned with its channel.
async fn probe_preferred(
    identity: &Identity,
    resolver: &dyn Resolver,
) -> Option<(Endpoint, Channel)> {
    let probe = async {
        let (list, _) = endpoints::resolve(&identity.controllers[..1], resolver).await;
        for endpoint in list {
            match dial(identity, &endpoint).await {
                Ok(channel) => return Some((endpoint, channel)),
                Err(e) => {
                    tracing::info!(controller = %endpoint, error = %format!("{e:#}"), "preferred controller does not answer yet")
                }
            }
        }
        None
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

/// One session: hello, welcome, heartbeats until the stream ends or renewal is due.
async fn session(
    ctx: &mut SessionCtx<'_>,
    channel: Channel,
    link: &mut Link,
    pending: &mut Vec<v1::AgentMessage>,
    renewal: Renewal,
) -> Result<SessionEnd, SessionError> {
    let (state, identity, instance) = (ctx.state, ctx.identity, ctx.instance);
    let session_ips = sorted(host_facts::ips());
    let id = identity.agent_id.as_str();
    let mut client = AgentControlClient::new(channel.clone());
    let mut facts = HostFacts::collect();
    // Fleet mode keeps the GitLab system id (`s_` + 12 hex) in the state dir.
    if let Ok(id) = std::fs::read_to_string(state.root().join("system_id")) {
        facts.system_id = id.trim().to_string();
    }
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(16);
    let hello = v1::AgentMessage {
        kind: Some(AgentKind::Hello(v1::Hello {
            facts: Some(v1::AgentFacts::from(&facts)),
            applied_generation: link.report.borrow().applied_generation,
            instance: instance.to_string(),
            upgrade: link
                .upgrader
                .progress()
                .as_ref()
                .map(v1::UpgradeReport::from),
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| transient(false)(anyhow::anyhow!("session channel closed")))?;
    let response = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| from_status(s, id, false))?;
    if let Some(date) = response
        .metadata()
        .get("date")
        .and_then(|v| v.to_str().ok())
        && let Err(e) = link.skew.observe_header(SystemTime::now(), date)
    {
        tracing::debug!(error = %e, "controller date header");
    }
    let mut inbound = response.into_inner();
    let welcome = match inbound
        .message()
        .await
        .map_err(|s| from_status(s, id, false))?
    {
        Some(v1::ControllerMessage {
            kind: Some(ControllerKind::Welcome(w)),
        }) => w,
        _ => {
            return Err(transient(false)(anyhow::anyhow!(
                "controller did not answer hello with welcome"
            )));
        }
    };
    link.upgrader.pin_key(&welcome.upgrade_public_key);
    link.upgrader.session_up();
    let interval = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));
    tracing::info!(agent = %id, controller = %ctx.endpoint, heartbeat_s = interval.as_secs(), "connected to controller");

    let clock = link.clock.clone();
    ctx.failover
        .connected(ctx.endpoint, clock.monotonic(), &mut rand::rng());
    ctx.shown.connected(ctx.endpoint);
    let _ = link.channel.send(Some(channel.clone()));
    let renew = tokio::time::sleep(renewal.check_in(&*clock));
    tokio::pin!(renew);
    // Far away when there is nothing to probe (on the preferred controller).
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let failback = tokio::time::sleep(ctx.failover.failback_in(clock.monotonic()).unwrap_or(NEVER));
    tokio::pin!(failback);
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    for m in pending.drain(..) {
        if tx.send(m).await.is_err() {
            return Err(transient(true)(anyhow::anyhow!("session stream closed")));
        }
    }
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if sorted(host_facts::ips()) != session_ips {
                    return Ok(SessionEnd::IpsChanged);
                }
                let mut hb = heartbeat(&link.report.borrow(), &link.health.borrow(), host_facts::ips());
                if let Some(AgentKind::Heartbeat(h)) = &mut hb.kind {
                    h.upgrade = link.upgrader.progress().as_ref().map(v1::UpgradeReport::from);
                }
                if tx.send(hb).await.is_err() {
                    return Err(transient(true)(anyhow::anyhow!("session stream closed")));
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(v1::ControllerMessage { kind: Some(ControllerKind::DesiredState(ds)) })) => {
                    tracing::info!(agent = %id, generation = ds.generation, runners = ds.runners.len(), "desired state received");
                    if link.desired.send(DesiredState::from(ds)).is_err() {
                        return Err(SessionError::Fatal(anyhow::anyhow!("fleet supervisor stopped")));
                    }
                }
                Ok(Some(v1::ControllerMessage { kind: Some(ControllerKind::Command(v1::Command { kind: Some(v1::command::Kind::Upgrade(u)) })) })) => {
                    match crate::upgrade::Order::try_from(&u) {
                        Ok(order) => {
                            tracing::info!(agent = %id, upgrade = order.upgrade_id, version = %order.version, "upgrade received");
                            link.upgrader.start(order, Box::new(GrpcSource { channel: channel.clone(), stream: None }));
                        }
                        Err(e) => tracing::warn!(agent = %id, error = %e, "upgrade from the controller ignored"),
                    }
                }
                Ok(Some(v1::ControllerMessage { kind: Some(ControllerKind::Command(v1::Command { kind: Some(v1::command::Kind::FetchImage(f)) })) })) => {
                    match crate::images::FetchImage::try_from(f) {
                        Ok(f) => {
                            tracing::info!(agent = %id, image = %f.image_id, reference = %f.reference, "image fetch received");
                            let _ = link.channel.send(Some(channel.clone()));
                            if link.images.send(f).is_err() {
                                tracing::warn!(agent = %id, "image fetcher stopped; fetch ignored");
                            }
                        }
                        Err(e) => tracing::warn!(agent = %id, error = %e, "image fetch from the controller ignored"),
                    }
                }
                Ok(Some(v1::ControllerMessage { kind: Some(ControllerKind::Command(cmd)) })) => {
                    tracing::info!(agent = %id, command = ?cmd.kind, "command received");
                    match Command::try_from(cmd) {
                        Ok(cmd) => {
                            if link.commands.send(cmd).is_err() {
                                return Err(SessionError::Fatal(anyhow::anyhow!("fleet supervisor stopped")));
                            }
                        }
                        Err(e) => tracing::warn!(agent = %id, error = %e, "command from the controller ignored"),
                    }
                }
                Ok(Some(_)) => tracing::debug!(agent = %id, "unexpected controller message ignored"),
                Ok(None) => return Err(transient(true)(anyhow::anyhow!("controller closed the session"))),
                Err(s) => return Err(from_status(s, id, true)),
            },
            Some(out) = link.outbound.recv() => {
                let out = v1::AgentMessage::from(out);
                if sorted(host_facts::ips()) != session_ips {
                    pending.push(out);
                    return Ok(SessionEnd::IpsChanged);
                }
                if tx.send(out).await.is_err() {
                    return Err(transient(true)(anyhow::anyhow!("session stream closed")));
                }
            }
            _ = &mut renew => {
                if renewal.remaining(&*clock).is_zero() {
                    renew_certificate(state, identity, channel.clone()).await?;
                    return Ok(SessionEnd::Renewed);
                }
                renew.as_mut().reset(tokio::time::Instant::now() + renewal.check_in(&*clock));
            }
            _ = &mut failback => {
                if ctx.failover.failback_in(clock.monotonic()).is_some_and(|d| d.is_zero()) {
                    if let Some((endpoint, channel)) = probe_preferred(identity, ctx.resolver).await {
                        return Ok(SessionEnd::FellBack(endpoint, channel));
                    }
                    ctx.failover.probe_failed(clock.monotonic(), &mut rand::rng());
                }
                let next = ctx.failover.failback_in(clock.monotonic()).unwrap_or(NEVER);
                failback.as_mut().reset(tokio::time::Instant::now() + next);
            }
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A heartbeat: generation and units from `report`, the host from `host` (Docker
/// reachability from `report`, which the supervisor's pings keep fresher than the probe's
/// snapshot), this agent's version, `ips`.
fn heartbeat(report: &Report, host: &HostHealth, ips: Vec<String>) -> v1::AgentMessage {
    let mut health = v1::HostHealth::from(host);
    health.docker_reachable = report.docker_reachable;
    if report.docker_reachable {
        if let Some(v) = &report.docker_version {
            health.docker_version = v.clone();
        }
    } else {
        health.docker_version.clear();
    }
    v1::AgentMessage {
        kind: Some(AgentKind::Heartbeat(v1::Heartbeat {
            sent_at: Some(prost_types::Timestamp {
                seconds: OffsetDateTime::now_utc().unix_timestamp(),
                nanos: 0,
            }),
            applied_generation: report.applied_generation,
            host: Some(health),
            runners: report.units.iter().map(v1::RunnerStatus::from).collect(),
            ips,
            agent_version: drover_runtime::version().to_string(),
            draining: report.draining,
            upgrade: None,
        })),
    }
}

/// New key, new CSR, RenewCertificate, store key and certificate.
async fn renew_certificate(
    state: &StateDir,
    identity: &Identity,
    channel: Channel,
) -> Result<(), SessionError> {
    let id = identity.agent_id.as_str();
    let key = certs::new_key_and_csr()
        .map_err(|e| transient(true)(anyhow::anyhow!("generate key and csr: {e}")))?;
    let resp = AgentControlClient::new(channel)
        .renew_certificate(v1::RenewRequest {
            csr_der: key.csr_der.clone(),
        })
        .await
        .map_err(|s| from_status(s, id, true))?
        .into_inner();
    if resp.ca_pem.trim() != identity.ca_pem.trim() {
        return Err(SessionError::Fatal(anyhow::anyhow!(
            "controller renewed with a different CA; refusing it"
        )));
    }
    let info = certs::check_issued(&resp.certificate_pem, &identity.ca_pem, &key.public_key, id)
        .map_err(|e| transient(true)(anyhow::anyhow!("renewed certificate unusable: {e}")))?;
    state
        .write_credentials(key.key_pem.expose_secret(), &resp.certificate_pem)
        .map_err(|e| transient(true)(e.into()))?;
    tracing::info!(agent = %id, not_after = %certs::rfc3339(info.not_after), "certificate renewed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::fleet::report::UnitReport;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    /// A certificate valid for 3 h from `t0()`: renewal at `t0() + 2 h`.
    fn identity() -> Identity {
        Identity {
            agent_id: "agent-clock".into(),
            controllers: vec!["https://controller:7443".into()],
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: secrecy::SecretString::from(String::new()),
            not_before: t0(),
            not_after: t0() + time::Duration::hours(3),
        }
    }

    /// Issue 20: the wall clock jumps +1 h past the renewal point mid-session: the next
    /// look (within `RENEW_RECHECK`) renews; it is not skipped or left to the timer set
    /// before the jump.
    #[test]
    fn renewal_after_a_forward_jump_past_the_point_is_at_once() {
        let c = FakeClock::new(t0() + time::Duration::minutes(90));
        let r = Renewal::plan(&identity(), &c, None);
        assert_eq!(r.remaining(&c), HOUR / 2);
        assert_eq!(r.check_in(&c), RENEW_RECHECK);
        c.advance(RENEW_RECHECK);
        c.jump(time::Duration::hours(1));
        assert_eq!(r.remaining(&c), Duration::ZERO);
        assert_eq!(r.check_in(&c), Duration::ZERO);
    }

    /// Issue 20: the wall clock jumps −1 h: no renewal before the point, and none an hour
    /// late either (the monotonic side holds the time that was left).
    #[test]
    fn renewal_after_a_backward_jump_is_neither_early_nor_an_hour_late() {
        let c = FakeClock::new(t0() + time::Duration::minutes(110));
        let r = Renewal::plan(&identity(), &c, None);
        c.jump(time::Duration::hours(-1));
        assert_eq!(r.remaining(&c), Duration::from_secs(600));
        c.advance(Duration::from_secs(599));
        assert!(!r.remaining(&c).is_zero());
        c.advance(Duration::from_secs(1));
        assert!(r.remaining(&c).is_zero());
    }

    /// Issue 20: a clock far ahead of the controller makes each new certificate look
    /// two-thirds spent; renewals still come at most every sixth of the lifetime.
    #[test]
    fn no_renewal_storm_when_the_clock_is_ahead_of_the_controller() {
        // The controller issued at t0() (3 h lifetime); this clock reads t0() + 2.5 h.
        let c = FakeClock::new(t0() + time::Duration::minutes(150));
        let first = Renewal::plan(&identity(), &c, None);
        assert!(first.remaining(&c).is_zero(), "first renewal at once");
        // Renewed just now: the same picture again, but not due for 30 min (3 h / 6).
        let again = Renewal::plan(&identity(), &c, Some(c.monotonic()));
        assert_eq!(again.remaining(&c), HOUR / 2);
        c.advance(HOUR / 2);
        assert!(again.remaining(&c).is_zero());
    }

    /// Issue 20: a wall clock that jumped past the certificate's end: a clear error naming
    /// the agent, the end and what to do; before that, none.
    #[test]
    fn an_expired_certificate_is_a_clear_error() {
        let c = FakeClock::new(t0() + time::Duration::minutes(150));
        check_not_expired(&identity(), &c).unwrap();
        c.jump(time::Duration::hours(1));
        let e = check_not_expired(&identity(), &c).unwrap_err().to_string();
        assert!(e.contains("agent-clock"), "{e}");
        assert!(
            e.contains(&certs::rfc3339(t0() + time::Duration::hours(3))),
            "{e}"
        );
        assert!(e.contains("enroll again"), "{e}");
    }

    #[test]
    fn heartbeat_carries_generation_units_host_and_version() {
        use crate::health::{
            ClockSkew, CollectOptions, DiskSpace, DockerStatus, FakeProbe, LoadAverage, Memory,
            collect,
        };
        let report = Report {
            applied_generation: 9,
            docker_reachable: true,
            docker_version: Some("20.10.24".into()),
            units: vec![UnitReport {
                name: "lab".into(),
                state: "backoff".into(),
                last_error: Some("verify: 500".into()),
                gitlab_runner_id: 3,
                token_expires_at: Some("2026-12-01T00:00:00Z".into()),
                jobs_running: 1,
                jobs_succeeded: 2,
                jobs_failed: 3,
                jobs_canceled: 1,
                last_gitlab_contact: Some("2026-11-25T10:00:00Z".into()),
                ..UnitReport::default()
            }],
            ..Report::default()
        };
        let probe = FakeProbe::default()
            .with_memory(Memory {
                total_bytes: 8 << 30,
                available_bytes: 2 << 30,
            })
            .with_load(LoadAverage {
                one: 0.75,
                five: 0.5,
                fifteen: 0.25,
            })
            .with_disk(
                "/var/lib/docker",
                DiskSpace {
                    total_bytes: 1000,
                    free_bytes: 400,
                },
            )
            .with_disk(
                "/var/lib/drover-agent",
                DiskSpace {
                    total_bytes: 500,
                    free_bytes: 100,
                },
            );
        let skew = ClockSkew::default();
        skew.observe(
            SystemTime::UNIX_EPOCH + Duration::from_secs(100),
            SystemTime::UNIX_EPOCH + Duration::from_secs(103),
        );
        let host = collect(
            &probe,
            Some(DockerStatus {
                version: "20.10.24".into(),
                root_dir: "/var/lib/docker".into(),
            }),
            &skew,
            &CollectOptions {
                builds_dir: Some("/var/lib/drover-agent".into()),
            },
        );
        let Some(AgentKind::Heartbeat(hb)) =
            heartbeat(&report, &host, vec!["10.0.0.2".into()]).kind
        else {
            panic!("not a heartbeat");
        };
        assert_eq!(hb.applied_generation, 9);
        assert_eq!(hb.agent_version, drover_runtime::version());
        assert_eq!(hb.ips, ["10.0.0.2"]);
        let h = hb.host.unwrap();
        assert!(h.docker_reachable);
        assert_eq!(h.docker_version, "20.10.24");
        assert_eq!((h.disk_free_bytes, h.disk_total_bytes), (400, 1000));
        assert_eq!(
            (h.builds_disk_free_bytes, h.builds_disk_total_bytes),
            (100, 500)
        );
        assert_eq!(
            (h.memory_available_bytes, h.memory_total_bytes),
            (2 << 30, 8 << 30)
        );
        assert_eq!(h.load1, 0.75);
        assert_eq!(h.clock_skew_seconds, -3.0);
        let r = &hb.runners[0];
        assert_eq!(
            (r.name.as_str(), r.state.as_str(), r.last_error.as_str()),
            ("lab", "backoff", "verify: 500")
        );
        assert_eq!(r.gitlab_runner_id, 3);
        assert_eq!(r.token_expires_at.unwrap().seconds, 1_796_083_200);
        assert_eq!((r.jobs_running, r.jobs_succeeded, r.jobs_failed), (1, 2, 4));
        assert_eq!(r.last_gitlab_contact.unwrap().seconds, 1_795_600_800);

        // The supervisor saw Docker go away after the last probe: not reachable, no version.
        let down = Report {
            docker_reachable: false,
            ..report
        };
        let Some(AgentKind::Heartbeat(hb)) = heartbeat(&down, &host, Vec::new()).kind else {
            panic!("not a heartbeat");
        };
        let h = hb.host.unwrap();
        assert!(!h.docker_reachable && h.docker_version.is_empty());
    }
}
