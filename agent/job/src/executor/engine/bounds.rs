//! The time bounds of engine calls (see the module doc of [`super`]).

use std::future::Future;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use tokio::time::Instant;

use crate::executor::ExecutorError;

/// Bound of a ping (`version`, `info`).
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of a short call (create, start, inspect, kill, list, attach handshake).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of a removal (container, volume, network).
pub(super) const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// A long call (wait, pull, upload, logs) ends when the engine answered no ping for this long.
pub(super) const STALL_LIMIT: Duration = Duration::from_secs(90);
/// How often a long call pings the engine.
pub(super) const STALL_PROBE_EVERY: Duration = Duration::from_secs(10);

/// `call` bounded by `after`; past it, the error names `op`.
pub(super) async fn bounded<T>(
    op: impl Into<String>,
    after: Duration,
    call: impl Future<Output = Result<T, ExecutorError>>,
) -> Result<T, ExecutorError> {
    match tokio::time::timeout(after, call).await {
        Ok(r) => r,
        Err(_) => Err(ExecutorError::NoAnswer {
            op: op.into(),
            after,
        }),
    }
}

/// `call` on the engine bounded by `after`; its error and its timeout name `op`.
pub(super) async fn engine_call<T>(
    op: &str,
    after: Duration,
    call: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, ExecutorError> {
    bounded(op, after, async {
        call.await.map_err(|e| ExecutorError::docker(op, e))
    })
    .await
}

/// Resolves once `docker` has answered no `/_ping` for [`STALL_LIMIT`], with how long.
pub(super) async fn stalled(docker: &Docker) -> Duration {
    let mut answered = Instant::now();
    loop {
        let pinged = async {
            tokio::time::sleep(STALL_PROBE_EVERY).await;
            tokio::time::timeout(PING_TIMEOUT, docker.ping()).await
        };
        tokio::select! {
            _ = tokio::time::sleep_until(answered + STALL_LIMIT) => return answered.elapsed(),
            r = pinged => {
                if let Ok(Ok(_)) = r {
                    answered = Instant::now();
                }
            }
        }
    }
}
