//! Where the agent's "now" comes from, and deadlines that survive a clock jump.
//!
//! Certificate and token lifetimes are wall-clock times (the controller and GitLab set
//! them), so their renewal points are wall-clock points. The wall clock can jump (NTP
//! stepping a box that was an hour off, an operator setting the date); the monotonic clock
//! cannot. A [`Deadline`] holds its point on both clocks, taken when it is made, and is due
//! as soon as EITHER clock reaches it:
//! - the wall clock jumps forward past the point: due at once (the lifetime, as the issuer
//!   counts it, really is that far gone; renewing early is harmless, renewing late is not);
//! - the wall clock jumps back: the monotonic clock still reaches the point after the time
//!   that was left, not an hour later; it is not due earlier than that either.
//!
//! The idea follows the controller's lease clock (`controller/src/health/clock.rs`), which
//! needs no monotonic side.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// The wall clock (UTC).
    fn now(&self) -> OffsetDateTime;
    /// The monotonic clock: time since an arbitrary origin; never jumps.
    fn monotonic(&self) -> Duration;
}

/// The system clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn monotonic(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// Clocks that move only when told (tests).
#[derive(Debug)]
pub struct FakeClock {
    inner: Mutex<(OffsetDateTime, Duration)>,
}

impl FakeClock {
    /// Clocks standing at wall time `start`.
    pub fn new(start: OffsetDateTime) -> FakeClock {
        FakeClock {
            inner: Mutex::new((start, Duration::ZERO)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (OffsetDateTime, Duration)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time passes: both clocks move forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut g = self.lock();
        g.0 += by;
        g.1 += by;
    }

    /// The wall clock jumps by `by` (either way); the monotonic clock does not move.
    pub fn jump(&self, by: time::Duration) {
        self.lock().0 += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        self.lock().0
    }

    fn monotonic(&self) -> Duration {
        self.lock().1
    }
}

/// Clocks that follow tokio's clock (tests): under `start_paused` they move with virtual
/// time, so a unit's restart delay or watchdog passes exactly when the timers say so.
#[cfg(test)]
#[derive(Debug)]
pub struct TokioClock {
    wall: OffsetDateTime,
    origin: tokio::time::Instant,
}

#[cfg(test)]
impl TokioClock {
    /// Clocks standing at the system's wall time now.
    pub fn new() -> TokioClock {
        TokioClock {
            wall: OffsetDateTime::now_utc(),
            origin: tokio::time::Instant::now(),
        }
    }
}

#[cfg(test)]
impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

#[cfg(test)]
impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        self.wall + self.origin.elapsed()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A wall-clock point held on both clocks (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: OffsetDateTime,
    mono: Duration,
}

impl Deadline {
    /// The point `at`, anchored on `clock`'s monotonic side now.
    pub fn new(at: OffsetDateTime, clock: &dyn Clock) -> Deadline {
        let left = Duration::try_from(at - clock.now()).unwrap_or(Duration::ZERO);
        Deadline {
            at,
            mono: clock.monotonic() + left,
        }
    }

    /// The wall-clock point.
    pub fn at(&self) -> OffsetDateTime {
        self.at
    }

    /// Either clock reached the point.
    pub fn due(&self, clock: &dyn Clock) -> bool {
        self.remaining(clock).is_zero()
    }

    /// Time left until the earlier of the two clocks reaches the point (zero when due).
    pub fn remaining(&self, clock: &dyn Clock) -> Duration {
        let wall = Duration::try_from(self.at - clock.now()).unwrap_or(Duration::ZERO);
        let mono = self.mono.saturating_sub(clock.monotonic());
        wall.min(mono)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn due_when_the_time_left_has_passed() {
        let c = FakeClock::new(t0());
        let d = Deadline::new(t0() + HOUR, &c);
        assert!(!d.due(&c));
        assert_eq!(d.remaining(&c), HOUR);
        c.advance(HOUR - Duration::from_secs(1));
        assert!(!d.due(&c));
        c.advance(Duration::from_secs(1));
        assert!(d.due(&c));
    }

    #[test]
    fn a_forward_jump_past_the_point_makes_it_due_at_once() {
        let c = FakeClock::new(t0());
        let d = Deadline::new(t0() + time::Duration::minutes(30), &c);
        c.jump(time::Duration::hours(1));
        assert!(d.due(&c));
        assert_eq!(d.remaining(&c), Duration::ZERO);
    }

    #[test]
    fn a_forward_jump_short_of_the_point_leaves_the_wall_time_left() {
        let c = FakeClock::new(t0());
        let d = Deadline::new(t0() + 2 * HOUR, &c);
        c.jump(time::Duration::hours(1));
        assert!(!d.due(&c));
        assert_eq!(d.remaining(&c), HOUR);
    }

    #[test]
    fn a_backward_jump_neither_advances_nor_delays_the_point() {
        let c = FakeClock::new(t0());
        let d = Deadline::new(t0() + time::Duration::minutes(10), &c);
        c.jump(time::Duration::hours(-1));
        // Not earlier: the wall clock now says 70 minutes, the monotonic one 10.
        assert_eq!(d.remaining(&c), Duration::from_secs(600));
        c.advance(Duration::from_secs(599));
        assert!(!d.due(&c));
        // Not an hour later: due after the 10 minutes that were left.
        c.advance(Duration::from_secs(1));
        assert!(d.due(&c));
    }

    #[test]
    fn a_point_already_past_is_due() {
        let c = FakeClock::new(t0());
        let d = Deadline::new(t0() - HOUR, &c);
        assert!(d.due(&c));
        assert_eq!(d.at(), t0() - HOUR);
    }
}
