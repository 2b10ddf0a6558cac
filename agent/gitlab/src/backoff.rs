//! Waits before retrying towards GitLab: what GitLab asked, else the backoff.

use std::time::Duration;

pub use drover_runtime::backoff::Backoff;

use crate::GitLabError;

/// Largest wait taken from a `RateLimit-ResetTime` or `Retry-After` header (gitlab-runner's
/// `backOffMaxDelay`, `network/retry_requester.go`): a GitLab asking for an hour does not
/// park a runner for an hour.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// What GitLab asked to wait after `e` (`RateLimit-ResetTime`, `Retry-After`), bounded by
/// [`RETRY_AFTER_MAX`]; `None` when it asked nothing.
pub fn asked_wait(e: &GitLabError) -> Option<Duration> {
    e.retry_after().map(|after| after.min(RETRY_AFTER_MAX))
}

/// The wait before retrying after `e`: [`asked_wait`], else the backoff's next delay
/// (gitlab-runner's `calculateWaitTime`: the header wins and the backoff does not advance).
pub fn retry_delay(e: &GitLabError, backoff: &mut Backoff) -> Duration {
    asked_wait(e).unwrap_or_else(|| backoff.next_delay())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_within_its_bound() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let later = |after| GitLabError::RetryLater {
            endpoint: "request_job",
            status: 429,
            after,
            body: String::new(),
        };
        assert_eq!(
            retry_delay(&later(Duration::from_secs(7)), &mut b),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_delay(&later(Duration::from_secs(3600)), &mut b),
            RETRY_AFTER_MAX
        );
        // The backoff did not advance meanwhile.
        let plain = GitLabError::Status {
            endpoint: "request_job",
            status: 502,
            body: String::new(),
        };
        assert!(retry_delay(&plain, &mut b) <= Duration::from_millis(100));
    }
}
