//! Drain, undrain and the graceful stop of a fleet agent, with the real `drover serve`, a
//! real `drover-agent run`, the fake GitLab and real Docker jobs.
//!
//! Proves: `drover agent drain` lets the running job finish and takes no new one
//! (`drover agents -o json` says `draining` at once, from the controller's store), and
//! `undrain` runs the pending job; `--deadline` cancels a long job at the deadline, its
//! trace saying the agent is draining; a drain survives a controller restart and an agent
//! restart that lost its `drain.json` (the controller sends it again on the new session,
//! with the same absolute deadline); SIGQUIT to a fleet agent lets its running job
//! succeed, takes no new one, and the agent exits 0; bad input (unknown id, bad
//! `--deadline`, a selector matching nothing) is refused and changes nothing.

use std::process::Command;
use std::time::Duration;

use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, JobState};
use drover_tests::fleet_support::{self, wait_until};
use drover_tests::harness::{Agent, Controller, stderr};

const WAIT: Duration = Duration::from_secs(45);

/// A controller, one real agent running one runner of the fake GitLab, rollout complete.
struct Fleet {
    c: Controller,
    agent: Agent,
    id: String,
    gitlab: FakeGitLab,
    image: String,
    _spec_dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(site: &str) -> Option<Fleet> {
        let image = fleet_support::docker_image().await?;
        let gitlab = FakeGitLab::start().await;
        gitlab.set_trace_update_interval(1);
        let registration = format!("GR1348941-{site}");
        gitlab.add_registration_token(&registration);
        let c = Controller::start();
        let token = c.create_token(&["--label", &format!("site={site}")]);
        let mut agent = Agent::new();
        let id = agent.enroll_ok(&c.url(), &token);
        agent.run();
        let spec_dir = tempfile::tempdir().unwrap();
        let f = Fleet {
            c,
            agent,
            id,
            gitlab,
            image,
            _spec_dir: spec_dir,
        };
        fleet_support::agents_connected(&f.c, &[&f.id], || f.logs()).await;
        fleet_support::apply(
            &f.c,
            f._spec_dir.path(),
            &fleet_support::registration_spec(
                "drain-runner",
                f.gitlab.url(),
                &registration,
                site,
                &f.image,
            ),
        );
        fleet_support::rollout_complete(&f.c, 1, || f.logs()).await;
        Some(f)
    }

    fn logs(&self) -> String {
        format!(
            "----- controller -----\n{}\n----- agent -----\n{}",
            self.c.proc.log_text(),
            self.agent
                .proc
                .as_ref()
                .map(|p| p.log_text())
                .unwrap_or_default()
        )
    }

    /// Enqueues a busybox job running `script`.
    fn job(&self, name: &str, script: &[&str]) -> i64 {
        self.gitlab
            .enqueue_job(
                JobSpec::new(name)
                    .image(&self.image)
                    .variable("GIT_STRATEGY", "none")
                    .script(script.iter().map(|s| s.to_string())),
            )
            .id
    }

    async fn trace_contains(&self, id: i64, text: &str) {
        wait_until(
            WAIT,
            &format!("job {id} trace containing {text:?}"),
            || {
                String::from_utf8_lossy(&self.gitlab.trace(id))
                    .contains(text)
                    .then_some(())
            },
            || self.logs(),
        )
        .await;
    }

    async fn finished(&self, id: i64) -> drover_tests::fake_gitlab::FinalState {
        match self.gitlab.wait_for_job_finished(id, WAIT).await {
            Some(f) => f,
            None => panic!("job {id} did not finish\n{}", self.logs()),
        }
    }

    /// `drover agent ARGS... -o json`, which must succeed.
    fn agent_cmd(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["agent"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        fleet_support::json(&self.c.drover(&all))
    }

    /// This agent in `drover agents -o json`.
    fn listed(&self) -> serde_json::Value {
        self.c.agent(&self.id).expect("agent listed")
    }

    /// Waits until the agent's own status says it drains (`draining`), or not.
    async fn agent_draining(&self, draining: bool) {
        let dir = self.agent.state_dir();
        wait_until(
            WAIT,
            &format!("drover-agent status draining={draining}"),
            || (fleet_support::status_json(&dir)["draining"] == draining).then_some(()),
            || self.logs(),
        )
        .await;
    }

    /// Waits a few seconds and asserts job `id` is still pending all along.
    async fn stays_pending(&self, id: i64, secs: u64) {
        for _ in 0..secs * 5 {
            assert_eq!(
                self.gitlab.job_state(id),
                Some(JobState::Pending),
                "job {id} taken while drained\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_the_running_job_finish_takes_no_new_one_and_undrain_resumes() {
    let Some(f) = Fleet::start("drain-basic").await else {
        return;
    };
    let first = f.job(
        "first",
        &["echo started-first", "sleep 5", "echo finished-first"],
    );
    f.trace_contains(first, "started-first").await;

    let out = f.agent_cmd(&["drain", &f.id]);
    assert_eq!(out[0]["id"], f.id.as_str(), "{out:#}");
    assert_eq!(out[0]["connected"], true, "{out:#}");
    assert_eq!(out[0]["deadline_at"], serde_json::Value::Null, "{out:#}");
    // From the store, before any heartbeat could say so.
    let listed = f.listed();
    assert_eq!(listed["draining"], true, "{listed:#}");
    assert!(listed["drain_requested_at"].is_string(), "{listed:#}");

    let second = f.job("second", &["echo ran-second"]);
    let done = f.finished(first).await;
    let t = done.trace_text();
    assert_eq!(done.state, JobState::Success, "{t}");
    assert!(t.contains("finished-first"), "{t}");
    f.agent_draining(true).await;
    f.stays_pending(second, 3).await;

    let events = fleet_support::json(&f.c.drover(&["events", "-o", "json"]));
    assert!(
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "agent-drained")),
        "{events:#}"
    );

    let out = f.agent_cmd(&["undrain", &f.id]);
    assert_eq!(out[0]["changed"], true, "{out:#}");
    let done = f.finished(second).await;
    assert_eq!(done.state, JobState::Success, "{}", done.trace_text());
    f.agent_draining(false).await;
    wait_until(
        WAIT,
        "drover agents says not draining",
        || (f.listed()["draining"] == false).then_some(()),
        || f.logs(),
    )
    .await;
    // Undrain again: nothing to change.
    let out = f.agent_cmd(&["undrain", &f.id]);
    assert_eq!(out[0]["changed"], false, "{out:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_cancels_the_long_job_saying_the_agent_is_draining() {
    let Some(f) = Fleet::start("drain-deadline").await else {
        return;
    };
    let long = f.job(
        "long",
        &["echo started-long", "sleep 120", "echo finished-long"],
    );
    f.trace_contains(long, "started-long").await;
    let out = f.agent_cmd(&[
        "drain",
        "--selector",
        "site=drain-deadline",
        "--deadline",
        "2s",
    ]);
    assert_eq!(out[0]["id"], f.id.as_str(), "{out:#}");
    assert!(out[0]["deadline_at"].is_string(), "{out:#}");
    let done = f.finished(long).await;
    let t = done.trace_text();
    assert_eq!(done.state, JobState::Failed, "{t}");
    assert!(t.contains("aborted: agent is draining"), "{t}");
    assert!(!t.contains("finished-long"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_controller_and_agent_restarts() {
    let Some(mut f) = Fleet::start("drain-restart").await else {
        return;
    };
    let out = f.agent_cmd(&["drain", &f.id, "--deadline", "1h"]);
    let deadline = out[0]["deadline_at"]
        .as_str()
        .expect("deadline")
        .to_string();
    f.agent_draining(true).await;

    // The controller restarts: the drain is in its store.
    f.c.restart();
    let listed = f.listed();
    assert_eq!(listed["draining"], true, "{listed:#}");
    assert_eq!(listed["drain_deadline_at"], deadline.as_str(), "{listed:#}");

    // The agent restarts without its drain file: the controller's new session drains it
    // again, with the deadline first given.
    f.agent.proc().kill();
    std::fs::remove_file(f.agent.state_dir().join("drain.json")).expect("drain.json written");
    f.agent.run();
    let drain_file = f.agent.state_dir().join("drain.json");
    wait_until(
        WAIT,
        "drain.json written again",
        || drain_file.exists().then_some(()),
        || f.logs(),
    )
    .await;
    f.agent_draining(true).await;
    let file: serde_json::Value =
        serde_json::from_str(&f.agent.read("drain.json")).expect("drain.json");
    let at = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    assert_eq!(
        at(file["deadline"].as_str().expect("deadline in drain.json")),
        at(&deadline),
        "{file:#}"
    );
    let job = f.job("while-drained", &["echo ran"]);
    f.stays_pending(job, 3).await;
    f.agent_cmd(&["undrain", &f.id]);
    let done = f.finished(job).await;
    assert_eq!(done.state, JobState::Success, "{}", done.trace_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_sigquit_lets_the_running_job_finish_and_exits_0() {
    let Some(mut f) = Fleet::start("drain-sigquit").await else {
        return;
    };
    let job = f.job(
        "quit",
        &["echo started-quit", "sleep 5", "echo finished-quit"],
    );
    f.trace_contains(job, "started-quit").await;
    let pid = f.agent.proc().id();
    let status = Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let next = f.job("after-quit", &["echo ran"]);
    // The heartbeats say it drains while its job runs.
    wait_until(
        WAIT,
        "drover agents says draining",
        || (f.listed()["draining"] == true).then_some(()),
        || f.logs(),
    )
    .await;
    let done = f.finished(job).await;
    let t = done.trace_text();
    assert_eq!(done.state, JobState::Success, "{t}");
    assert!(t.contains("finished-quit"), "{t}");
    let exit = wait_until(
        WAIT,
        "the agent to exit after SIGQUIT",
        || f.agent.proc().try_exit(),
        String::new,
    )
    .await;
    assert!(exit.success(), "exit {exit}\n{}", f.logs());
    assert_eq!(f.gitlab.job_state(next), Some(JobState::Pending));
    // Not a drain: the controller holds none.
    assert!(f.listed()["drain_requested_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_drain_input_is_refused_and_changes_nothing() {
    let c = Controller::start();
    let token = c.create_token(&["--label", "site=drain-bad"]);
    let agent = Agent::new();
    let id = agent.enroll_ok(&c.url(), &token);
    let refused = |args: &[&str], says: &str| {
        let out = c.drover(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let e = stderr(&out);
        assert!(e.contains(says), "{args:?}: {e}");
    };
    refused(
        &["agent", "drain", "no-such-agent"],
        "agent \"no-such-agent\" not found",
    );
    refused(&["agent", "undrain", "no-such-agent"], "not found");
    refused(
        &["agent", "drain", &id, "--deadline", "2x"],
        "--deadline 2x: duration \"2x\" has unknown unit",
    );
    refused(
        &["agent", "drain", "--selector", "site=nowhere"],
        "no agent matches selector site=nowhere",
    );
    refused(&["agent", "drain"], "<ID|--selector <SELECTOR>>");
    refused(
        &["agent", "drain", &id, "--selector", "site=drain-bad"],
        "cannot be used",
    );
    let a = c.agent(&id).expect("listed");
    assert_eq!(a["draining"], false, "{a:#}");
    assert!(a["drain_requested_at"].is_null(), "{a:#}");

    // A drained agent that is deleted loses its drain; it cannot be drained again.
    let out = c.drover(&[
        "agent",
        "drain",
        "--selector",
        "site=drain-bad",
        "-o",
        "json",
    ]);
    assert_eq!(fleet_support::json(&out)[0]["connected"], false);
    assert_eq!(c.agent(&id).expect("listed")["draining"], true);
    let out = c.drover(&["agent", "delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.agent(&id).expect("listed")["draining"], false);
    refused(&["agent", "drain", &id], "not found");
}
