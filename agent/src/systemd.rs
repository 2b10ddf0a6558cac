//! systemd integration without a C library: `sd_notify(3)` datagrams and the watchdog.
//!
//! Under a `Type=notify` unit systemd sets `NOTIFY_SOCKET` (a filesystem path, or an
//! abstract socket written with a leading `@`) and, with `WatchdogSec=`, `WATCHDOG_USEC`
//! and `WATCHDOG_PID`. The agent:
//! - calls [`ready`] once it serves (systemd then marks the unit active),
//! - runs [`spawn_watchdog`], which sends `WATCHDOG=1` at half the interval **only while
//!   its health check passes**, so a wedged agent is restarted by systemd,
//! - calls [`stopping`] when shutdown starts.
//!
//! [`Heartbeat`] is the usual health check: the main loop beats, the check asks whether the
//! last beat is recent.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op that returns `Ok(())`, so the
//! same binary runs in a terminal, a container or a test.
//!
//! The free functions read the environment on each call; [`Notifier`] is the same API bound
//! to an explicit socket, for tests and for callers that resolve the socket once.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::shutdown::Tasks;

/// Environment variable naming the notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// Environment variable with the watchdog interval in microseconds.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// Environment variable with the PID the watchdog is meant for.
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// A failure to talk to systemd's notification socket.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` holds something that is neither a path nor an `@abstract` name.
    #[error("unsupported NOTIFY_SOCKET value {value:?}: expected an absolute path or @name")]
    InvalidSocket {
        /// The value as found.
        value: String,
    },
    /// Creating the local datagram socket or sending on it failed.
    #[error("send {state:?} to notify socket {socket}")]
    Send {
        /// The first line of the message, for the log.
        state: String,
        /// The socket as written in `NOTIFY_SOCKET`.
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A socket file, e.g. `/run/systemd/notify`.
    Path(PathBuf),
    /// A Linux abstract socket name (written `@name`; the `@` stands for the leading NUL).
    Abstract(Vec<u8>),
}

/// Sends `sd_notify` messages to one socket, or nowhere when not under systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    /// `None` when not started by systemd with `Type=notify`: every send is a no-op.
    target: Option<Target>,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, or a disabled one when it is unset or empty.
    pub fn from_env() -> Result<Self, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET_ENV) {
            None => Ok(Self::disabled()),
            Some(v) if v.is_empty() => Ok(Self::disabled()),
            Some(v) => match v.to_str() {
                Some(s) => Self::for_socket(s),
                None => Err(NotifyError::InvalidSocket {
                    value: v.to_string_lossy().into_owned(),
                }),
            },
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// A notifier for a socket written as in `NOTIFY_SOCKET`: `/abs/path` or `@abstract`.
    pub fn for_socket(value: &str) -> Result<Self, NotifyError> {
        let target = if let Some(name) = value.strip_prefix('@') {
            if name.is_empty() {
                return Err(NotifyError::InvalidSocket {
                    value: value.to_owned(),
                });
            }
            Target::Abstract(name.as_bytes().to_vec())
        } else if value.starts_with('/') {
            Target::Path(PathBuf::from(value))
        } else {
            // systemd also knows `vsock:` addresses; the agent never runs in such a VM.
            return Err(NotifyError::InvalidSocket {
                value: value.to_owned(),
            });
        };
        Ok(Self {
            target: Some(target),
        })
    }

    /// Whether messages go anywhere (i.e. we run under a `Type=notify` unit).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `READY=1`: startup is complete.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.notify("READY=1")
    }

    /// Sends `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1")
    }

    /// Sends `RELOADING=1`: the service restarts in place (an upgraded binary takes over
    /// in the same unit); the `READY=1` of what comes next ends the reload.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.notify("RELOADING=1")
    }

    /// Sends `WATCHDOG=1`: the service is alive and healthy.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    /// Sends `STATUS=<text>`, shown by `systemctl status`. Newlines become spaces, since
    /// the protocol is one `KEY=VALUE` per line.
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        let one_line: String = text
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        self.notify(&format!("STATUS={one_line}"))
    }

    /// Sends a raw message of newline-separated `KEY=VALUE` assignments.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let send_error = |source| NotifyError::Send {
            state: state.lines().next().unwrap_or_default().to_owned(),
            socket: target.display(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(send_error)?;
        match target {
            Target::Path(path) => socket.send_to(state.as_bytes(), path),
            Target::Abstract(name) => SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr)),
        }
        .map_err(send_error)?;
        Ok(())
    }

    /// Starts the watchdog task on `tasks` (task `systemd watchdog`): every `interval / 2`, runs
    /// `health_check` and sends `WATCHDOG=1` only if it returned `true` (otherwise sets
    /// `STATUS=` to say why pings stopped, so systemd restarts a stuck agent). Ends when
    /// `shutdown` is cancelled. `health_check` runs on the runtime: keep it cheap and
    /// non-blocking (e.g. compare an atomic heartbeat timestamp with now).
    pub fn spawn_watchdog<F>(
        &self,
        tasks: &Tasks,
        interval: Duration,
        health_check: F,
        shutdown: CancellationToken,
    ) -> JoinHandle<()>
    where
        F: Fn() -> bool + Send + Sync + 'static,
    {
        let notifier = self.clone();
        let period = (interval / 2).max(Duration::from_millis(1));
        tasks.spawn("systemd watchdog", async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut healthy = true;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let now_healthy = health_check();
                if now_healthy {
                    if let Err(e) = notifier.watchdog() {
                        tracing::warn!(error = %e, "systemd watchdog ping failed");
                    }
                    if !healthy {
                        tracing::info!("health check passes again; watchdog pings resumed");
                        let _ = notifier.status("healthy");
                    }
                } else if healthy {
                    tracing::error!(
                        "health check failed; withholding watchdog pings so systemd restarts the agent"
                    );
                    let _ =
                        notifier.status("unhealthy: health check failed, watchdog pings withheld");
                }
                healthy = now_healthy;
            }
        })
    }
}

impl Target {
    /// The socket as written in `NOTIFY_SOCKET`.
    fn display(&self) -> String {
        match self {
            Target::Path(p) => p.display().to_string(),
            Target::Abstract(name) => format!("@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// Sends `READY=1` to `$NOTIFY_SOCKET`; no-op when unset.
pub fn ready() -> Result<(), NotifyError> {
    Notifier::from_env()?.ready()
}

/// Sends `STOPPING=1` to `$NOTIFY_SOCKET`; no-op when unset.
pub fn stopping() -> Result<(), NotifyError> {
    Notifier::from_env()?.stopping()
}

/// Sends `WATCHDOG=1` to `$NOTIFY_SOCKET`; no-op when unset.
pub fn watchdog() -> Result<(), NotifyError> {
    Notifier::from_env()?.watchdog()
}

/// Sends `STATUS=<text>` to `$NOTIFY_SOCKET`; no-op when unset.
pub fn status(text: &str) -> Result<(), NotifyError> {
    Notifier::from_env()?.status(text)
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), or `None` when the
/// watchdog is off or meant for another process (`WATCHDOG_PID` is not ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var(WATCHDOG_USEC_ENV).ok();
    let pid = std::env::var(WATCHDOG_PID_ENV).ok();
    parse_watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] on explicit values: `usec` must be a positive integer; `pid`, when
/// present, must equal `own_pid`.
pub fn parse_watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    match usec?.trim().parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(us) => Some(Duration::from_micros(us)),
    }
}

/// Starts the watchdog for `$NOTIFY_SOCKET` / `$WATCHDOG_USEC` (see
/// [`Notifier::spawn_watchdog`]). Returns `None`, and starts nothing, when not under
/// systemd or when the unit has no `WatchdogSec=`.
pub fn spawn_watchdog<F>(
    tasks: &Tasks,
    health_check: F,
    shutdown: CancellationToken,
) -> Result<Option<JoinHandle<()>>, NotifyError>
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    let notifier = Notifier::from_env()?;
    match (notifier.is_enabled(), watchdog_interval()) {
        (true, Some(interval)) => Ok(Some(notifier.spawn_watchdog(
            tasks,
            interval,
            health_check,
            shutdown,
        ))),
        _ => Ok(None),
    }
}

/// A liveness signal for the watchdog's health check: the agent's main loop calls
/// [`Heartbeat::beat`] on every turn, and the health check passed to [`spawn_watchdog`] is
/// `move || heartbeat.is_fresh(max_age)`. A loop that hangs stops beating, the pings stop,
/// and systemd restarts the agent. Cheap to clone and to call from any thread.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Reference point; beats are stored as milliseconds since it.
    start: tokio::time::Instant,
    /// Milliseconds from `start` to the last beat.
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records that the loop is alive now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether the last beat is at most `max_age` old.
    pub fn is_fresh(&self, max_age: Duration) -> bool {
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let age = now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed));
        Duration::from_millis(age) <= max_age
    }

    /// Runs `work`, beating every second until it ends. For the loop's own bounded waits (a
    /// GitLab call under its timeout, a Docker ping): such a wait is the loop at work, not
    /// a hung loop, and may outlast `WatchdogSec` (a token check waits up to 60 s). Only
    /// for work with its own bound: beating through an unbounded wait would hide a hang.
    pub async fn beat_while<F: std::future::Future>(&self, work: F) -> F::Output {
        tokio::pin!(work);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = every.tick() => self.beat(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_each_state_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::for_socket(path.to_str().unwrap()).unwrap();
        assert!(n.is_enabled());

        n.ready().unwrap();
        assert_eq!(recv(&systemd), "READY=1");
        n.watchdog().unwrap();
        assert_eq!(recv(&systemd), "WATCHDOG=1");
        n.status("2 runners\nup").unwrap();
        assert_eq!(recv(&systemd), "STATUS=2 runners up");
        n.stopping().unwrap();
        assert_eq!(recv(&systemd), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("drover-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::for_socket(&format!("@{name}")).unwrap();
        n.ready().unwrap();
        assert_eq!(recv(&systemd), "READY=1");
    }

    #[test]
    fn disabled_notifier_sends_nothing_and_succeeds() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready().unwrap();
        n.watchdog().unwrap();
        n.stopping().unwrap();
    }

    #[test]
    fn missing_socket_is_an_error_naming_it() {
        let n = Notifier::for_socket("/nonexistent/drover/notify.sock").unwrap();
        let err = n.ready().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/drover/notify.sock"), "{err}");
        assert!(err.contains("READY=1"), "{err}");
    }

    #[test]
    fn rejects_socket_values_that_are_not_path_or_abstract() {
        for bad in ["relative/notify", "@", "vsock:2:1234"] {
            let err = Notifier::for_socket(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn watchdog_interval_needs_positive_usec_and_our_pid() {
        let check = parse_watchdog_interval;
        assert_eq!(
            check(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            check(Some("500000"), Some("7"), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(check(Some("500000"), Some("8"), 7), None);
        assert_eq!(check(Some("500000"), Some("x"), 7), None);
        assert_eq!(check(Some("0"), None, 7), None);
        assert_eq!(check(Some("-5"), None, 7), None);
        assert_eq!(check(Some("soon"), None, 7), None);
        assert_eq!(check(None, Some("7"), 7), None);
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_only_while_healthy_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let systemd = tokio::net::UnixDatagram::bind(&path).unwrap();
        let n = Notifier::for_socket(path.to_str().unwrap()).unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let shutdown = CancellationToken::new();
        let h = healthy.clone();
        let task = n.spawn_watchdog(
            &Tasks::new(),
            Duration::from_secs(10),
            move || h.load(Ordering::SeqCst),
            shutdown.clone(),
        );

        let next = || async {
            let mut buf = [0u8; 512];
            let got = tokio::time::timeout(Duration::from_secs(60), systemd.recv(&mut buf)).await;
            got.ok()
                .map(|r| String::from_utf8(buf[..r.unwrap()].to_vec()).unwrap())
        };
        // Healthy: a ping right away and then every 5 s (half the interval).
        let start = tokio::time::Instant::now();
        assert_eq!(next().await.as_deref(), Some("WATCHDOG=1"));
        assert_eq!(next().await.as_deref(), Some("WATCHDOG=1"));
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        // Unhealthy: one status line, then silence.
        healthy.store(false, Ordering::SeqCst);
        let status = next().await.unwrap();
        assert!(status.starts_with("STATUS=unhealthy"), "{status}");
        assert_eq!(next().await, None, "no ping while the health check fails");

        // Healthy again: pings resume.
        healthy.store(true, Ordering::SeqCst);
        assert_eq!(next().await.as_deref(), Some("WATCHDOG=1"));
        assert_eq!(next().await.as_deref(), Some("STATUS=healthy"));

        shutdown.cancel();
        task.await.unwrap();
        let mut buf = [0u8; 512];
        while let Ok(n) = systemd.try_recv(&mut buf) {
            assert_eq!(
                &buf[..n],
                b"WATCHDOG=1",
                "only pings queued before shutdown"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_is_fresh_until_it_stops_beating() {
        let hb = Heartbeat::new();
        let max_age = Duration::from_secs(10);
        assert!(hb.is_fresh(max_age));
        tokio::time::advance(Duration::from_secs(8)).await;
        hb.clone().beat();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(hb.is_fresh(max_age), "beat 9 s ago");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!hb.is_fresh(max_age), "beat 11 s ago");
        hb.beat();
        assert!(hb.is_fresh(max_age));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_beaten_through_stays_fresh_and_a_plain_one_does_not() {
        let hb = Heartbeat::new();
        let max_age = Duration::from_secs(6);
        let answer = hb
            .beat_while(async {
                tokio::time::sleep(Duration::from_secs(40)).await;
                7
            })
            .await;
        assert_eq!(answer, 7, "the work's output comes back");
        assert!(
            hb.is_fresh(Duration::from_secs(1)),
            "beaten during the 40 s wait"
        );
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert!(!hb.is_fresh(max_age), "a wait without beats goes stale");
    }
}
