//! The stop signals both modes share (`drover-agent run`, fleet and standalone), with
//! gitlab-runner's meaning: `SIGTERM`/`SIGINT` stop at once (running jobs are canceled,
//! reported failed with a trace line saying why); `SIGQUIT` stops gracefully: no new job
//! is taken, the running ones finish, then the process exits 0. A `SIGTERM`/`SIGINT`
//! during a graceful stop cancels the jobs still running.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// What a stop signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `SIGTERM` or `SIGINT` (named): cancel running jobs and stop.
    Now(&'static str),
    /// `SIGQUIT`: take no new jobs, stop once the running ones finished.
    Graceful,
}

/// The installed handlers of the three stop signals.
pub struct StopSignals {
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl StopSignals {
    /// Installs the handlers (from now on the signals no longer kill the process).
    pub fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
            quit: signal(SignalKind::quit()).context("install SIGQUIT handler")?,
        })
    }

    /// The next stop signal.
    pub async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Now("SIGTERM"),
            _ = self.int.recv() => Stop::Now("SIGINT"),
            _ = self.quit.recv() => Stop::Graceful,
        }
    }
}
