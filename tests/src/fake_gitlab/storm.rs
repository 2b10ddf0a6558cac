//! A 5xx storm: for a window, a share of an endpoint's requests fail with a status drawn
//! from a set, optionally carrying headers (`Retry-After`). The draws come from a seeded
//! generator, so the sequence of failed and passed requests of an endpoint is the same
//! every run (which request of the sequence a given call is still depends on timing).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What [`super::FakeGitLab::storm`] injects on one endpoint.
#[derive(Debug, Clone)]
pub struct Storm {
    /// Statuses of the failed requests, drawn evenly (e.g. `500`, `502`, `503`).
    pub statuses: Vec<u16>,
    /// Share of requests failed, `0.0..=1.0`.
    pub share: f64,
    /// How long the storm lasts from the call.
    pub duration: Duration,
    /// Seeds the draws.
    pub seed: u64,
    /// Headers on every failed answer (`Retry-After`, `RateLimit-ResetTime`).
    pub headers: Vec<(String, String)>,
    /// GitLab applies a failed request before the failure is answered (a proxy answering
    /// `502` after its backend did the work): the client cannot know the request took.
    pub applied: bool,
}

impl Storm {
    /// `share` of requests answered `500`, `502` or `503` for `duration`, seeded with `seed`.
    pub fn new(share: f64, duration: Duration, seed: u64) -> Storm {
        Storm {
            statuses: vec![500, 502, 503],
            share,
            duration,
            seed,
            headers: Vec::new(),
            applied: false,
        }
    }

    /// The same storm with `name: value` on every failed answer.
    pub fn header(mut self, name: &str, value: &str) -> Storm {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A storm under way on one endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Raging {
    until: Instant,
    statuses: Vec<u16>,
    share: f64,
    rng: StdRng,
    pub headers: Vec<(String, String)>,
    pub applied: bool,
}

impl Raging {
    pub fn start(storm: &Storm) -> (Raging, Instant) {
        let until = Instant::now() + storm.duration;
        let raging = Raging {
            until,
            statuses: storm.statuses.clone(),
            share: storm.share.clamp(0.0, 1.0),
            rng: StdRng::seed_from_u64(storm.seed),
            headers: storm.headers.clone(),
            applied: storm.applied,
        };
        (raging, until)
    }

    /// Whether the request arriving `now` fails.
    pub fn draw(&mut self, now: Instant) -> Draw {
        if now >= self.until {
            return Draw::Over;
        }
        if self.statuses.is_empty() || !self.rng.random_bool(self.share) {
            return Draw::Pass;
        }
        let i = self.rng.random_range(0..self.statuses.len());
        Draw::Fail(self.statuses[i])
    }
}

/// One request's fate in a storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Draw {
    Fail(u16),
    Pass,
    /// The storm is over.
    Over,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(seed: u64, n: usize) -> Vec<Option<u16>> {
        let (mut r, _) = Raging::start(&Storm::new(0.7, Duration::from_secs(60), seed));
        (0..n)
            .map(|_| match r.draw(Instant::now()) {
                Draw::Fail(s) => Some(s),
                Draw::Pass => None,
                Draw::Over => panic!("storm over too early"),
            })
            .collect()
    }

    #[test]
    fn same_seed_same_sequence_and_about_the_share() {
        let a = draws(7, 2000);
        assert_eq!(a, draws(7, 2000));
        let failed = a.iter().filter(|d| d.is_some()).count();
        assert!((1250..1550).contains(&failed), "{failed} of 2000 failed");
        assert!(a.iter().flatten().all(|s| [500, 502, 503].contains(s)));
        for s in [500, 502, 503] {
            assert!(a.contains(&Some(s)), "{s} never drawn");
        }
    }

    #[test]
    fn ends_after_its_window() {
        let (mut r, until) = Raging::start(&Storm::new(1.0, Duration::from_millis(10), 1));
        assert!(matches!(r.draw(Instant::now()), Draw::Fail(_)));
        assert_eq!(r.draw(until), Draw::Over);
    }
}
