//! Which controller endpoint the agent dials.
//!
//! `agent.json` lists the controller addresses in order of preference (`rank` 0 is the
//! preferred one). Each is resolved before every dial: a DNS name with several addresses
//! is several endpoints of the same rank, tried in the resolver's order; the TLS server
//! name stays [`drover_proto::transport::SERVER_NAME`] whatever is dialed.
//!
//! [`Failover`] is the choice, pure and clocked by the caller:
//! - it dials the endpoint it used last while that one works (a renewal or an address
//!   change reconnects to the same place);
//! - an attempt that fails, or a session that ends (controller died, link cut, a refusal
//!   other than revocation), moves it to the next endpoint, wrapping around; the caller
//!   waits a full-jitter backoff before every attempt after a failure, so a fleet whose
//!   controller died spreads its reconnects and never hammers the survivors;
//! - connected to an endpoint of a lower preference it drifts back slowly: after a random
//!   delay in the failback window (default 5–15 min, so agents that failed over together
//!   do not come back together) it probes the preferred controller's endpoints and moves
//!   back only if one answers; if none does it waits another random delay.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;

use crate::identity::tls;

/// The default failback window: a probe of the preferred controller comes this long after
/// connecting elsewhere (uniformly at random within it).
pub const FAILBACK_WINDOW: (Duration, Duration) =
    (Duration::from_secs(5 * 60), Duration::from_secs(15 * 60));

/// Environment variable that overrides the failback window, `MIN-MAX` in seconds (tests
/// and operators who want the agents back sooner, e.g. `30-90`).
pub const FAILBACK_ENV: &str = "DROVER_AGENT_FAILBACK_SECONDS";

/// One address to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Position of its controller address in `agent.json` (0: preferred).
    pub rank: usize,
    /// The controller address it came from, `https://HOST:PORT`.
    pub controller: String,
    /// The resolved address.
    pub addr: SocketAddr,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.controller, self.addr)
    }
}

/// Turns `HOST:PORT` into addresses (the DNS seam).
#[async_trait::async_trait]
pub trait Resolver: Send + Sync {
    /// The addresses of `host_port`, in the order to try them.
    async fn resolve(&self, host_port: &str) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo`, so `/etc/hosts` and DNS).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host(host_port).await?.collect())
    }
}

/// The endpoints of `controllers` (preferred first), each address once, and one line per
/// controller address that could not be resolved.
pub async fn resolve(
    controllers: &[String],
    resolver: &dyn Resolver,
) -> (Vec<Endpoint>, Vec<String>) {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut errors = Vec::new();
    for (rank, controller) in controllers.iter().enumerate() {
        let host_port = match tls::dial_addr(controller) {
            Ok(a) => a,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        match resolver.resolve(&host_port).await {
            Ok(addrs) if addrs.is_empty() => {
                errors.push(format!("resolve {host_port}: no addresses"));
            }
            Ok(addrs) => {
                for addr in addrs {
                    if !endpoints.iter().any(|e| e.addr == addr) {
                        endpoints.push(Endpoint {
                            rank,
                            controller: controller.clone(),
                            addr,
                        });
                    }
                }
            }
            Err(e) => errors.push(format!("resolve {host_port}: {e}")),
        }
    }
    (endpoints, errors)
}

/// Reads [`FAILBACK_ENV`] (`MIN-MAX` seconds, `MIN <= MAX`), else [`FAILBACK_WINDOW`].
pub fn failback_window(value: Option<&str>) -> Result<(Duration, Duration), String> {
    let Some(v) = value else {
        return Ok(FAILBACK_WINDOW);
    };
    let bad = || format!("{FAILBACK_ENV}={v:?}: expected MIN-MAX in seconds, MIN <= MAX");
    let (min, max) = v.split_once('-').ok_or_else(bad)?;
    let min: u64 = min.trim().parse().map_err(|_| bad())?;
    let max: u64 = max.trim().parse().map_err(|_| bad())?;
    if min > max || max > 7 * 24 * 3600 {
        return Err(bad());
    }
    Ok((Duration::from_secs(min), Duration::from_secs(max)))
}

/// Where the next dial goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    /// The first endpoint (start, or the last one is gone from the resolved list).
    Start,
    /// This endpoint again (it works, or is being tried).
    At(usize, SocketAddr),
    /// The endpoint after this one (it failed).
    After(usize, SocketAddr),
}

/// The endpoint choice (see the module doc). Times are the monotonic clock's.
#[derive(Debug, Clone)]
pub struct Failover {
    cursor: Cursor,
    window: (Duration, Duration),
    /// When to probe the preferred controller (connected to a lower preference).
    failback_at: Option<Duration>,
}

impl Failover {
    /// A choice starting at the preferred endpoint, probing back within `window`.
    pub fn new(window: (Duration, Duration)) -> Failover {
        Failover {
            cursor: Cursor::Start,
            window,
            failback_at: None,
        }
    }

    /// The endpoint to dial among `endpoints` (the latest resolution), remembered as the
    /// one being tried. `None` when there is none.
    pub fn choose<'a>(&mut self, endpoints: &'a [Endpoint]) -> Option<&'a Endpoint> {
        if endpoints.is_empty() {
            return None;
        }
        let find = |rank: usize, addr: SocketAddr| {
            endpoints
                .iter()
                .position(|e| e.rank == rank && e.addr == addr)
        };
        let i = match self.cursor {
            Cursor::Start => 0,
            Cursor::At(rank, addr) => find(rank, addr).unwrap_or(0),
            Cursor::After(rank, addr) => find(rank, addr).map_or(0, |i| (i + 1) % endpoints.len()),
        };
        let chosen = &endpoints[i];
        self.cursor = Cursor::At(chosen.rank, chosen.addr);
        Some(chosen)
    }

    /// The endpoint being tried failed, or its session ended: the next dial goes to the
    /// next endpoint; no failback is pending while disconnected.
    pub fn failed(&mut self) {
        if let Cursor::At(rank, addr) = self.cursor {
            self.cursor = Cursor::After(rank, addr);
        }
        self.failback_at = None;
    }

    /// A session on `endpoint` was established at `now`: stay there; on a lower preference
    /// schedule a probe of the preferred controller at a random point of the window.
    pub fn connected(&mut self, endpoint: &Endpoint, now: Duration, rng: &mut impl Rng) {
        self.cursor = Cursor::At(endpoint.rank, endpoint.addr);
        self.failback_at = (endpoint.rank > 0).then(|| now + self.draw(rng));
    }

    /// How long until the preferred controller is probed (`None`: on it, or not connected).
    pub fn failback_in(&self, now: Duration) -> Option<Duration> {
        self.failback_at.map(|at| at.saturating_sub(now))
    }

    /// The probe at `now` found no preferred endpoint answering: try again later.
    pub fn probe_failed(&mut self, now: Duration, rng: &mut impl Rng) {
        self.failback_at = Some(now + self.draw(rng));
    }

    /// The probe reached `endpoint` (rank 0): the next session goes there.
    pub fn fell_back(&mut self, endpoint: &Endpoint) {
        self.cursor = Cursor::At(endpoint.rank, endpoint.addr);
        self.failback_at = None;
    }

    fn draw(&self, rng: &mut impl Rng) -> Duration {
        let (min, max) = self.window;
        let spread = u64::try_from((max - min).as_millis()).unwrap_or(u64::MAX);
        min + Duration::from_millis(rng.random_range(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashMap;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A resolver answering from a table; a name not in it does not resolve.
    struct FakeResolver(HashMap<&'static str, Vec<SocketAddr>>);

    #[async_trait::async_trait]
    impl Resolver for FakeResolver {
        async fn resolve(&self, host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
            self.0
                .get(host_port)
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"))
        }
    }

    fn resolver() -> FakeResolver {
        FakeResolver(HashMap::from([
            (
                "localhost:7443",
                vec![addr("127.0.0.1:7443"), addr("[::1]:7443")],
            ),
            ("c2:7443", vec![addr("10.0.0.2:7443")]),
            ("empty:7443", vec![]),
        ]))
    }

    fn controllers(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Dials as the agent does against a fake network where only `up` answers: chooses,
    /// "dials", and on failure moves on. Returns the addresses tried, in order, and the
    /// endpoint reached.
    fn dial_until_up(
        f: &mut Failover,
        eps: &[Endpoint],
        up: &[SocketAddr],
        max: usize,
    ) -> (Vec<SocketAddr>, Option<Endpoint>) {
        let mut tried = Vec::new();
        for _ in 0..max {
            let e = f.choose(eps).unwrap().clone();
            tried.push(e.addr);
            if up.contains(&e.addr) {
                return (tried, Some(e));
            }
            f.failed();
        }
        (tried, None)
    }

    #[tokio::test]
    async fn a_name_with_several_addresses_is_several_endpoints_of_one_rank() {
        let (eps, errors) = resolve(
            &controllers(&[
                "https://localhost",
                "https://nowhere:7443",
                "https://empty:7443",
                "https://c2:7443",
                // The same address again through another name: dialed once.
                "https://127.0.0.1:7443",
            ]),
            &FakeResolver(HashMap::from([
                (
                    "localhost:7443",
                    vec![addr("127.0.0.1:7443"), addr("[::1]:7443")],
                ),
                ("c2:7443", vec![addr("10.0.0.2:7443")]),
                ("empty:7443", vec![]),
                ("127.0.0.1:7443", vec![addr("127.0.0.1:7443")]),
            ])),
        )
        .await;
        let got: Vec<_> = eps.iter().map(|e| (e.rank, e.addr)).collect();
        assert_eq!(
            got,
            [
                (0, addr("127.0.0.1:7443")),
                (0, addr("[::1]:7443")),
                (3, addr("10.0.0.2:7443"))
            ]
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("nowhere:7443"), "{errors:?}");
        assert!(errors[1].contains("empty:7443: no addresses"), "{errors:?}");
        assert_eq!(eps[2].controller, "https://c2:7443");
    }

    #[tokio::test]
    async fn dead_endpoints_are_passed_over_in_order_and_wrap_around() {
        let (eps, _) = resolve(
            &controllers(&["https://localhost:7443", "https://c2:7443"]),
            &resolver(),
        )
        .await;
        let mut f = Failover::new(FAILBACK_WINDOW);
        // Both addresses of the preferred name are dead: the second controller is reached
        // after trying each once.
        let (tried, at) = dial_until_up(&mut f, &eps, &[addr("10.0.0.2:7443")], 10);
        assert_eq!(
            tried,
            [
                addr("127.0.0.1:7443"),
                addr("[::1]:7443"),
                addr("10.0.0.2:7443")
            ]
        );
        assert_eq!(at.unwrap().rank, 1);
        // Its session ends; only the IPv6 address of the first answers now: wrap around.
        f.failed();
        let (tried, at) = dial_until_up(&mut f, &eps, &[addr("[::1]:7443")], 10);
        assert_eq!(tried, [addr("127.0.0.1:7443"), addr("[::1]:7443")]);
        assert_eq!(at.unwrap().addr, addr("[::1]:7443"));
        // Nothing answers: every attempt moves on, round after round.
        let (tried, at) = dial_until_up(&mut f, &eps, &[], 6);
        assert!(at.is_none());
        assert_eq!(&tried[..3], &tried[3..]);
    }

    #[tokio::test]
    async fn a_working_endpoint_is_kept_and_a_vanished_one_restarts_at_the_first() {
        let (eps, _) = resolve(
            &controllers(&["https://localhost:7443", "https://c2:7443"]),
            &resolver(),
        )
        .await;
        let mut f = Failover::new(FAILBACK_WINDOW);
        let (_, at) = dial_until_up(&mut f, &eps, &[addr("10.0.0.2:7443")], 10);
        let mut rng = StdRng::seed_from_u64(1);
        f.connected(&at.unwrap(), Duration::ZERO, &mut rng);
        // A renewal reconnects: same endpoint, no failover.
        assert_eq!(f.choose(&eps).unwrap().addr, addr("10.0.0.2:7443"));
        // DNS no longer has that address: the preferred first.
        assert_eq!(f.choose(&eps[..2]).unwrap().addr, addr("127.0.0.1:7443"));
        assert!(f.choose(&[]).is_none());
    }

    #[tokio::test]
    async fn it_drifts_back_after_a_random_delay_and_only_if_the_preferred_answers() {
        let (eps, _) = resolve(
            &controllers(&["https://localhost:7443", "https://c2:7443"]),
            &resolver(),
        )
        .await;
        let clock = FakeClock::new(time::OffsetDateTime::UNIX_EPOCH);
        let mut rng = StdRng::seed_from_u64(7);
        let (min, max) = FAILBACK_WINDOW;
        let mut delays = Vec::new();
        for _ in 0..50 {
            let mut f = Failover::new(FAILBACK_WINDOW);
            f.connected(&eps[2], clock.monotonic(), &mut rng);
            let d = f.failback_in(clock.monotonic()).unwrap();
            assert!(d >= min && d <= max, "{d:?}");
            delays.push(d);
        }
        // Jittered: agents that failed over together do not all come back together.
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 40, "{delays:?}");

        let mut f = Failover::new(FAILBACK_WINDOW);
        // On the preferred controller nothing is scheduled.
        f.connected(&eps[1], clock.monotonic(), &mut rng);
        assert_eq!(f.failback_in(clock.monotonic()), None);
        // On the second: due within the window, counted on the clock.
        f.connected(&eps[2], clock.monotonic(), &mut rng);
        let due = f.failback_in(clock.monotonic()).unwrap();
        clock.advance(due - Duration::from_secs(1));
        assert_eq!(
            f.failback_in(clock.monotonic()),
            Some(Duration::from_secs(1))
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(f.failback_in(clock.monotonic()), Some(Duration::ZERO));
        // The probe finds the preferred dead: stay, probe again a window later.
        f.probe_failed(clock.monotonic(), &mut rng);
        let again = f.failback_in(clock.monotonic()).unwrap();
        assert!(again >= min && again <= max, "{again:?}");
        assert_eq!(f.choose(&eps).unwrap().addr, addr("10.0.0.2:7443"));
        // The next probe reaches its IPv6 address: the next session goes there.
        clock.advance(again);
        f.fell_back(&eps[1]);
        assert_eq!(f.failback_in(clock.monotonic()), None);
        assert_eq!(f.choose(&eps).unwrap().addr, addr("[::1]:7443"));
        // Disconnected: no probe pending.
        f.connected(&eps[2], clock.monotonic(), &mut rng);
        f.failed();
        assert_eq!(f.failback_in(clock.monotonic()), None);
    }

    #[test]
    fn the_failback_window_comes_from_the_environment_or_the_default() {
        assert_eq!(failback_window(None).unwrap(), FAILBACK_WINDOW);
        assert_eq!(
            failback_window(Some("2-4")).unwrap(),
            (Duration::from_secs(2), Duration::from_secs(4))
        );
        for bad in ["4-2", "x", "1-", "-1-2", "1-9999999"] {
            let e = failback_window(Some(bad)).unwrap_err();
            assert!(e.contains(FAILBACK_ENV) && e.contains(bad), "{e}");
        }
    }
}
