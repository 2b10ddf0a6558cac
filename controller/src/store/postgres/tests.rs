use std::sync::Arc;

use super::test_server::TestServer;
use super::*;
use crate::store::{EnrollmentStore, Store};

/// A server of the test's own (a static one would never be stopped); each store gets a
/// database of its own.
fn server(test: &str) -> Option<TestServer> {
    TestServer::start_or_skip(test)
}

fn fresh(server: &TestServer) -> (String, PgStore) {
    let db = server.create_database().unwrap();
    let url = DatabaseUrl::parse(&server.url(&db)).unwrap();
    (db, PgStore::open(&url).unwrap())
}

/// A store whose every write to `table` fails, as a constraint would.
fn failing_on(server: &TestServer, table: &'static str) -> PgStore {
    let (db, store) = fresh(server);
    server
        .execute_in(
            &db,
            &format!(
                "CREATE FUNCTION fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$ LANGUAGE plpgsql;
                 CREATE TRIGGER fail BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION fail();"
            ),
        )
        .unwrap();
    store
}

#[test]
fn suite() {
    let Some(server) = server("suite") else {
        return;
    };
    let server = &server;
    crate::store::suite::run_all(&|| Box::new(fresh(server).1), &|table| {
        Box::new(failing_on(server, table))
    });
}

/// A connection of its own, outside any store (an older controller, a peer's check).
fn raw(url: &DatabaseUrl) -> Client {
    url.config().connect(url.tls()).unwrap()
}

#[test]
fn replicas_share_a_database_and_an_earlier_build_is_kept_apart() {
    let Some(server) = server("replicas_share_a_database_and_an_earlier_build_is_kept_apart")
    else {
        return;
    };
    let server = &server;
    let (db, store) = fresh(server);
    let url = DatabaseUrl::parse(&server.url(&db)).unwrap();
    let t = crate::store::suite::token(1);
    store.create_token(&t).unwrap();
    // A second replica opens the same database and sees the same rows.
    let second = PgStore::open(&url).unwrap();
    assert_eq!(second.list_tokens().unwrap(), vec![t.clone()]);
    // A controller of the earlier build takes the lock exclusively: refused while
    // replicas run.
    let mut older = raw(&url);
    let took: bool = older
        .query_one("SELECT pg_try_advisory_lock($1)", &[&CONTROLLER_LOCK])
        .unwrap()
        .get(0);
    assert!(!took, "an earlier build must not start beside replicas");
    drop((store, second));
    // ... and while one of the earlier build runs, a replica is refused, clearly. The
    // replicas' connections close off the caller's thread: their locks go a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let took: bool = older
            .query_one("SELECT pg_try_advisory_lock($1)", &[&CONTROLLER_LOCK])
            .unwrap()
            .get(0);
        if took {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas' shared locks outlived their connections"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let err = PgStore::open(&url).unwrap_err();
    assert!(matches!(err, StoreError::InUse(_)), "{err}");
    assert!(err.to_string().contains("earlier version"), "{err}");
    drop(older);
    assert_eq!(PgStore::open(&url).unwrap().list_tokens().unwrap(), vec![t]);
}

/// The lease: one holder at a time, a new epoch per holder, taken over only once expired
/// or released; a fenced write of a term that lost the lease writes nothing.
#[test]
fn the_lease_fences_a_replica_that_lost_it() {
    use crate::replicas::Term;
    use crate::replicas::lease::LeaseStore;
    use crate::store::{EventStore, Retention, RolloutStore};
    use std::time::Duration;
    let Some(server) = server("the_lease_fences_a_replica_that_lost_it") else {
        return;
    };
    let (db, a) = fresh(&server);
    let url = DatabaseUrl::parse(&server.url(&db)).unwrap();
    let b = PgStore::open(&url).unwrap();
    let ttl = Duration::from_secs(30);
    let got = a.lease_tick("a", None, ttl).unwrap();
    assert_eq!(got.schema, SCHEMA_VERSION);
    let ea = got.epoch.expect("the first replica takes the lease");
    assert_eq!(b.lease_tick("b", None, ttl).unwrap().epoch, None);
    assert_eq!(a.lease_tick("a", Some(ea), ttl).unwrap().epoch, Some(ea));
    let term_a = Arc::new(Term::default());
    term_a.set(Some(("a".into(), ea)));
    let fenced_a = a.fenced(term_a.clone());
    fenced_a.prune_events(Retention::default()).unwrap();
    // The lease expires (by the database's clock) and b takes it with a newer epoch.
    server
        .execute_in(
            &db,
            "UPDATE drover_leader SET expires_at = now() - interval '1 second'",
        )
        .unwrap();
    let eb = b.lease_tick("b", None, ttl).unwrap().epoch.unwrap();
    assert!(eb > ea);
    // a still believes it leads: its fenced writes are refused, unwritten.
    let err = fenced_a.set_rollout_state(1, crate::store::RolloutState::Halted, "x");
    assert!(matches!(err, Err(StoreError::NotLeader)), "{err:?}");
    assert!(matches!(
        fenced_a.prune_events(Retention::default()),
        Err(StoreError::NotLeader)
    ));
    assert_eq!(a.lease_tick("a", Some(ea), ttl).unwrap().epoch, None);
    // Without a term nothing is written either; the plain handle is not fenced.
    term_a.set(None);
    assert!(matches!(
        fenced_a.prune_events(Retention::default()),
        Err(StoreError::NotLeader)
    ));
    a.prune_events(Retention::default()).unwrap();
    // b gives the lease up: a takes it at once, with the next epoch.
    b.lease_release("b", eb).unwrap();
    assert_eq!(a.lease_tick("a", None, ttl).unwrap().epoch, Some(eb + 1));
}

/// Event ids from two replicas interleave without gaps, in commit order.
#[test]
fn event_ids_are_ordered_across_replicas() {
    use crate::store::{EventFilter, EventRecord, EventStore};
    let Some(server) = server("event_ids_are_ordered_across_replicas") else {
        return;
    };
    let (db, a) = fresh(&server);
    let b = PgStore::open(&DatabaseUrl::parse(&server.url(&db)).unwrap()).unwrap();
    let ev = |m: &str| EventRecord {
        kind: "x".into(),
        message: m.into(),
        ..EventRecord::default()
    };
    a.add_events(&[ev("a1"), ev("a2")]).unwrap();
    b.add_events(&[ev("b1")]).unwrap();
    a.add_events(&[ev("a3")]).unwrap();
    let all = a
        .list_events(&EventFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(all[2].message, "b1");
}

/// A notification from one replica reaches another's listener.
#[test]
fn notifications_reach_every_listener() {
    let Some(server) = server("notifications_reach_every_listener") else {
        return;
    };
    let (db, a) = fresh(&server);
    let b = PgStore::open(&DatabaseUrl::parse(&server.url(&db)).unwrap()).unwrap();
    let mut listening = b.listener().unwrap();
    assert!(
        listening
            .wait(std::time::Duration::from_millis(50))
            .unwrap()
            .is_empty()
    );
    a.notify("kick a1\nreconcile").unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(
            listening
                .wait(std::time::Duration::from_millis(250))
                .unwrap(),
        );
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, ["kick a1\nreconcile"]);
}

/// The shared secrets on PostgreSQL: the first replica stores them, a replica with
/// another key file is refused and the rows stay as they were.
#[test]
fn shared_secrets_on_postgres() {
    use crate::replicas::shared_secrets::{self, Vault};
    let Some(server) = server("shared_secrets_on_postgres") else {
        return;
    };
    let (db, a) = fresh(&server);
    let b = PgStore::open(&DatabaseUrl::parse(&server.url(&db)).unwrap()).unwrap();
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = shared_secrets::open(&a, &da.path().join("kek.key"), da.path(), "db").unwrap();
    let rows = a.read_secrets().unwrap();
    assert_eq!(rows.len(), 4);
    std::fs::write(dbb.path().join("kek.key"), [1u8; 32]).unwrap();
    let err = shared_secrets::open(&b, &dbb.path().join("kek.key"), dbb.path(), "db").unwrap_err();
    assert!(err.to_string().contains("does not open"), "{err}");
    assert_eq!(b.read_secrets().unwrap(), rows);
    std::fs::copy(da.path().join("kek.key"), dbb.path().join("kek.key")).unwrap();
    let second = shared_secrets::open(&b, &dbb.path().join("kek.key"), dbb.path(), "db").unwrap();
    assert_eq!(first.ca.fingerprint(), second.ca.fingerprint());
}

#[test]
fn refuses_a_newer_database_and_leaves_it_unchanged() {
    let Some(server) = server("refuses_a_newer_database_and_leaves_it_unchanged") else {
        return;
    };
    let server = &server;
    let (db, store) = fresh(server);
    drop(store);
    server
        .execute_in(
            &db,
            &format!("UPDATE drover_schema SET version = {}", SCHEMA_VERSION + 1),
        )
        .unwrap();
    let url = DatabaseUrl::parse(&server.url(&db)).unwrap();
    let err = PgStore::open(&url).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains(&url.redacted()), "{err}");
}

/// Called from async code every way the controller does: through `store::blocking` on
/// either runtime, and directly on a worker (startup) — no runtime nests in another, and
/// the store is dropped on a worker thread without a panic.
#[test]
fn runs_under_both_runtimes() {
    let Some(server) = server("runs_under_both_runtimes") else {
        return;
    };
    let server = &server;
    for multi in [true, false] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        let (_, store) = fresh(server);
        rt.block_on(async move {
            let store: Arc<dyn Store> = Arc::new(store);
            store.create_token(&crate::store::suite::token(1)).unwrap();
            let n = crate::store::blocking(&store, |s| Ok(s.list_tokens()?.len()))
                .await
                .unwrap();
            assert_eq!(n, 1);
            drop(store);
        });
    }
}

/// A CA (PEM) and a server certificate for 127.0.0.1 signed by it (PEM cert, key).
fn server_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// `verify-full` with the server's CA connects; with another CA it is refused; `require`
/// encrypts without checking.
#[test]
fn tls_modes() {
    if super::test_server::bin_dir().is_none() {
        // Without PostgreSQL: `start_or_skip` says why (and fails under CI).
        let _ = server("tls_modes");
        return;
    }
    let (ca, cert, key) = server_pki();
    let (other_ca, _, _) = server_pki();
    let server = TestServer::start(Some((&cert, &key))).unwrap();
    let db = server.create_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, other_file) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&other_file, other_ca).unwrap();
    let base = format!("postgres://postgres@127.0.0.1:{}/{db}", server.port());
    let open =
        |query: &str| PgStore::open(&DatabaseUrl::parse(&format!("{base}?{query}")).unwrap());
    let s = open(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ))
    .unwrap();
    drop(s);
    let err = open(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other_file.display()
    ))
    .unwrap_err();
    assert!(matches!(err, StoreError::Postgres(_)), "{err}");
    drop(open("sslmode=require").unwrap());
    // The server sees TLS on the store's connections.
    let s = open("sslmode=require").unwrap();
    let on = s
        .with(|c| {
            Ok(c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )?
            .try_get::<_, bool>(0)?)
        })
        .unwrap();
    assert!(on);
}

/// Holds `CONTROLLER_LOCK` exclusively (as a controller of the earlier build does):
/// whether it got it.
fn take_exclusive(c: &mut Client) -> bool {
    c.query_one("SELECT pg_try_advisory_lock($1)", &[&CONTROLLER_LOCK])
        .unwrap()
        .get(0)
}

/// Ends every other session on `db` (a database restart, as the replicas see it), and waits
/// until those backends are gone: `pg_terminate_backend` only signals a backend, which
/// releases its advisory locks when it exits a moment later.
fn end_sessions(c: &mut Client) {
    let ended: Vec<i32> = c
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
             AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.execute(
        "SELECT pg_terminate_backend(p) FROM unnest($1::int4[]) AS p",
        &[&ended],
    )
    .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&ended],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{left} ended sessions still open"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_controller_lock_is_taken_again_after_a_lost_connection() {
    use crate::replicas::lease::LeaseStore;
    use std::time::Duration;
    let Some(server) = server("the_controller_lock_is_taken_again_after_a_lost_connection") else {
        return;
    };
    let (db, store) = fresh(&server);
    let url = DatabaseUrl::parse(&server.url(&db)).unwrap();
    let ttl = Duration::from_secs(30);
    let mut other = raw(&url);
    end_sessions(&mut other);
    // The session holding the lock is gone: the next lease round trip takes it again,
    // so an earlier build still cannot start beside the replica.
    let tick = store.lease_tick("a", None, ttl).unwrap();
    assert_eq!(tick.schema, SCHEMA_VERSION);
    assert!(!take_exclusive(&mut other), "the lock was not taken again");
    store.lease_tick("a", tick.epoch, ttl).unwrap();
    // An earlier build that took the lock while it was lost: the replica is refused,
    // clearly, at every round trip until it is released.
    end_sessions(&mut other);
    assert!(take_exclusive(&mut other));
    let err = store.lease_tick("a", tick.epoch, ttl);
    assert!(matches!(err, Err(StoreError::InUse(_))), "{err:?}");
    other
        .execute("SELECT pg_advisory_unlock($1)", &[&CONTROLLER_LOCK])
        .unwrap();
    store.lease_tick("a", tick.epoch, ttl).unwrap();
    assert!(!take_exclusive(&mut other));
}
