//! The real `drover-agent run --config ... --metrics-listen 127.0.0.1:0` against the fake
//! GitLab and the real Docker engine: one job runs, then `/metrics` is scraped and parsed.
//!
//! The agent logs `metrics listening on ADDR` (info) with the bound address; the test reads
//! the port from its stderr.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, JobState};
use drover_tests::scrape::{http_get, metrics_addr_in};
use drover_tests::standalone_agent::{AgentOptions, StandaloneAgent};

/// One sample: (name, labels) → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses OpenMetrics text: comments skipped, `# EOF` required last, label values without
/// escaped quotes (none of ours have any).
fn parse(text: &str) -> Samples {
    assert_eq!(text.lines().last(), Some("# EOF"), "no # EOF:\n{text}");
    let mut out = Samples::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        out.insert((name.to_string(), map), v);
    }
    out
}

/// Samples named `name` whose labels include every pair of `labels`.
fn find(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    s.iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| *v)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_one_job() {
    let Some((_docker, image)) =
        drover_tests::images::docker_and_busybox("metrics_after_one_job").await
    else {
        return;
    };
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    let token = format!("glrt-metrics{:08x}", rand::random::<u32>());
    gitlab.add_runner(&token);

    let config = format!(
        "concurrent = 2\ncheck_interval = 1\n\n\
         [[runners]]\n  name = \"e2e-metrics\"\n  url = \"{url}\"\n  token = \"{token}\"\n  \
         token_expires_at = \"2031-02-03T04:05:06Z\"\n  limit = 1\n  executor = \"docker\"\n  \
         [runners.docker]\n    image = \"{image}\"\n    pull_policy = \"never\"\n",
        url = gitlab.url()
    );
    let options = AgentOptions {
        args: vec!["--metrics-listen".to_string(), "127.0.0.1:0".to_string()],
        ..AgentOptions::default()
    };
    let agent = StandaloneAgent::start(&config, options).expect("start drover-agent");

    let end = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let err = agent.stderr();
        if let Some(addr) = metrics_addr_in(&err) {
            break addr;
        }
        assert!(
            Instant::now() < end,
            "agent never logged its metrics address; stderr:\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let health = http_get(&addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let id = gitlab
        .enqueue_job(
            JobSpec::new("metrics")
                .image(&image)
                .variable("GIT_STRATEGY", "none")
                .script(["echo metered"]),
        )
        .id;
    let f = gitlab
        .wait_for_job_finished(id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|| panic!("job did not finish; stderr:\n{}", agent.stderr()));
    assert_eq!(f.state, JobState::Success, "{}", f.trace_text());

    // The job's end reaches the metrics through the runner's event channel: poll briefly.
    let runner = [("runner_name", "e2e-metrics")];
    let end = Instant::now() + Duration::from_secs(20);
    let (resp, s) = loop {
        let resp = http_get(&addr, "/metrics").await;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let s = parse(body);
        let done = find(&s, "gitlab_runner_job_duration_seconds_count", &runner) == [1.0];
        if done || Instant::now() >= end {
            break (resp, s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{resp}"
    );
    let short_token: String = token["glrt-".len()..].chars().take(8).collect();
    let with_token = [
        ("runner", short_token.as_str()),
        ("runner_name", "e2e-metrics"),
    ];
    assert_eq!(
        find(&s, "gitlab_runner_jobs_total", &with_token),
        [1.0],
        "{resp}"
    );
    assert_eq!(
        find(
            &s,
            "gitlab_runner_jobs",
            &[("runner_name", "e2e-metrics"), ("state", "running")]
        ),
        [0.0],
        "{resp}"
    );
    assert!(
        find(&s, "gitlab_runner_failed_jobs_total", &runner).is_empty(),
        "{resp}"
    );
    let version = find(
        &s,
        "gitlab_runner_version_info",
        &[("name", "drover-agent")],
    );
    assert_eq!(version, [1.0], "{resp}");
    let job_requests = find(
        &s,
        "gitlab_runner_api_request_statuses_total",
        &[("endpoint", "request_job"), ("status", "201")],
    );
    assert_eq!(job_requests.len(), 1, "{resp}");
    assert!(job_requests[0] >= 1.0, "{resp}");
    assert!(
        !find(
            &s,
            "gitlab_runner_api_request_statuses_total",
            &[("endpoint", "update_job")]
        )
        .is_empty(),
        "{resp}"
    );
    assert_eq!(find(&s, "gitlab_runner_concurrent", &[]), [2.0], "{resp}");
    assert_eq!(
        find(&s, "gitlab_runner_limit", &with_token),
        [1.0],
        "{resp}"
    );
    assert_eq!(
        find(
            &s,
            "drover_agent_runner_token_expires_at_seconds",
            &with_token
        ),
        [1_927_857_906.0],
        "{resp}"
    );
    assert_eq!(
        find(&s, "drover_agent_runner_units", &[("state", "running")]),
        [1.0],
        "{resp}"
    );
    assert_eq!(find(&s, "drover_agent_docker_up", &[]), [1.0], "{resp}");
    let disk = find(
        &s,
        "drover_agent_host_disk_total_bytes",
        &[("disk", "docker")],
    );
    assert!(disk.len() == 1 && disk[0] > 0.0, "{resp}");
    assert!(
        !find(&s, "gitlab_runner_errors_total", &[("level", "error")]).is_empty(),
        "{resp}"
    );
}
