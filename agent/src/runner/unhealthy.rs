//! gitlab-runner's `unhealthy_requests_limit` / `unhealthy_interval`, only when a config sets
//! them: after that many failed job requests in a row a runner makes no request for the
//! interval (`commands/health_helper.go`: `markHealth`, `isHealthy`). Without them Drover
//! never pauses: a runner keeps polling with a short backoff so that it takes jobs again
//! within seconds of GitLab's return.

use std::time::Duration;

use tokio::time::Instant;

/// gitlab-runner's defaults (`common/consts.go`), used for the one of the two keys a config
/// leaves unset.
pub const DEFAULT_UNHEALTHY_REQUESTS_LIMIT: u32 = 3;
pub const DEFAULT_UNHEALTHY_INTERVAL: Duration = Duration::from_secs(3600);

/// The pause rule of one runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnhealthyPolicy {
    /// Failed requests in a row that pause the runner (at least 1).
    pub requests_limit: u32,
    /// How long it pauses.
    pub interval: Duration,
}

impl UnhealthyPolicy {
    /// The policy when a config sets either key; `None` (never pause) when it sets neither.
    pub fn from_config(limit: Option<u32>, interval: Option<Duration>) -> Option<Self> {
        if limit.is_none() && interval.is_none() {
            return None;
        }
        Some(UnhealthyPolicy {
            requests_limit: limit.unwrap_or(DEFAULT_UNHEALTHY_REQUESTS_LIMIT).max(1),
            interval: interval.unwrap_or(DEFAULT_UNHEALTHY_INTERVAL),
        })
    }
}

/// Counts failed job requests of one runner (shared by its request workers).
#[derive(Debug, Default)]
pub struct Health {
    failures: u32,
    paused_until: Option<Instant>,
}

impl Health {
    /// A request got an answer GitLab meant (`201`/`204`): the count starts again.
    pub fn ok(&mut self) {
        self.failures = 0;
        self.paused_until = None;
    }

    /// A request failed at `now`; returns the end of the pause it starts, if it starts one.
    pub fn failed(&mut self, policy: Option<&UnhealthyPolicy>, now: Instant) -> Option<Instant> {
        let p = policy?;
        self.failures = self.failures.saturating_add(1);
        if self.failures < p.requests_limit {
            return None;
        }
        self.failures = 0;
        let until = now + p.interval;
        self.paused_until = Some(until);
        Some(until)
    }

    /// When requests may start again, if the runner is paused at `now`.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keys_no_pause() {
        assert_eq!(UnhealthyPolicy::from_config(None, None), None);
        let mut h = Health::default();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(h.failed(None, now), None);
        }
        assert_eq!(h.paused_until(now), None);
    }

    #[test]
    fn one_key_takes_the_other_default() {
        assert_eq!(
            UnhealthyPolicy::from_config(Some(5), None),
            Some(UnhealthyPolicy {
                requests_limit: 5,
                interval: DEFAULT_UNHEALTHY_INTERVAL
            })
        );
        assert_eq!(
            UnhealthyPolicy::from_config(None, Some(Duration::from_secs(9))),
            Some(UnhealthyPolicy {
                requests_limit: DEFAULT_UNHEALTHY_REQUESTS_LIMIT,
                interval: Duration::from_secs(9)
            })
        );
        assert_eq!(
            UnhealthyPolicy::from_config(Some(0), None).map(|p| p.requests_limit),
            Some(1)
        );
    }

    #[test]
    fn pauses_after_the_limit_in_a_row_and_success_resets() {
        let p = UnhealthyPolicy {
            requests_limit: 3,
            interval: Duration::from_secs(60),
        };
        let now = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.failed(Some(&p), now), None);
        assert_eq!(h.failed(Some(&p), now), None);
        h.ok();
        assert_eq!(h.failed(Some(&p), now), None);
        assert_eq!(h.failed(Some(&p), now), None);
        let until = h
            .failed(Some(&p), now)
            .expect("third failure in a row pauses");
        assert_eq!(until, now + Duration::from_secs(60));
        assert_eq!(h.paused_until(now), Some(until));
        assert_eq!(h.paused_until(until), None, "the pause ends");
    }
}
