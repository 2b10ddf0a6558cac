//! The one place that decides an agent's lease state and why: a pure function of what the
//! lease table knows, the clock and the thresholds.

use serde::Serialize;
use time::{Duration, OffsetDateTime};

use super::report::{Heartbeat, RunnerStatus, UnitState};

/// An agent's lease state, as `drover agents` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Heartbeating, nothing wrong.
    Healthy,
    /// Heartbeating (or briefly disconnected) with at least one reason.
    Degraded,
    /// No heartbeat within the grace period.
    Lost,
    /// Deleted by an admin; its certificate is refused.
    Revoked,
}

impl State {
    /// Every state, in display order.
    pub const ALL: [State; 4] = [State::Healthy, State::Degraded, State::Lost, State::Revoked];

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Lost => "lost",
            State::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits of `healthy`. `drover serve` flags set them.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// No heartbeat for longer than this: `lost` (default 3 heartbeat intervals).
    pub grace: Duration,
    /// A filesystem with less free than this fraction of its size is low (0.10).
    pub min_disk_free_ratio: f64,
    /// ... or with less free than this (2 GiB).
    pub min_disk_free_bytes: u64,
    /// Less available memory than this is low (256 MiB).
    pub min_memory_available_bytes: u64,
    /// A clock further off than this is skewed (60 s).
    pub max_clock_skew: Duration,
    /// A runner token the agent does not rotate, expiring sooner than this, is a problem
    /// (24 h). A token the agent rotates is a problem only when its rotation failed or is
    /// overdue, however short its lifetime.
    pub token_expiry_warning: Duration,
    /// A rotation is overdue this long after its rotation point (5 min), or half the time
    /// from the rotation point to the expiry when that is shorter.
    pub token_rotation_margin: Duration,
    /// A second process refused with this agent's identity within this long is a problem
    /// (3 min: longer than the agent's longest reconnect backoff, so a duplicate that keeps
    /// trying keeps the reason).
    pub duplicate_window: Duration,
}

impl Thresholds {
    /// The defaults for heartbeats every `heartbeat_interval`.
    pub fn for_interval(heartbeat_interval: Duration) -> Thresholds {
        Thresholds {
            grace: heartbeat_interval * 3,
            min_disk_free_ratio: 0.10,
            min_disk_free_bytes: 2 << 30,
            min_memory_available_bytes: 256 << 20,
            max_clock_skew: Duration::seconds(60),
            token_expiry_warning: Duration::hours(24),
            token_rotation_margin: Duration::minutes(5),
            duplicate_window: Duration::minutes(3),
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds::for_interval(Duration::seconds(10))
    }
}

/// What the evaluation looks at for one agent.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Now.
    pub now: OffsetDateTime,
    /// When this controller started (an agent not seen since is given one grace period
    /// to reconnect before it counts as lost).
    pub started_at: OffsetDateTime,
    /// Deleted by an admin.
    pub revoked: bool,
    /// A session is open.
    pub connected: bool,
    /// Whether the agent was heard from since the controller started.
    pub seen_since_start: bool,
    /// The last heartbeat or other message (or the stored last_seen when none since start).
    pub last_contact: Option<OffsetDateTime>,
    /// The last heartbeat, when one arrived since the controller started.
    pub heartbeat: Option<&'a Heartbeat>,
    /// When that heartbeat arrived.
    pub heartbeat_at: Option<OffsetDateTime>,
    /// The generation it runs.
    pub applied_generation: u64,
    /// The generation the controller pushes to it.
    pub target_generation: u64,
    /// Since when applied < target (with no refusal).
    pub behind_since: Option<OffsetDateTime>,
    /// Why it refused the target generation, if it did.
    pub refusal: Option<&'a str>,
    /// When a second process with this agent's identity was last refused.
    pub duplicate_at: Option<OffsetDateTime>,
    /// Connected to another replica: the host-health reasons that replica stored (its
    /// heartbeats are not seen here).
    pub elsewhere_reasons: &'a [String],
}

/// The outcome: a state and its reasons (empty when healthy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// The lease state.
    pub state: State,
    /// One short lower-case phrase each; the text before a `:` is the kind of problem.
    pub reasons: Vec<String>,
}

/// `d` as `45s`, `12m`, `5h`, `3d`.
pub fn short_duration(d: Duration) -> String {
    let s = d.whole_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes as `1.5 GiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Decides the lease state of one agent.
pub fn evaluate(i: &Input<'_>, t: &Thresholds) -> Evaluation {
    if i.revoked {
        return Evaluation {
            state: State::Revoked,
            reasons: vec!["deleted by an admin".into()],
        };
    }
    let mut reasons = Vec::new();
    if !i.seen_since_start {
        // Known before a controller restart: give it one grace period to reconnect.
        if i.last_contact.is_some() && i.now - i.started_at <= t.grace {
            return Evaluation {
                state: State::Degraded,
                reasons: vec!["not connected: waiting for it after the controller started".into()],
            };
        }
        let why = match i.last_contact {
            Some(at) => format!("no heartbeat: last one {} ago", short_duration(i.now - at)),
            None => "no heartbeat: never connected".to_string(),
        };
        return Evaluation {
            state: State::Lost,
            reasons: vec![why],
        };
    }
    let last = i.heartbeat_at.or(i.last_contact);
    match last {
        Some(at) if i.now - at <= t.grace => {}
        Some(at) => {
            return Evaluation {
                state: State::Lost,
                reasons: vec![format!(
                    "no heartbeat: last one {} ago",
                    short_duration(i.now - at)
                )],
            };
        }
        None => {
            return Evaluation {
                state: State::Lost,
                reasons: vec!["no heartbeat: never connected".into()],
            };
        }
    }
    if !i.connected {
        reasons.push(format!(
            "disconnected: last heartbeat {} ago",
            short_duration(i.now - last.unwrap_or(i.now))
        ));
    }
    if let Some(at) = i
        .duplicate_at
        .filter(|at| i.now - *at <= t.duplicate_window)
    {
        reasons.push(format!(
            "duplicate identity: a second process with this agent's identity was refused {} ago (a copied state dir?)",
            short_duration(i.now - at)
        ));
    }
    match i.heartbeat {
        Some(hb) => reasons.extend(heartbeat_reasons(hb, i, t)),
        None => reasons.extend(i.elsewhere_reasons.iter().cloned()),
    }
    if let Some(e) = i.refusal {
        reasons.push(format!("generation refused: {} ({e})", i.target_generation));
    } else if i.applied_generation < i.target_generation
        && i.behind_since.is_some_and(|s| i.now - s > t.grace)
    {
        reasons.push(format!(
            "generation behind: runs {}, target {}",
            i.applied_generation, i.target_generation
        ));
    }
    Evaluation {
        state: if reasons.is_empty() {
            State::Healthy
        } else {
            State::Degraded
        },
        reasons,
    }
}

fn disk_reason(what: &str, free: u64, total: u64, t: &Thresholds) -> Option<String> {
    if total == 0 {
        return None; // not reported
    }
    let ratio = free as f64 / total as f64;
    (free < t.min_disk_free_bytes || ratio < t.min_disk_free_ratio).then(|| {
        format!(
            "disk low for {what}: {} free of {} ({:.1}%)",
            bytes(free),
            bytes(total),
            ratio * 100.0
        )
    })
}

fn heartbeat_reasons(hb: &Heartbeat, i: &Input<'_>, t: &Thresholds) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(h) = &hb.host {
        if !h.docker_reachable {
            out.push("docker unreachable".to_string());
        }
        out.extend(disk_reason(
            "docker",
            h.disk_free_bytes,
            h.disk_total_bytes,
            t,
        ));
        if (h.builds_disk_free_bytes, h.builds_disk_total_bytes)
            != (h.disk_free_bytes, h.disk_total_bytes)
        {
            out.extend(disk_reason(
                "builds",
                h.builds_disk_free_bytes,
                h.builds_disk_total_bytes,
                t,
            ));
        }
        if h.memory_total_bytes > 0 && h.memory_available_bytes < t.min_memory_available_bytes {
            out.push(format!(
                "memory low: {} available of {}",
                bytes(h.memory_available_bytes),
                bytes(h.memory_total_bytes)
            ));
        }
    }
    // The agent's own measurement (against GitLab's and the controller's Date headers),
    // else the heartbeat's send time against its arrival (which includes transit time).
    let skew = hb
        .host
        .as_ref()
        .map(|h| h.clock_skew_seconds)
        .filter(|s| *s != 0.0)
        .or_else(|| {
            let sent = hb.sent_at?;
            let at = i.heartbeat_at?;
            Some((sent - at).as_seconds_f64())
        });
    if let Some(s) = skew
        && s.abs() > t.max_clock_skew.as_seconds_f64()
    {
        out.push(format!(
            "clock skew: {}{}s",
            if s > 0.0 { "+" } else { "-" },
            s.abs().round()
        ));
    }
    for r in &hb.runners {
        let err = if r.last_error.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.last_error.chars().take(120).collect::<String>())
        };
        match r.state {
            Some(UnitState::Backoff) => out.push(format!("runner {} in backoff{err}", r.name)),
            Some(UnitState::WaitingForDocker) => {
                out.push(format!("runner {} waiting for docker", r.name))
            }
            Some(UnitState::Degraded) => out.push(format!("runner {} degraded{err}", r.name)),
            _ => {}
        }
        out.extend(token_reason(r, hb, i, t));
    }
    out
}

/// What is wrong with a runner's token, if anything. A token the agent rotates is judged
/// as of the heartbeat's send time on the agent's clock (the report is a snapshot of that
/// moment, and the rotation point is on that clock too, so clock skew and heartbeat age do
/// not count): a problem only once its rotation failed or is overdue, or it expired. A token
/// the agent does not rotate is a problem within `token_expiry_warning` of its expiry.
fn token_reason(r: &RunnerStatus, hb: &Heartbeat, i: &Input<'_>, t: &Thresholds) -> Option<String> {
    let exp = r.token_expires_at?;
    let Some(rotate_at) = r.token_rotate_at else {
        let left = exp - i.now;
        return if left <= Duration::ZERO {
            Some(format!("runner {} token expired", r.name))
        } else if left < t.token_expiry_warning {
            Some(format!(
                "runner {} token expiring: in {}",
                r.name,
                short_duration(left)
            ))
        } else {
            None
        };
    };
    let as_of = hb.sent_at.or(i.heartbeat_at).unwrap_or(i.now);
    if exp <= as_of {
        return Some(format!("runner {} token expired", r.name));
    }
    if !r.token_rotation_error.is_empty() {
        return Some(format!(
            "runner {} token rotation failing: {} (expires in {})",
            r.name,
            r.token_rotation_error.chars().take(120).collect::<String>(),
            short_duration(exp - as_of)
        ));
    }
    let margin = t
        .token_rotation_margin
        .min((exp - rotate_at) / 2)
        .max(Duration::ZERO);
    (as_of > rotate_at + margin).then(|| {
        format!(
            "runner {} token rotation overdue: due {} ago (expires in {})",
            r.name,
            short_duration(as_of - rotate_at),
            short_duration(exp - as_of)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::report::HostHealth;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn hb() -> Heartbeat {
        Heartbeat {
            sent_at: Some(t0()),
            host: Some(HostHealth {
                docker_reachable: true,
                disk_free_bytes: 50 << 30,
                disk_total_bytes: 100 << 30,
                builds_disk_free_bytes: 50 << 30,
                builds_disk_total_bytes: 100 << 30,
                memory_available_bytes: 4 << 30,
                memory_total_bytes: 8 << 30,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn input(hb: &Heartbeat) -> Input<'_> {
        Input {
            now: t0() + Duration::seconds(1),
            started_at: t0() - Duration::hours(1),
            revoked: false,
            connected: true,
            seen_since_start: true,
            last_contact: Some(t0()),
            heartbeat: Some(hb),
            heartbeat_at: Some(t0()),
            applied_generation: 2,
            target_generation: 2,
            behind_since: None,
            refusal: None,
            duplicate_at: None,
            elsewhere_reasons: &[],
        }
    }

    fn eval(i: &Input<'_>) -> Evaluation {
        evaluate(i, &Thresholds::default())
    }

    #[test]
    fn healthy_when_nothing_is_wrong() {
        let hb = hb();
        assert_eq!(
            eval(&input(&hb)),
            Evaluation {
                state: State::Healthy,
                reasons: vec![]
            }
        );
    }

    #[test]
    fn every_host_reason() {
        let mut hb = hb();
        let h = hb.host.as_mut().unwrap();
        h.docker_reachable = false;
        h.disk_free_bytes = 1 << 30; // under 2 GiB
        h.builds_disk_free_bytes = 8 << 30; // 8% of 100 GiB
        h.memory_available_bytes = 100 << 20;
        h.clock_skew_seconds = -90.0;
        let e = eval(&input(&hb));
        assert_eq!(e.state, State::Degraded);
        assert_eq!(
            e.reasons,
            [
                "docker unreachable",
                "disk low for docker: 1.0 GiB free of 100.0 GiB (1.0%)",
                "disk low for builds: 8.0 GiB free of 100.0 GiB (8.0%)",
                "memory low: 100.0 MiB available of 8.0 GiB",
                "clock skew: -90s",
            ]
        );
    }

    #[test]
    fn unreported_values_never_degrade() {
        let hb = Heartbeat {
            host: Some(HostHealth {
                docker_reachable: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(eval(&input(&hb)).state, State::Healthy);
    }

    #[test]
    fn skew_from_send_time_when_the_agent_does_not_measure() {
        let mut hb = hb();
        hb.sent_at = Some(t0() + Duration::seconds(300));
        assert_eq!(eval(&input(&hb)).reasons, ["clock skew: +300s"]);
    }

    #[test]
    fn runner_units_and_tokens_are_named() {
        let mut hb = hb();
        hb.runners = vec![
            RunnerStatus {
                name: "lab".into(),
                state: Some(UnitState::Backoff),
                last_error: "verify: 500".into(),
                ..Default::default()
            },
            RunnerStatus {
                name: "arm".into(),
                state: Some(UnitState::WaitingForDocker),
                token_expires_at: Some(t0() + Duration::hours(5)),
                ..Default::default()
            },
            RunnerStatus {
                name: "ok".into(),
                state: Some(UnitState::Running),
                token_expires_at: Some(t0() + Duration::days(30)),
                ..Default::default()
            },
        ];
        assert_eq!(
            eval(&input(&hb)).reasons,
            [
                "runner lab in backoff (verify: 500)",
                "runner arm waiting for docker",
                "runner arm token expiring: in 4h",
            ]
        );
    }

    /// A runner whose 40 s token was obtained at `obtained` (agent clock), rotated at 75 %.
    fn short_token(obtained: OffsetDateTime) -> RunnerStatus {
        RunnerStatus {
            name: "lab".into(),
            state: Some(UnitState::Running),
            token_expires_at: Some(obtained + Duration::seconds(40)),
            token_rotate_at: Some(obtained + Duration::seconds(30)),
            ..Default::default()
        }
    }

    /// Issue 14 item 5: 40 s tokens rotated on time at 75 % keep the agent healthy,
    /// evaluated every second over five rotations, with heartbeats every 10 s.
    #[test]
    fn short_lived_tokens_rotated_on_time_stay_healthy() {
        let mut obtained = t0();
        let mut beat = hb();
        let mut beat_at = t0();
        for s in 0..200 {
            let now = t0() + Duration::seconds(s);
            // The agent rotates one second after the rotation point (its timer tick).
            if now >= obtained + Duration::seconds(31) {
                obtained = now;
            }
            if s % 10 == 0 {
                beat = hb();
                beat.sent_at = Some(now);
                beat.runners = vec![short_token(obtained)];
                beat_at = now;
            }
            let mut i = input(&beat);
            i.heartbeat_at = Some(beat_at);
            i.last_contact = Some(beat_at);
            i.now = now;
            assert_eq!(eval(&i).reasons, Vec::<String>::new(), "at {s}s");
        }
    }

    #[test]
    fn rotation_overdue_or_failing_degrades() {
        let obtained = t0() - Duration::seconds(36);
        let mut beat = hb();
        // 6 s past the rotation point: the margin is half of the 10 s before expiry.
        beat.runners = vec![short_token(obtained)];
        assert_eq!(
            eval(&input(&beat)).reasons,
            ["runner lab token rotation overdue: due 6s ago (expires in 4s)"]
        );
        // Within the margin: fine.
        beat.runners = vec![short_token(t0() - Duration::seconds(34))];
        assert_eq!(eval(&input(&beat)).state, State::Healthy);
        // A failed attempt is reported at once, even before the margin.
        beat.runners[0].token_rotation_error = "reset_authentication_token: 500".into();
        assert_eq!(
            eval(&input(&beat)).reasons,
            ["runner lab token rotation failing: reset_authentication_token: 500 (expires in 6s)"]
        );
        // Expired as of the heartbeat.
        beat.runners = vec![short_token(t0() - Duration::seconds(41))];
        assert_eq!(eval(&input(&beat)).reasons, ["runner lab token expired"]);
        // A 30-day token: the margin is 5 minutes.
        let mut long = short_token(t0());
        long.token_rotate_at = Some(t0() - Duration::minutes(4));
        long.token_expires_at = Some(t0() + Duration::days(7));
        beat.runners = vec![long.clone()];
        assert_eq!(eval(&input(&beat)).state, State::Healthy);
        long.token_rotate_at = Some(t0() - Duration::minutes(6));
        beat.runners = vec![long];
        assert_eq!(
            eval(&input(&beat)).reasons,
            ["runner lab token rotation overdue: due 6m ago (expires in 7d)"]
        );
    }

    #[test]
    fn rotation_is_judged_on_the_agent_clock() {
        // The agent's clock is 90 s behind: its heartbeat says it was sent 90 s "ago".
        let beat_sent = t0() - Duration::seconds(90);
        let mut beat = hb();
        beat.sent_at = Some(beat_sent);
        beat.host.as_mut().unwrap().clock_skew_seconds = -90.0;
        beat.runners = vec![short_token(beat_sent - Duration::seconds(20))];
        assert_eq!(eval(&input(&beat)).reasons, ["clock skew: -90s"]);
    }

    #[test]
    fn tokens_the_agent_does_not_rotate_warn_before_expiry() {
        let mut beat = hb();
        let mut r = short_token(t0());
        r.token_rotate_at = None;
        beat.runners = vec![r.clone()];
        assert_eq!(
            eval(&input(&beat)).reasons,
            ["runner lab token expiring: in 39s"]
        );
        r.token_expires_at = Some(t0());
        beat.runners = vec![r];
        assert_eq!(eval(&input(&beat)).reasons, ["runner lab token expired"]);
    }

    #[test]
    fn generation_behind_only_after_the_grace_period() {
        let hb = hb();
        let mut i = input(&hb);
        i.target_generation = 3;
        i.behind_since = Some(i.now - Duration::seconds(5));
        assert_eq!(eval(&i).state, State::Healthy, "a rollout in progress");
        i.behind_since = Some(i.now - Duration::seconds(31));
        assert_eq!(eval(&i).reasons, ["generation behind: runs 2, target 3"]);
        i.refusal = Some("bad image");
        assert_eq!(eval(&i).reasons, ["generation refused: 3 (bad image)"]);
    }

    #[test]
    fn lost_after_grace_and_disconnected_before() {
        let hb = hb();
        let mut i = input(&hb);
        i.connected = false;
        i.now = t0() + Duration::seconds(20);
        assert_eq!(eval(&i).reasons, ["disconnected: last heartbeat 20s ago"]);
        i.now = t0() + Duration::seconds(31);
        assert_eq!(
            eval(&i),
            Evaluation {
                state: State::Lost,
                reasons: vec!["no heartbeat: last one 31s ago".into()]
            }
        );
        // Connected but silent counts the same.
        i.connected = true;
        assert_eq!(eval(&i).state, State::Lost);
    }

    #[test]
    fn controller_restart_gives_one_grace_period() {
        let beat = hb();
        let mut i = input(&beat);
        i.heartbeat = None;
        i.heartbeat_at = None;
        i.seen_since_start = false;
        i.connected = false;
        i.started_at = t0();
        i.last_contact = Some(t0() - Duration::hours(2));
        i.now = t0() + Duration::seconds(10);
        assert_eq!(eval(&i).state, State::Degraded);
        i.now = t0() + Duration::seconds(40);
        assert_eq!(
            eval(&i).reasons,
            ["no heartbeat: last one 2h ago"],
            "{:?}",
            eval(&i)
        );
        i.last_contact = None;
        assert_eq!(eval(&i).reasons, ["no heartbeat: never connected"]);
        // Enrolled but never connected: lost even right after the start.
        i.now = t0() + Duration::seconds(1);
        assert_eq!(eval(&i).state, State::Lost);
    }

    #[test]
    fn duplicate_identity_is_a_reason_for_a_while() {
        let hb = hb();
        let mut i = input(&hb);
        i.duplicate_at = Some(i.now - Duration::seconds(30));
        assert_eq!(
            eval(&i).reasons,
            [
                "duplicate identity: a second process with this agent's identity was refused 30s ago (a copied state dir?)"
            ]
        );
        i.duplicate_at = Some(i.now - Duration::minutes(4));
        assert_eq!(eval(&i).state, State::Healthy);
    }

    #[test]
    fn revoked_wins() {
        let hb = hb();
        let mut i = input(&hb);
        i.revoked = true;
        assert_eq!(eval(&i).state, State::Revoked);
    }

    #[test]
    fn formats() {
        assert_eq!(short_duration(Duration::seconds(45)), "45s");
        assert_eq!(short_duration(Duration::minutes(5)), "5m");
        assert_eq!(short_duration(Duration::hours(30)), "30h");
        assert_eq!(short_duration(Duration::days(4)), "4d");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }
}
