//! The time the lease table reads: the system clock, or a fake one tests move by hand.

use std::sync::Mutex;

use time::{Duration, OffsetDateTime};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// The current time (UTC, whole seconds are enough).
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct FakeClock {
    now: Mutex<OffsetDateTime>,
}

impl FakeClock {
    /// A clock standing at `start`.
    pub fn new(start: OffsetDateTime) -> FakeClock {
        FakeClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut g = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *g += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}
