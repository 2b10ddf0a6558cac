//! The send rate limit of one agent (`drover image push --rate-limit`), shared by every
//! blob stream to it: each chunk reserves its time slot (`bytes / rate`) after the last
//! one and is sent at the start of its slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One agent's pacer.
#[derive(Debug, Default)]
pub struct Pacer {
    /// Bytes per second; 0: unlimited.
    rate: AtomicU64,
    /// End of the last reserved slot.
    next: tokio::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    /// Sets the rate (the latest push's limit for the agent wins).
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// Waits until `bytes` may be sent.
    pub async fn wait(&self, bytes: u64) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + Duration::from_secs_f64(bytes as f64 / rate as f64));
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_are_spaced_by_their_size_over_the_rate() {
        let p = Pacer::default();
        let t0 = Instant::now();
        p.wait(1_000_000).await;
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "unlimited waits not"
        );
        p.set_rate(10_000);
        p.wait(500).await;
        p.wait(500).await;
        p.wait(1000).await;
        // 500 then 500 bytes at 10,000 B/s: the third chunk goes out 100 ms after the first.
        let e = t0.elapsed();
        assert!(
            e >= Duration::from_millis(100) && e < Duration::from_secs(2),
            "{e:?}"
        );
    }
}
