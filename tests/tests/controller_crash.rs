//! Issue 20: the real `drover serve` killed with SIGKILL at seeded random points during
//! enrollment, `drover runner apply` and a rolling rollout, and started again on the same
//! data dir after each kill. After every kill, before the restart:
//! - `PRAGMA integrity_check` on `drover.db` (opened read-only) says `ok`;
//! - generations are numbered 1..=N without gaps, each whole: its sealed runner list opens
//!   and holds all the runners of one apply (three, named after that apply), its strategy
//!   and rollout state decode; every assignment's sealed token opens and names a stored
//!   agent; every agent rollout targets a stored generation;
//! - each token use is spent with its agent stored, or not spent (`uses_left` plus the
//!   agents enrolled with the token is the number of uses it was created with), and every
//!   agent the controller answered is stored.
//!
//! After each restart the CLI answers (`agents`, `rollout status`); after the rollout
//! phase's restarts the rollout of the newest generation completes.
//!
//! CI runs [`CI_KILLS`] kills per phase; `DROVER_CRASH_KILLS=20` runs 20 each (the figure
//! in RELIABILITY.md). `DROVER_CRASH_SEED` picks the seed (printed).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_controller::datadir::DataDir;
use drover_controller::fleet::service::{RUNNER_TOKEN, SPECS};
use drover_controller::secrets::Sealer;
use drover_controller::store::sqlite::SqliteStore;
use drover_controller::store::{AgentStore, RolloutState, RolloutStore, RunnerStore};
use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;
use drover_proto::v1::controller_message::Kind as ControllerKind;
use drover_tests::fake_agent::{self, Enrolled};
use drover_tests::fake_gitlab::FakeGitLab;
use drover_tests::fleet_support::{init_crypto, json, rollout_complete};
use drover_tests::harness::{Controller, drover_bin, stderr};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// Kills per phase in CI.
const CI_KILLS: u32 = 5;
/// Uses every enrollment token of this test is created with.
const USES: u32 = 1000;
/// Runners per applied spec.
const RUNNERS: usize = 3;
const REGISTRATION_TOKEN: &str = "GR1348941-crash-secret";

fn kills() -> u32 {
    std::env::var("DROVER_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_KILLS)
}

/// SIGKILL to `pid` (the controller), without borrowing the harness.
fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// What a check of the stored state found.
struct Stored {
    agents: BTreeSet<String>,
    generations: u64,
    /// The newest generation's rollout was still progressing.
    progressing: bool,
}

/// The checks of the module doc on the data dir of a dead controller.
fn check_store(data: &Path, phase: &str, kill: u32) -> Stored {
    let at = format!("{phase}, kill {kill}");
    let dir = DataDir::new(data);
    let conn =
        rusqlite::Connection::open_with_flags(dir.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{at}: open drover.db read-only: {e}"));
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "{at}: integrity_check");
    // Token uses: spent with the agent stored, or not spent.
    let mut q = conn
        .prepare(
            "SELECT t.id, t.uses_left, (SELECT count(*) FROM agents a WHERE a.token_id = t.id) \
             FROM tokens t",
        )
        .unwrap();
    let uses: Vec<(String, u32, u32)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, left, agents) in uses {
        assert_eq!(
            left + agents,
            USES,
            "{at}: token {id}: uses left {left}, agents {agents}"
        );
    }
    drop(q);
    drop(conn);

    // The store's own read path decodes every row.
    let store = SqliteStore::open(&dir.db()).unwrap_or_else(|e| panic!("{at}: open store: {e}"));
    let sealer = Sealer::load_or_create(&dir.secrets_key()).unwrap();
    let agents: BTreeSet<String> = store
        .list_agents()
        .unwrap_or_else(|e| panic!("{at}: agents: {e}"))
        .into_iter()
        .map(|a| a.id)
        .collect();
    let latest = store
        .latest_generation()
        .unwrap_or_else(|e| panic!("{at}: latest generation: {e}"))
        .map_or(0, |g| g.generation);
    let mut applies = BTreeSet::new();
    let mut progressing = false;
    for n in 1..=latest {
        let g = store
            .get_generation(n)
            .unwrap_or_else(|e| panic!("{at}: generation {n}: {e}"))
            .unwrap_or_else(|| panic!("{at}: generation {n} missing (newest is {latest})"));
        let plain = sealer
            .open(SPECS, &g.runners_sealed)
            .unwrap_or_else(|e| panic!("{at}: generation {n} does not unseal: {e}"));
        let runners: Vec<serde_json::Value> = serde_json::from_slice(&plain)
            .unwrap_or_else(|e| panic!("{at}: generation {n} runners: {e}"));
        let names: BTreeSet<String> = runners
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_string())
            .collect();
        // Every runner of one apply: `apply-J-0` .. `apply-J-2`.
        let apply = names
            .first()
            .and_then(|n| n.strip_prefix("apply-"))
            .and_then(|n| n.split('-').next())
            .unwrap_or_else(|| panic!("{at}: generation {n} runners {names:?}"))
            .to_string();
        let whole: BTreeSet<String> = (0..RUNNERS).map(|k| format!("apply-{apply}-{k}")).collect();
        assert_eq!(names, whole, "{at}: generation {n} is half stored");
        assert!(
            applies.insert(apply),
            "{at}: generation {n} repeats an apply"
        );
        progressing = g.state == RolloutState::Progressing;
    }
    for a in store.all_assignments().unwrap() {
        sealer
            .open(RUNNER_TOKEN, &a.token_sealed)
            .unwrap_or_else(|e| {
                panic!(
                    "{at}: token of {}/{} does not unseal: {e}",
                    a.agent_id, a.runner
                )
            });
        assert!(
            agents.contains(&a.agent_id),
            "{at}: assignment of unknown agent {}",
            a.agent_id
        );
    }
    for r in store.agent_rollouts().unwrap() {
        assert!(
            r.target_generation <= latest && r.ack_generation <= latest,
            "{at}: rollout of {} targets {} (ack {}), newest generation is {latest}",
            r.agent_id,
            r.target_generation,
            r.ack_generation
        );
    }
    Stored {
        agents,
        generations: latest,
        progressing,
    }
}

/// Restarts the controller and checks the CLI answers and agrees with the store.
fn restart_and_check_cli(c: &mut Controller, stored: &Stored) {
    c.restart();
    let agents = json(&c.drover(&["agents", "-o", "json"]));
    assert_eq!(
        agents.as_array().map_or(0, |a| a.len()),
        stored.agents.len(),
        "drover agents after restart"
    );
    let out = c.drover(&["rollout", "status", "-o", "json"]);
    if stored.generations > 0 {
        let s = json(&out);
        assert_eq!(s["generation"], stored.generations, "{s}");
    }
}

/// A spec of [`RUNNERS`] runners named after apply `j`, on the agents labelled
/// `site=crash`.
fn spec(gitlab: &str, j: u32) -> String {
    (0..RUNNERS)
        .map(|k| {
            format!(
                "[[runners]]\nname = \"apply-{j}-{k}\"\nurl = \"{gitlab}\"\n\
                 registration_token = \"{REGISTRATION_TOKEN}\"\nexecutor = \"docker\"\n\
                 [runners.selector]\nsite = \"crash\"\n\
                 [runners.docker]\nimage = \"busybox\"\n"
            )
        })
        .collect()
}

/// `drover runner apply` of apply `j` as a child process (it may be cut by the kill).
fn spawn_apply(
    c: &Controller,
    dir: &Path,
    gitlab: &str,
    j: u32,
    strategy: &[&str],
) -> std::process::Child {
    let file = dir.join(format!("apply-{j}.toml"));
    std::fs::write(&file, spec(gitlab, j)).unwrap();
    Command::new(drover_bin())
        .arg("--data-dir")
        .arg(c.data_dir())
        .args(["runner", "apply", "-f"])
        .arg(&file)
        .args(strategy)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// An agent that keeps a session open (reconnecting after a controller restart), sends
/// heartbeats, and acknowledges every desired state after `delay`.
async fn acking_agent(
    addr: String,
    ca: String,
    e: Enrolled,
    delay: Duration,
    stop: CancellationToken,
) {
    let mut applied = 0;
    while !stop.is_cancelled() {
        let Ok((tx, mut inbound)) = fake_agent::open_session(&addr, &ca, &e, applied).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut beat = tokio::time::interval(Duration::from_millis(300));
        loop {
            let kind = tokio::select! {
                _ = stop.cancelled() => return,
                _ = beat.tick() => Some(AgentKind::Heartbeat(v1::Heartbeat {
                    applied_generation: applied,
                    ..Default::default()
                })),
                m = inbound.message() => match m {
                    Ok(Some(v1::ControllerMessage { kind: Some(ControllerKind::DesiredState(ds)) })) => {
                        tokio::time::sleep(delay).await;
                        applied = ds.generation;
                        Some(AgentKind::Ack(v1::Ack { generation: ds.generation, applied: true, error: String::new() }))
                    }
                    Ok(Some(_)) => None,
                    _ => break,
                },
            };
            if let Some(kind) = kind
                && tx
                    .send(v1::AgentMessage { kind: Some(kind) })
                    .await
                    .is_err()
            {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_during_enrollment_apply_and_rollout_keeps_a_whole_store() {
    init_crypto();
    let seed: u64 = std::env::var("DROVER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let kills = kills();
    eprintln!("controller_crash: seed {seed}, {kills} kills per phase");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token(REGISTRATION_TOKEN);
    let mut c = Controller::start();

    // Phase 1: enrollment. One enrollment after another until the kill.
    let token = c.create_token(&["--label", "site=enroll", "--uses", &USES.to_string()]);
    let mut answered: BTreeSet<String> = BTreeSet::new();
    eprintln!(
        "controller_crash: controller started in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let phase = Instant::now();
    for kill in 0..kills {
        let pid = c.proc.id();
        let delay = Duration::from_millis(rng.random_range(20..400));
        let c_ref = &c;
        let enrolling = async {
            let mut got = Vec::new();
            for i in 0.. {
                match fake_agent::enroll(c_ref, &token, &format!("box-{kill}-{i}")).await {
                    Ok(e) => got.push(e.id),
                    Err(_) => break,
                }
            }
            got
        };
        let killing = async {
            tokio::time::sleep(delay).await;
            sigkill(pid);
        };
        let (got, ()) = tokio::join!(enrolling, killing);
        answered.extend(got);
        c.stop();
        let stored = check_store(&c.data_dir(), "enrollment", kill);
        let lost: Vec<&String> = answered.difference(&stored.agents).collect();
        assert!(
            lost.is_empty(),
            "enrollment, kill {kill}: answered but not stored: {lost:?}"
        );
        restart_and_check_cli(&mut c, &stored);
    }
    eprintln!(
        "controller_crash: enrollment: {kills} kills, {} agents answered, {:.1}s",
        answered.len(),
        phase.elapsed().as_secs_f64()
    );

    // Phase 2: `runner apply` (registrations at GitLab for three agents) cut by the kill.
    let crash_token = c.create_token(&["--label", "site=crash", "--uses", &USES.to_string()]);
    let mut crash_agents = Vec::new();
    for i in 0..3 {
        crash_agents.push(
            fake_agent::enroll(&c, &crash_token, &format!("crash-{i}"))
                .await
                .unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let phase = Instant::now();
    let mut j = 0;
    let mut cut = 0;
    for kill in 0..kills {
        j += 1;
        let mut apply = spawn_apply(&c, dir.path(), gitlab.url(), j, &["--strategy", "all"]);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        c.stop();
        if !apply.wait().is_ok_and(|s| s.success()) {
            cut += 1;
        }
        let stored = check_store(&c.data_dir(), "apply", kill);
        restart_and_check_cli(&mut c, &stored);
    }
    eprintln!(
        "controller_crash: apply: {kills} kills, {cut} of them before the CLI's answer, {:.1}s",
        phase.elapsed().as_secs_f64()
    );

    // Phase 3: a rolling rollout (one agent at a time, each acking after 150 ms) cut by
    // the kill; after each restart it resumes and completes.
    let stop = CancellationToken::new();
    let ca = c.read("ca.crt");
    let tasks: Vec<_> = crash_agents
        .into_iter()
        .map(|e| {
            tokio::spawn(acking_agent(
                c.grpc_addr.clone(),
                ca.clone(),
                e,
                Duration::from_millis(150),
                stop.clone(),
            ))
        })
        .collect();
    let phase = Instant::now();
    let mut mid_rollout = 0;
    for kill in 0..kills {
        j += 1;
        let out = c.drover(&[
            "runner",
            "apply",
            "-f",
            &{
                let f = dir.path().join(format!("apply-{j}.toml"));
                std::fs::write(&f, spec(gitlab.url(), j)).unwrap();
                f.to_string_lossy().into_owned()
            },
            "--strategy",
            "rolling",
            "--max-unavailable",
            "1",
        ]);
        assert!(out.status.success(), "rollout apply {j}: {}", stderr(&out));
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..900))).await;
        c.stop();
        let stored = check_store(&c.data_dir(), "rollout", kill);
        mid_rollout += u32::from(stored.progressing);
        restart_and_check_cli(&mut c, &stored);
        let log = c.proc.log.clone();
        rollout_complete(&c, stored.generations, move || {
            std::fs::read_to_string(&log).unwrap_or_default()
        })
        .await;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    eprintln!(
        "controller_crash: rollout: {kills} kills, {mid_rollout} of them mid-rollout, {:.1}s; total {:.1}s",
        phase.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
