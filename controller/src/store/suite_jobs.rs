//! The shared store suite's cases for jobs and fleet samples (run by `suite::run_all`).

use time::{Duration, OffsetDateTime};

use super::{FleetSample, JobFilter, JobRecord, JobRetention, Store};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

fn job(agent: &str, id: i64, state: &str, secs: i64) -> JobRecord {
    JobRecord {
        agent_id: agent.into(),
        job_id: id,
        runner: "r1".into(),
        state: state.into(),
        failure_reason: if state == "failed" {
            "script_failure".into()
        } else {
            String::new()
        },
        started_at: Some(now() + Duration::seconds(secs)),
        finished_at: None,
        duration_ms: None,
        queue_wait_ms: Some(1500),
        updated_at: now() + Duration::seconds(secs),
    }
}

fn filter(limit: usize) -> JobFilter {
    JobFilter {
        limit,
        ..JobFilter::default()
    }
}

fn ids(v: &[JobRecord]) -> Vec<(String, i64)> {
    v.iter().map(|j| (j.agent_id.clone(), j.job_id)).collect()
}

/// One row per agent and job, updated as the job moves; a late `running` never replaces
/// a final state; filters and newest-first order.
pub(super) fn jobs_merge_filter_and_order(s: Box<dyn Store>) {
    assert!(s.list_jobs(&filter(10)).unwrap().is_empty());
    s.upsert_jobs(&[job("a1", 7, "running", 0), job("a2", 7, "running", 1)])
        .unwrap();
    let mut done = job("a1", 7, "failed", 30);
    done.started_at = None;
    done.finished_at = Some(now() + Duration::seconds(30));
    done.duration_ms = Some(29_000);
    done.queue_wait_ms = None;
    s.upsert_jobs(&[done]).unwrap();
    let got = s
        .list_jobs(&JobFilter {
            agent_id: "a1".into(),
            limit: 10,
            ..JobFilter::default()
        })
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    let j = &got[0];
    assert_eq!(j.state, "failed");
    assert_eq!(j.failure_reason, "script_failure");
    assert_eq!(j.started_at, Some(now()), "the first start is kept");
    assert_eq!(j.finished_at, Some(now() + Duration::seconds(30)));
    assert_eq!(j.duration_ms, Some(29_000));
    assert_eq!(j.queue_wait_ms, Some(1500), "a known wait is kept");
    assert_eq!(j.updated_at, now() + Duration::seconds(30));

    // A `running` that arrives after the end changes neither state nor reason.
    s.upsert_jobs(&[job("a1", 7, "running", 31)]).unwrap();
    let j = &s.list_jobs(&filter(10)).unwrap()[0];
    assert_eq!((j.agent_id.as_str(), j.job_id), ("a1", 7));
    assert_eq!(
        (j.state.as_str(), j.failure_reason.as_str()),
        ("failed", "script_failure")
    );

    s.upsert_jobs(&[
        job("a2", 8, "success", 40),
        JobRecord {
            runner: "r2".into(),
            ..job("a2", 9, "running", 50)
        },
    ])
    .unwrap();
    let all = s.list_jobs(&filter(10)).unwrap();
    assert_eq!(
        ids(&all),
        vec![
            ("a2".into(), 9),
            ("a2".into(), 8),
            ("a1".into(), 7),
            ("a2".into(), 7)
        ]
    );
    let newest = s.list_jobs(&filter(2)).unwrap();
    assert_eq!(ids(&newest), vec![("a2".into(), 9), ("a2".into(), 8)]);
    let by = |f: JobFilter| ids(&s.list_jobs(&f).unwrap());
    assert_eq!(
        by(JobFilter {
            runner: "r2".into(),
            limit: 10,
            ..JobFilter::default()
        }),
        vec![("a2".into(), 9)]
    );
    assert_eq!(
        by(JobFilter {
            state: "running".into(),
            limit: 10,
            ..JobFilter::default()
        }),
        vec![("a2".into(), 9), ("a2".into(), 7)]
    );
    assert_eq!(
        by(JobFilter {
            since: Some(now() + Duration::seconds(35)),
            limit: 10,
            ..JobFilter::default()
        }),
        vec![("a2".into(), 9), ("a2".into(), 8)]
    );
}

/// Jobs are bounded by age, per agent and in all; samples by count.
pub(super) fn jobs_retention(s: Box<dyn Store>) {
    for i in 0..5 {
        s.upsert_jobs(&[job("a1", i, "success", i), job("a2", 100 + i, "success", i)])
            .unwrap();
    }
    let keep = JobRetention {
        per_agent: 3,
        total: 100,
        max_age: Duration::days(1),
        samples: 2,
    };
    assert_eq!(s.prune_jobs(keep, now()).unwrap(), 4);
    let left = s.list_jobs(&filter(100)).unwrap();
    assert_eq!(left.len(), 6, "{left:?}");
    assert!(left.iter().all(|j| j.job_id % 100 >= 2), "{left:?}");
    let keep = JobRetention { total: 4, ..keep };
    assert_eq!(s.prune_jobs(keep, now()).unwrap(), 2);
    let left = s.list_jobs(&filter(100)).unwrap();
    assert_eq!(
        ids(&left),
        vec![
            ("a2".into(), 104),
            ("a1".into(), 4),
            ("a2".into(), 103),
            ("a1".into(), 3)
        ]
    );
    // A day after the fourth second, only the jobs updated then are young enough.
    let later = now() + Duration::days(1) + Duration::seconds(4);
    assert_eq!(s.prune_jobs(keep, later).unwrap(), 2);
    assert_eq!(
        ids(&s.list_jobs(&filter(100)).unwrap()),
        vec![("a2".into(), 104), ("a1".into(), 4)]
    );

    for i in 0..4 {
        s.add_fleet_sample(&FleetSample {
            at: now() + Duration::minutes(i),
            healthy: u32::try_from(i).unwrap(),
            degraded: 1,
            lost: 2,
            revoked: 3,
        })
        .unwrap();
    }
    // A second sample at one time replaces the first.
    s.add_fleet_sample(&FleetSample {
        at: now() + Duration::minutes(3),
        healthy: 9,
        degraded: 0,
        lost: 0,
        revoked: 0,
    })
    .unwrap();
    let got = s.list_fleet_samples(now() + Duration::minutes(1)).unwrap();
    assert_eq!(
        got.iter().map(|x| x.healthy).collect::<Vec<_>>(),
        vec![1, 2, 9]
    );
    assert_eq!(got[0].revoked, 3);
    assert_eq!(s.prune_jobs(keep, now()).unwrap(), 2, "two samples, no job");
    let got = s.list_fleet_samples(now()).unwrap();
    assert_eq!(
        got.iter().map(|x| x.healthy).collect::<Vec<_>>(),
        vec![2, 9]
    );
}

/// A batch of jobs is written whole or not at all.
pub(super) fn job_batch_fails_whole(s: Box<dyn Store>) {
    assert!(
        s.upsert_jobs(&[job("a1", 1, "running", 0), job("a1", 2, "running", 0)])
            .is_err()
    );
    assert!(s.list_jobs(&filter(10)).unwrap().is_empty());
}
