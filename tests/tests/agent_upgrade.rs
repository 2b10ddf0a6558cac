//! End-to-end: `drover agent upgrade` with the real binaries on loopback. Version B is a
//! copy of the built agent with its version stamp rewritten in place (no second build).
//! The agent downloads B over its mTLS channel, checks the SHA-256 and the controller's
//! signature, drains, selects B and restarts on it (the launcher runs B as its child);
//! B confirms once its session is up. A B that exits at start is rolled back to A by the
//! launcher and the upgrade halts; a binary that does not verify against the key the
//! agent pinned is refused, halts the upgrade, and the agent keeps running.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, JobState};
use drover_tests::fleet_support::{self, wait_until};
use drover_tests::harness::{Agent, Controller, agent_bin, stderr, stdout, wait_for};

/// A copy of the built agent reporting `version`, in `dir` (without its debug info: a
/// quarter of the size to send).
fn restamped_agent(dir: &Path, version: &str) -> PathBuf {
    let src = dir.join("drover-agent-stripped");
    let out = std::process::Command::new("strip")
        .arg("-o")
        .arg(&src)
        .arg(agent_bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "strip: {}", stderr(&out));
    let mut bytes = std::fs::read(&src).unwrap();
    drover_runtime::binary_file::restamp(&src, &mut bytes, version).unwrap();
    let out = dir.join(format!("drover-agent-{version}"));
    std::fs::write(&out, &bytes).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

/// A copy of the ELF `src` padded with `pad` bytes and a stamp of `version` appended (an
/// ELF loader ignores trailing bytes): a small binary of this machine's architecture that
/// the controller takes for an agent of `version` (`/bin/false` exits at start).
fn stamped(src: &str, dir: &Path, version: &str, pad: usize) -> PathBuf {
    let mut bytes = std::fs::read(src).unwrap();
    bytes.extend(std::iter::repeat_n(0x5a, pad));
    bytes.extend(drover_runtime::binary_file::stamp_bytes(version).unwrap());
    let name = Path::new(src).file_name().unwrap().to_string_lossy();
    let out = dir.join(format!("{name}-{version}"));
    std::fs::write(&out, &bytes).unwrap();
    out
}

/// Waits until the running upgrade completed; a halt fails the test at once.
async fn upgrade_complete(c: &Controller, within: Duration, logs: impl Fn() -> String) {
    wait_until(
        within,
        "the upgrade complete",
        || {
            let s = upgrade_status(c);
            assert_ne!(s["state"], "halted", "{s}");
            (s["state"] == "complete").then_some(())
        },
        logs,
    )
    .await;
}

/// A controller whose agents heartbeat every second (progress shows within a second).
fn controller() -> Controller {
    Controller::start_with(&["--heartbeat-interval", "1s"])
}

fn upgrade_status(c: &Controller) -> serde_json::Value {
    let out = c.drover(&["agent", "upgrade", "status", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn agent_step(status: &serde_json::Value, id: &str) -> Option<(String, String)> {
    status["agents"]
        .as_array()?
        .iter()
        .find(|a| a["id"] == id)
        .map(|a| {
            (
                a["step"].as_str().unwrap_or("").to_string(),
                a["detail"].as_str().unwrap_or("").to_string(),
            )
        })
}

/// Enqueues a job that echoes `started-long` and then runs `rest`, and waits until its
/// trace shows it running.
async fn running_job(
    gitlab: &FakeGitLab,
    image: &str,
    name: &str,
    rest: &[&str],
    logs: impl Fn() -> String,
) -> i64 {
    let mut script = vec!["echo started-long".to_string()];
    script.extend(rest.iter().map(|l| l.to_string()));
    let job = gitlab
        .enqueue_job(
            JobSpec::new(name)
                .image(image)
                .variable("GIT_STRATEGY", "none")
                .script(script),
        )
        .id;
    wait_until(
        Duration::from_secs(45),
        "the job running",
        || {
            String::from_utf8_lossy(&gitlab.trace(job))
                .contains("started-long")
                .then_some(())
        },
        logs,
    )
    .await;
    job
}

/// Two agents enrolled with `label` and running, with their ids.
fn two_running_agents(c: &Controller, label: &str) -> Vec<(Agent, String)> {
    let token = c.create_token(&["--label", label, "--uses", "2"]);
    (0..2)
        .map(|_| {
            let mut a = Agent::new();
            let id = a.enroll_ok(&c.url(), &token);
            a.run();
            (a, id)
        })
        .collect()
}

fn healthy(c: &Controller, id: &str) {
    wait_for(Duration::from_secs(30), "agent healthy", || {
        c.agent(id).filter(|a| a["state"] == "healthy")
    });
}

/// The canary downloads B (a binary that exits at start), checks it and keeps it, drains,
/// restarts on it; the launcher sees B exit before it confirmed and rolls back to A within
/// the health timeout: the agent (the same process) reports A and healthy again, the
/// upgrade halts with `rolled-back` and the reason, and the other agent never gets B.
#[test]
fn a_new_binary_that_exits_at_start_is_rolled_back_and_the_upgrade_halts() {
    let c = controller();
    let tmp = tempfile::tempdir().unwrap();
    let b = stamped("/bin/false", tmp.path(), "9.9.9-b", 0);
    let mut agents = two_running_agents(&c, "ring=canary");
    for (a, id) in &mut agents {
        assert_eq!(
            a.read("upgrade-key.pub").trim().len(),
            64,
            "the signing key is pinned at enrollment"
        );
        healthy(&c, id);
    }
    // A file that is no agent binary is refused, naming it, before anything is sent.
    let out = c.drover(&["agent", "upgrade", "--binary", "/bin/sh"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/bin/sh"), "{}", stderr(&out));
    assert_eq!(upgrade_status(&c)["id"], 0);

    let health_timeout = Duration::from_secs(40);
    let started_at = std::time::Instant::now();
    let out = c.drover(&[
        "agent",
        "upgrade",
        "--binary",
        b.to_str().unwrap(),
        "--selector",
        "ring=canary",
        "--max-unavailable",
        "2",
        "--health-timeout",
        "40s",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["state"], "running");
    assert_eq!(started["binaries"][0]["version"], "9.9.9-b");
    assert_eq!(started["binaries"][0]["arch"], std::env::consts::ARCH);
    let sha = started["binaries"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let halted = wait_for(health_timeout, "the upgrade halted", || {
        Some(upgrade_status(&c)).filter(|s| s["state"] == "halted")
    });
    assert!(
        started_at.elapsed() < health_timeout,
        "rolled back in {:?}",
        started_at.elapsed()
    );
    let canary = agents
        .iter()
        .find(|(_, id)| agent_step(&halted, id).is_some_and(|(st, _)| st == "rolled-back"))
        .map(|(_, id)| id.clone())
        .unwrap_or_else(|| panic!("no agent rolled back: {halted}"));
    let reason = halted["reason"].as_str().unwrap();
    assert!(
        reason.contains(&canary)
            && reason.contains("rolled-back")
            && reason.contains("9.9.9-b exited"),
        "{reason}"
    );
    // One agent at a time until the canary is healthy on B: the other never got it.
    let other = agents.iter().find(|(_, id)| *id != canary).unwrap();
    assert_eq!(
        agent_step(&halted, &other.1).unwrap().0,
        "pending",
        "{halted}"
    );
    assert!(!other.0.state_dir().join("upgrade").exists());

    let (canary_agent, canary_id) = agents.iter_mut().find(|(_, id)| *id == canary).unwrap();
    let kept = canary_agent.state_dir().join("upgrade").join(&sha);
    assert_eq!(std::fs::read(&kept).unwrap(), std::fs::read(&b).unwrap());
    let selection: serde_json::Value =
        serde_json::from_str(&canary_agent.read("upgrade/selection.json")).unwrap();
    assert_eq!(selection["active"], serde_json::Value::Null, "{selection}");
    assert_eq!(
        selection["rolled_back"]["sha256"],
        sha.as_str(),
        "{selection}"
    );
    assert!(
        canary_agent.proc().try_exit().is_none(),
        "the agent runs on, in the same process"
    );
    healthy(&c, canary_id);
    let listed = c.agent(canary_id).unwrap();
    assert_eq!(listed["version"], drover_runtime::version(), "{listed}");
    assert_eq!(listed["upgrade"]["step"], "rolled-back", "{listed}");
    let log = canary_agent.proc().log_text();
    assert!(
        log.contains("agent upgrade rolled back from 9.9.9-b to the packaged binary"),
        "{log}"
    );
    let fleet: serde_json::Value =
        serde_json::from_slice(&c.drover(&["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(fleet["upgrade"]["id"], started["id"]);
    assert_eq!(fleet["versions"][0]["agents"], 2, "{fleet}");
    let table = stdout(&c.drover(&["agent", "upgrade", "status"]));
    assert!(table.contains("rolled-back"), "{table}");
}

/// A B that starts but never connects (a stamped `dash` that runs the script `run` from
/// the agent's working directory, which sleeps): the launcher stops it once the health
/// timeout has passed and rolls back; the agent reports A and healthy again and the upgrade
/// halts, naming the timeout.
#[test]
fn a_new_binary_that_never_reports_healthy_is_stopped_and_rolled_back() {
    let c = controller();
    let tmp = tempfile::tempdir().unwrap();
    let b = stamped("/bin/dash", tmp.path(), "9.9.9-hang", 0);
    let token = c.create_token(&[]);
    let mut a = Agent::new();
    let id = a.enroll_ok(&c.url(), &token);
    let cwd = a.dir.path().to_path_buf();
    // What B runs as `B run --state-dir DIR`: a script named `run`, found in its cwd.
    std::fs::write(cwd.join("run"), "exec sleep 600\n").unwrap();
    let cwd_arg = cwd.to_string_lossy().into_owned();
    a.run_with(&["env", "-C", &cwd_arg], &[], &[]);
    healthy(&c, &id);

    let out = c.drover(&[
        "agent",
        "upgrade",
        "--binary",
        b.to_str().unwrap(),
        "--health-timeout",
        "15s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let halted = wait_for(Duration::from_secs(60), "the upgrade halted", || {
        Some(upgrade_status(&c)).filter(|s| s["state"] == "halted")
    });
    let (step, detail) = agent_step(&halted, &id).unwrap();
    assert_eq!(step, "rolled-back", "{halted}");
    assert!(
        detail.contains("9.9.9-hang did not report healthy within 15s"),
        "{halted}"
    );
    let log = a.proc().log_text();
    assert!(
        log.contains("no healthy report within 15s; stopping it"),
        "{log}"
    );
    assert!(
        a.proc().try_exit().is_none(),
        "the agent runs on, in the same process"
    );
    healthy(&c, &id);
    let listed = c.agent(&id).unwrap();
    assert_eq!(listed["version"], drover_runtime::version(), "{listed}");
    let selection: serde_json::Value =
        serde_json::from_str(&a.read("upgrade/selection.json")).unwrap();
    assert_eq!(selection["active"], serde_json::Value::Null, "{selection}");
}

/// A binary the agent cannot verify with the key it pinned is refused: the upgrade halts
/// naming the agent and the reason, and the agent keeps running on its binary.
#[test]
fn a_binary_not_signed_by_the_pinned_key_is_refused_and_halts() {
    let c = controller();
    let tmp = tempfile::tempdir().unwrap();
    let b = stamped("/bin/false", tmp.path(), "9.9.9-b", 0);
    let token = c.create_token(&[]);
    let mut a = Agent::new();
    let id = a.enroll_ok(&c.url(), &token);
    // As if the controller's key were not the one pinned (a store tampered with).
    std::fs::write(
        a.state_dir().join("upgrade-key.pub"),
        hex::encode([7u8; 32]),
    )
    .unwrap();
    a.run();
    healthy(&c, &id);
    let out = c.drover(&["agent", "upgrade", "--binary", b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = wait_for(Duration::from_secs(40), "the upgrade halted", || {
        Some(upgrade_status(&c)).filter(|s| s["state"] == "halted")
    });
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains(&id) && reason.contains("signature mismatch"),
        "{reason}"
    );
    assert_eq!(agent_step(&s, &id).unwrap().0, "refused");
    let part_left = std::fs::read_dir(a.state_dir().join("upgrade"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(part_left, 0, "nothing of a refused binary is kept");
    assert!(a.proc().try_exit().is_none(), "the agent keeps running");
    healthy(&c, &id);
    assert_eq!(
        c.agent(&id).unwrap()["version"],
        drover_runtime::version(),
        "still on its own version"
    );
}

/// kill -9 of the agent mid-download: the next process resumes from the part on disk and
/// ends with the exact binary.
#[test]
fn a_download_cut_by_kill_9_resumes_from_the_part_written() {
    let c = controller();
    let tmp = tempfile::tempdir().unwrap();
    // 64 MiB: about half a second of download here, so the part is there to be cut.
    let b = stamped("/bin/false", tmp.path(), "9.9.9-b", 64 << 20);
    let token = c.create_token(&[]);
    let mut a = Agent::new();
    let id = a.enroll_ok(&c.url(), &token);
    a.run();
    healthy(&c, &id);
    let out = c.drover(&[
        "agent",
        "upgrade",
        "--binary",
        b.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sha = started["binaries"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let size = std::fs::metadata(&b).unwrap().len();
    let part = a.state_dir().join("upgrade").join(format!("{sha}.part"));
    let kept = a.state_dir().join("upgrade").join(&sha);
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    // Every 2 ms, not `wait_for`'s 100 ms: a busy machine oversleeps, and a download that
    // ends between two looks leaves nothing to cut (it failed so once in CI).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while len(&part) == 0 {
        assert!(
            !kept.exists(),
            "the download ended before a part of it was seen: nothing to cut"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for a part of the download"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    a.proc().kill();
    let cut = len(&part);
    assert!(cut > 0 && cut < size, "killed at {cut} of {size} bytes");
    a.run();
    // Checked, then switched to and rolled back (B is `false`).
    let s = wait_for(Duration::from_secs(50), "the binary checked", || {
        Some(upgrade_status(&c)).filter(|s| {
            agent_step(s, &id).is_some_and(|(step, _)| {
                ["draining", "switching", "rolled-back"].contains(&step.as_str())
            })
        })
    });
    assert!(agent_step(&s, &id).is_some(), "{s}");
    assert_eq!(std::fs::read(&kept).unwrap(), std::fs::read(&b).unwrap());
    let log = a.proc().log_text();
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming binary download"))
        .unwrap_or_else(|| panic!("no resume in the log: {log}"));
    let offset: u64 = resumed
        .split("offset=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {resumed}"));
    assert!(
        offset >= cut,
        "resumed at {offset}, {cut} bytes were on disk"
    );
}

/// Two agents upgraded from A to B while a job runs on one of them: the agent running it
/// drains (the job finishes and succeeds), both restart on B (the launcher runs B as its
/// child), confirm and report B, and the upgrade completes. SIGQUIT to the launcher
/// reaches B, which stops gracefully; the launcher exits with B's exit code (0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_upgrade_to_b_while_a_job_runs_and_the_job_succeeds() {
    let Some(image) = fleet_support::docker_image().await else {
        return;
    };
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    gitlab.add_registration_token("GR1348941-upgrade");
    let c = controller();
    let tmp = tempfile::tempdir().unwrap();
    let b = restamped_agent(tmp.path(), "9.9.9-b");
    let mut agents = two_running_agents(&c, "site=upgrade");
    let agent_logs: Vec<(String, PathBuf)> = agents
        .iter_mut()
        .map(|(a, id)| (id.clone(), a.proc().log.clone()))
        .collect();
    let logs = || {
        let mut s = format!("----- controller -----\n{}", c.proc.log_text());
        for (id, path) in &agent_logs {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            s.push_str(&format!("\n----- agent {id} -----\n{log}"));
        }
        s
    };
    let ids: Vec<&str> = agents.iter().map(|(_, id)| id.as_str()).collect();
    fleet_support::agents_connected(&c, &ids, logs).await;
    fleet_support::apply(
        &c,
        tmp.path(),
        &fleet_support::registration_spec(
            "upgrade-runner",
            gitlab.url(),
            "GR1348941-upgrade",
            "upgrade",
            &image,
        ),
    );
    fleet_support::rollout_complete(&c, 1, logs).await;
    let job = running_job(
        &gitlab,
        &image,
        "long",
        &["sleep 8", "echo finished-long"],
        logs,
    )
    .await;

    let out = c.drover(&[
        "agent",
        "upgrade",
        "--binary",
        b.to_str().unwrap(),
        "--max-unavailable",
        "2",
        "--health-timeout",
        "60s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    upgrade_complete(&c, Duration::from_secs(80), logs).await;
    let done = gitlab
        .wait_for_job_finished(job, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the job did not finish\n{}", logs()));
    let t = done.trace_text();
    assert_eq!(done.state, JobState::Success, "{t}");
    assert!(t.contains("finished-long"), "{t}");
    let status = upgrade_status(&c);
    for (a, id) in &mut agents {
        let listed = c.agent(id).unwrap();
        assert_eq!(listed["version"], "9.9.9-b", "{listed}");
        assert_eq!(
            agent_step(&status, id).unwrap(),
            ("healthy".into(), "9.9.9-b".into())
        );
        let selection: serde_json::Value =
            serde_json::from_str(&a.read("upgrade/selection.json")).unwrap();
        assert_eq!(selection["confirmed"], true, "{selection}");
        assert_eq!(selection["active"]["version"], "9.9.9-b", "{selection}");
        assert!(a.proc().try_exit().is_none(), "the launcher runs on");
    }
    // The agent that ran the job drained before it switched.
    let drained = agents
        .iter()
        .filter(|(a, _)| {
            a.proc
                .as_ref()
                .is_some_and(|p| p.log_text().contains("agent upgrade: draining"))
        })
        .count();
    assert_eq!(drained, 2, "{}", logs());

    // Signals reach B through the launcher; its exit code comes back.
    let (a, _) = &mut agents[0];
    let pid = a.proc().id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-QUIT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_until(
        Duration::from_secs(40),
        "the launcher exited",
        || a.proc.as_mut().and_then(|p| p.try_exit()),
        String::new,
    )
    .await;
    assert_eq!(exit.code(), Some(0), "{}", a.proc().log_text());
    let log = a.proc().log_text();
    assert!(log.contains("SIGQUIT: taking no new jobs"), "{log}");
}

/// A job longer than the drain: the upgrade's health timeout bounds the drain, then the
/// job still running is canceled, its trace saying the agent stopped, and the agent
/// switches to B, which confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_drain_deadline_is_canceled_saying_why_and_the_switch_goes_on() {
    let Some(image) = fleet_support::docker_image().await else {
        return;
    };
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    gitlab.add_registration_token("GR1348941-upgrade-deadline");
    let c = controller();
    let tmp = tempfile::tempdir().unwrap();
    let b = restamped_agent(tmp.path(), "9.9.9-b");
    let token = c.create_token(&["--label", "site=deadline"]);
    let mut a = Agent::new();
    let id = a.enroll_ok(&c.url(), &token);
    a.run();
    let log_path = a.proc().log.clone();
    let logs = || {
        format!(
            "----- controller -----\n{}\n----- agent -----\n{}",
            c.proc.log_text(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    };
    fleet_support::agents_connected(&c, &[&id], logs).await;
    fleet_support::apply(
        &c,
        tmp.path(),
        &fleet_support::registration_spec(
            "deadline-runner",
            gitlab.url(),
            "GR1348941-upgrade-deadline",
            "deadline",
            &image,
        ),
    );
    fleet_support::rollout_complete(&c, 1, logs).await;
    let job = running_job(&gitlab, &image, "too-long", &["sleep 300"], logs).await;
    let out = c.drover(&[
        "agent",
        "upgrade",
        "--binary",
        b.to_str().unwrap(),
        "--health-timeout",
        "20s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = gitlab
        .wait_for_job_finished(job, Duration::from_secs(90))
        .await
        .unwrap_or_else(|| panic!("the job did not end\n{}", logs()));
    let t = done.trace_text();
    assert_ne!(done.state, JobState::Success, "{t}");
    assert!(t.contains("agent is stopping"), "{t}");
    upgrade_complete(&c, Duration::from_secs(60), logs).await;
    assert_eq!(c.agent(&id).unwrap()["version"], "9.9.9-b");
    let log = logs();
    assert!(
        log.contains("agent upgrade: the drain deadline passed; canceling the jobs still running"),
        "{log}"
    );
}
