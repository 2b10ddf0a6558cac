//! The fleet's jobs end to end, from known data: the real `drover serve`, two test-side
//! agents (`drover_tests::fake_agent`, real enrollment and sessions) sending job events
//! with known outcomes, durations and queue waits (and hostile ones), then
//! `drover jobs -o json` and its filters, the controller's job metrics, and the status
//! page's jobs panel and SVG charts, read from the HTML and from the DOM of headless
//! Chromium, with a screenshot saved in the test output dir.
//! (The jobs of two real agents running real jobs: `fleet_real_agents.rs`.)

use std::path::Path;
use std::time::Duration;

use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;
use drover_tests::chromium;
use drover_tests::fake_agent;
use drover_tests::fleet_support::init_crypto;
use drover_tests::harness::{Controller, stderr, stdout, wait_for};
use drover_tests::scrape::http_get;

fn now() -> prost_types::Timestamp {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    prost_types::Timestamp {
        seconds: t.as_secs() as i64,
        nanos: 0,
    }
}

/// A job event: `state` with its reason, `duration` (seconds, finished jobs) and `wait`.
fn job(
    runner: &str,
    id: i64,
    state: v1::JobState,
    reason: &str,
    duration: Option<f64>,
    wait: Option<f64>,
) -> v1::AgentMessage {
    v1::AgentMessage {
        kind: Some(AgentKind::JobEvent(v1::JobEvent {
            runner: runner.into(),
            job_id: id,
            state: v1::JobState::as_str_name(&state).into(),
            failure_reason: reason.into(),
            at: Some(now()),
            job_state: state.into(),
            queue_wait_seconds: wait,
            started_at: Some(now()),
            duration_seconds: duration,
        })),
    }
}

fn drover_json(c: &Controller, args: &[&str]) -> Vec<serde_json::Value> {
    let out = c.drover(args);
    assert!(out.status.success(), "drover {args:?}: {}", stderr(&out));
    serde_json::from_str::<serde_json::Value>(&stdout(&out))
        .unwrap_or_else(|e| panic!("drover {args:?}: {e}: {}", stdout(&out)))
        .as_array()
        .cloned()
        .expect("a JSON array")
}

fn output_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet_jobs");
    std::fs::create_dir_all(&dir).expect("create test output dir");
    dir
}

/// Every `<title>` text of `html`, unescaped enough for the values the charts write.
fn titles(html: &str) -> Vec<String> {
    html.split("<title>")
        .skip(1)
        .filter_map(|s| s.split_once("</title>").map(|x| x.0.replace("&amp;", "&")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_jobs_listed_filtered_counted_and_charted() {
    use v1::JobState::{Canceled, Failed, Running, Success};
    init_crypto();
    let c = Controller::start();
    let token = c.create_token(&["--uses", "2"]);
    let a = fake_agent::enroll(&c, &token, "box-a").await.unwrap();
    let b = fake_agent::enroll(&c, &token, "box-b").await.unwrap();
    let ca = c.read("ca.crt");
    let (ta, _ia) = fake_agent::open_session(&c.grpc_addr, &ca, &a, 0)
        .await
        .unwrap();
    let (tb, _ib) = fake_agent::open_session(&c.grpc_addr, &ca, &b, 0)
        .await
        .unwrap();

    for m in [
        job("r-a", 101, Running, "", None, Some(2.0)),
        job("r-a", 101, Success, "", Some(30.0), Some(2.0)),
        job("r-a", 102, Running, "", None, Some(4.0)),
        job("r-a", 102, Failed, "script_failure", Some(10.0), Some(4.0)),
        job("r-a", 103, Running, "", None, Some(1.0)),
        // Hostile: no job id, a negative one, a duration that is no duration.
        job("r-a", 0, Success, "", Some(1.0), None),
        job("r-a", -5, Failed, "x", Some(1.0), None),
        job("r-a", 104, Canceled, "", Some(f64::NAN), Some(-3.0)),
    ] {
        ta.send(m).await.unwrap();
    }
    for m in [
        job("r-b", 201, Success, "", Some(50.0), Some(8.0)),
        job("r-b", 202, Failed, "runner_system_failure", Some(5.0), None),
        job("r-b", 203, Canceled, "", Some(20.0), None),
        // Job ids are per agent: agent b's 101 is not agent a's.
        job("r-b", 101, Running, "", None, None),
        job("r-b", 101, Success, "", Some(40.0), None),
    ] {
        tb.send(m).await.unwrap();
    }

    let all = wait_for(Duration::from_secs(20), "eight jobs listed", || {
        let v = drover_json(&c, &["jobs", "-o", "json"]);
        (v.len() == 8).then_some(v)
    });
    let find = |agent: &str, id: i64| {
        all.iter()
            .find(|j| j["agent_id"] == agent && j["job_id"] == id)
            .unwrap_or_else(|| panic!("job {id} of {agent} in {all:#?}"))
            .clone()
    };
    let j = find(&a.id, 102);
    assert_eq!(j["state"], "failed");
    assert_eq!(j["failure_reason"], "script_failure");
    assert_eq!(j["duration_seconds"], 10.0);
    assert_eq!(j["queue_wait_seconds"], 4.0);
    assert_eq!(j["runner"], "r-a");
    assert!(
        j["started_at"].is_string() && j["finished_at"].is_string(),
        "{j}"
    );
    let j = find(&a.id, 103);
    assert_eq!(j["state"], "running");
    assert!(
        j["finished_at"].is_null() && j["duration_seconds"].is_null(),
        "{j}"
    );
    let j = find(&a.id, 104);
    assert_eq!(j["state"], "canceled");
    assert!(
        j["duration_seconds"].is_null() && j["queue_wait_seconds"].is_null(),
        "{j}"
    );
    assert_eq!(find(&b.id, 101)["state"], "success");
    assert_eq!(find(&a.id, 101)["duration_seconds"], 30.0);
    assert_eq!(find(&b.id, 202)["failure_reason"], "runner_system_failure");
    assert!(
        all.iter().all(|j| j["job_id"].as_i64().unwrap() > 0),
        "{all:#?}"
    );

    let count = |args: &[&str]| drover_json(&c, &[&["jobs", "-o", "json"], args].concat()).len();
    assert_eq!(count(&["--agent", &a.id]), 4);
    assert_eq!(count(&["--agent", &b.id]), 4);
    assert_eq!(count(&["--runner", "r-b"]), 4);
    assert_eq!(count(&["--state", "failed"]), 2);
    assert_eq!(count(&["--state", "running"]), 1);
    assert_eq!(count(&["--state", "canceled", "--agent", &b.id]), 1);
    assert_eq!(count(&["--since", "1h"]), 8);
    assert_eq!(count(&["--limit", "3"]), 3);
    let out = c.drover(&["jobs", "--state", "paused"]);
    assert!(!out.status.success());
    let table = stdout(&c.drover(&["jobs", "--state", "failed"]));
    assert!(
        table.contains("script_failure") && table.contains("runner_system_failure"),
        "{table}"
    );

    // Controller metrics: one count per ended job, by outcome and reason.
    let text = http_get(&c.http_addr, "/metrics").await;
    for line in [
        "drover_jobs_total{outcome=\"success\",reason=\"\"} 3",
        "drover_jobs_total{outcome=\"failed\",reason=\"script_failure\"} 1",
        "drover_jobs_total{outcome=\"failed\",reason=\"runner_system_failure\"} 1",
        "drover_jobs_total{outcome=\"canceled\",reason=\"\"} 2",
        // 30, 10, 50, 5, 20, 40 (the NaN is no duration).
        "drover_job_duration_seconds_count 6",
        "drover_job_duration_seconds_sum 155.0",
        // The three starts of agent a that said how long GitLab queued them.
        "drover_job_queue_wait_seconds_count 3",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }

    // The status page: the panel and the charts' values, as served.
    let html = http_get(&c.http_addr, "/").await;
    let t = titles(&html);
    let has = |want: &str| assert!(t.iter().any(|x| x == want), "no title {want:?} in {t:#?}");
    has("Jobs per hour by outcome, last 24 h: 3 success, 2 failed, 2 canceled");
    // Durations 5 10 20 30 40 50; waits 2 4 1 8 (the running job's counts).
    has("Job duration (6 jobs) and queue wait (4 jobs) percentiles, last 24 h, seconds");
    has("duration p50 20 s");
    has("duration p90 50 s");
    has("queue wait p50 2 s");
    has("queue wait p99 8 s");
    assert!(
        t.iter().any(|x| x.starts_with("Agents per state, ")),
        "{t:#?}"
    );
    assert!(html.contains("Running now (1)"), "{html}");
    assert!(html.contains("Failed in the last hour (2)"), "{html}");
    assert!(html.contains("id=\"failure-reasons\""), "{html}");
    // The hourly bars add up to the jobs that ended (all just now: one bar, or two across
    // the turn of an hour).
    let bars = |outcome: &str| -> u32 {
        t.iter()
            .filter_map(|x| x.strip_suffix(&format!(" {outcome}")))
            .filter_map(|x| x.rsplit_once(": ").and_then(|(_, n)| n.parse::<u32>().ok()))
            .sum()
    };
    assert_eq!(
        (bars("success"), bars("failed"), bars("canceled")),
        (3, 2, 2),
        "{t:#?}"
    );

    // In headless Chromium: the SVG is parsed as SVG, titles and all, and drawn.
    let Some(bin) = chromium::find_or_skip("the headless Chromium part") else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", c.http_addr.replace("0.0.0.0", "127.0.0.1"));
    let dom = chromium::run(&bin, profile.path(), &["--dump-dom".into(), url.clone()]);
    for id in ["chart-jobs", "chart-percentiles", "chart-agents"] {
        assert!(
            dom.contains(&format!("<svg id=\"{id}\"")),
            "no {id} in:\n{dom}"
        );
    }
    let t = titles(&dom);
    assert!(
        t.iter()
            .any(|x| x == "Jobs per hour by outcome, last 24 h: 3 success, 2 failed, 2 canceled"),
        "{t:#?}"
    );
    assert!(t.iter().any(|x| x == "duration p90 50 s"), "{t:#?}");
    let png = output_dir().join("fleet-jobs.png");
    let bytes = chromium::screenshot(&bin, profile.path(), &url, &png, 2200);
    assert!(
        bytes.len() > 10_000,
        "a page with charts: {} bytes",
        bytes.len()
    );
    eprintln!("fleet jobs screenshot: {}", png.display());
    drop((ta, tb));
}
