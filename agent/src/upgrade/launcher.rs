//! The launcher: `drover-agent run` in fleet mode, started from the packaged binary, reads
//! the A/B selection ([`super::selection`]) and either runs the agent itself (the packaged
//! binary) or runs the selected checked binary as its child, with the same arguments and
//! [`SLOT_ENV`] set (a launched binary never launches), dying with the launcher
//! (`PR_SET_PDEATHSIG`). The launcher forwards SIGTERM, SIGINT, SIGQUIT and SIGHUP to the
//! child and exits with the child's exit code (128 + signal when a signal ended it).
//! Under systemd the child sends `READY=1` and the watchdog pings (the unit has
//! `NotifyAccess=all`; the launcher drops `WATCHDOG_PID`, which names itself).
//!
//! An unconfirmed child is watched: when it exits before it confirmed (and no stop signal
//! was forwarded), or has not confirmed within the selection's health timeout (it is then
//! sent SIGTERM, and SIGKILL 10 s later), the launcher rolls the selection back and starts
//! over: the previous binary, or the packaged one in process. A child that exits with
//! [`EXIT_SWITCH`] has selected another binary: the launcher starts over too.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::selection::{self, DiskBinaries, Launch, SelectionFile, Slot};

/// Set for a binary the launcher runs: its SHA-256 (its slot in the selection).
pub const SLOT_ENV: &str = "DROVER_AGENT_UPGRADE_SLOT";

/// The exit code of an agent that drained and selected another binary for the launcher.
pub const EXIT_SWITCH: i32 = 75;

/// How long a child that did not confirm in time has between SIGTERM and SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(10);

/// How often the launcher looks whether its child confirmed.
const CONFIRM_POLL: Duration = Duration::from_millis(250);

/// What `drover-agent run` does after the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Run the agent in this process (the packaged binary, or this is a launched child).
    RunHere,
    /// The child ended: exit with this code.
    Exit(i32),
}

/// The slot of this process when the launcher started it.
pub fn running_slot() -> Option<String> {
    std::env::var(SLOT_ENV).ok().filter(|s| !s.is_empty())
}

/// Runs the selected binary until it ends for good (see the module doc).
pub async fn launch(state_dir: &Path) -> anyhow::Result<Outcome> {
    if running_slot().is_some() {
        return Ok(Outcome::RunHere);
    }
    let file = SelectionFile::new(state_dir);
    let binaries = DiskBinaries {
        state_dir: state_dir.to_path_buf(),
    };
    let mut signals: Option<Forwarded> = None;
    loop {
        let d = selection::decide(file.load(), drover_runtime::version(), &binaries);
        for note in &d.notes {
            tracing::error!("{note}");
        }
        if let Some(s) = &d.write
            && let Err(e) = file.save(s)
        {
            tracing::error!(error = %e, "running the packaged binary");
            return Ok(Outcome::RunHere);
        }
        let Launch::Child {
            slot,
            path,
            confirm_within,
        } = d.launch
        else {
            return Ok(Outcome::RunHere);
        };
        if signals.is_none() {
            signals = Some(Forwarded::install()?);
        }
        let forwarded = signals.as_mut().context("signal handlers")?;
        let child = Child {
            file: &file,
            slot: &slot,
            path: &path,
            confirm_within,
        };
        if let Some(code) = child.supervise(forwarded).await? {
            return Ok(Outcome::Exit(code));
        }
    }
}

/// One run of a selected binary.
struct Child<'a> {
    file: &'a SelectionFile,
    slot: &'a Slot,
    path: &'a PathBuf,
    confirm_within: Option<Duration>,
}

impl Child<'_> {
    /// `Some(exit code)` when the launcher is done, `None` to decide again.
    async fn supervise(&self, signals: &mut Forwarded) -> anyhow::Result<Option<i32>> {
        let (slot, version) = (&self.slot.sha256, &self.slot.version);
        let mut cmd = tokio::process::Command::new(self.path);
        cmd.args(std::env::args_os().skip(1)).env(SLOT_ENV, slot);
        // systemd's watchdog names the launcher (the unit's main process): the child pings
        // it (the unit has `NotifyAccess=all`), so it must not read the pid as another's.
        if std::env::var(crate::systemd::WATCHDOG_PID_ENV).ok()
            == Some(std::process::id().to_string())
        {
            cmd.env_remove(crate::systemd::WATCHDOG_PID_ENV);
        }
        // SAFETY: the closure only makes one system call (prctl), async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.roll_back(format!("start {}: {e}", self.path.display()));
                return Ok(None);
            }
        };
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
            .context("the started agent has no process id")?;
        tracing::info!(version = %version, pid = pid.as_raw_nonzero().get(), confirm_within_s = self.confirm_within.map(|d| d.as_secs()), "agent upgrade: running the selected binary");
        let started = Instant::now();
        let mut confirmed = self.confirm_within.is_none();
        let mut stopping = false;
        let mut poll = tokio::time::interval(CONFIRM_POLL);
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.context("wait for the selected agent binary")?;
                    if !confirmed && !stopping && !self.confirmed() {
                        self.roll_back(format!("{version} exited ({status}) before reporting healthy"));
                        return Ok(None);
                    }
                    let code = exit_code(status);
                    if code == EXIT_SWITCH {
                        tracing::info!(version = %version, "agent upgrade: the agent selected another binary");
                        return Ok(None);
                    }
                    return Ok(Some(code));
                }
                (name, sig) = signals.next() => {
                    stopping |= sig != rustix::process::Signal::HUP;
                    if let Err(e) = rustix::process::kill_process(pid, sig) {
                        tracing::warn!(error = %e, "forward {name} to the agent");
                    }
                }
                _ = poll.tick(), if !confirmed => {
                    if self.confirmed() {
                        confirmed = true;
                        tracing::info!(version = %version, "agent upgrade: the new binary confirmed");
                    } else if let Some(within) = self.confirm_within
                        && started.elapsed() > within
                        && !stopping
                    {
                        tracing::error!(version = %version, "agent upgrade: no healthy report within {}s; stopping it", within.as_secs());
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                        if tokio::time::timeout(KILL_AFTER, child.wait()).await.is_err() {
                            let _ = child.kill().await;
                        }
                        self.roll_back(format!("{version} did not report healthy within {}s", within.as_secs()));
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The selection says this child confirmed.
    fn confirmed(&self) -> bool {
        matches!(self.file.load(), Ok(Some(s)) if s.confirmed && s.active.as_ref() == Some(self.slot))
    }

    /// Rolls the selection back from this child, logging why.
    fn roll_back(&self, reason: String) {
        let mut s = match self.file.load() {
            Ok(Some(s)) if s.active.as_ref() == Some(self.slot) => s,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, reason = %reason, "agent upgrade: cannot roll back");
                return;
            }
        };
        let line = selection::rollback(&mut s, reason);
        tracing::error!("{line}");
        if let Err(e) = self.file.save(&s) {
            tracing::error!(error = %e, "agent upgrade: cannot record the rollback");
        }
    }
}

/// The exit code of `status`: its code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// The signals the launcher passes on to its child.
struct Forwarded {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
}

impl Forwarded {
    fn install() -> anyhow::Result<Forwarded> {
        let on = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("install {name} handler"))
        };
        Ok(Forwarded {
            term: on(SignalKind::terminate(), "SIGTERM")?,
            int: on(SignalKind::interrupt(), "SIGINT")?,
            quit: on(SignalKind::quit(), "SIGQUIT")?,
            hup: on(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    async fn next(&mut self) -> (&'static str, rustix::process::Signal) {
        use rustix::process::Signal as S;
        tokio::select! {
            _ = self.term.recv() => ("SIGTERM", S::TERM),
            _ = self.int.recv() => ("SIGINT", S::INT),
            _ = self.quit.recv() => ("SIGQUIT", S::QUIT),
            _ = self.hup.recv() => ("SIGHUP", S::HUP),
        }
    }
}

/// Replaces this process with a fresh start of its own binary and arguments (after a
/// switch by the packaged binary: the new process launches the selected one). Returns
/// only on failure.
pub fn reexec() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return anyhow::anyhow!("find this agent's binary to restart it: {e}"),
    };
    // A package upgraded meanwhile replaced the file: start the one now installed.
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => exe,
    };
    let e = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!("restart {}: {e}", exe.display())
}
