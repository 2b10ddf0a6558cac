//! One test suite every [`Store`] implementation must pass.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::{
    AckRecord, AgentRecord, AgentRollout, AgentStep, Assignment, EventFilter, EventRecord, Facts,
    GenerationRecord, Retention, Retired, RolloutState, Store, StoreError, Strategy, StrategyKind,
};
use crate::tokens::{self, TokenRecord, TokenRefusal};

type Make<'a> = &'a dyn Fn() -> Box<dyn Store>;
/// A fresh store whose every write to the named table fails.
type MakeFailing<'a> = &'a dyn Fn(&'static str) -> Box<dyn Store>;

/// Runs every case against fresh stores from `make`, and the atomicity cases against
/// stores from `failing`.
pub fn run_all(make: Make<'_>, failing: MakeFailing<'_>) {
    retire_agent_runners_at_once(make());
    replace_assignment_replaces_the_old(make());
    rotated_token_is_a_compare_and_swap(make());
    intents_fail_whole(&failing);
    enroll_takes_a_use_and_copies_labels(make());
    refused_enrollment_changes_nothing(make());
    seen_renewed_revoked(make());
    generations_follow_each_other(make());
    assignments_and_retired(make());
    rollouts_and_acks(make());
    advance_agents_in_one_go(make());
    batched_last_seen(make());
    host_reasons_round_trip(make());
    events_filter_and_order(make());
    events_retention(make());
    super::suite_jobs::jobs_merge_filter_and_order(make());
    super::suite_jobs::jobs_retention(make());
    super::suite_jobs::job_batch_fails_whole(failing("jobs"));
    super::suite_upgrades::binaries_in_chunks(make());
    super::suite_upgrades::upgrades_and_progress(make());
    super::suite_upgrades::binary_fails_whole(failing("upgrade_chunks"));
    super::suite_drains::drains_persist_and_go_with_the_agent(make(), &enrolled);
    super::suite_drains::drain_writes_fail_whole(failing("agent_drains"), &enrolled);
    super::suite_images::blobs_are_chunked_and_stored_once(make());
    super::suite_images::pushes_and_deliveries(make());
    super::suite_images::push_fails_whole(failing("image_deliveries"));
    super::suite_batch_reads::batch_reads_match_one_agent_reads(make());
}

pub(super) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

/// A token with secret `s` and label `site=lab`.
pub fn token(uses: u32) -> TokenRecord {
    TokenRecord {
        id: "0011223344556677".into(),
        secret_hash: tokens::hash_secret("s"),
        labels: BTreeMap::from([("site".to_string(), "lab".to_string())]),
        created_at: now(),
        expires_at: now() + Duration::hours(1),
        uses_left: uses,
        revoked: false,
    }
}

fn agent(id: &str) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        labels: BTreeMap::new(),
        facts: Facts {
            hostname: "box".into(),
            ..Facts::default()
        },
        enrolled_at: now(),
        last_seen: None,
        cert_serial: "01".into(),
        cert_not_after: now() + Duration::days(7),
        revoked_at: None,
        applied_generation: 0,
    }
}

/// A token with `uses`, and agents `ids` enrolled with it.
pub(crate) fn enrolled(s: &dyn Store, uses: u32, ids: &[&str]) {
    s.create_token(&token(uses)).unwrap();
    for id in ids {
        s.enroll(
            "0011223344556677",
            &tokens::hash_secret("s"),
            now(),
            agent(id),
        )
        .unwrap();
    }
}

fn enroll_takes_a_use_and_copies_labels(s: Box<dyn Store>) {
    s.create_token(&token(1)).unwrap();
    let a = s
        .enroll(
            "0011223344556677",
            &tokens::hash_secret("s"),
            now(),
            agent("a1"),
        )
        .unwrap();
    assert_eq!(a.labels.get("site").map(String::as_str), Some("lab"));
    assert_eq!(s.list_tokens().unwrap()[0].uses_left, 0);
    let err = s
        .enroll(
            "0011223344556677",
            &tokens::hash_secret("s"),
            now(),
            agent("a2"),
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Token(TokenRefusal::UsedUp(_))),
        "{err}"
    );
    assert_eq!(s.list_agents().unwrap().len(), 1);
    assert_eq!(
        s.get_token("0011223344556677").unwrap(),
        Some(s.list_tokens().unwrap()[0].clone())
    );
    assert_eq!(s.get_token("ffffffffffffffff").unwrap(), None);
    assert_eq!(s.get_agent("a1").unwrap().unwrap(), a);
    assert_eq!(s.agent_labels("a1").unwrap(), Some(a.labels.clone()));
    assert_eq!(s.agent_labels("nobody").unwrap(), None);
}

fn refused_enrollment_changes_nothing(s: Box<dyn Store>) {
    s.create_token(&token(2)).unwrap();
    s.create_token(&TokenRecord {
        id: "8899aabbccddeeff".into(),
        ..token(1)
    })
    .unwrap();
    s.enroll(
        "8899aabbccddeeff",
        &tokens::hash_secret("s"),
        now(),
        agent("a1"),
    )
    .unwrap();
    let before = s.list_tokens().unwrap();
    for (id, secret, at, agent_id) in [
        ("0011223344556677", "wrong", now(), "a2"),
        ("ffffffffffffffff", "s", now(), "a2"),
        ("0011223344556677", "s", now() + Duration::hours(2), "a2"),
        ("0011223344556677", "s", now(), "a1"),
    ] {
        assert!(
            s.enroll(id, &tokens::hash_secret(secret), at, agent(agent_id))
                .is_err()
        );
    }
    assert_eq!(s.list_tokens().unwrap(), before);
    s.revoke_token("0011223344556677").unwrap();
    let err = s
        .enroll(
            "0011223344556677",
            &tokens::hash_secret("s"),
            now(),
            agent("a2"),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Token(TokenRefusal::Revoked(_))));
    assert_eq!(s.list_agents().unwrap().len(), 1);
    assert!(!s.revoke_token("nope").unwrap());
}

fn seen_renewed_revoked(s: Box<dyn Store>) {
    enrolled(&*s, 1, &["a1"]);
    s.agent_seen("a1", now(), None, Some(&["10.0.0.1".to_string()]), Some(3))
        .unwrap();
    let a = s.get_agent("a1").unwrap().unwrap();
    assert_eq!(a.facts.ips, vec!["10.0.0.1".to_string()]);
    assert_eq!(a.facts.hostname, "box");
    assert_eq!(a.applied_generation, 3);
    assert_eq!(a.last_seen, Some(now()));
    s.agent_cert_renewed("a1", "02", now()).unwrap();
    assert_eq!(s.get_agent("a1").unwrap().unwrap().cert_serial, "02");
    assert!(s.revoke_agent("a1", now()).unwrap());
    assert!(s.revoke_agent("a1", now() + Duration::hours(1)).unwrap());
    assert_eq!(s.get_agent("a1").unwrap().unwrap().revoked_at, Some(now()));
    assert!(!s.revoke_agent("nope", now()).unwrap());
}

fn generation(n: u64) -> GenerationRecord {
    GenerationRecord {
        generation: n,
        created_at: now(),
        runners_sealed: vec![n as u8, 1, 2],
        strategy: Strategy {
            kind: StrategyKind::Rolling,
            max_unavailable: 1,
            gate: None,
        },
        state: RolloutState::Progressing,
        reason: String::new(),
    }
}

fn generations_follow_each_other(s: Box<dyn Store>) {
    assert_eq!(s.latest_generation().unwrap(), None);
    let err = s.add_generation(&generation(2)).unwrap_err();
    assert!(
        matches!(err, StoreError::GenerationConflict { newest: 0, got: 2 }),
        "{err}"
    );
    s.add_generation(&generation(1)).unwrap();
    s.add_generation(&generation(2)).unwrap();
    assert!(s.add_generation(&generation(2)).is_err());
    assert_eq!(s.latest_generation().unwrap(), Some(generation(2)));
    assert_eq!(s.get_generation(1).unwrap(), Some(generation(1)));
    assert!(
        s.set_rollout_state(2, RolloutState::Halted, "agent a1 refused")
            .unwrap()
    );
    let g = s.get_generation(2).unwrap().unwrap();
    assert_eq!(g.state, RolloutState::Halted);
    assert_eq!(g.reason, "agent a1 refused");
    assert!(!s.set_rollout_state(9, RolloutState::Complete, "").unwrap());
    // A gated rollout keeps its gate and its halt reason.
    let mut gated = generation(3);
    gated.strategy.gate = Some(crate::store::Gate {
        canary: 1,
        window_secs: 30,
        max_failure_permille: 250,
        auto_rollback: true,
    });
    s.add_generation(&gated).unwrap();
    assert_eq!(s.get_generation(3).unwrap(), Some(gated.clone()));
    assert!(
        s.set_rollout_state(3, RolloutState::Halted, "health gate: 1 of 1 jobs")
            .unwrap()
    );
    let g = s.get_generation(3).unwrap().unwrap();
    assert_eq!(
        (g.strategy, g.state, g.reason.as_str()),
        (
            gated.strategy,
            RolloutState::Halted,
            "health gate: 1 of 1 jobs"
        )
    );
}

pub(super) fn assignment(agent: &str, runner: &str, id: i64) -> Assignment {
    Assignment {
        agent_id: agent.into(),
        runner: runner.into(),
        url: "https://gitlab.example.com".into(),
        gitlab_runner_id: id,
        token_sealed: vec![1, 2, 3],
        token_expires_at: Some(now()),
        registration_key: "k1".into(),
        registered: true,
    }
}

/// Puts assignments the way a rollout does (the store has no bare put).
pub(super) fn put(s: &dyn Store, assignments: &[Assignment]) {
    let steps: Vec<AgentStep> = assignments
        .iter()
        .map(|a| AgentStep {
            agent_id: a.agent_id.clone(),
            generation: 1,
            put: vec![a.clone()],
            ..AgentStep::default()
        })
        .collect();
    s.advance_agents(&steps).unwrap();
}

/// A rollout step of `old`'s agent to `generation`: `new` put, `old` dropped and retired
/// until the agent runs `generation`.
fn swap_step(generation: u64, new: Assignment, old: Assignment) -> AgentStep {
    AgentStep {
        agent_id: old.agent_id.clone(),
        generation,
        put: vec![new],
        delete: vec![old.runner.clone()],
        retire: vec![Retired {
            id: 0,
            assignment: old,
            after_generation: generation,
        }],
    }
}

/// Queues a retired entry the way a rollout does.
fn retire(s: &dyn Store, a: Assignment, after_generation: u64) {
    s.advance_agents(&[AgentStep {
        agent_id: a.agent_id.clone(),
        generation: 1,
        retire: vec![Retired {
            id: 0,
            assignment: a,
            after_generation,
        }],
        ..AgentStep::default()
    }])
    .unwrap();
}

fn assignments_and_retired(s: Box<dyn Store>) {
    let replaced = Assignment {
        token_expires_at: None,
        registered: false,
        ..assignment("a1", "r1", 4)
    };
    put(&*s, &[assignment("a1", "r2", 2), assignment("a1", "r1", 1)]);
    put(&*s, &[assignment("a2", "r1", 3)]);
    put(&*s, std::slice::from_ref(&replaced));
    assert_eq!(
        s.assignments("a1").unwrap(),
        vec![replaced.clone(), assignment("a1", "r2", 2)]
    );
    assert_eq!(s.all_assignments().unwrap().len(), 3);

    retire(&*s, assignment("a1", "r1", 1), 2);
    retire(&*s, assignment("a2", "r1", 3), 0);
    let list = s.list_retired().unwrap();
    assert_eq!(list.len(), 2);
    let (id1, id2) = (list[0].id, list[1].id);
    assert!(id1 < id2, "oldest first");
    assert_eq!(list[0].assignment, assignment("a1", "r1", 1));
    assert_eq!(list[0].after_generation, 2);
    s.delete_retired(id1).unwrap();
    assert_eq!(s.list_retired().unwrap()[0].id, id2);
}

fn rollouts_and_acks(s: Box<dyn Store>) {
    enrolled(&*s, 2, &["a1"]);
    assert!(s.agent_rollouts().unwrap().is_empty());
    assert_eq!(s.agent_rollout("a1").unwrap(), None);
    s.advance_agents(&[AgentStep {
        agent_id: "a1".into(),
        generation: 2,
        ..AgentStep::default()
    }])
    .unwrap();
    assert_eq!(s.agent_rollout("a1").unwrap().unwrap().target_generation, 2);
    s.record_acks(&[AckRecord {
        agent_id: "a1".into(),
        generation: 2,
        error: Some("bad image".into()),
    }])
    .unwrap();
    let r = &s.agent_rollouts().unwrap()[0];
    assert_eq!(
        (
            r.target_generation,
            r.ack_generation,
            r.ack_error.as_deref()
        ),
        (2, 2, Some("bad image"))
    );
    assert_eq!(s.get_agent("a1").unwrap().unwrap().applied_generation, 0);
    s.record_acks(&[AckRecord {
        agent_id: "a1".into(),
        generation: 2,
        error: None,
    }])
    .unwrap();
    assert_eq!(s.agent_rollouts().unwrap()[0].ack_error, None);
    assert_eq!(s.get_agent("a1").unwrap().unwrap().applied_generation, 2);

    // Progress lists every agent not revoked, pushed or not.
    s.enroll(
        "0011223344556677",
        &tokens::hash_secret("s"),
        now(),
        agent("a0"),
    )
    .unwrap();
    let progress = s.rollout_progress().unwrap();
    assert_eq!(
        progress,
        [
            AgentRollout {
                agent_id: "a0".into(),
                ..AgentRollout::default()
            },
            AgentRollout {
                agent_id: "a1".into(),
                target_generation: 2,
                ack_generation: 2,
                ack_error: None,
            },
        ]
    );
    assert!(s.revoke_agent("a0", now()).unwrap());
    assert_eq!(s.rollout_progress().unwrap().len(), 1);
}

/// Several agents advanced at once: every write of every step lands.
fn advance_agents_in_one_go(s: Box<dyn Store>) {
    put(
        &*s,
        &[assignment("a1", "old", 1), assignment("a2", "keep", 2)],
    );
    s.advance_agents(&[
        swap_step(5, assignment("a1", "new", 3), assignment("a1", "old", 1)),
        AgentStep {
            agent_id: "a2".into(),
            generation: 5,
            ..AgentStep::default()
        },
    ])
    .unwrap();
    assert_eq!(
        s.assignments("a1").unwrap(),
        vec![assignment("a1", "new", 3)]
    );
    assert_eq!(
        s.assignments("a2").unwrap(),
        vec![assignment("a2", "keep", 2)]
    );
    let retired = s.list_retired().unwrap();
    assert_eq!(retired.len(), 1);
    assert!(retired[0].id > 0);
    assert_eq!(retired[0].assignment, assignment("a1", "old", 1));
    assert_eq!(retired[0].after_generation, 5);
    let targets: Vec<(String, u64)> = s
        .agent_rollouts()
        .unwrap()
        .into_iter()
        .map(|r| (r.agent_id, r.target_generation))
        .collect();
    assert_eq!(targets, [("a1".to_string(), 5), ("a2".to_string(), 5)]);
}

#[test]
fn memory_store_passes_the_suite() {
    use super::memory::MemoryStore;
    run_all(&|| Box::new(MemoryStore::new()), &|table| {
        Box::new(MemoryStore::failing_on(table))
    });
}

/// Deleting an agent retires the GitLab runners the controller registered for it, in one
/// go; a spec `token` (not registered) is dropped without being queued.
fn retire_agent_runners_at_once(s: Box<dyn Store>) {
    let spec_token = Assignment {
        registered: false,
        ..assignment("a1", "given", 7)
    };
    put(
        &*s,
        &[
            assignment("a1", "r1", 1),
            assignment("a1", "r2", 2),
            spec_token,
            assignment("a2", "r1", 3),
        ],
    );
    assert_eq!(s.retire_agent_runners("a1").unwrap(), 2);
    assert!(s.assignments("a1").unwrap().is_empty());
    assert_eq!(s.assignments("a2").unwrap().len(), 1);
    let retired = s.list_retired().unwrap();
    assert_eq!(
        retired
            .iter()
            .map(|r| (r.assignment.clone(), r.after_generation))
            .collect::<Vec<_>>(),
        [
            (assignment("a1", "r1", 1), 0),
            (assignment("a1", "r2", 2), 0)
        ]
    );
    assert_eq!(s.retire_agent_runners("a1").unwrap(), 0);
    assert_eq!(s.retire_agent_runners("nobody").unwrap(), 0);
}

/// A re-registration puts the fresh runner and queues the old one in one go.
fn replace_assignment_replaces_the_old(s: Box<dyn Store>) {
    assert_eq!(
        s.replace_assignment(&assignment("a1", "r1", 1)).unwrap(),
        None
    );
    assert!(s.list_retired().unwrap().is_empty());
    assert_eq!(
        s.replace_assignment(&assignment("a1", "r1", 2)).unwrap(),
        Some(assignment("a1", "r1", 1))
    );
    assert_eq!(s.assignments("a1").unwrap(), [assignment("a1", "r1", 2)]);
    let retired = s.list_retired().unwrap();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].assignment, assignment("a1", "r1", 1));
    assert_eq!(retired[0].after_generation, 0);
    // A spec token replaced is the operator's: not queued.
    let given = Assignment {
        registered: false,
        ..assignment("a1", "r2", 0)
    };
    s.replace_assignment(&given).unwrap();
    s.replace_assignment(&assignment("a1", "r2", 3)).unwrap();
    assert_eq!(s.list_retired().unwrap().len(), 1);
}

/// A rotated token is written only over the assignment it was checked against.
fn rotated_token_is_a_compare_and_swap(s: Box<dyn Store>) {
    let a = assignment("a1", "r1", 1);
    put(&*s, std::slice::from_ref(&a));
    let later = Some(now() + Duration::days(30));
    assert!(s.rotate_assignment_token(&a, &[9, 9], later).unwrap());
    let rotated = Assignment {
        token_sealed: vec![9, 9],
        token_expires_at: later,
        ..a.clone()
    };
    assert_eq!(s.assignments("a1").unwrap(), std::slice::from_ref(&rotated));
    // `a` is stale now (its token changed), and so is an assignment of another runner id.
    assert!(!s.rotate_assignment_token(&a, &[7], None).unwrap());
    let other = Assignment {
        gitlab_runner_id: 2,
        ..rotated.clone()
    };
    assert!(!s.rotate_assignment_token(&other, &[7], None).unwrap());
    assert!(
        !s.rotate_assignment_token(&assignment("a1", "gone", 1), &[7], None)
            .unwrap()
    );
    assert_eq!(s.assignments("a1").unwrap(), [rotated]);
}

/// An operation whose write to one table fails leaves every other table as it was.
fn intents_fail_whole(failing: MakeFailing<'_>) {
    let s = failing("retired");
    put(&*s, &[assignment("a1", "r1", 1), assignment("a1", "r2", 2)]);
    let before = s.all_assignments().unwrap();
    let targets = s.agent_rollouts().unwrap();

    assert!(s.retire_agent_runners("a1").is_err());
    assert_eq!(
        s.all_assignments().unwrap(),
        before,
        "deleted without retiring"
    );

    assert!(s.replace_assignment(&assignment("a1", "r1", 9)).is_err());
    assert_eq!(
        s.all_assignments().unwrap(),
        before,
        "replaced without retiring"
    );

    let step = swap_step(2, assignment("a1", "r3", 3), assignment("a1", "r2", 2));
    assert!(s.advance_agents(&[step]).is_err());
    assert_eq!(s.all_assignments().unwrap(), before, "advanced in part");
    assert_eq!(s.agent_rollouts().unwrap(), targets);
    assert!(s.list_retired().unwrap().is_empty());

    let s = failing("assignments");
    assert!(s.replace_assignment(&assignment("a1", "r1", 1)).is_err());
    assert!(s.list_retired().unwrap().is_empty());
}

fn host_reasons_round_trip(s: Box<dyn Store>) {
    enrolled(&*s, 2, &["a1", "a2"]);
    assert!(s.host_reasons().unwrap().is_empty());
    let low = vec!["disk low for docker: 1.0 GiB free of 100.0 GiB (1.0%)".to_string()];
    s.set_host_reasons(&[
        ("a1".into(), low.clone()),
        ("a2".into(), Vec::new()),
        ("unknown".into(), low.clone()),
    ])
    .unwrap();
    let stored = s.host_reasons().unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored["a1"], low);
    // Cleared: no longer listed.
    s.set_host_reasons(&[("a1".into(), Vec::new())]).unwrap();
    assert!(s.host_reasons().unwrap().is_empty());
}

fn batched_last_seen(s: Box<dyn Store>) {
    enrolled(&*s, 2, &["a1", "a2"]);
    let later = now() + Duration::seconds(30);
    s.agents_seen(&[
        ("a1".into(), later),
        ("a2".into(), now()),
        ("unknown".into(), later),
    ])
    .unwrap();
    assert_eq!(s.get_agent("a1").unwrap().unwrap().last_seen, Some(later));
    assert_eq!(s.get_agent("a2").unwrap().unwrap().last_seen, Some(now()));
    // An older time never moves last_seen back.
    s.agents_seen(&[("a1".into(), now())]).unwrap();
    assert_eq!(s.get_agent("a1").unwrap().unwrap().last_seen, Some(later));
}

fn event(agent: &str, kind: &str, secs: i64) -> EventRecord {
    EventRecord {
        at: Some(now() + Duration::seconds(secs)),
        agent_id: agent.into(),
        kind: kind.into(),
        message: format!("{kind} at {secs}"),
        ..EventRecord::default()
    }
}

fn all(limit: usize) -> EventFilter {
    EventFilter {
        limit,
        ..EventFilter::default()
    }
}

fn events_filter_and_order(s: Box<dyn Store>) {
    assert!(s.list_events(&all(10)).unwrap().is_empty());
    s.add_events(&[
        event("a1", "agent-connected", 0),
        event("a2", "agent-connected", 1),
        EventRecord {
            runner: "lab".into(),
            job_id: 42,
            job_state: "success".into(),
            ..event("a1", "job", 2)
        },
        event("", "rollout", 3),
    ])
    .unwrap();
    let v = s.list_events(&all(10)).unwrap();
    assert_eq!(v.len(), 4);
    assert!(v.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    assert_eq!(v[2].job_id, 42);
    assert_eq!(v[2].job_state, "success");
    assert_eq!(v[2].runner, "lab");
    assert_eq!(v[2].at, Some(now() + Duration::seconds(2)));
    // The newest `limit`, still oldest first.
    let newest = s.list_events(&all(2)).unwrap();
    assert_eq!(
        newest.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["job", "rollout"]
    );
    let a1 = s
        .list_events(&EventFilter {
            agent_id: "a1".into(),
            ..all(10)
        })
        .unwrap();
    assert_eq!(a1.len(), 2);
    let jobs = s
        .list_events(&EventFilter {
            kind: "job".into(),
            ..all(10)
        })
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let since = s
        .list_events(&EventFilter {
            since: Some(now() + Duration::seconds(2)),
            ..all(10)
        })
        .unwrap();
    assert_eq!(since.len(), 2);
    let after = s
        .list_events(&EventFilter {
            after_id: v[1].id,
            ..all(10)
        })
        .unwrap();
    assert_eq!(after, v[2..].to_vec());
}

fn events_retention(s: Box<dyn Store>) {
    for i in 0..5 {
        s.add_events(&[event("a1", "job", i), event("a2", "job", i)])
            .unwrap();
    }
    s.add_events(&[event("", "rollout", 10)]).unwrap();
    let dropped = s
        .prune_events(Retention {
            per_agent: 3,
            total: 100,
        })
        .unwrap();
    assert_eq!(dropped, 4);
    let left = s.list_events(&all(100)).unwrap();
    assert_eq!(left.iter().filter(|e| e.agent_id == "a1").count(), 3);
    assert_eq!(
        left.iter()
            .filter(|e| e.agent_id == "a1")
            .map(|e| e.at)
            .collect::<Vec<_>>(),
        (2..5)
            .map(|i| Some(now() + Duration::seconds(i)))
            .collect::<Vec<_>>(),
        "the newest are kept"
    );
    let dropped = s
        .prune_events(Retention {
            per_agent: 3,
            total: 4,
        })
        .unwrap();
    assert_eq!(dropped, 3);
    let left = s.list_events(&all(100)).unwrap();
    assert_eq!(left.len(), 4);
    assert_eq!(left.last().unwrap().kind, "rollout");
    assert_eq!(s.prune_events(Retention::default()).unwrap(), 0);
}
