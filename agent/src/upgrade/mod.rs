//! Agent self-upgrade from the controller, the agent's side: an upgrade order (from the
//! control stream) downloads the binary with resume and checks it ([`download`]) against
//! the key pinned in the state dir ([`key`]); where the agent stands is reported in Hello
//! and heartbeats.
//!
//! Then the switch, A/B with a boot counter ([`selection`], [`launcher`]):
//! 1. `draining`: the [`Upgrader`] asks `drover-agent run` to switch ([`Switch`]); it stops
//!    gracefully as on SIGQUIT (no new jobs; running jobs finish), at most the order's
//!    health timeout (default 600 s when the order names none): then the jobs still
//!    running are canceled, their traces saying why.
//! 2. It selects the checked binary in `STATE_DIR/upgrade/selection.json` (the running
//!    binary becomes `previous`; the file is replaced atomically) and restarts: the
//!    packaged binary re-executes itself (same pid, same arguments), a launched binary
//!    exits with [`launcher::EXIT_SWITCH`] to its launcher.
//! 3. `switching`: the launcher (always the packaged binary, `/usr/bin/drover-agent`)
//!    counts a boot and runs the selected binary as its child; the child reports
//!    `switching` in its Hello.
//! 4. `healthy`: once its session is up (Welcome) the child confirms in the selection and
//!    reports `healthy` with its version ([`Upgrader::session_up`]); binaries other than
//!    it and the previous one are deleted ([`selection::prune`]).
//! 5. `rolled-back`: a child that exits before it confirmed, has not confirmed within the
//!    health timeout, or whose file no longer has its SHA-256, is rolled back by the
//!    launcher to `previous` (or the packaged binary, run in process); that agent reports
//!    `rolled-back` with the reason, and is not switched to that binary again for the same
//!    upgrade. A package installed since the switch wins when it is not older than the
//!    upgraded binary ([`selection::decide`]).

pub mod download;
pub mod key;
pub mod launcher;
pub mod selection;
pub mod version_order;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::shutdown::Tasks;
use download::{Failure, Source};

/// An upgrade order from the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub upgrade_id: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub size: u64,
    pub signature: Vec<u8>,
    pub version: String,
    pub health_timeout_seconds: u64,
}

/// Where the agent stands (the wire's `UpgradeStep` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Downloading,
    Draining,
    Switching,
    Healthy,
    RolledBack,
    Refused,
}

/// What Hello and heartbeats report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub upgrade_id: u64,
    pub step: Step,
    pub detail: String,
}

/// Attempts of one order within a session before waiting for the controller to send it
/// again (its next session does).
const ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The health timeout of an order that names none.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(600);

impl Order {
    /// How long the new binary has to confirm, and the running jobs to finish first.
    pub fn health_timeout(&self) -> Duration {
        match self.health_timeout_seconds {
            0 => DEFAULT_HEALTH_TIMEOUT,
            s => Duration::from_secs(s),
        }
    }
}

/// The agent's request to switch binaries, from the [`Upgrader`] to `drover-agent run`
/// (which drains, then selects the binary and restarts).
#[derive(Debug, Default)]
pub struct Switch {
    requested: CancellationToken,
    order: Mutex<Option<Order>>,
}

impl Switch {
    pub fn new() -> Arc<Switch> {
        Arc::new(Switch::default())
    }

    fn request(&self, order: Order) {
        *self.order.lock().unwrap_or_else(|p| p.into_inner()) = Some(order);
        self.requested.cancel();
    }

    /// Cancelled once a checked binary waits for the switch.
    pub fn requested(&self) -> CancellationToken {
        self.requested.clone()
    }

    /// The order whose checked binary to switch to.
    pub fn order(&self) -> Option<Order> {
        self.order.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Selects the checked binary of `order` in the state dir's selection (after the
    /// drain): the running binary becomes the previous one.
    pub fn select(
        state_dir: &std::path::Path,
        order: &Order,
    ) -> Result<(), selection::SelectionError> {
        let file = selection::SelectionFile::new(state_dir);
        let current = file.load().unwrap_or_else(|e| {
            tracing::error!(error = %e, "agent upgrade: replacing an unreadable selection");
            None
        });
        let running = launcher::running_slot().map(|sha256| selection::Slot {
            sha256,
            version: drover_runtime::version().to_string(),
        });
        let s = selection::switch(
            current,
            running,
            selection::Slot {
                sha256: order.sha256.clone(),
                version: order.version.clone(),
            },
            order.upgrade_id,
            order.health_timeout().as_secs(),
            drover_runtime::version(),
        );
        file.save(&s)
    }
}

/// Runs upgrade orders, one at a time.
pub struct Upgrader {
    state_dir: PathBuf,
    tasks: Tasks,
    progress: watch::Sender<Option<Progress>>,
    /// The order being fetched.
    busy: Mutex<Option<u64>>,
    switch: Arc<Switch>,
    /// This binary was selected and has not confirmed yet: it does once its session is up.
    unconfirmed: Mutex<bool>,
}

impl Upgrader {
    /// An upgrader whose first progress is what the selection says of this binary: the
    /// upgrade it is confirming or confirmed, or the binary it was rolled back from.
    pub fn new(state_dir: PathBuf, tasks: Tasks, switch: Arc<Switch>) -> Arc<Upgrader> {
        let (first, unconfirmed) = first_progress(&state_dir);
        Arc::new(Upgrader {
            state_dir,
            tasks,
            progress: watch::channel(first).0,
            busy: Mutex::new(None),
            switch,
            unconfirmed: Mutex::new(unconfirmed),
        })
    }

    /// The session is up (a Welcome came): a selected binary that had not confirmed does,
    /// and reports `healthy` with its version.
    pub fn session_up(&self) {
        let mut unconfirmed = self.unconfirmed.lock().unwrap_or_else(|p| p.into_inner());
        if !*unconfirmed {
            return;
        }
        let file = selection::SelectionFile::new(&self.state_dir);
        let mine = launcher::running_slot();
        let mut s = match file.load() {
            Ok(Some(s)) if s.active.as_ref().map(|a| &a.sha256) == mine.as_ref() => s,
            Ok(_) => {
                *unconfirmed = false;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "agent upgrade: cannot confirm");
                return;
            }
        };
        s.confirmed = true;
        s.boots = 0;
        if let Err(e) = file.save(&s) {
            tracing::error!(error = %e, "agent upgrade: cannot confirm");
            return;
        }
        *unconfirmed = false;
        for e in selection::prune(&self.state_dir, &s) {
            tracing::warn!(error = %e, "agent upgrade: old binaries");
        }
        let version = drover_runtime::version();
        tracing::info!(
            upgrade = s.upgrade_id,
            version,
            "agent upgrade: connected on the new binary; confirmed"
        );
        self.set(s.upgrade_id, Step::Healthy, version.to_string());
    }

    /// Where the agent stands in the newest order.
    pub fn progress(&self) -> Option<Progress> {
        self.progress.borrow().clone()
    }

    /// Pins the controller's upgrade key (enrollment answer or Welcome); a different key is
    /// logged and refused.
    pub fn pin_key(&self, key: &[u8]) {
        if key.is_empty() {
            return;
        }
        if let Err(e) = key::pin(&self.state_dir, key) {
            tracing::warn!(error = %e, "upgrade signing key");
        }
    }

    /// Starts fetching `order` from `source`, unless it is being fetched or was refused.
    pub fn start(self: &Arc<Self>, order: Order, source: Box<dyn Source>) {
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if *busy == Some(order.upgrade_id) {
                return;
            }
            if let Some(p) = self.progress()
                && p.upgrade_id == order.upgrade_id
                && p.step != Step::Downloading
            {
                return;
            }
            // Sent again on the session of the binary it started (or of the one that
            // rolled it back: `first_progress` says so).
            if launcher::running_slot().as_deref() == Some(order.sha256.as_str())
                || order.version == drover_runtime::version()
            {
                return;
            }
            *busy = Some(order.upgrade_id);
        }
        let me = self.clone();
        self.tasks.spawn("agent upgrade download", async move {
            me.run(order, source).await;
            *me.busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
        });
    }

    fn set(&self, upgrade_id: u64, step: Step, detail: String) {
        self.progress.send_replace(Some(Progress {
            upgrade_id,
            step,
            detail,
        }));
    }

    async fn run(&self, order: Order, mut source: Box<dyn Source>) {
        let id = order.upgrade_id;
        tracing::info!(upgrade = id, version = %order.version, sha256 = %order.sha256, size = order.size, "agent upgrade: downloading");
        self.set(id, Step::Downloading, "0%".into());
        let key = match key::pinned(&self.state_dir) {
            Ok(k) => k,
            Err(e) => {
                self.set(id, Step::Refused, e.to_string());
                return;
            }
        };
        for attempt in 1..=ATTEMPTS {
            let result = download::fetch(source.as_mut(), &self.state_dir, key, &order, |p| {
                self.set(id, Step::Downloading, format!("{p}%"));
            })
            .await;
            match result {
                Ok(path) => {
                    tracing::info!(upgrade = id, file = %path.display(), "agent upgrade: binary checked");
                    self.set(
                        id,
                        Step::Draining,
                        format!(
                            "{} checked; running jobs finish (at most {}s), then it starts",
                            order.version,
                            order.health_timeout().as_secs()
                        ),
                    );
                    self.switch.request(order);
                    return;
                }
                Err(Failure::Refused(why)) => {
                    tracing::warn!(upgrade = id, reason = %why, "agent upgrade refused; keeps running");
                    self.set(id, Step::Refused, why);
                    return;
                }
                Err(Failure::Interrupted(why)) => {
                    tracing::warn!(upgrade = id, attempt, reason = %why, "agent upgrade download interrupted");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }
}

/// The progress an agent starts with, and whether it still has to confirm.
fn first_progress(state_dir: &std::path::Path) -> (Option<Progress>, bool) {
    let s = match selection::SelectionFile::new(state_dir).load() {
        Ok(Some(s)) => s,
        Ok(None) => return (None, false),
        Err(e) => {
            tracing::error!(error = %e, "agent upgrade selection");
            return (None, false);
        }
    };
    let progress = |upgrade_id, step, detail| {
        Some(Progress {
            upgrade_id,
            step,
            detail,
        })
    };
    if let Some(rb) = &s.rolled_back
        && rb.upgrade_id == s.upgrade_id
    {
        let detail = format!("{}: {}", rb.version, rb.reason);
        return (progress(rb.upgrade_id, Step::RolledBack, detail), false);
    }
    let mine = launcher::running_slot();
    match &s.active {
        Some(a) if Some(&a.sha256) == mine.as_ref() => {
            let version = drover_runtime::version().to_string();
            if s.confirmed {
                (progress(s.upgrade_id, Step::Healthy, version), false)
            } else {
                let detail = format!("{version} started; it confirms once connected");
                (progress(s.upgrade_id, Step::Switching, detail), true)
            }
        }
        _ => (None, false),
    }
}
