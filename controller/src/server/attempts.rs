//! Failed enrollment attempts per source address: a small token bucket per IP, in bounded
//! memory. A source that used up its bucket is refused (`resource_exhausted`) before any
//! work, until the bucket refills; successful enrollments cost nothing, so a fleet
//! enrolling from behind one NAT is never slowed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts a source may make in a burst.
pub const BURST: f64 = 10.0;
/// Failed attempts a source regains per second.
pub const PER_SECOND: f64 = 1.0;
/// Sources remembered at most (about 64 bytes each).
pub const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * PER_SECOND;
        (self.tokens + gained).min(BURST)
    }
}

/// The buckets of every source that failed recently.
#[derive(Debug, Default)]
pub struct AttemptLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AttemptLimiter {
    /// Whether `ip` may try now; `Err` holds how long until it may.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(&ip).map(|b| b.refilled(now)) {
            Some(tokens) if tokens < 1.0 => {
                Err(Duration::from_secs_f64((1.0 - tokens) / PER_SECOND))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= MAX_SOURCES {
            // Full buckets carry nothing: forget them; if none is, the stalest source.
            buckets.retain(|_, b| b.refilled(now) < BURST);
            if buckets.len() >= MAX_SOURCES
                && let Some(stalest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k)
            {
                buckets.remove(&stalest);
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        bucket.tokens = (bucket.refilled(now) - 1.0).max(0.0);
        bucket.at = now;
    }

    /// How many sources are remembered.
    pub fn sources(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_second() {
        let l = AttemptLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert!(l.check(ip, t0).is_ok());
            l.failed(ip, t0);
        }
        let wait = l.check(ip, t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(l.check(other, t0).is_ok(), "other sources are not affected");
        let t1 = t0 + Duration::from_millis(1100);
        assert!(l.check(ip, t1).is_ok());
        l.failed(ip, t1);
        assert!(l.check(ip, t1).is_err());
        let later = t1 + Duration::from_secs(60);
        assert!(l.check(ip, later).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let l = AttemptLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..BURST as usize {
                l.failed(ip, t0 + Duration::from_micros(u64::from(i)));
            }
        }
        assert!(l.sources() <= MAX_SOURCES, "{}", l.sources());
        // The newest sources are still limited.
        let newest = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_SOURCES as u32 + 99,
        ));
        assert!(l.check(newest, t0 + Duration::from_millis(10)).is_err());
    }
}
