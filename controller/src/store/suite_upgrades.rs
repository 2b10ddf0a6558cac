//! The shared store suite's cases for agent binary upgrades (run by `suite::run_all`).

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::upgrades::{AgentUpgrade, BinaryRecord, CHUNK_BYTES, UpgradeRecord, UpgradeState};
use super::{Store, StoreError};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

fn binary(sha: &str, size: usize) -> BinaryRecord {
    BinaryRecord {
        sha256: sha.to_string(),
        arch: "x86_64".into(),
        version: "2.0.0".into(),
        size: size as u64,
        signature: vec![7; 64],
        created_at: now(),
    }
}

/// A binary is stored once, in chunks read back exactly; an unknown one reads empty.
pub fn binaries_in_chunks(s: Box<dyn Store>) {
    let content: Vec<u8> = (0..CHUNK_BYTES * 2 + 10).map(|i| (i % 251) as u8).collect();
    let b = binary("ab", content.len());
    assert!(s.add_binary(&b, &content).unwrap());
    assert!(
        !s.add_binary(&b, b"other").unwrap(),
        "same sha: kept as it is"
    );
    assert_eq!(s.get_binary("ab").unwrap(), Some(b));
    assert_eq!(s.get_binary("cd").unwrap(), None);
    let mut read = Vec::new();
    loop {
        let part = s.binary_chunk("ab", read.len() as u64).unwrap();
        if part.is_empty() {
            break;
        }
        assert!(part.len() <= CHUNK_BYTES);
        read.extend_from_slice(&part);
    }
    assert_eq!(read, content);
    let mid = s.binary_chunk("ab", CHUNK_BYTES as u64 - 3).unwrap();
    assert_eq!(mid, content[CHUNK_BYTES - 3..CHUNK_BYTES].to_vec());
    assert!(s.binary_chunk("cd", 0).unwrap().is_empty());
    assert!(s.binary_chunk("ab", 1 << 40).unwrap().is_empty());
}

/// Upgrades are numbered in order; state and per-agent progress are replaced.
pub fn upgrades_and_progress(s: Box<dyn Store>) {
    assert_eq!(s.latest_upgrade().unwrap(), None);
    let up = UpgradeRecord {
        id: 0,
        created_at: now(),
        selector: BTreeMap::from([("env".into(), "prod".into())]),
        max_unavailable: 2,
        health_timeout_seconds: 60,
        binaries: BTreeMap::from([("x86_64".into(), "ab".into())]),
        state: UpgradeState::Running,
        reason: String::new(),
    };
    assert_eq!(s.add_upgrade(&up).unwrap(), 1);
    assert_eq!(s.add_upgrade(&up).unwrap(), 2);
    let latest = s.latest_upgrade().unwrap().unwrap();
    assert_eq!(
        latest,
        UpgradeRecord {
            id: 2,
            ..up.clone()
        }
    );
    assert!(
        s.set_upgrade_state(2, UpgradeState::Halted, "a2 rolled back")
            .unwrap()
    );
    assert!(!s.set_upgrade_state(9, UpgradeState::Halted, "").unwrap());
    let latest = s.latest_upgrade().unwrap().unwrap();
    assert_eq!(
        (latest.state, latest.reason.as_str()),
        (UpgradeState::Halted, "a2 rolled back")
    );
    let p = |agent: &str, state: &str| AgentUpgrade {
        upgrade_id: 2,
        agent_id: agent.into(),
        state: state.into(),
        detail: String::new(),
        since: now(),
    };
    s.set_agent_upgrades(&[p("b", "pending"), p("a", "switching")])
        .unwrap();
    s.set_agent_upgrades(&[AgentUpgrade {
        detail: "on 2.0.0".into(),
        ..p("a", "healthy")
    }])
    .unwrap();
    s.set_agent_upgrades(&[AgentUpgrade {
        upgrade_id: 1,
        ..p("c", "pending")
    }])
    .unwrap();
    let got = s.agent_upgrades(2).unwrap();
    assert_eq!(
        got.iter()
            .map(|a| (a.agent_id.as_str(), a.state.as_str(), a.detail.as_str()))
            .collect::<Vec<_>>(),
        vec![("a", "healthy", "on 2.0.0"), ("b", "pending", "")]
    );
    assert_eq!(s.agent_upgrades(1).unwrap().len(), 1);
    // one agent's row, as the per-session paths read it
    let a = s.agent_upgrade(2, "a").unwrap().unwrap();
    assert_eq!(
        (a.state.as_str(), a.detail.as_str()),
        ("healthy", "on 2.0.0")
    );
    assert_eq!(a, got[0]);
    assert_eq!(s.agent_upgrade(2, "c").unwrap(), None);
    assert_eq!(s.agent_upgrade(1, "c").unwrap().unwrap().state, "pending");
    assert_eq!(s.agent_upgrade(3, "a").unwrap(), None);
}

/// A binary whose chunks cannot be written is not stored at all.
pub fn binary_fails_whole(s: Box<dyn Store>) {
    let err = s.add_binary(&binary("ef", 3), b"abc").unwrap_err();
    assert!(!matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(s.get_binary("ef").unwrap(), None);
}
