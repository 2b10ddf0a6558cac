//! Exponential backoff with jitter: attempt n waits a random time below
//! `min(max, min * 2^n)`, so many clients that failed together do not retry together.

use std::time::Duration;

use rand::Rng;

/// How much of the ceiling a delay is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// `[ceiling / 2, ceiling]`: retries towards GitLab.
    Half,
    /// `[0, ceiling]`: the agent's reconnects to the controller.
    Full,
}

/// Retry backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `min`, never above `max`, with [`Jitter::Half`].
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min: min.min(max),
            max,
            jitter: Jitter::Half,
            attempt: 0,
        }
    }

    /// The same backoff drawing its delays with `jitter`.
    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Backoff { jitter, ..self }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let floor = match self.jitter {
            Jitter::Half => ceiling / 2,
            Jitter::Full => Duration::ZERO,
        };
        let spread = u64::try_from((ceiling - floor).as_millis()).unwrap_or(u64::MAX);
        floor + Duration::from_millis(rand::rng().random_range(0..=spread))
    }

    /// Failed attempts since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_max_and_resets() {
        let mut b =
            Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(Jitter::Full);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_secs());
            assert!(b.next_delay() <= b.max);
        }
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.attempt(), 8);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        assert_eq!(b.attempt(), 0);
    }

    #[test]
    fn half_jitter_stays_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[5] >= Duration::from_millis(400) && d[5] <= Duration::from_millis(800));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn min_above_max_is_max() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
