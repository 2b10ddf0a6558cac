//! Disk hygiene of the Docker objects an agent keeps between jobs: builds volumes and the
//! job and service images it pulled. Docker keeps no last-use time, so the agent keeps one.
//!
//! - [`budget`]: [`DiskBudget`], the bounds from `[runners.drover_gc]` (tightest of the
//!   runners), and the images runner specs require.
//! - [`ledger`]: [`Ledger`], the last-use ledger in the agent's state dir: what volumes and
//!   images the agent used or pulled and when, which jobs run now and what they hold, and
//!   which builds volumes the collector removed (so the next job's trace says so).
//! - [`policy`]: the pure decision: what goes, least recently used first, and why.
//!
//! The executor records uses ([`crate::executor::DockerExecutor::with_disk`]) and runs the
//! collector (`DockerExecutor::collect_garbage`); the agent decides when.
//!
//! Invariants: only volumes carrying this agent's `com.drover.agent` label and images in
//! its ledger are ever removed (plus, when the operator opts in, images no container uses
//! and nothing requires); never a volume or image a running job holds, an image a runner
//! spec requires, or one delivered to the box (`Origin::Delivered`).

pub mod budget;
pub mod ledger;
pub mod policy;

pub use budget::{DiskBudget, required_images};
pub use ledger::{ImageOrigin, Ledger, LedgerData, LedgerError};
pub use policy::{Candidate, Decision, ItemKind, Why, plan};

use async_trait::async_trait;

use crate::trace::TraceSink;

/// What the agent does around each job.
#[async_trait]
pub trait DiskHook: Send + Sync {
    /// Before the job starts: with free space below the threshold, collect first and say
    /// so in the job's trace.
    async fn before_job(&self, trace: &TraceSink);
    /// The job ended and released what it held: ask for a collection (without waiting for
    /// it: the job's final update must not wait on the engine's disk walk).
    fn after_job(&self);
}
