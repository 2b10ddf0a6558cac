//! Two `drover serve` replicas on one PostgreSQL database forming one controller, with
//! real agents (one per replica, a single `--controller` each).
//!
//! Checks, in order: both replicas share the CA (each data dir has `ca.crt` and an admin
//! certificate, no CA key) and a third replica with another key file is refused; a
//! generation applied through the leader reaches the agent connected to the other replica;
//! `kill -9` of the leader: the other replica leads within 15 s and its reconciler pushes a
//! generation applied through it; a replica cut from PostgreSQL (a TCP proxy between it and
//! the database, closed by the test) drops its agent sessions and refuses writes, while the
//! restarted replica leads. Host-health reasons judged by the replica holding an agent's
//! session show through the other one too.

use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::FakeGitLab;
use drover_tests::flaky_proxy::FlakyProxy;
use drover_tests::fleet_support::{self, apply, init_crypto, registration_spec, wait_until};
use drover_tests::harness::{Agent, Controller, serve_refused, stderr};
use drover_tests::postgres::TestServer;

/// What a replica logs when it takes the lease.
const LEADS: &str = "this replica leads";

fn replica(url: &str, kek: &std::path::Path) -> Controller {
    replica_with(url, kek, &[])
}

fn replica_with(url: &str, kek: &std::path::Path, extra: &[&str]) -> Controller {
    let mut args = vec![
        "--heartbeat-interval",
        "1s",
        "--lease-grace",
        "10s",
        "--database",
        url,
        "--secrets-key-file",
        kek.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    Controller::start_with(&args)
}

/// A throwaway PostgreSQL server with one database, and where the replicas' key file goes
/// (`None`, after saying why, when no server can start here).
struct Database {
    pg: TestServer,
    db: String,
    url: String,
    kek: std::path::PathBuf,
    _keys: tempfile::TempDir,
}

impl Database {
    fn create(test: &str) -> Option<Database> {
        init_crypto();
        let pg = TestServer::start_or_skip(test)?;
        let db = pg.create_database().unwrap();
        let url = pg.url(&db);
        let keys = tempfile::tempdir().unwrap();
        Some(Database {
            kek: keys.path().join("kek.key"),
            pg,
            db,
            url,
            _keys: keys,
        })
    }
}

fn applied(c: &Controller, id: &str) -> u64 {
    c.agent(id)
        .and_then(|a| a["applied_generation"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_form_one_controller() {
    init_crypto();
    let Some(pg) = TestServer::start_or_skip("two_replicas_form_one_controller") else {
        return;
    };
    // No job runs here, but an agent acks a generation only after its pre-flight check:
    // the engine answers and the image (pull_policy never) is on the box.
    let Some(image) = fleet_support::docker_image().await else {
        return;
    };
    let db = pg.create_database().unwrap();
    let url = pg.url(&db);
    // Replica B reaches PostgreSQL through a proxy the test can close.
    let proxy = FlakyProxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap())
        .await
        .unwrap();
    let url_b = url.replace(
        &format!(":{}/", pg.port()),
        &format!(":{}/", proxy.addr().port()),
    );
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("GR1348941-replicas");
    let keys = tempfile::tempdir().unwrap();
    let kek = keys.path().join("kek.key");

    let mut a = replica(&url, &kek);
    let b = replica(&url_b, &kek);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777,
        0o600,
        "the first replica creates the key file 0600"
    );
    assert_eq!(a.read("ca.crt"), b.read("ca.crt"), "one CA");
    for c in [&a, &b] {
        assert!(
            !c.data_dir().join("ca.key").exists(),
            "no CA key in a data dir"
        );
        assert!(c.data_dir().join("admin.crt").exists());
    }

    // A replica with another key file is refused, naming it.
    let other = tempfile::tempdir().unwrap();
    let wrong = other.path().join("other.key");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    let out = serve_refused(
        &other.path().join("data"),
        &[
            "--database",
            &url,
            "--secrets-key-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("does not open the secrets") && err.contains("other.key"),
        "{err}"
    );

    // One agent per replica; the token made through A enrolls at B too (one CA).
    let token = a.create_token(&["--label", "site=replicas", "--uses", "2"]);
    let mut agent_a = Agent::new();
    let id_a = agent_a.enroll_ok(&a.url(), &token);
    let mut agent_b = Agent::new();
    let id_b = agent_b.enroll_ok(&b.url(), &token);
    agent_a.run();
    agent_b.run();
    let logs = |a: &Controller, b: &Controller| {
        format!(
            "----- A -----\n{}\n----- B -----\n{}",
            a.proc.log_text(),
            b.proc.log_text()
        )
    };
    // Either replica lists both agents connected: `drover --data-dir B agents` works.
    for c in [&a, &b] {
        fleet_support::agents_connected(c, &[&id_a, &id_b], || logs(&a, &b)).await;
    }
    let a_leads = wait_until(
        Duration::from_secs(20),
        "a leader",
        || {
            let (la, lb) = (a.proc.log_text(), b.proc.log_text());
            (la.contains(LEADS) || lb.contains(LEADS)).then(|| la.contains(LEADS))
        },
        || logs(&a, &b),
    )
    .await;
    assert!(
        a_leads,
        "the first replica takes the lease\n{}",
        logs(&a, &b)
    );

    // Applied through the leader A: reaches the agent connected to B.
    let specs = tempfile::tempdir().unwrap();
    let spec = |n: u32| {
        registration_spec(
            &format!("r{n}"),
            gitlab.url(),
            "GR1348941-replicas",
            "replicas",
            &image,
        )
    };
    apply(&a, specs.path(), &spec(1));
    wait_until(
        Duration::from_secs(40),
        "generation 1 on the agent of replica B",
        || (applied(&b, &id_b) == 1 && applied(&a, &id_a) == 1).then_some(()),
        || logs(&a, &b),
    )
    .await;

    // kill -9 of the leader: B leads within 15 s, and its reconciler pushes a generation
    // applied through it.
    a.stop();
    let killed = Instant::now();
    eprintln!("killed the leader");
    wait_until(
        Duration::from_secs(20),
        "replica B leads",
        || b.proc.log_text().contains(LEADS).then_some(()),
        || b.proc.log_text(),
    )
    .await;
    let took = killed.elapsed();
    eprintln!("replica B leads {took:?} after the kill");
    assert!(took < Duration::from_secs(15), "took over after {took:?}");
    apply(&b, specs.path(), &spec(2));
    wait_until(
        Duration::from_secs(30),
        "generation 2 on the agent of replica B",
        || (applied(&b, &id_b) == 2).then_some(()),
        || b.proc.log_text(),
    )
    .await;

    // A comes back (B leads, so A follows); then B is cut from PostgreSQL.
    a.restart();
    wait_until(
        Duration::from_secs(20),
        "replica A back",
        || {
            a.proc
                .log_text()
                .contains("waiting for the leader lease")
                .then_some(())
        },
        || a.proc.log_text(),
    )
    .await;
    proxy.refuse(true);
    proxy.reset_all();
    let cut = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "replica B drops its agent sessions",
        || {
            b.proc
                .log_text()
                .contains("closed every agent session here")
                .then_some(())
        },
        || b.proc.log_text(),
    )
    .await;
    let out = b.drover(&["token", "create"]);
    assert!(!out.status.success(), "a cut replica refuses writes");
    assert!(stderr(&out).contains("not serving"), "{}", stderr(&out));
    // No split brain: B stopped leading before A took the lease, which A does.
    let b_log = b.proc.log_text();
    let b_lead_end = b_log
        .find("this replica follows")
        .or(b_log.find("this replica stops serving"));
    assert!(b_lead_end.is_some(), "B steps down\n{b_log}");
    wait_until(
        Duration::from_secs(30),
        "replica A leads",
        || {
            let log = a.proc.log_text();
            log.contains(LEADS).then_some(())
        },
        || a.proc.log_text(),
    )
    .await;
    assert!(cut.elapsed() < Duration::from_secs(60));
    // The agent of B is not connected anywhere: A sees it lose its lease.
    wait_until(
        Duration::from_secs(40),
        "the agent of B is no longer connected",
        || {
            a.agent(&id_b)
                .is_some_and(|x| x["connected"] == false)
                .then_some(())
        },
        || logs(&a, &b),
    )
    .await;
    // The agent's reconnections to B are refused while B has no database.
    let agent_log = agent_b.proc().log.clone();
    let read = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    wait_until(
        Duration::from_secs(30),
        "the agent of B told to use another replica",
        || read().contains("not serving").then_some(()),
        read,
    )
    .await;
}

/// Host-health reasons are judged by the replica holding an agent's session and stored
/// for the others: replica B judges disks stricter (`--min-disk-free-percent 100`: every
/// disk is low there), so its agent is degraded for the disk through A too, with B's
/// reason; A's own agent stays healthy through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_reasons_show_through_every_replica() {
    let Some(d) = Database::create("degraded_reasons_show_through_every_replica") else {
        return;
    };
    let a = replica(&d.url, &d.kek);
    let b = replica_with(&d.url, &d.kek, &["--min-disk-free-percent", "100"]);
    let token = a.create_token(&["--uses", "2"]);
    let mut agent_a = Agent::new();
    let id_a = agent_a.enroll_ok(&a.url(), &token);
    let mut agent_b = Agent::new();
    let id_b = agent_b.enroll_ok(&b.url(), &token);
    agent_a.run();
    agent_b.run();
    let logs = || {
        format!(
            "----- A -----\n{}\n----- B -----\n{}",
            a.proc.log_text(),
            b.proc.log_text()
        )
    };
    let disk_low = |c: &Controller, id: &str| {
        c.agent(id).filter(|x| {
            x["state"] == "degraded"
                && x["reasons"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|r| r.as_str().is_some_and(|r| r.starts_with("disk low")))
                })
        })
    };
    let through_b = wait_until(
        Duration::from_secs(40),
        "B's agent degraded through B",
        || disk_low(&b, &id_b),
        logs,
    )
    .await;
    let through_a = wait_until(
        Duration::from_secs(40),
        "B's agent degraded through A",
        || disk_low(&a, &id_b),
        logs,
    )
    .await;
    // The same problems (the free space in them may differ by a heartbeat).
    let kinds = |x: &serde_json::Value| -> Vec<String> {
        x["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str()?.split(':').next().map(String::from))
            .collect()
    };
    assert_eq!(kinds(&through_a), kinds(&through_b), "{}", logs());
    for c in [&a, &b] {
        wait_until(
            Duration::from_secs(40),
            "A's agent healthy",
            || c.agent(&id_a).filter(|x| x["state"] == "healthy"),
            logs,
        )
        .await;
    }
}

/// A schema upgrade while a replica of the previous version runs, simulated by moving
/// the database's schema version one past what this build knows (as a newer drover's
/// migration would): the running replica stops leading and serving (its agent sessions
/// closed, writes refused) with a log line naming both versions; a replica started on
/// that database is refused at start, naming both versions, exits non-zero and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_stops_a_running_replica_and_refuses_a_new_one() {
    let Some(Database {
        pg,
        db,
        url,
        kek,
        _keys,
    }) = Database::create("a_newer_schema")
    else {
        return;
    };
    let r = replica(&url, &kek);
    let token = r.create_token(&["--label", "site=schema"]);
    let enrolled = drover_tests::fake_agent::enroll(&r, &token, "schema-1")
        .await
        .unwrap();
    let mut session =
        drover_tests::fake_agent::open_session(&r.grpc_addr, &r.read("ca.crt"), &enrolled, 0)
            .await
            .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the replica leads",
        || r.proc.log_text().contains(LEADS).then_some(()),
        || r.proc.log_text(),
    )
    .await;
    let known = drover_controller::store::postgres::SCHEMA_VERSION;
    let newer = known + 1;
    pg.execute_in(&db, &format!("UPDATE drover_schema SET version = {newer}"))
        .unwrap();

    let says = format!("schema version {newer}, newer than the {known} this replica knows");
    wait_until(
        Duration::from_secs(15),
        "the running replica stops serving",
        || {
            let log = r.proc.log_text();
            (log.contains("this replica stops serving") && log.contains(&says)).then_some(())
        },
        || r.proc.log_text(),
    )
    .await;
    // Its agent session ends (the agent goes to another replica), writes are refused.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = session.1.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the agent session was not closed");
    let out = r.drover(&["token", "create"]);
    assert!(!out.status.success(), "an outdated replica refuses writes");
    assert!(
        stderr(&out).contains("not serving") && stderr(&out).contains(&says),
        "{}",
        stderr(&out)
    );
    assert!(
        drover_tests::fake_agent::open_session(&r.grpc_addr, &r.read("ca.crt"), &enrolled, 0)
            .await
            .is_err(),
        "an outdated replica refuses sessions"
    );

    // A replica of this build started on the upgraded database is refused.
    let other = tempfile::tempdir().unwrap();
    let out = serve_refused(
        &other.path().join("data"),
        &[
            "--database",
            &url,
            "--secrets-key-file",
            kek.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "has schema version {newer}, newer than the {known} this drover knows"
        )),
        "{err}"
    );
    // The refused replica changed nothing: the version is the newer one still.
    pg.execute_in(
        &db,
        &format!(
            "DO $$ BEGIN IF (SELECT version FROM drover_schema) <> {newer} THEN \
             RAISE EXCEPTION 'schema version changed'; END IF; END $$"
        ),
    )
    .unwrap();
}
