//! The Docker engine stalls (not dies) mid-job: `kill -STOP` of `dockerd` for 60 s, then
//! `kill -CONT`. The real agent in standalone mode must not hang: its Docker calls end with a
//! timeout naming the call, the host shows degraded (`docker engine unreachable`), a job that
//! meets the stall fails with a trace line saying Docker did not answer or completes, and
//! after `kill -CONT` the agent takes jobs again within 30 s.
//!
//! Freezing the engine disrupts every other test using it, so this runs only with
//! `DROVER_TEST_DOCKERD_STOP=1` (`tests/run.sh` runs it alone, after the suite).

mod standalone_support;

use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::JobState;
use drover_tests::standalone_agent::AgentOptions;
use standalone_support::{DEFAULT_LOG, start_with};

const STALL: Duration = Duration::from_secs(60);
const JOB_WAIT: Duration = Duration::from_secs(240);

/// `dockerd` stopped with SIGSTOP; SIGCONT when dropped, panics included, so the shared
/// engine is never left frozen by this test.
struct Stopped {
    pid: String,
}

impl Stopped {
    fn dockerd() -> Stopped {
        let out = std::process::Command::new("pidof")
            .arg("dockerd")
            .output()
            .expect("pidof dockerd");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            !pid.is_empty() && !pid.contains(' '),
            "want exactly one dockerd, got {pid:?}"
        );
        signal("STOP", &pid);
        Stopped { pid }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("CONT", &self.pid);
    }
}

fn signal(name: &str, pid: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("kill -{name} {pid} failed");
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_stopped_mid_job_times_out_clearly_and_the_agent_serves_after_cont() {
    if std::env::var("DROVER_TEST_DOCKERD_STOP").as_deref() != Ok("1") {
        eprintln!(
            "skipping: freezes the shared Docker daemon for a minute; set DROVER_TEST_DOCKERD_STOP=1 (tests/run.sh runs it alone)"
        );
        return;
    }
    // Metrics on: standalone mode probes the host (Docker included) only for them.
    let options = AgentOptions {
        log_filter: DEFAULT_LOG.to_string(),
        args: vec!["--metrics-listen".to_string(), "127.0.0.1:0".to_string()],
        state_dir: None,
    };
    let Some(e) = start_with("dstall", 2, "", options).await else {
        return;
    };
    // A job running when the engine stops: 30 s of output, so it ends during the stall.
    let running = e
        .gitlab
        .enqueue_job(
            e.job("running")
                .script(["i=0; while [ $i -lt 60 ]; do echo tick-$i; i=$((i+1)); sleep 0.5; done"]),
        )
        .id;
    e.wait_for_tick(running, "tick-2").await;

    let stopped_at = Instant::now();
    let guard = Stopped::dockerd();
    // A job taken while the engine is stopped: its first Docker call meets the stall.
    let during = e
        .gitlab
        .enqueue_job(e.job("during").script(["echo during-ok"]))
        .id;
    let degraded = async {
        while !e
            .agent
            .stderr()
            .lines()
            .any(|l| l.contains("host degraded: ") && l.contains("docker engine unreachable"))
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(STALL.saturating_sub(stopped_at.elapsed()), degraded)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no `host degraded` during the stall; stderr:\n{}",
                e.agent.stderr()
            )
        });
    let degraded_after = stopped_at.elapsed();
    let f = e.finished(during, STALL).await;
    let during_ended = stopped_at.elapsed();
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Failed, "{t}");
    assert!(t.contains("docker engine did not answer for "), "{t}");
    let during_error = t
        .lines()
        .find(|l| l.contains("ERROR: Job failed"))
        .unwrap_or_default()
        .to_string();
    assert!(
        e.gitlab.job_state(running) == Some(JobState::Running),
        "the running job ended during the stall: {:?}",
        e.gitlab.job_state(running)
    );

    tokio::time::sleep(STALL.saturating_sub(stopped_at.elapsed())).await;
    drop(guard);
    let resumed = Instant::now();
    let next = e
        .gitlab
        .enqueue_job(e.job("after").script(["echo after-ok"]))
        .id;
    assert!(
        e.gitlab.wait_for_job_running(next, JOB_WAIT).await,
        "no job taken after CONT; stderr:\n{}",
        e.agent.stderr()
    );
    let taken_after = resumed.elapsed();
    let f = e.finished(next, JOB_WAIT).await;
    assert_eq!(f.state, JobState::Success, "{}", f.trace_text());
    assert!(f.trace_text().contains("after-ok"));
    let next_done = resumed.elapsed();

    let f = e.finished(running, JOB_WAIT).await;
    let running_done = resumed.elapsed();
    let t = f.trace_text();
    match f.state {
        JobState::Success => assert!(t.contains("tick-59"), "output lost: {t}"),
        JobState::Failed => assert!(t.contains("docker engine did not answer"), "{t}"),
        s => panic!("running job ended {s:?}: {t}"),
    }
    let healthy = async {
        while !e.agent.stderr().contains("host healthy again") {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let healthy_after = tokio::time::timeout(Duration::from_secs(60), healthy)
        .await
        .map(|()| secs(resumed.elapsed()))
        .unwrap_or_else(|_| "not within 60s".to_string());
    let left = e.wait_no_containers(Duration::from_secs(30)).await;
    assert!(left.is_empty(), "containers left: {left:?}");
    eprintln!(
        "FIGURES dockerd stopped {}: job taken during the stall failed {} after STOP; \
         host degraded logged {} after STOP; job running at STOP ended {:?} {} after CONT; \
         next job taken {} and done {} after CONT; host healthy again {} after CONT; failed job's trace: {during_error}",
        secs(STALL),
        secs(during_ended),
        secs(degraded_after),
        f.state,
        secs(running_done),
        secs(taken_after),
        secs(next_done),
        healthy_after,
    );
}
