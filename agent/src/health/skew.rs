//! Clock skew: the local clock against the `Date` header of controller or GitLab answers.
//!
//! `Date` has a one-second resolution and the answer took some time to arrive, so one sample
//! is only good to about a second; the estimate is the median of the last
//! [`ClockSkew::WINDOW`] samples, which drops outliers from slow answers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

pub use drover_gitlab::headers::parse_http_date;

/// Skew samples fed by callers that saw a `Date` header. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct ClockSkew {
    samples: Mutex<VecDeque<f64>>,
}

impl ClockSkew {
    /// Samples kept.
    pub const WINDOW: usize = 9;

    /// Records one answer: `local` is when it arrived by our clock, `date_header` its
    /// `Date` value (RFC 7231, `Tue, 15 Nov 1994 08:12:31 GMT`). An unparsable header is
    /// ignored and returned as an error naming the value.
    pub fn observe_header(&self, local: SystemTime, date_header: &str) -> Result<(), String> {
        let peer = parse_http_date(date_header)?;
        self.observe(local, peer);
        Ok(())
    }

    /// Records one sample: our clock read `local` when the peer's read `peer`.
    pub fn observe(&self, local: SystemTime, peer: SystemTime) {
        let skew = match local.duration_since(peer) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == Self::WINDOW {
            s.pop_front();
        }
        s.push_back(skew);
    }

    /// Local minus peer clock in seconds (positive = we are ahead); `None` before any sample.
    pub fn estimate_seconds(&self) -> Option<f64> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = s.iter().copied().collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_imf_fixdate() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            784111777
        );
        let e = parse_http_date("yesterday").unwrap_err();
        assert!(e.contains("yesterday"), "{e}");
    }

    #[test]
    fn estimate_is_signed_median_of_window() {
        let skew = ClockSkew::default();
        assert_eq!(skew.estimate_seconds(), None);
        let peer = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        skew.observe(peer + Duration::from_secs(5), peer);
        assert_eq!(skew.estimate_seconds(), Some(5.0));
        skew.observe(peer + Duration::from_secs(7), peer);
        assert_eq!(skew.estimate_seconds(), Some(6.0));
        // One slow answer does not move the median much.
        skew.observe(peer + Duration::from_secs(60), peer);
        assert_eq!(skew.estimate_seconds(), Some(7.0));
        // Behind the peer: negative.
        let behind = ClockSkew::default();
        behind.observe(peer, peer + Duration::from_secs(3));
        assert_eq!(behind.estimate_seconds(), Some(-3.0));
    }

    #[test]
    fn window_forgets_old_samples() {
        let skew = ClockSkew::default();
        let peer = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..ClockSkew::WINDOW {
            skew.observe(peer + Duration::from_secs(100), peer);
        }
        for _ in 0..ClockSkew::WINDOW {
            skew.observe(peer, peer);
        }
        assert_eq!(skew.estimate_seconds(), Some(0.0));
    }

    #[test]
    fn header_sample() {
        let skew = ClockSkew::default();
        let peer = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        skew.observe_header(
            peer + Duration::from_secs(2),
            "Sun, 06 Nov 1994 08:49:37 GMT",
        )
        .unwrap();
        assert_eq!(skew.estimate_seconds(), Some(2.0));
        assert!(skew.observe_header(peer, "bad").is_err());
        assert_eq!(skew.estimate_seconds(), Some(2.0));
    }
}
