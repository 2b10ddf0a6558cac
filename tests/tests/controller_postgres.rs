//! `drover serve --database postgres://...`: the real controller on a throwaway PostgreSQL.
//!
//! Checks: an agent enrolls, a runner spec applies, `drover agents -o json` lists the agent;
//! after a restart on the same database (and nothing in the data dir but keys) the agent and
//! the generation are still there; a second controller on the database without the shared
//! key file is refused; a bad
//! URL is refused naming the flag, without its password, before anything is written.

use std::process::Command;

use drover_tests::fake_agent;
use drover_tests::fake_gitlab::FakeGitLab;
use drover_tests::fleet_support::{apply, init_crypto, json, registration_spec};
use drover_tests::harness::{Controller, serve_command, serve_refused, stderr};
use drover_tests::postgres::TestServer;

#[tokio::test(flavor = "multi_thread")]
async fn serve_on_postgres_keeps_its_state_across_a_restart() {
    init_crypto();
    let Some(pg) = TestServer::start_or_skip("serve_on_postgres") else {
        return;
    };
    let db = pg.create_database().unwrap();
    let url = pg.url(&db);
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("GR1348941-pg");
    let mut c = Controller::start_with(&["--heartbeat-interval", "1s", "--database", &url]);
    let token = c.create_token(&["--label", "site=lab"]);
    let enrolled = fake_agent::enroll(&c, &token, "box-pg").await.unwrap();
    let _session = fake_agent::open_session(&c.grpc_addr, &c.read("ca.crt"), &enrolled, 0)
        .await
        .unwrap();
    let specs = tempfile::tempdir().unwrap();
    apply(
        &c,
        specs.path(),
        &registration_spec("lab", gitlab.url(), "GR1348941-pg", "lab", "busybox"),
    );

    let listed = |c: &Controller| {
        let agents = json(&c.drover(&["agents", "-o", "json"]));
        let ids: Vec<String> = agents
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        ids
    };
    assert_eq!(listed(&c), [enrolled.id.as_str()]);
    assert_eq!(
        json(&c.drover(&["rollout", "status", "-o", "json"]))["generation"],
        1
    );
    assert!(
        !c.data_dir().join("drover.db").exists(),
        "the store is not in the data dir"
    );

    // A second controller on the same database without the first one's key file (here:
    // the default, DATA_DIR/kek.key, of another data dir) is refused, naming the file;
    // with a copy it is a replica (`controller_replicas.rs`).
    let other = tempfile::tempdir().unwrap();
    let out = serve_refused(&other.path().join("data"), &["--database", &url]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("kek.key does not exist")
            && stderr(&out).contains("already holds secrets sealed by another replica"),
        "{}",
        stderr(&out)
    );

    c.restart();
    assert_eq!(listed(&c), [enrolled.id.as_str()]);
    assert_eq!(
        json(&c.drover(&["rollout", "status", "-o", "json"]))["generation"],
        1
    );
}

#[test]
fn a_bad_database_url_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (url, says) in [
        (
            "postgres://drover:hunter2@db:notaport/drover",
            "--database postgres://drover:***@db:notaport/drover",
        ),
        ("mysql://drover@db/drover", "expected postgres://"),
        (
            "postgres://drover@db/drover?sslmode=verify-full",
            "needs sslrootcert",
        ),
    ] {
        let out = serve_command(&data, "127.0.0.1:0")
            .env("DROVER_DATABASE_URL", url)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}");
        let err = stderr(&out);
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!data.exists(), "{url}: the data dir was created");
    }
}

/// `drover events -o json` as a list.
fn events(c: &Controller) -> Vec<serde_json::Value> {
    json(&c.drover(&["events", "-o", "json", "--limit", "1000"]))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The first `DesiredState` on `session` with generation `generation` or later: each
/// runner's (name, runner token, GitLab runner id).
async fn desired(session: &mut fake_agent::Session, generation: u64) -> Vec<(String, String, i64)> {
    use drover_proto::v1::controller_message::Kind;
    let wait = async {
        loop {
            match session.1.message().await {
                Ok(Some(drover_proto::v1::ControllerMessage {
                    kind: Some(Kind::DesiredState(d)),
                })) if d.generation >= generation => break d,
                Ok(Some(_)) => {}
                other => panic!("session ended before a desired state: {other:?}"),
            }
        }
    };
    let d = tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .expect("a desired state within 30 s");
    d.runners
        .into_iter()
        .map(|r| (r.name, r.runner_token, r.gitlab_runner_id))
        .collect()
}

/// deploy/README.md "Backups", PostgreSQL: `pg_dump -Fc` of the database of two live
/// replicas (an agent session open, heart-beating), `pg_restore --no-owner` into a fresh
/// database, and a controller started on it with the same key file and a fresh data dir
/// serves the same agents (its certificate is accepted), runners (the sealed runner token
/// it pushes opens to the same text), tokens and events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_of_live_replicas_restores_the_same_controller() {
    init_crypto();
    let Some(pg) = TestServer::start_or_skip("a_pg_dump_of_live_replicas") else {
        return;
    };
    let bin = drover_tests::postgres::bin_dir().expect("PostgreSQL binaries");
    let db = pg.create_database().unwrap();
    let url = pg.url(&db);
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("GR1348941-dump");
    let keys = tempfile::tempdir().unwrap();
    let kek = keys.path().join("kek.key");
    let kek_arg = kek.to_str().unwrap();
    let flags = [
        "--heartbeat-interval",
        "10s",
        "--database",
        &url,
        "--secrets-key-file",
        kek_arg,
    ];
    let mut a = Controller::start_with(&flags);
    let mut b = Controller::start_with(&flags);
    let token = a.create_token(&["--label", "site=dump", "--uses", "5"]);
    a.create_token(&["--label", "site=other"]);
    let e1 = fake_agent::enroll(&a, &token, "dump-1").await.unwrap();
    let e2 = fake_agent::enroll(&b, &token, "dump-2").await.unwrap();
    let mut s1 = fake_agent::open_session(&b.grpc_addr, &b.read("ca.crt"), &e1, 0)
        .await
        .unwrap();
    let specs = tempfile::tempdir().unwrap();
    apply(
        &a,
        specs.path(),
        &registration_spec("dump", gitlab.url(), "GR1348941-dump", "dump", "busybox"),
    );
    let pushed = desired(&mut s1, 1).await;
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert!(pushed[0].1.starts_with("glrt-"), "{pushed:?}");

    let listed = |c: &Controller| {
        let runners = json(&c.drover(&["runner", "list", "-o", "json"]));
        let mut agents: Vec<_> = c
            .agents()
            .into_iter()
            .map(|x| serde_json::json!([x["id"], x["labels"], x["applied_generation"]]))
            .collect();
        agents.sort_by_key(|x| x.to_string());
        let tokens = json(&c.drover(&["token", "list", "-o", "json"]));
        (agents, runners, tokens)
    };
    let before = listed(&a);
    assert_eq!(before.0.len(), 2, "{:?}", before.0);
    assert_eq!(listed(&b), before, "one controller through either replica");
    let events_before = events(&a);
    assert!(!events_before.is_empty());

    // The dump, while both replicas run and the agent's session heart-beats.
    let dumps = tempfile::tempdir().unwrap();
    let dump = dumps.path().join("drover.dump");
    let out = Command::new(bin.join("pg_dump"))
        .args(["-Fc", "-d", &url, "-f"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump: {}", stderr(&out));
    drop(s1);
    a.stop();
    b.stop();

    let restored_db = pg.create_database().unwrap();
    let restored_url = pg.url(&restored_db);
    let out = Command::new(bin.join("pg_restore"))
        .args(["--no-owner", "-d", &restored_url])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", stderr(&out));
    let c = Controller::start_with(&[
        "--heartbeat-interval",
        "10s",
        "--database",
        &restored_url,
        "--secrets-key-file",
        kek_arg,
    ]);
    assert_eq!(listed(&c), before);
    let after = events(&c);
    for e in &events_before {
        assert!(after.contains(e), "event {e} lost in the restore");
    }
    // The agents' certificates (from the shared CA in the database) are accepted, and the
    // runner token pushed opens to the same text.
    let mut s1 = fake_agent::open_session(&c.grpc_addr, &c.read("ca.crt"), &e1, 0)
        .await
        .unwrap();
    assert_eq!(desired(&mut s1, 1).await, pushed);
    fake_agent::open_session(&c.grpc_addr, &c.read("ca.crt"), &e2, 0)
        .await
        .unwrap();
    // A new enrollment with the token made before the dump (uses left) works.
    fake_agent::enroll(&c, &token, "dump-3").await.unwrap();
}
