//! The real agent dies or loses Docker mid-job: `kill -9` then restart (the job is reported
//! failed with a trace line saying why, nothing of the agent is left in Docker), and a Docker
//! daemon restart (the job fails clearly, the agent keeps serving).
//!
//! The daemon restart disrupts every other test using the shared engine, so it runs only with
//! `DROVER_TEST_DOCKERD_RESTART=1` (`tests/run.sh` runs it alone, after the suite).

mod standalone_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListNetworksOptions;
use drover_tests::fake_gitlab::JobState;
use standalone_support::{E2e, start};

const JOB_WAIT: Duration = Duration::from_secs(120);

async fn networks(e: &E2e) -> Vec<String> {
    let agent = e.agent_id().await;
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("com.drover.agent={agent}")],
    );
    e.docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .expect("list networks")
        .into_iter()
        .filter_map(|n| n.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_job_then_restart_reports_the_job_failed_and_leaves_nothing() {
    let Some(mut e) = start("kill9", 1, "").await else {
        return;
    };
    let web = match drover_tests::images::busybox_web_image().await {
        Ok(i) => i,
        Err(err) => {
            eprintln!("skipping: {err:#}");
            return;
        }
    };
    // A service, so the job also owns a network.
    let id = e
        .gitlab
        .enqueue_job(
            e.long_job("killed")
                .service_json(serde_json::json!({"name": web, "alias": "web"})),
        )
        .id;
    e.wait_for_tick(id, "tick-2").await;
    e.agent.signal("KILL");
    assert!(e.agent.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        !e.containers().await.is_empty(),
        "kill -9 leaves the job's containers behind (else this test proves nothing)"
    );
    assert!(!networks(&e).await.is_empty(), "and its network");
    assert_eq!(e.gitlab.job_state(id), Some(JobState::Running));

    e.agent.respawn();
    let f = e.finished(id, JOB_WAIT).await;
    assert_eq!(f.state, JobState::Failed);
    assert_eq!(f.failure_reason.as_deref(), Some("runner_system_failure"));
    let t = f.trace_text();
    assert!(t.contains("tick-2"), "the trace so far is kept: {t}");
    assert!(
        t.contains("the agent stopped while running this job"),
        "{t}"
    );
    let left = e.wait_no_containers(Duration::from_secs(30)).await;
    assert!(
        left.is_empty(),
        "containers left: {left:?}\n{}",
        e.agent.stderr()
    );
    let end = Instant::now() + Duration::from_secs(30);
    while !networks(&e).await.is_empty() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(networks(&e).await, Vec::<String>::new());

    // The restarted agent serves the next job.
    let next = e
        .gitlab
        .enqueue_job(e.job("next").script(["echo next-ok"]))
        .id;
    assert_eq!(e.finished(next, JOB_WAIT).await.state, JobState::Success);
}

fn docker_up() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Stops the engine (SIGTERM to `dockerd`), waits until it is down, starts it again
/// detached, waits until it answers.
fn restart_dockerd() {
    let pid = std::process::Command::new("pidof")
        .arg("dockerd")
        .output()
        .expect("pidof dockerd");
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    assert!(!pid.is_empty(), "no dockerd process to restart");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill dockerd");
    assert!(status.success());
    let end = Instant::now() + Duration::from_secs(60);
    while std::process::Command::new("kill")
        .args(["-0", &pid])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < end, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::File::create(std::env::temp_dir().join("drover-dockerd-restart.log"))
        .expect("dockerd log");
    // `setsid -f` forks dockerd into its own session and returns at once.
    let started = std::process::Command::new("setsid")
        .args(["-f", "dockerd"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .status()
        .expect("start dockerd");
    assert!(started.success(), "setsid -f dockerd failed");
    let end = Instant::now() + Duration::from_secs(60);
    while !docker_up() {
        assert!(Instant::now() < end, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_restart_mid_job_fails_it_clearly_and_the_agent_keeps_serving() {
    if std::env::var("DROVER_TEST_DOCKERD_RESTART").as_deref() != Ok("1") {
        eprintln!(
            "skipping: restarts the shared Docker daemon; set DROVER_TEST_DOCKERD_RESTART=1 (tests/run.sh runs it alone)"
        );
        return;
    }
    let Some(e) = start("dockerd", 1, "").await else {
        return;
    };
    let id = e.gitlab.enqueue_job(e.long_job("interrupted")).id;
    e.wait_for_tick(id, "tick-2").await;
    tokio::task::spawn_blocking(restart_dockerd)
        .await
        .expect("restart dockerd");
    let f = e.finished(id, JOB_WAIT).await;
    assert_eq!(f.state, JobState::Failed, "{}", f.trace_text());
    assert_eq!(f.failure_reason.as_deref(), Some("runner_system_failure"));
    assert!(
        f.trace_text()
            .contains("ERROR: Job failed (system failure)"),
        "{}",
        f.trace_text()
    );
    let next = e
        .gitlab
        .enqueue_job(e.job("after-restart").script(["echo back-ok"]))
        .id;
    let f = e.finished(next, JOB_WAIT).await;
    assert_eq!(f.state, JobState::Success, "{}", f.trace_text());
    assert!(f.trace_text().contains("back-ok"));
}
