//! The race every stage of a job runs under: the job's cancel token first, then its
//! deadline (the job's, or a step's when that comes sooner), then the work itself. Checked
//! in that order, so a job canceled after its deadline reads as canceled, and work that
//! finishes as the deadline passes reads as timed out.

use std::future::Future;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a stage stopped before its work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interrupted {
    Canceled,
    DeadlinePassed,
}

/// Runs `work` until it finishes, `cancel` fires or `deadline` passes, whichever comes
/// first (ties in that order of precedence). An interrupted `work` is dropped.
pub(super) async fn until_interrupted<T>(
    cancel: &CancellationToken,
    deadline: Instant,
    work: impl Future<Output = T>,
) -> Result<T, Interrupted> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Interrupted::Canceled),
        _ = tokio::time::sleep_until(deadline) => Err(Interrupted::DeadlinePassed),
        r = work => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_first_gives_its_result() {
        let start = Instant::now();
        let r = until_interrupted(&CancellationToken::new(), start + 10 * SECOND, async {
            tokio::time::sleep(3 * SECOND).await;
            7
        })
        .await;
        assert_eq!(r, Ok(7));
        assert_eq!(start.elapsed(), 3 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_work_that_lasts_longer_exactly_when_it_passes() {
        let start = Instant::now();
        let r = until_interrupted(
            &CancellationToken::new(),
            start + 10 * SECOND,
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(r, Err(Interrupted::DeadlinePassed));
        assert_eq!(start.elapsed(), 10 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_the_work_at_once() {
        let start = Instant::now();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(2 * SECOND).await;
            trigger.cancel();
        });
        let r = until_interrupted(&cancel, start + 10 * SECOND, std::future::pending::<()>()).await;
        assert_eq!(r, Err(Interrupted::Canceled));
        assert_eq!(start.elapsed(), 2 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_wins_over_a_passed_deadline_and_the_deadline_over_ready_work() {
        let cancel = CancellationToken::new();
        let past = Instant::now() - SECOND;
        assert_eq!(
            until_interrupted(&cancel, past, std::future::ready(1)).await,
            Err(Interrupted::DeadlinePassed)
        );
        cancel.cancel();
        assert_eq!(
            until_interrupted(&cancel, past, std::future::ready(1)).await,
            Err(Interrupted::Canceled)
        );
    }
}
