//! Rollouts gated on health and the agents' pre-flight, end to end with nothing faked but
//! GitLab: the real `drover serve`, real `drover-agent run` processes, the fake GitLab and
//! real Docker with the local busybox image.
//!
//! - a spec naming an image missing on the box (`pull_policy = "never"`) is refused by the
//!   agent's pre-flight: the rollout halts naming the image and the previous generation
//!   keeps running jobs;
//! - a spec whose jobs fail with a system failure (container creation on a network that
//!   does not exist) halts at the canary (two agents, `--canary 1`): the second agent never
//!   gets it; with `--auto-rollback` the fleet is back on the previous runners;
//! - a good spec passes the gate and reaches every agent.

use std::time::Duration;

use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, JobState};
use drover_tests::fleet_support::{
    agents_connected, apply, docker_image, init_crypto, job_ok, json, registration_spec,
    rollout_complete, wait_until,
};
use drover_tests::harness::{Agent, Controller, stderr};

const WAIT: Duration = Duration::from_secs(40);

/// A fake GitLab, a controller and `n` enrolled, running agents labelled `site=<site>`
/// with generation 1 of a good spec applied everywhere.
struct Fleet {
    gitlab: FakeGitLab,
    c: Controller,
    /// Each agent with its id, by id: a rollout's batches take agents in this order.
    agents: Vec<(String, Agent)>,
    ids: Vec<String>,
    dir: tempfile::TempDir,
    site: String,
    image: String,
}

impl Fleet {
    async fn start(site: &str, n: usize) -> Option<Fleet> {
        init_crypto();
        let image = docker_image().await?;
        let gitlab = FakeGitLab::start().await;
        gitlab.set_trace_update_interval(1);
        gitlab.add_registration_token(&format!("GR1348941-{site}"));
        let c = Controller::start();
        let uses = n.to_string();
        let token = c.create_token(&["--label", &format!("site={site}"), "--uses", &uses]);
        let mut agents = Vec::new();
        for _ in 0..n {
            let mut a = Agent::new();
            let id = a.enroll_ok(&c.url(), &token);
            a.run();
            agents.push((id, a));
        }
        agents.sort_by(|x, y| x.0.cmp(&y.0));
        let ids = agents.iter().map(|(id, _)| id.clone()).collect();
        let f = Fleet {
            gitlab,
            c,
            agents,
            ids,
            dir: tempfile::tempdir().unwrap(),
            site: site.to_string(),
            image,
        };
        let ids: Vec<&str> = f.ids.iter().map(String::as_str).collect();
        agents_connected(&f.c, &ids, || f.logs()).await;
        apply(&f.c, f.dir.path(), &f.spec(""));
        rollout_complete(&f.c, 1, || f.logs()).await;
        Some(f)
    }

    /// The good spec with `extra` lines appended (to its `[runners.docker]` table, or new
    /// tables).
    fn spec(&self, extra: &str) -> String {
        let base = registration_spec(
            &self.site,
            self.gitlab.url(),
            &format!("GR1348941-{}", self.site),
            &self.site,
            &self.image,
        );
        format!("{base}{extra}")
    }

    /// The agent with id `id`.
    fn agent(&self, id: &str) -> &Agent {
        self.agents
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, a)| a)
            .expect("agent by id")
    }

    fn logs(&self) -> String {
        let mut s = format!("----- controller -----\n{}", self.c.proc.log_text());
        for (id, a) in &self.agents {
            if let Some(p) = &a.proc {
                s.push_str(&format!("\n----- agent {id} -----\n{}", p.log_text()));
            }
        }
        s
    }

    /// `drover runner apply -f FILE ARGS...` of `spec`.
    fn apply_with(&self, spec: &str, args: &[&str]) {
        let file = self.dir.path().join("runners.toml");
        std::fs::write(&file, spec).unwrap();
        let mut all = vec!["runner", "apply", "-f", file.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = self.c.drover(&all);
        assert!(out.status.success(), "runner apply: {}", stderr(&out));
    }

    /// Waits until `drover rollout status -o json` satisfies `f`.
    async fn status_until(
        &self,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(
            WAIT,
            what,
            || {
                let out = self.c.drover(&["rollout", "status", "-o", "json"]);
                let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                f(&s).then_some(s)
            },
            || self.logs(),
        )
        .await
    }

    /// Generations the agent with id `id` logged as applied.
    fn applied_logged(&self, id: &str) -> Vec<u64> {
        let log = self
            .agent(id)
            .proc
            .as_ref()
            .map(|p| p.log_text())
            .unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("generation applied"))
            .filter_map(|l| {
                let (_, rest) = l.split_once("generation=")?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

fn agent_row<'a>(s: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    s["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id))
        .unwrap_or_else(|| panic!("agent {id} in {s:#}"))
}

/// A tagged job only the bad spec's runner takes; waits for it to fail with a system
/// failure.
async fn system_failure_job(f: &Fleet) {
    let id = f
        .gitlab
        .enqueue_job(
            JobSpec::new("gate-bad")
                .image(&f.image)
                .variable("GIT_STRATEGY", "none")
                .tags(["gate-bad"])
                .script(["echo never".to_string()]),
        )
        .id;
    let Some(done) = f
        .gitlab
        .wait_for_job_finished(id, Duration::from_secs(60))
        .await
    else {
        panic!("job {id} did not finish\n{}", f.logs());
    };
    assert_eq!(done.state, JobState::Failed, "{}", done.trace_text());
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("runner_system_failure"),
        "{}",
        done.trace_text()
    );
}

/// Applies the bad spec (tagged `gate-bad`, its containers on a network that does not
/// exist) gated with `--canary 1 --gate-window 60s` and `args`; waits for the canary (the
/// first agent) to apply it and a job there to fail with a system failure.
async fn bad_spec_at_the_canary(f: &Fleet, args: &[&str]) {
    let spec = f
        .spec("network_mode = \"drover-gate-no-such-net\"\n")
        .replace("limit = 1\n", "limit = 1\ntag_list = [\"gate-bad\"]\n");
    let mut all = vec!["--canary", "1", "--gate-window", "60s"];
    all.extend_from_slice(args);
    f.apply_with(&spec, &all);
    let canary = f.ids[0].clone();
    f.status_until("the canary applied generation 2", |s| {
        s["generation"] == 2 && agent_row(s, &canary)["applied_generation"] == 2
    })
    .await;
    system_failure_job(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_a_missing_image_and_the_previous_generation_runs() {
    let Some(f) = Fleet::start("gate-pre", 1).await else {
        return;
    };
    let id = f.ids[0].clone();
    let missing = "drover-gate-missing:9";
    f.apply_with(
        &f.spec(&format!(
            "[runners.drover_images]\nrequired = [\"{missing}\"]\n"
        )),
        &["--strategy", "all"],
    );
    let s = f
        .status_until("generation 2 halted", |s| {
            s["generation"] == 2 && s["state"] == "halted"
        })
        .await;
    let want = format!(
        "runner \"gate-pre\": image \"{missing}\" is not present and pull_policy is \"never\""
    );
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&want), "{s:#}");
    let row = agent_row(&s, &id);
    assert_eq!(row["state"], "refused", "{s:#}");
    assert!(
        row["error"].as_str().unwrap_or_default().contains(&want),
        "{s:#}"
    );
    assert_eq!(row["applied_generation"], 1, "{s:#}");
    // The previous generation keeps running jobs.
    job_ok(&f.gitlab, &f.image, "after-refusal", &[], || f.logs()).await;
    assert_eq!(f.applied_logged(&id), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_failure_halts_at_the_canary() {
    let Some(f) = Fleet::start("gate-halt", 2).await else {
        return;
    };
    let (canary, other) = (f.ids[0].clone(), f.ids[1].clone());
    bad_spec_at_the_canary(&f, &[]).await;
    let s = f
        .status_until("generation 2 halted", |s| {
            s["generation"] == 2 && s["state"] == "halted"
        })
        .await;
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("health gate: 1 of 1 jobs ended with a system failure")
            && reason.contains(&canary),
        "{s:#}"
    );
    assert_eq!(s["strategy"]["gate"]["canary"], 1, "{s:#}");
    assert_eq!(s["strategy"]["gate"]["window_seconds"], 60, "{s:#}");
    let row = agent_row(&s, &other);
    assert_eq!(
        (&row["target_generation"], &row["applied_generation"]),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "{s:#}"
    );
    let text = f.c.drover(&["rollout", "status"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("generation 2: halted (health gate:") && text.contains("gated: canary 1"),
        "{text}"
    );
    assert_eq!(f.applied_logged(&other), vec![1], "{}", f.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_failure_at_the_canary_is_rolled_back() {
    let Some(f) = Fleet::start("gate-back", 2).await else {
        return;
    };
    let (canary, other) = (f.ids[0].clone(), f.ids[1].clone());
    bad_spec_at_the_canary(&f, &["--auto-rollback"]).await;
    let s = f
        .status_until("generation 3 (the rollback) complete", |s| {
            s["generation"] == 3 && s["state"] == "complete"
        })
        .await;
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("auto-rollback of generation 2: runners of generation 1 (health gate:"),
        "{s:#}"
    );
    for id in [&canary, &other] {
        assert_eq!(agent_row(&s, id)["applied_generation"], 3, "{s:#}");
    }
    assert_eq!(f.applied_logged(&canary), vec![1, 2, 3]);
    assert_eq!(
        f.applied_logged(&other),
        vec![1, 3],
        "the second agent never got 2"
    );
    // Back on the good runners: an untagged job runs.
    job_ok(&f.gitlab, &f.image, "after-rollback", &[], || f.logs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_spec_passes_the_gate_and_reaches_every_agent() {
    let Some(f) = Fleet::start("gate-good", 2).await else {
        return;
    };
    let spec = f.spec("").replace("limit = 1\n", "limit = 2\n");
    f.apply_with(&spec, &["--canary", "1", "--gate-window", "3s"]);
    rollout_complete(&f.c, 2, || f.logs()).await;
    let s = json(&f.c.drover(&["rollout", "status", "-o", "json"]));
    for id in &f.ids {
        assert_eq!(agent_row(&s, id)["applied_generation"], 2, "{s:#}");
    }
    assert_eq!(s["strategy"]["gate"]["window_seconds"], 3, "{s:#}");
    job_ok(&f.gitlab, &f.image, "after-gate", &[], || f.logs()).await;
}
