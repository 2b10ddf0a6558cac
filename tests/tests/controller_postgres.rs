//! `drover serve --database postgres://...`: the real controller on a throwaway PostgreSQL.
//!
//! Checks: an agent enrolls, a runner spec applies, `drover agents -o json` lists the agent;
//! after a restart on the same database (and nothing in the data dir but keys) the agent and
//! the generation are still there; a second controller on the database is refused; a bad
//! URL is refused naming the flag, without its password, before anything is written.

use std::process::Command;

use drover_tests::fake_agent;
use drover_tests::fake_gitlab::FakeGitLab;
use drover_tests::fleet_support::{apply, init_crypto, json, registration_spec};
use drover_tests::harness::{Controller, drover_bin, stderr};
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

    // A second controller on the same database is refused (several replicas: not yet).
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(drover_bin())
        .arg("--data-dir")
        .arg(other.path().join("data"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--database", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by another drover controller"),
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
        let out = Command::new(drover_bin())
            .arg("--data-dir")
            .arg(&data)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
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
