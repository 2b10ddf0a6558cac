//! Fleet runner management end to end with nothing faked but GitLab: the real `drover
//! serve`, real `drover-agent run` processes (each with its own state dir), the fake GitLab
//! and real Docker with the local busybox image.
//!
//! - two agents selected by one spec are each registered as their own GitLab runner (own
//!   system id), each runs a job, and one job fails; `drover jobs -o json` shows both
//!   agents' jobs with their outcomes and its filters work; metrics and systemd
//!   notifications of a fleet agent;
//!   deleting the spec, then an agent, unregisters their runners;
//! - a token revoked in GitLab heals: 403 → `token-invalid` → re-registration → new token
//!   pushed → running → job;
//! - an expiring token is rotated before expiry, persisted, and the controller keeps the new
//!   expiry; a token that expired anyway heals like a revoked one;
//! - an agent in its own network namespace whose address changes reports `ips-changed`,
//!   restarts its job loop without verifying, and the controller records the new address
//!   (root only).

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_tests::fake_gitlab::{Endpoint, FakeGitLab, JobSpec, JobState, RunnerRecord};
use drover_tests::fleet_support::{
    agents_connected, apply, docker_image, init_crypto, job_ok, json, registration_spec,
    rollout_complete, status_until, wait_until,
};
use drover_tests::harness::{Agent, Controller, stderr};
use drover_tests::netns::Netns;
use drover_tests::scrape::{http_get, metrics_addr_in};

const WAIT: Duration = Duration::from_secs(40);

fn logs(c: &Controller, agents: &[&Agent]) -> String {
    let mut s = format!("----- controller -----\n{}", c.proc.log_text());
    for a in agents {
        if let Some(p) = &a.proc {
            s.push_str(&format!("\n----- agent -----\n{}", p.log_text()));
        }
    }
    s
}

/// The address an agent logged as `metrics listening on ADDR`.
async fn metrics_addr(agent: &Agent) -> String {
    wait_until(
        WAIT,
        "metrics address in the agent log",
        || metrics_addr_in(&agent.proc.as_ref()?.log_text()),
        String::new,
    )
    .await
}

/// Collects every `sd_notify` datagram sent to a socket in `dir`.
struct NotifySocket {
    path: std::path::PathBuf,
    got: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        NotifySocket { path, got }
    }

    fn has(&self, prefix: &str) -> bool {
        self.got
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.starts_with(prefix))
    }
}

/// A fake GitLab, a controller and one enrolled, running agent labelled `site=<site>`.
struct OneAgent {
    gitlab: FakeGitLab,
    c: Controller,
    a: Agent,
    id: String,
    dir: tempfile::TempDir,
}

impl OneAgent {
    /// Starts the fake GitLab (prepared by `prepare`, e.g. with the tokens the spec uses),
    /// the controller, and the agent.
    async fn start(site: &str, prepare: impl FnOnce(&FakeGitLab)) -> OneAgent {
        let gitlab = FakeGitLab::start().await;
        gitlab.set_trace_update_interval(1);
        prepare(&gitlab);
        let c = Controller::start();
        let token = c.create_token(&["--label", &format!("site={site}")]);
        let mut a = Agent::new();
        let id = a.enroll_ok(&c.url(), &token);
        a.run();
        OneAgent {
            gitlab,
            c,
            a,
            id,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn logs(&self) -> String {
        logs(&self.c, &[&self.a])
    }

    /// Applies `spec`, waits for its rollout and returns the one runner GitLab then has.
    async fn apply_one_runner(&self, spec: &str, what: &str) -> RunnerRecord {
        let ctx = || self.logs();
        agents_connected(&self.c, &[&self.id], ctx).await;
        apply(&self.c, self.dir.path(), spec);
        rollout_complete(&self.c, 1, ctx).await;
        wait_until(WAIT, what, || self.gitlab.runners().into_iter().next(), ctx).await
    }
}

/// Two agents, one spec: a GitLab runner each (own system id), a job each; metrics and
/// systemd notifications; deleting the spec and then an agent unregisters their runners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_register_run_jobs_and_are_unregistered() {
    init_crypto();
    let Some(image) = docker_image().await else {
        return;
    };
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    gitlab.add_registration_token("GR1348941-real-two");
    let c = Controller::start();
    let token = c.create_token(&["--label", "site=real-two", "--uses", "2"]);
    let mut a = Agent::new();
    let mut b = Agent::new();
    let id_a = a.enroll_ok(&c.url(), &token);
    let id_b = b.enroll_ok(&c.url(), &token);
    let notify = NotifySocket::bind(a.dir.path());
    a.run_with(
        &[],
        &["--metrics-listen", "127.0.0.1:0"],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    b.run();
    let ctx = || logs(&c, &[&a, &b]);

    let dir = tempfile::tempdir().unwrap();
    let spec = registration_spec(
        "real-two",
        gitlab.url(),
        "GR1348941-real-two",
        "real-two",
        &image,
    );
    agents_connected(&c, &[&id_a, &id_b], ctx).await;
    apply(&c, dir.path(), &spec);
    rollout_complete(&c, 1, ctx).await;

    // One GitLab runner per agent, each verified under its own agent's system id.
    let runners = gitlab.runners();
    assert_eq!(runners.len(), 2, "{runners:?}");
    assert_ne!(runners[0].token, runners[1].token);
    let managers: Vec<Vec<String>> = wait_until(
        WAIT,
        "both runners verified",
        || {
            let m: Vec<Vec<String>> = runners.iter().map(|r| gitlab.managers(r.id)).collect();
            m.iter().all(|m| m.len() == 1).then_some(m)
        },
        ctx,
    )
    .await;
    assert_ne!(
        managers[0], managers[1],
        "two agents on one host need distinct system ids"
    );

    // Two slow jobs at once, one runner job slot each: each agent runs one.
    let ids: Vec<i64> = (0..2)
        .map(|i| {
            gitlab
                .enqueue_job(
                    JobSpec::new(&format!("both-{i}"))
                        .image(&image)
                        .variable("GIT_STRATEGY", "none")
                        .script(["sleep 4".to_string(), format!("echo fleet-both-{i}")]),
                )
                .id
        })
        .collect();
    let mut ran_on = Vec::new();
    for id in ids {
        let Some(f) = gitlab
            .wait_for_job_finished(id, Duration::from_secs(60))
            .await
        else {
            panic!("job {id} did not finish\n{}", ctx());
        };
        assert_eq!(f.state, JobState::Success, "{}", f.trace_text());
        ran_on.push(gitlab.job(id).and_then(|j| j.runner_id).unwrap());
    }
    ran_on.sort();
    let mut want: Vec<i64> = runners.iter().map(|r| r.id).collect();
    want.sort();
    assert_eq!(ran_on, want, "each agent's runner ran one job");

    // A job that fails, on whichever agent takes it; then the fleet's jobs as the
    // controller keeps them: both agents' jobs with their outcomes, and the filters.
    let failing = gitlab
        .enqueue_job(
            JobSpec::new("both-fails")
                .image(&image)
                .variable("GIT_STRATEGY", "none")
                .script(["exit 3".to_string()]),
        )
        .id;
    let Some(f) = gitlab
        .wait_for_job_finished(failing, Duration::from_secs(60))
        .await
    else {
        panic!("job {failing} did not finish\n{}", ctx());
    };
    assert_eq!(f.state, JobState::Failed, "{}", f.trace_text());
    let jobs = wait_until(
        WAIT,
        "three finished jobs in drover jobs",
        || {
            let v = json(&c.drover(&["jobs", "-o", "json"]));
            let v = v.as_array()?.clone();
            (v.len() == 3 && v.iter().all(|j| j["state"] != "running")).then_some(v)
        },
        ctx,
    )
    .await;
    for id in [&id_a, &id_b] {
        assert!(
            jobs.iter()
                .any(|j| j["agent_id"] == id.as_str() && j["state"] == "success"),
            "a successful job of {id} in {jobs:#?}"
        );
    }
    let failed: Vec<&serde_json::Value> = jobs.iter().filter(|j| j["state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{jobs:#?}");
    assert_eq!(failed[0]["job_id"], failing, "{jobs:#?}");
    assert_eq!(failed[0]["failure_reason"], "script_failure", "{jobs:#?}");
    assert_eq!(failed[0]["runner"], "real-two", "{jobs:#?}");
    for j in &jobs {
        let d = j["duration_seconds"].as_f64().unwrap_or(-1.0);
        assert!((0.0..120.0).contains(&d), "a duration: {j}");
        assert!(
            j["queue_wait_seconds"].as_f64().is_some(),
            "GitLab's queue time: {j}"
        );
        assert!(
            j["started_at"].is_string() && j["finished_at"].is_string(),
            "{j}"
        );
    }
    let only_a = json(&c.drover(&["jobs", "--agent", &id_a, "-o", "json"]));
    let only_a = only_a.as_array().unwrap();
    assert!(!only_a.is_empty() && only_a.iter().all(|j| j["agent_id"] == id_a.as_str()));
    let only_failed = json(&c.drover(&["jobs", "--state", "failed", "-o", "json"]));
    assert_eq!(only_failed.as_array().unwrap().len(), 1, "{only_failed}");
    let by_runner = json(&c.drover(&[
        "jobs", "--runner", "real-two", "--since", "1h", "-o", "json",
    ]));
    assert_eq!(by_runner.as_array().unwrap().len(), 3, "{by_runner}");

    // Fleet mode serves metrics for its units, with gitlab-runner's names.
    let addr = metrics_addr(&a).await;
    let body = {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let body = http_get(&addr, "/metrics").await;
            if body.contains("gitlab_runner_jobs_total{")
                && body.contains("runner_name=\"real-two\"")
                && body.contains("drover_agent_runner_units{state=\"running\"} 1")
                && body.contains("drover_agent_docker_up 1")
            {
                break body;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "metrics never showed the unit:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    assert!(body.contains("gitlab_runner_version_info"), "{body}");
    assert!(body.contains("gitlab_runner_concurrent 1"), "{body}");

    // systemd: ready once the units run, watchdog pings while the supervisor loop turns.
    wait_until(
        WAIT,
        "READY=1 and WATCHDOG=1",
        || (notify.has("READY=1") && notify.has("WATCHDOG=1")).then_some(()),
        ctx,
    )
    .await;

    // Deleting the spec: pushed without it, and once acked its runners are unregistered.
    let out = c.drover(&["runner", "delete", "real-two", "--strategy", "all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    rollout_complete(&c, 2, ctx).await;
    wait_until(
        WAIT,
        "runners unregistered after spec delete",
        || gitlab.runners().is_empty().then_some(()),
        ctx,
    )
    .await;

    // Back again (fresh registrations), then deleting agent b unregisters only its runner.
    apply(&c, dir.path(), &spec);
    rollout_complete(&c, 3, ctx).await;
    assert_eq!(gitlab.runners().len(), 2);
    let b_runner = c.agent(&id_b).unwrap()["runners"][0]["gitlab_runner_id"]
        .as_i64()
        .unwrap();
    let a_runner = c.agent(&id_a).unwrap()["runners"][0]["gitlab_runner_id"]
        .as_i64()
        .unwrap();
    assert_ne!(a_runner, b_runner);
    let out = c.drover(&["agent", "delete", &id_b]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(
        WAIT,
        "deleted agent's runner unregistered",
        || {
            let ids: Vec<i64> = gitlab.runners().iter().map(|r| r.id).collect();
            (ids == [a_runner]).then_some(())
        },
        ctx,
    )
    .await;

    // A clean stop says STOPPING=1.
    a.proc().terminate();
    a.proc().wait_exit(Duration::from_secs(40));
    assert!(notify.has("STOPPING=1"), "{:?}", notify.got.lock().unwrap());
}

/// GitLab revokes the runner's token: the agent's next request gets 403, it reports
/// `token-invalid`, the controller registers a new runner and pushes its token, the unit
/// runs again and takes jobs; the dead runner's entry is left to GitLab (its runner API
/// refuses a revoked token, so nothing can remove it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_heals() {
    init_crypto();
    let Some(image) = docker_image().await else {
        return;
    };
    let f = OneAgent::start("real-revoke", |g| {
        g.add_registration_token("GR1348941-real-revoke")
    })
    .await;
    let (gitlab, c, a, id) = (&f.gitlab, &f.c, &f.a, &f.id);
    let ctx = || f.logs();
    let spec = registration_spec(
        "real-revoke",
        gitlab.url(),
        "GR1348941-real-revoke",
        "real-revoke",
        &image,
    );
    let first = f.apply_one_runner(&spec, "one registered runner").await;
    assert_eq!(job_ok(gitlab, &image, "before", &[], ctx).await, first.id);

    assert!(gitlab.revoke_token(&first.token));
    // Healed: a new runner, its token on the agent, the unit running again.
    let healed = wait_until(
        WAIT,
        "a new registration after the revocation",
        || {
            gitlab
                .runners()
                .into_iter()
                .find(|r| r.id != first.id && !r.revoked)
        },
        ctx,
    )
    .await;
    wait_until(
        WAIT,
        "the new token on the agent",
        || a.read("applied.json").contains(&healed.token).then_some(()),
        ctx,
    )
    .await;
    let s = status_until(&a.state_dir(), |s| s["units"][0]["state"] == "running").await;
    assert_eq!(s["units"][0]["gitlab_runner_id"], healed.id, "{s:#}");
    assert!(
        s["units"][0]["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap_or("").contains("token invalid")),
        "{s:#}"
    );
    assert_eq!(job_ok(gitlab, &image, "after", &[], ctx).await, healed.id);
    let agent = wait_until(
        WAIT,
        "the controller sees the healed unit",
        || {
            c.agent(id).filter(|a| {
                a["runners"][0]["state"] == "running"
                    && a["runners"][0]["gitlab_runner_id"] == healed.id
            })
        },
        ctx,
    )
    .await;
    assert_eq!(agent["runners"][0]["name"], "real-revoke");
    // The controller checked the revoked runner's token with GitLab (verify: 403, once to
    // check the agent's token-invalid, once before unregistering) and so did not try to
    // unregister with it: its entry stays for GitLab's own stale-runner cleanup. No token of
    // it is used any more.
    wait_until(
        WAIT,
        "the revoked runner's token checked",
        || (gitlab.request_count(Endpoint::VerifyRunner, 403) >= 2).then_some(()),
        ctx,
    )
    .await;
    assert_eq!(gitlab.request_count(Endpoint::UnregisterRunner, 403), 0);
    assert!(gitlab.runner(first.id).is_none_or(|r| r.revoked));
    assert!(!a.read("applied.json").contains(&first.token));
}

/// A token with a short lifetime is rotated before it expires (persisted on the agent, the
/// new expiry kept by the controller); a token that expires anyway heals by registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_token_rotates_and_expired_token_heals() {
    init_crypto();
    let Some(image) = docker_image().await else {
        return;
    };
    let f = OneAgent::start("real-expiry", |g| {
        g.add_registration_token("GR1348941-real-expiry");
        g.set_token_lifetime(Some(Duration::from_secs(15)));
    })
    .await;
    let (gitlab, c, a) = (&f.gitlab, &f.c, &f.a);
    let ctx = || f.logs();
    let spec = registration_spec(
        "real-expiry",
        gitlab.url(),
        "GR1348941-real-expiry",
        "real-expiry",
        &image,
    );
    let first = f.apply_one_runner(&spec, "one registered runner").await;
    let first_expiry = first.token_expires_at.expect("a token with a lifetime");

    // At 75 % of the lifetime the agent resets its token: same runner, new token, later
    // expiry; the new token is in the agent's state file and the controller has the expiry.
    let rotated = wait_until(
        WAIT,
        "token rotated before expiry",
        || {
            gitlab
                .runner(first.id)
                .filter(|r| r.token != first.token && r.token_expires_at > Some(first_expiry))
        },
        ctx,
    )
    .await;
    assert!(
        time::OffsetDateTime::now_utc() < first_expiry,
        "rotated before the old token expired"
    );
    // No more rotations from here: the next tokens never expire.
    gitlab.set_token_lifetime(None);
    let expiry = rotated.token_expires_at.unwrap();
    wait_until(
        WAIT,
        "rotated token persisted",
        || {
            a.read("applied.json")
                .contains(&rotated.token)
                .then_some(())
        },
        ctx,
    )
    .await;
    wait_until(
        WAIT,
        "controller stored the new expiry",
        || {
            let got = json(&c.drover(&["runner", "get", "real-expiry", "-o", "json"]));
            let at = got["agents"][0]["token_expires_at"].as_str()?.to_string();
            let at =
                time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            ((at - expiry).whole_seconds().abs() <= 1).then_some(())
        },
        ctx,
    )
    .await;
    let current = gitlab.runner(first.id).unwrap().token;
    assert_eq!(job_ok(gitlab, &image, "rotated", &[], ctx).await, first.id);

    // The token expires anyway (GitLab answers 403): healed by a new registration.
    assert!(gitlab.expire_token(&current));
    let healed = wait_until(
        WAIT,
        "a new registration after expiry",
        || gitlab.runners().into_iter().find(|r| r.id != first.id),
        ctx,
    )
    .await;
    status_until(&a.state_dir(), |s| {
        s["units"][0]["state"] == "running" && s["units"][0]["gitlab_runner_id"] == healed.id
    })
    .await;
    assert_eq!(job_ok(gitlab, &image, "healed", &[], ctx).await, healed.id);
}

/// Issue 14 item 5: runner tokens that expire after 40 s, rotated by the agent at 75 % of
/// their lifetime, keep the agent `healthy` over three rotations (the agent was degraded
/// with `token expiring: in 11s` before); every rotation reaches the controller checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_that_rotate_on_time_stay_healthy() {
    init_crypto();
    let Some(image) = docker_image().await else {
        return;
    };
    let f = OneAgent::start("real-short", |g| {
        g.add_registration_token("GR1348941-real-short");
        g.set_token_lifetime(Some(Duration::from_secs(40)));
    })
    .await;
    let (gitlab, c, id) = (&f.gitlab, &f.c, &f.id);
    let ctx = || f.logs();
    let spec = registration_spec(
        "real-short",
        gitlab.url(),
        "GR1348941-real-short",
        "real-short",
        &image,
    );
    let first = f.apply_one_runner(&spec, "one registered runner").await;
    wait_until(
        WAIT,
        "the runner running",
        || {
            c.agent(id)
                .filter(|a| a["runners"][0]["state"] == "running")
        },
        ctx,
    )
    .await;
    // Only token reasons count: the host this runs on may have its own (a full disk).
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    while gitlab.request_count(Endpoint::ResetToken, 201) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "three rotations within 150 s\n{}",
            ctx()
        );
        if let Some(a) = c.agent(id) {
            seen.extend(
                a["reasons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str())
                    .filter(|r| r.contains("token"))
                    .map(|r| format!("{}: {r}", a["state"])),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(seen.is_empty(), "token reasons: {seen:#?}\n{}", ctx());
    // Same runner, its current token is the one the controller pushes.
    let now = gitlab.runner(first.id).expect("the runner is kept");
    assert_ne!(now.token, first.token);
    let events = json(&c.drover(&["events", "--agent", id, "-o", "json"]));
    let rotated = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "runner-token-rotated"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("verified with gitlab")
        })
        .count();
    assert!(rotated >= 2, "{events:#}");
    assert!(
        !events.to_string().contains("agent-claim-refused"),
        "{events:#}"
    );
}

/// An agent in its own network namespace: its address changes, it reports `ips-changed`
/// and restarts its job loop on new connections (whose job requests tell GitLab the new
/// address: nothing is verified), the controller records the new address, jobs keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_change_is_reported_and_loops_restart() {
    init_crypto();
    let mut ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            let msg = format!("network namespaces unavailable (root and iproute2 needed): {e}");
            if drover_tests::images::in_ci() {
                panic!("{msg}");
            }
            eprintln!("skipping: {msg}");
            return;
        }
    };
    let Some(image) = docker_image().await else {
        return;
    };
    let host_ip = ns.host_ip();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let gitlab = FakeGitLab::start_on_url(listener, format!("http://{host_ip}:{port}"));
    gitlab.set_trace_update_interval(1);
    gitlab.add_registration_token("GR1348941-real-netns");
    let c = Controller::start_listening("0.0.0.0:0", &["--heartbeat-interval", "1s"]);
    let grpc_port = c.grpc_addr.rsplit(':').next().unwrap().to_string();
    let token = c.create_token(&["--label", "site=real-netns"]);
    let mut a = Agent::new();
    let id = a.enroll_ok(&format!("https://{host_ip}:{grpc_port}"), &token);
    a.run_with(&["ip", "netns", "exec", &ns.name], &[], &[]);
    let ctx = || logs(&c, &[&a]);
    agents_connected(&c, &[&id], ctx).await;
    let dir = tempfile::tempdir().unwrap();
    apply(
        &c,
        dir.path(),
        &registration_spec(
            "real-netns",
            gitlab.url(),
            "GR1348941-real-netns",
            "real-netns",
            &image,
        ),
    );
    rollout_complete(&c, 1, ctx).await;
    let old_ip = ns.ns_ip();
    wait_until(
        WAIT,
        "the namespace address in drover agents",
        || {
            c.agent(&id).filter(|a| {
                a["ips"]
                    .as_array()
                    .is_some_and(|ips| ips.contains(&old_ip.clone().into()))
            })
        },
        ctx,
    )
    .await;
    let runner = wait_until(
        WAIT,
        "one registered runner",
        || gitlab.runners().into_iter().next(),
        ctx,
    )
    .await;
    assert_eq!(
        job_ok(&gitlab, &image, "before-move", &[], ctx).await,
        runner.id
    );

    let verifies = gitlab.request_count(Endpoint::VerifyRunner, 200);
    let requests = gitlab.request_count(Endpoint::RequestJob, 204);
    let new_ip = ns.change_address().expect("change the namespace address");
    // The controller records the new address...
    let agent = wait_until(
        Duration::from_secs(50),
        "the new address in drover agents",
        || {
            c.agent(&id).filter(|a| {
                let ips = a["ips"].as_array().cloned().unwrap_or_default();
                ips.contains(&new_ip.clone().into()) && !ips.contains(&old_ip.clone().into())
            })
        },
        ctx,
    )
    .await;
    assert_eq!(agent["runners"][0]["name"], "real-netns");
    // ...the agent reported the change and restarted its job loop.
    wait_until(
        Duration::from_secs(50),
        "ips-changed reported and the loop restarted",
        || {
            let reported = c.proc.log_text().contains("ips-changed");
            let s = drover_tests::fleet_support::status_json(&a.state_dir());
            let log = s["units"][0]["log"].to_string();
            (reported
                && log.contains("ips changed")
                && log.contains(&new_ip)
                && log.contains("job loop restarted on new connections"))
            .then_some(())
        },
        ctx,
    )
    .await;
    assert!(gitlab.request_count(Endpoint::RequestJob, 204) > requests);
    assert_eq!(
        gitlab.request_count(Endpoint::VerifyRunner, 200),
        verifies,
        "nothing re-verified"
    );
    assert_eq!(gitlab.runners().len(), 1, "same runner, no re-registration");
    assert_eq!(
        job_ok(&gitlab, &image, "after-move", &[], ctx).await,
        runner.id
    );
}

/// A spec with a runner-creation token: the controller creates the runner with
/// `POST /user/runners`; when GitLab revokes its token the healed agent gets a new runner and
/// the dead one is deleted by id (no stale entry); deleting the spec deletes the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_creation_token_heals_without_stale_runners() {
    init_crypto();
    let Some(image) = docker_image().await else {
        return;
    };
    let f = OneAgent::start("real-creation", |g| {
        g.add_access_token("glpat-real-creation")
    })
    .await;
    let (gitlab, c) = (&f.gitlab, &f.c);
    let ctx = || f.logs();
    let spec = format!(
        "[[runners]]\nname = \"real-creation\"\nurl = \"{}\"\n\
         runner_creation_token = \"glpat-real-creation\"\nrunner_type = \"group_type\"\n\
         group_id = 9\nlimit = 1\nexecutor = \"docker\"\n\
         [runners.selector]\nsite = \"real-creation\"\n\
         [runners.docker]\nimage = \"{image}\"\npull_policy = \"never\"\n",
        gitlab.url()
    );
    let first = f.apply_one_runner(&spec, "one created runner").await;
    assert_eq!(
        gitlab.created_runners(),
        [first.id],
        "made by POST /user/runners"
    );
    assert_eq!(job_ok(gitlab, &image, "created", &[], ctx).await, first.id);

    assert!(gitlab.revoke_token(&first.token));
    let healed = wait_until(
        WAIT,
        "a new runner and no stale one",
        || {
            let rs = gitlab.runners();
            (rs.len() == 1 && rs[0].id != first.id).then(|| rs[0].clone())
        },
        ctx,
    )
    .await;
    assert!(gitlab.request_count(Endpoint::DeleteRunner, 204) >= 1);
    assert_eq!(
        job_ok(gitlab, &image, "recreated", &[], ctx).await,
        healed.id
    );

    let out = c.drover(&["runner", "delete", "real-creation", "--strategy", "all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    rollout_complete(c, 2, ctx).await;
    wait_until(
        WAIT,
        "runner deleted with the spec",
        || gitlab.runners().is_empty().then_some(()),
        ctx,
    )
    .await;
}
