//! Issue 17: `drover backup FILE` of a running SQLite controller while it writes, then the
//! documented restore (deploy/README.md "Backups"): the controller is killed, a fresh data
//! dir gets the backup as `drover.db` beside the kept key files (`ca.crt`, `ca.key`,
//! `secrets.key`, `admin.*`), a controller started on it lists the same agents and runners
//! (with their GitLab runner ids: the sealed tokens open with the kept secrets key), and a
//! real agent reconnects to it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use drover_tests::fake_agent;
use drover_tests::fake_gitlab::FakeGitLab;
use drover_tests::fleet_support::{agents_connected, apply, init_crypto, json};
use drover_tests::harness::{Agent, Controller, stderr};

const REGISTRATION_TOKEN: &str = "GR1348941-backup-secret";

/// What must survive a restore: each agent's id and labels; each runner's name,
/// generation and placements (agent, GitLab runner id).
fn fleet(c: &Controller) -> (serde_json::Value, serde_json::Value) {
    let mut agents: Vec<_> = c
        .agents()
        .into_iter()
        .map(|a| serde_json::json!({ "id": a["id"], "labels": a["labels"] }))
        .collect();
    agents.sort_by_key(|a| a["id"].to_string());
    let out = c.drover(&["runner", "list", "-o", "json"]);
    assert!(out.status.success(), "runner list: {}", stderr(&out));
    let runners: Vec<_> = json(&out)
        .as_array()
        .expect("runner list is an array")
        .iter()
        .map(|r| {
            let mut placements: Vec<_> = r["agents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| serde_json::json!([p["agent_id"], p["gitlab_runner_id"]]))
                .collect();
            placements.sort_by_key(|p| p.to_string());
            serde_json::json!({ "name": r["name"], "generation": r["generation"], "agents": placements })
        })
        .collect();
    (serde_json::json!(agents), serde_json::json!(runners))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_restores_the_same_fleet() {
    init_crypto();
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token(REGISTRATION_TOKEN);
    let mut c = Controller::start();
    let token = c.create_token(&["--label", "site=bk", "--uses", "10"]);
    for i in 0..3 {
        fake_agent::enroll(&c, &token, &format!("bk-{i}"))
            .await
            .unwrap();
    }
    let mut agent = Agent::new();
    let id = agent.enroll_ok(&c.url(), &token);
    agent.run();
    agents_connected(&c, &[&id], || {
        agent
            .proc
            .as_ref()
            .map(|p| p.log_text())
            .unwrap_or_default()
    })
    .await;
    let spec_dir = tempfile::tempdir().unwrap();
    let spec: String = (0..2)
        .map(|k| {
            format!(
                "[[runners]]\nname = \"bk-{k}\"\nurl = \"{}\"\n\
                 registration_token = \"{REGISTRATION_TOKEN}\"\nexecutor = \"docker\"\n\
                 [runners.selector]\nsite = \"bk\"\n[runners.docker]\nimage = \"busybox\"\n",
                gitlab.url()
            )
        })
        .collect();
    apply(&c, spec_dir.path(), &spec);
    let before = fleet(&c);
    assert_eq!(before.0.as_array().unwrap().len(), 4, "{:?}", before.0);
    assert_eq!(before.1.as_array().unwrap().len(), 2, "{:?}", before.1);

    // Writes go on during the backup: tokens created one after another.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    let writer = {
        let (stop, written, data) = (stop.clone(), written.clone(), c.data_dir());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(drover_tests::harness::drover_bin())
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["token", "create"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "token create: {}", stderr(&out));
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while written.load(Ordering::Relaxed) < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("drover-backup.db");
    let file_arg = file.to_str().unwrap();
    let out = c.drover(&["backup", file_arg]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    assert!(stderr(&out).contains("secrets.key"), "{}", stderr(&out));
    assert_eq!(mode(&file), 0o600);
    // No overwrite without --force, naming the file; --force replaces it.
    let out = c.drover(&["backup", file_arg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(file_arg) && stderr(&out).contains("--force"));
    let out = c.drover(&["backup", file_arg, "--force"]);
    assert!(out.status.success(), "backup --force: {}", stderr(&out));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // PostgreSQL is refused, pointing to pg_dump.
    let out = c.drover(&["backup", "--database", "postgres://x@127.0.0.1/d", file_arg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pg_dump"), "{}", stderr(&out));

    // Restore: stop (here: kill), a fresh data dir with the key files and the backup as
    // drover.db, start.
    let old = c.data_dir();
    c.stop();
    let fresh = tempfile::tempdir().unwrap();
    let data = fresh.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for f in ["ca.crt", "ca.key", "secrets.key", "admin.crt", "admin.key"] {
        std::fs::copy(old.join(f), data.join(f)).unwrap();
    }
    std::fs::copy(&file, data.join("drover.db")).unwrap();
    let restored = Controller::start_on(fresh, &c.grpc_addr, &["--heartbeat-interval", "1s"]);
    assert_eq!(fleet(&restored), before);
    // The real agent reconnects to the restored controller (same address).
    agents_connected(&restored, &[&id], || {
        agent
            .proc
            .as_ref()
            .map(|p| p.log_text())
            .unwrap_or_default()
    })
    .await;
}
