//! [`ErrorCountLayer`]: counts `WARN` and `ERROR` events for `gitlab_runner_errors_total`.
//!
//! The counts are process-wide (the subscriber is installed in `main`, before any
//! [`super::Metrics`] exists); every `Metrics` exports them.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Warnings and errors logged by this process.
pub(super) static WARNINGS: AtomicU64 = AtomicU64::new(0);
pub(super) static ERRORS: AtomicU64 = AtomicU64::new(0);

/// A `tracing` layer counting warnings and errors. Install it in the process's subscriber;
/// events the subscriber's filter drops are not counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorCountLayer;

impl<S: Subscriber> Layer<S> for ErrorCountLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        match *event.metadata().level() {
            Level::ERROR => ERRORS.fetch_add(1, Ordering::Relaxed),
            Level::WARN => WARNINGS.fetch_add(1, Ordering::Relaxed),
            _ => return,
        };
    }
}
