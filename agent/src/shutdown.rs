//! The agent's shutdown tree: every task `drover-agent run` starts is on one [`Tasks`]
//! (a `TaskTracker` that also knows each task's name), and every task stops on a token of
//! one [`Tree`].
//!
//! ```text
//! root (the caller's token: SIGINT/SIGTERM cancel it, so does the end of the session)
//! ├── session     the control stream (fleet), ends at once
//! └── engine      the supervisor / runner engine: stops taking jobs, cancels and reports
//!                 running jobs within the drain bound, then ends
//! services        metrics server, host probe, janitor, systemd watchdog, event feed:
//!                 cancelled by [`Tree::close`], once the engine drained, so `/metrics`,
//!                 `/healthz` and the watchdog keep answering while jobs are reported
//! ```
//!
//! [`Tree::close`] cancels everything, then waits for the tracker, bounded: a task still
//! running after the bound is named in a warning and left behind (the process exits).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`Tree::close`] waits for the tasks left once the engine drained (servers and
/// loops that end on their token; a janitor pass in a Docker call is bounded by the call).
pub const TASKS_WAIT: Duration = Duration::from_secs(10);

/// Tracked tasks, each with a name for the warning of [`Tasks::close`]. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<u64, &'static str>>>,
    next: Arc<AtomicU64>,
}

/// Takes a task's name off the running list however the task ends (returns, panics, or
/// is aborted).
struct Running {
    id: u64,
    running: Arc<Mutex<BTreeMap<u64, &'static str>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tasks {
    pub fn new() -> Self {
        Tasks::default()
    }

    /// Spawns `fut` on the tracker under `name`.
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).insert(id, name);
        let entry = Running {
            id,
            running: self.running.clone(),
        };
        self.tracker.spawn(async move {
            let _entry = entry;
            fut.await
        })
    }

    /// The names of the tasks still running, sorted.
    pub fn running(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = lock(&self.running).values().copied().collect();
        names.sort_unstable();
        names
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// No task left.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Closes the tracker (tasks may still be spawned; it only lets the wait end) and waits
    /// up to `limit` for every task. Returns the names of those that did not end, after a
    /// warning naming them.
    pub async fn close(&self, limit: Duration) -> Vec<&'static str> {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
        {
            return Vec::new();
        }
        let left = self.running();
        tracing::warn!(
            tasks = ?left,
            "tasks still running after {}s; stopping without them",
            limit.as_secs()
        );
        left
    }
}

/// The tokens of `drover-agent run` and its tasks; see the module doc.
#[derive(Debug, Clone)]
pub struct Tree {
    root: CancellationToken,
    services: CancellationToken,
    tasks: Tasks,
}

impl Tree {
    /// A tree under `root`, the token the signal handler (or a test) cancels.
    pub fn new(root: CancellationToken) -> Self {
        Tree {
            root,
            services: CancellationToken::new(),
            tasks: Tasks::new(),
        }
    }

    /// The root: cancelled means "stop".
    pub fn root(&self) -> &CancellationToken {
        &self.root
    }

    /// The control session's token (ends with the root).
    pub fn session(&self) -> CancellationToken {
        self.root.child_token()
    }

    /// The supervisor's / engine's token (ends with the root; the engine then drains).
    pub fn engine(&self) -> CancellationToken {
        self.root.child_token()
    }

    /// A token for a service that outlives the drain (metrics, host probe, janitor,
    /// watchdog, event feed); cancelled by [`Tree::close`].
    pub fn service(&self) -> CancellationToken {
        self.services.child_token()
    }

    /// Where every task goes.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Cancels the root and the services, then waits for every task, at most `limit`.
    /// Returns the names of the tasks that did not end.
    pub async fn close(&self, limit: Duration) -> Vec<&'static str> {
        self.root.cancel();
        self.services.cancel();
        self.tasks.close(limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every token of the tree ends its task on close, and the tracker is then empty.
    #[tokio::test(start_paused = true)]
    async fn close_ends_tasks_on_every_token() {
        let tree = Tree::new(CancellationToken::new());
        for (name, token) in [
            ("session", tree.session()),
            ("engine", tree.engine()),
            ("service", tree.service()),
        ] {
            tree.tasks()
                .spawn(name, async move { token.cancelled().await });
        }
        assert_eq!(tree.tasks().running(), ["engine", "service", "session"]);
        assert!(tree.close(Duration::from_secs(1)).await.is_empty());
        assert!(tree.tasks().is_empty());
        assert!(tree.tasks().running().is_empty());
    }

    /// The root ends the session and the engine, not the services (they outlive the drain).
    #[tokio::test(start_paused = true)]
    async fn the_root_leaves_services_running() {
        let tree = Tree::new(CancellationToken::new());
        let (session, engine, service) = (tree.session(), tree.engine(), tree.service());
        tree.root().cancel();
        assert!(session.is_cancelled() && engine.is_cancelled());
        assert!(!service.is_cancelled());
        tree.close(Duration::from_secs(1)).await;
        assert!(service.is_cancelled());
    }

    /// A task that ignores its token is named after the bound, and close returns anyway.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_task_is_named() {
        let tree = Tree::new(CancellationToken::new());
        tree.tasks().spawn("stuck", std::future::pending::<()>());
        let token = tree.service();
        tree.tasks()
            .spawn("polite", async move { token.cancelled().await });
        assert_eq!(tree.close(Duration::from_secs(5)).await, ["stuck"]);
    }

    /// A task that panics or is aborted leaves the running list.
    #[tokio::test(start_paused = true)]
    async fn ended_tasks_leave_the_list() {
        let tasks = Tasks::new();
        let aborted = tasks.spawn("aborted", std::future::pending::<()>());
        let panicked = tasks.spawn("panicked", async { panic!("a bug") });
        aborted.abort();
        assert!(aborted.await.unwrap_err().is_cancelled());
        assert!(panicked.await.unwrap_err().is_panic());
        assert!(tasks.running().is_empty());
        assert!(tasks.close(Duration::from_secs(1)).await.is_empty());
    }
}
