//! One test suite every [`Store`] implementation must pass.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::{AgentRecord, Facts, Store, StoreError};
use crate::tokens::{self, TokenRecord, TokenRefusal};

type Make<'a> = &'a dyn Fn() -> Box<dyn Store>;

/// Runs every case against fresh stores from `make`.
pub fn run_all(make: Make<'_>) {
    enroll_takes_a_use_and_copies_labels(make());
    refused_enrollment_changes_nothing(make());
    seen_renewed_revoked(make());
}

fn now() -> OffsetDateTime {
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
    assert_eq!(s.get_agent("a1").unwrap().unwrap(), a);
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
    s.create_token(&token(1)).unwrap();
    s.enroll(
        "0011223344556677",
        &tokens::hash_secret("s"),
        now(),
        agent("a1"),
    )
    .unwrap();
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

#[test]
fn memory_store_passes_the_suite() {
    run_all(&|| Box::new(super::memory::MemoryStore::new()));
}
