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

#[test]
fn reopens_with_its_rows_and_refuses_a_second_controller() {
    let Some(server) = server("reopens_with_its_rows_and_refuses_a_second_controller") else {
        return;
    };
    let server = &server;
    let (db, store) = fresh(server);
    let url = DatabaseUrl::parse(&server.url(&db)).unwrap();
    let t = crate::store::suite::token(1);
    store.create_token(&t).unwrap();
    let err = PgStore::open(&url).unwrap_err();
    assert!(matches!(err, StoreError::InUse(_)), "{err}");
    assert!(
        err.to_string()
            .contains("in use by another drover controller"),
        "{err}"
    );
    drop(store);
    assert_eq!(PgStore::open(&url).unwrap().list_tokens().unwrap(), vec![t]);
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
