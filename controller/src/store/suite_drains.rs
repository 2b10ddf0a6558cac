//! The shared store suite's cases for drained agents (run by `suite::run_all`).

use time::{Duration, OffsetDateTime};

use super::{DrainRecord, Store, StoreError};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

type Enrolled<'a> = &'a dyn Fn(&dyn Store, u32, &[&str]);

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A drain is kept with its absolute deadline, a newer drain replaces it, undrain and
/// deletion drop it, and an unknown or revoked id refuses the whole write.
pub fn drains_persist_and_go_with_the_agent(s: Box<dyn Store>, enrolled: Enrolled<'_>) {
    enrolled(&*s, 3, &["a1", "a2", "a3"]);
    assert!(s.list_drains().unwrap().is_empty());
    let deadline = now() + Duration::seconds(90);
    s.drain_agents(&ids(&["a1", "a2"]), now(), Some(deadline))
        .unwrap();
    let a1 = DrainRecord {
        agent_id: "a1".into(),
        requested_at: now(),
        deadline_at: Some(deadline),
    };
    assert_eq!(s.agent_drain("a1").unwrap(), Some(a1.clone()));
    assert_eq!(s.agent_drain("a3").unwrap(), None);
    assert_eq!(
        s.list_drains()
            .unwrap()
            .iter()
            .map(|d| d.agent_id.as_str())
            .collect::<Vec<_>>(),
        ["a1", "a2"]
    );

    // An unknown id among known ones: nothing is written.
    let err = s
        .drain_agents(&ids(&["a3", "nope"]), now(), None)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownAgent(id) if id == "nope"),
        "{err}"
    );
    assert_eq!(s.agent_drain("a3").unwrap(), None);
    let err = s.undrain_agents(&ids(&["a1", "nope"])).unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent(_)), "{err}");
    assert_eq!(s.agent_drain("a1").unwrap(), Some(a1));

    // A newer drain takes its time and deadline.
    let later = now() + Duration::seconds(10);
    s.drain_agents(&ids(&["a1"]), later, None).unwrap();
    assert_eq!(
        s.agent_drain("a1").unwrap(),
        Some(DrainRecord {
            agent_id: "a1".into(),
            requested_at: later,
            deadline_at: None,
        })
    );

    // Undrain says which were drained.
    assert_eq!(s.undrain_agents(&ids(&["a1", "a3"])).unwrap(), ids(&["a1"]));
    assert_eq!(s.agent_drain("a1").unwrap(), None);
    assert!(s.undrain_agents(&ids(&["a1"])).unwrap().is_empty());

    // Deleting an agent drops its drain; a deleted agent cannot be drained.
    assert!(s.revoke_agent("a2", now()).unwrap());
    assert_eq!(s.agent_drain("a2").unwrap(), None);
    assert!(s.list_drains().unwrap().is_empty());
    let err = s.drain_agents(&ids(&["a2"]), now(), None).unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent(_)), "{err}");
}

/// A failed write of drains leaves the drains as they were.
pub fn drain_writes_fail_whole(s: Box<dyn Store>, enrolled: Enrolled<'_>) {
    enrolled(&*s, 2, &["a1", "a2"]);
    assert!(s.drain_agents(&ids(&["a1", "a2"]), now(), None).is_err());
    assert!(s.list_drains().unwrap().is_empty());
}
