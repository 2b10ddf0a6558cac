use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

use crate::clock::FakeClock;

use proptest::prelude::*;

use super::*;

fn t0() -> Now {
    Now {
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        mono: Duration::from_secs(1000),
    }
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        start_limit_burst: 3,
        start_limit_interval: Duration::from_secs(60),
        watchdog: Duration::from_secs(30),
    }
}

#[test]
fn start_verify_run() {
    let mut u = Unit::new(policy(), t0());
    assert_eq!(u.handle(Event::Start, t0(), true), Action::StartLoop);
    assert_eq!(u.state, UnitState::Starting);
    let t1 = t0() + Duration::from_secs(2);
    u.handle(Event::Connected, t1, true);
    assert_eq!(u.state, UnitState::Running);
    assert_eq!(u.since, t1.wall);
}

#[test]
fn drain_lets_the_loop_finish_then_stays_stopped() {
    let mut u = Unit::new(policy(), t0());
    u.handle(Event::Start, t0(), true);
    u.handle(Event::Connected, t0(), true);
    let t1 = t0() + Duration::from_secs(1);
    assert_eq!(u.handle(Event::Drain, t1, true), Action::StopLoop);
    assert_eq!(u.state, UnitState::Draining);
    assert!(!u.state.wants_loop());
    // A watchdog stall or a tick while draining does nothing.
    assert_eq!(
        u.handle(Event::Stalled("x".into()), t1, true),
        Action::Nothing
    );
    assert_eq!(u.handle(Event::Tick, t1, true), Action::Nothing);
    u.handle(Event::LoopEnded(None), t1 + Duration::from_secs(5), true);
    assert_eq!(u.state, UnitState::Stopped);
    assert_eq!(u.last_error, None);
    for s in 10..100 {
        let now = t0() + Duration::from_secs(s);
        assert_eq!(u.handle(Event::Tick, now, true), Action::Nothing);
    }
    assert_eq!(u.state, UnitState::Stopped);
    // A drained unit without a loop stops at once; Start brings it back.
    let mut idle = Unit::new(policy(), t0());
    assert_eq!(idle.handle(Event::Drain, t0(), true), Action::Nothing);
    assert_eq!(idle.state, UnitState::Stopped);
    assert_eq!(
        u.handle(Event::Start, t0() + Duration::from_secs(200), true),
        Action::StartLoop
    );
}

#[test]
fn waits_for_docker_instead_of_crash_looping() {
    let mut u = Unit::new(policy(), t0());
    assert_eq!(u.handle(Event::Start, t0(), false), Action::Nothing);
    assert_eq!(u.state, UnitState::WaitingForDocker);
    for s in 1..100 {
        let now = t0() + Duration::from_secs(s);
        assert_eq!(u.handle(Event::Tick, now, false), Action::Nothing);
    }
    let now = t0() + Duration::from_secs(100);
    assert_eq!(u.handle(Event::Tick, now, true), Action::StartLoop);
    assert_eq!(u.state, UnitState::Starting);
}

#[test]
fn failure_backs_off_exponentially_and_verified_resets() {
    let mut u = Unit::new(policy(), t0());
    let mut now = t0();
    u.handle(Event::Start, now, true);
    let mut delays = Vec::new();
    for _ in 0..3 {
        u.handle(Event::LoopEnded(Some("verify: 500".into())), now, true);
        assert_eq!(u.state, UnitState::Backoff);
        let at = u.retry_at.unwrap();
        delays.push((at - now.mono).as_secs());
        // Not due yet.
        assert_eq!(u.handle(Event::Tick, now, true), Action::Nothing);
        now += at - now.mono;
        // Spread the starts so the start limit does not interfere.
        now += Duration::from_secs(60);
        assert_eq!(u.handle(Event::Tick, now, true), Action::StartLoop);
    }
    assert_eq!(delays, vec![1, 2, 4]);
    u.handle(Event::Connected, now, true);
    u.handle(Event::LoopEnded(Some("x".into())), now, true);
    assert_eq!((u.retry_at.unwrap() - now.mono).as_secs(), 1);
}

#[test]
fn start_limit_stops_the_unit_with_the_reason() {
    let mut u = Unit::new(policy(), t0());
    let mut now = t0();
    assert_eq!(u.handle(Event::Start, now, true), Action::StartLoop);
    let mut started = 1;
    for _ in 0..10 {
        u.handle(Event::LoopEnded(Some("boom".into())), now, true);
        now += u.retry_at.unwrap_or(now.mono) - now.mono;
        if u.handle(Event::Tick, now, true) == Action::StartLoop {
            started += 1;
        }
    }
    assert_eq!(started, 3);
    assert_eq!(u.state, UnitState::Stopped);
    let e = u.last_error.clone().unwrap();
    assert!(e.contains("start limit hit") && e.contains("boom"), "{e}");
    // Stopped units never start on a timer.
    assert_eq!(
        u.handle(Event::Tick, now + Duration::from_secs(3600), true),
        Action::Nothing
    );
    // A new assignment starts it again.
    assert_eq!(
        u.handle(Event::Start, now + Duration::from_secs(3601), true),
        Action::StartLoop
    );
}

#[test]
fn token_invalid_degrades_and_waits_for_a_new_token() {
    let mut u = Unit::new(policy(), t0());
    u.handle(Event::Start, t0(), true);
    u.handle(Event::Connected, t0(), true);
    assert_eq!(
        u.handle(Event::TokenInvalid("403".into()), t0(), true),
        Action::StopLoop
    );
    u.handle(
        Event::LoopEnded(Some("403 on job request".into())),
        t0(),
        true,
    );
    assert_eq!(u.state, UnitState::Degraded);
    let later = t0() + Duration::from_secs(10_000);
    assert_eq!(u.handle(Event::Tick, later, true), Action::Nothing);
    assert_eq!(u.handle(Event::Start, later, true), Action::StartLoop);
    assert_eq!(u.state, UnitState::Starting);
}

#[test]
fn watchdog_stall_restarts_after_backoff() {
    let mut u = Unit::new(policy(), t0());
    u.handle(Event::Start, t0(), true);
    u.handle(Event::Connected, t0(), true);
    assert_eq!(
        u.handle(Event::Stalled("no activity".into()), t0(), true),
        Action::StopLoop
    );
    u.handle(Event::LoopEnded(None), t0(), true);
    assert_eq!(u.state, UnitState::Backoff);
    assert_eq!(u.last_error.as_deref(), Some("no activity"));
}

#[test]
fn stop_is_not_a_failure() {
    let mut u = Unit::new(policy(), t0());
    u.handle(Event::Start, t0(), true);
    assert_eq!(u.handle(Event::Stop, t0(), true), Action::StopLoop);
    u.handle(Event::LoopEnded(None), t0(), true);
    assert_eq!(u.state, UnitState::Stopped);
    assert_eq!(u.last_error, None);
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Start),
        Just(Event::Connected),
        Just(Event::TokenInvalid("403".into())),
        Just(Event::LoopEnded(None)),
        Just(Event::LoopEnded(Some("err".into()))),
        Just(Event::Stalled("stall".into())),
        Just(Event::Tick),
        Just(Event::DockerDown("down".into())),
        Just(Event::Stop),
        Just(Event::Drain),
    ]
}

proptest! {
    /// Whatever happens: a loop is alive exactly when the unit says it wants one or a stop
    /// is pending; the start limit holds; backoff always has a due time.
    #[test]
    fn transitions_keep_invariants(steps in proptest::collection::vec((event(), 0u64..40, any::<bool>()), 1..80)) {
        let p = policy();
        let mut u = Unit::new(p.clone(), t0());
        let mut now = t0();
        let mut starts: Vec<Now> = Vec::new();
        for (ev, dt, docker) in steps {
            now += Duration::from_secs(dt);
            let before_alive = u.loop_alive();
            let is_start = ev == Event::Start;
            let a = u.handle(ev, now, docker);
            if is_start {
                starts.clear();
            }
            if a == Action::StartLoop {
                prop_assert!(!before_alive || is_start);
                prop_assert!(docker || before_alive);
                starts.push(now);
                let recent = starts.iter().filter(|t| now.mono - t.mono < p.start_limit_interval).count();
                prop_assert!(recent <= p.start_limit_burst as usize);
            }
            if a == Action::StopLoop {
                prop_assert!(u.loop_alive());
            }
            if u.state.wants_loop() {
                prop_assert!(u.loop_alive());
            }
            if u.state == UnitState::WaitingForDocker {
                prop_assert!(!u.loop_alive());
            }
            if u.state == UnitState::Draining {
                prop_assert!(u.loop_alive());
            }
            if u.state == UnitState::Backoff {
                prop_assert!(u.retry_at.is_some());
            }
            if matches!(u.state, UnitState::WaitingForDocker | UnitState::Stopped) && !u.loop_alive() {
                prop_assert!(u.retry_at.is_none());
            }
        }
    }
}

/// Issue 20: the wall clock jumps an hour either way while a unit is in backoff: the
/// restart comes after the backoff delay on the monotonic clock, neither at once nor an hour
/// late, and `since` stays wall time.
#[test]
fn a_wall_clock_jump_neither_delays_nor_advances_a_restart() {
    for jump in [time::Duration::hours(-1), time::Duration::hours(1)] {
        let clock = FakeClock::new(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap());
        let p = RestartPolicy {
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(60),
            ..policy()
        };
        let mut u = Unit::new(p, Now::of(&clock));
        u.handle(Event::Start, Now::of(&clock), true);
        u.handle(Event::LoopEnded(Some("boom".into())), Now::of(&clock), true);
        assert_eq!(u.state, UnitState::Backoff);
        assert_eq!(u.since, SystemTime::from(clock.now()));
        clock.jump(jump);
        for _ in 0..9 {
            clock.advance(Duration::from_secs(1));
            assert_eq!(
                u.handle(Event::Tick, Now::of(&clock), true),
                Action::Nothing,
                "restarted early after a {jump} jump"
            );
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            u.handle(Event::Tick, Now::of(&clock), true),
            Action::StartLoop,
            "not restarted on time after a {jump} jump"
        );
        assert_eq!(u.since, SystemTime::from(clock.now()));
    }
}

/// Issue 20: a backward jump does not stretch the start-limit window by an hour (starts an
/// hour old on the monotonic clock no longer count), nor does a forward one shrink it.
#[test]
fn a_wall_clock_jump_does_not_move_the_start_limit_window() {
    for jump in [time::Duration::hours(-1), time::Duration::hours(1)] {
        let clock = FakeClock::new(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap());
        let mut u = Unit::new(policy(), Now::of(&clock));
        // Three starts (the burst) within the window...
        u.handle(Event::Start, Now::of(&clock), true);
        for _ in 0..2 {
            u.handle(Event::LoopEnded(Some("boom".into())), Now::of(&clock), true);
            clock.advance(Duration::from_secs(8));
            assert_eq!(
                u.handle(Event::Tick, Now::of(&clock), true),
                Action::StartLoop
            );
        }
        u.handle(Event::LoopEnded(Some("boom".into())), Now::of(&clock), true);
        clock.jump(jump);
        // ...a fourth within the window is refused whatever the wall clock says...
        clock.advance(Duration::from_secs(8));
        let mut v = u.clone();
        assert_eq!(
            v.handle(Event::Tick, Now::of(&clock), true),
            Action::Nothing
        );
        assert_eq!(v.state, UnitState::Stopped, "after a {jump} jump");
        // ...and allowed once the window passed on the monotonic clock.
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            u.handle(Event::Tick, Now::of(&clock), true),
            Action::StartLoop,
            "after a {jump} jump"
        );
    }
}
