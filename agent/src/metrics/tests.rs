use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::health::{DiskSpace, DockerStatus};
use drover_gitlab::stats::{NO_RESPONSE, endpoint};
use drover_job::executor::FailureReason;

/// One sample: name and labels → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// A small OpenMetrics text parser: samples only, `# EOF` required last.
fn parse(text: &str) -> Samples {
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    let mut out = Samples::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        out.insert((name.to_string(), map), value.parse().unwrap());
    }
    out
}

fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.get(&(name.to_string(), want)).copied()
}

fn runner() -> RunnerInfo {
    RunnerInfo {
        labels: RunnerLabels {
            runner: "abcd1234".into(),
            runner_name: "edge".into(),
            system_id: "s_0123456789ab".into(),
        },
        limit: Some(2),
        token_expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
    }
}

const R: [(&str, &str); 3] = [
    ("runner", "abcd1234"),
    ("runner_name", "edge"),
    ("system_id", "s_0123456789ab"),
];

#[test]
fn fresh_registry_has_version_info_and_no_host_values() {
    let m = Metrics::new();
    let text = m.encode().unwrap();
    let s = parse(&text);
    let v = s
        .iter()
        .find(|((n, _), _)| n == "gitlab_runner_version_info")
        .expect("gitlab_runner_version_info");
    assert_eq!(v.0.1["name"], "drover-agent");
    assert_eq!(v.0.1["version"], env!("CARGO_PKG_VERSION"));
    assert!(s.keys().any(|(n, _)| n == "drover_agent_build_info"));
    assert_eq!(get(&s, "gitlab_runner_concurrent", &[]), Some(0.0));
    assert!(!text.contains("drover_agent_docker_up "), "{text}");
    assert!(!text.contains("drover_agent_host_memory"), "{text}");
}

#[test]
fn jobs_are_counted_per_runner_with_gitlab_runner_labels() {
    let m = Metrics::new();
    m.set_runners(&[runner()]);
    m.set_concurrent(4);
    m.observe_event(&RunnerEvent::JobStarted {
        runner: "edge".into(),
        job_id: 7,
        queue_wait: None,
    });
    let s = parse(&m.encode().unwrap());
    let running = [
        R[0],
        R[1],
        R[2],
        ("state", "running"),
        ("stage", ""),
        ("executor_stage", ""),
    ];
    let idle = [
        R[0],
        R[1],
        R[2],
        ("state", "idle"),
        ("stage", "idle"),
        ("executor_stage", "idle"),
    ];
    assert_eq!(get(&s, "gitlab_runner_jobs", &running), Some(1.0));
    assert_eq!(get(&s, "gitlab_runner_jobs", &idle), Some(0.0));
    assert_eq!(get(&s, "gitlab_runner_jobs_total", &R), Some(1.0));
    assert_eq!(get(&s, "gitlab_runner_concurrent", &[]), Some(4.0));
    assert_eq!(get(&s, "gitlab_runner_limit", &R), Some(2.0));
    assert_eq!(
        get(
            &s,
            "drover_agent_runner_token_expires_at_seconds",
            &[R[0], R[1]]
        ),
        Some(1_900_000_000.0)
    );

    m.observe_event(&RunnerEvent::JobFinished {
        runner: "edge".into(),
        job_id: 7,
        outcome: JobOutcome::Failed {
            reason: FailureReason::ScriptFailure,
            exit_code: Some(1),
        },
        duration: Duration::from_secs(1),
        queue_wait: None,
    });
    m.job_started("edge");
    m.job_finished("edge", &JobOutcome::Success, Duration::from_secs(45));
    let s = parse(&m.encode().unwrap());
    assert_eq!(get(&s, "gitlab_runner_jobs", &running), Some(0.0));
    assert_eq!(get(&s, "gitlab_runner_jobs_total", &R), Some(2.0));
    assert_eq!(
        get(
            &s,
            "gitlab_runner_failed_jobs_total",
            &[R[0], R[1], ("failure_reason", "script_failure")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(&s, "gitlab_runner_job_duration_seconds_count", &R),
        Some(2.0)
    );
    let mut le60 = R.to_vec();
    le60.push(("le", "60.0"));
    assert_eq!(
        get(&s, "gitlab_runner_job_duration_seconds_bucket", &le60),
        Some(2.0)
    );
    let mut le30 = R.to_vec();
    le30.push(("le", "30.0"));
    assert_eq!(
        get(&s, "gitlab_runner_job_duration_seconds_bucket", &le30),
        Some(1.0)
    );
}

#[test]
fn reload_drops_removed_runners_rows_but_keeps_counters() {
    let m = Metrics::new();
    m.set_runners(&[runner()]);
    m.job_started("edge");
    m.set_runners(&[]);
    let s = parse(&m.encode().unwrap());
    assert_eq!(get(&s, "gitlab_runner_limit", &R), None);
    assert_eq!(
        get(
            &s,
            "drover_agent_runner_token_expires_at_seconds",
            &[R[0], R[1]]
        ),
        None
    );
    assert_eq!(get(&s, "gitlab_runner_jobs_total", &R), Some(1.0));
}

#[test]
fn api_stats_are_summed_over_clients_and_no_answer_is_separate() {
    let m = Metrics::new();
    let a = Arc::new(ApiStats::default());
    let b = Arc::new(ApiStats::default());
    a.record(endpoint::REQUEST_JOB, 204);
    a.record(endpoint::REQUEST_JOB, 201);
    b.record(endpoint::REQUEST_JOB, 204);
    b.record(endpoint::PATCH_TRACE, NO_RESPONSE);
    m.add_api_stats(a.clone());
    m.add_api_stats(a.clone());
    m.add_api_stats(b);
    let text = m.encode().unwrap();
    let s = parse(&text);
    let statuses = "gitlab_runner_api_request_statuses_total";
    assert_eq!(
        get(
            &s,
            statuses,
            &[("endpoint", "request_job"), ("status", "204")]
        ),
        Some(2.0)
    );
    assert_eq!(
        get(
            &s,
            statuses,
            &[("endpoint", "request_job"), ("status", "201")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            &s,
            statuses,
            &[("endpoint", "patch_trace"), ("status", "0")]
        ),
        None
    );
    assert_eq!(
        get(
            &s,
            "drover_agent_gitlab_request_failures_total",
            &[("endpoint", "patch_trace")]
        ),
        Some(1.0)
    );
    assert!(text.contains("# TYPE gitlab_runner_api_request_statuses counter"));
}

#[derive(Debug)]
struct FakeUnits(Vec<UnitStatus>);

impl UnitSource for FakeUnits {
    fn units(&self) -> Vec<UnitStatus> {
        self.0.clone()
    }
}

#[test]
fn units_by_state_and_last_contact_come_from_the_source() {
    let m = Metrics::new();
    let contact = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    m.set_unit_source(Arc::new(FakeUnits(vec![
        UnitStatus {
            runner_name: "a".into(),
            state: "running".into(),
            last_gitlab_contact: Some(contact),
        },
        UnitStatus {
            runner_name: "b".into(),
            state: "running".into(),
            last_gitlab_contact: None,
        },
        UnitStatus {
            runner_name: "c".into(),
            state: "backoff".into(),
            last_gitlab_contact: None,
        },
    ])));
    let s = parse(&m.encode().unwrap());
    assert_eq!(
        get(&s, "drover_agent_runner_units", &[("state", "running")]),
        Some(2.0)
    );
    assert_eq!(
        get(&s, "drover_agent_runner_units", &[("state", "backoff")]),
        Some(1.0)
    );
    assert_eq!(
        get(
            &s,
            "drover_agent_runner_last_gitlab_contact_seconds",
            &[("runner_name", "a")]
        ),
        Some(1_700_000_000.0)
    );
    assert_eq!(
        get(
            &s,
            "drover_agent_runner_last_gitlab_contact_seconds",
            &[("runner_name", "b")]
        ),
        None
    );
}

#[test]
fn host_values_appear_once_known() {
    let m = Metrics::new();
    m.set_host(&HostHealth {
        docker: Some(DockerStatus {
            version: "24.0.7".into(),
            root_dir: "/var/lib/docker".into(),
        }),
        docker_disk: Some(DiskSpace {
            total_bytes: 1000,
            free_bytes: 400,
        }),
        builds_disk: None,
        memory: Some(crate::health::Memory {
            total_bytes: 8000,
            available_bytes: 3000,
        }),
        load: None,
        clock_skew_seconds: Some(-1.5),
        errors: vec![],
        disk_budgets: None,
    });
    let s = parse(&m.encode().unwrap());
    assert_eq!(get(&s, "drover_agent_docker_up", &[]), Some(1.0));
    assert_eq!(
        get(
            &s,
            "drover_agent_host_disk_free_bytes",
            &[("disk", "docker")]
        ),
        Some(400.0)
    );
    assert_eq!(
        get(
            &s,
            "drover_agent_host_disk_total_bytes",
            &[("disk", "builds")]
        ),
        None
    );
    assert_eq!(
        get(&s, "drover_agent_host_memory_available_bytes", &[]),
        Some(3000.0)
    );
    assert_eq!(get(&s, "drover_agent_host_load1", &[]), None);
    assert_eq!(get(&s, "drover_agent_clock_skew_seconds", &[]), Some(-1.5));
    m.set_host(&HostHealth::default());
    let s = parse(&m.encode().unwrap());
    assert_eq!(get(&s, "drover_agent_docker_up", &[]), Some(0.0));
    assert_eq!(
        get(
            &s,
            "drover_agent_host_disk_free_bytes",
            &[("disk", "docker")]
        ),
        None
    );
}

#[test]
fn logged_errors_are_counted_by_level() {
    use tracing_subscriber::layer::SubscriberExt;
    let m = Metrics::new();
    let before = parse(&m.encode().unwrap());
    let level = |s: &Samples, l| get(s, "gitlab_runner_errors_total", &[("level", l)]).unwrap();
    let subscriber = tracing_subscriber::registry().with(ErrorCountLayer);
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!("one warning");
        tracing::error!("one error");
        tracing::info!("not counted");
    });
    let after = parse(&m.encode().unwrap());
    assert!(level(&after, "warning") >= level(&before, "warning") + 1.0);
    assert!(level(&after, "error") >= level(&before, "error") + 1.0);
}

#[tokio::test]
async fn server_answers_metrics_with_openmetrics_type_and_healthz() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = Metrics::new();
    m.set_concurrent(3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(serve(listener, m, stop.clone()));
    let fetch = |path: &'static str| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    };
    let resp = fetch("/metrics").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{resp}"
    );
    assert!(resp.contains("gitlab_runner_concurrent 3"), "{resp}");
    let resp = fetch("/healthz").await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok\n"),
        "{resp}"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn free_text_runner_names_are_escaped_in_every_family() {
    let m = Metrics::new();
    let name = "say \"hi\" \\ to the runner for ci — 本番";
    let mut r = runner();
    r.labels.runner_name = name.into();
    m.set_runners(&[r]);
    m.job_started(name);
    let text = m.encode().unwrap();
    let escaped = "runner_name=\"say \\\"hi\\\" \\\\ to the runner for ci — 本番\"";
    for family in [
        "gitlab_runner_limit{",
        "gitlab_runner_jobs_total{",
        "gitlab_runner_jobs{",
        "drover_agent_runner_token_expires_at_seconds{",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(family))
            .unwrap_or_else(|| panic!("{family} missing:\n{text}"));
        assert!(line.contains(escaped), "{line}");
    }
    // Every sample line still has balanced quotes: the scrape parses.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let unescaped_quotes = line
            .replace("\\\\", "")
            .replace("\\\"", "")
            .matches('"')
            .count();
        assert_eq!(unescaped_quotes % 2, 0, "{line}");
    }
}

#[test]
fn image_deliveries_are_counted_from_zero() {
    let m = Metrics::new();
    let s = parse(&m.encode().unwrap());
    for name in [
        "drover_agent_image_bytes_received_total",
        "drover_agent_image_loads_total",
        "drover_agent_image_fetch_failures_total",
        "drover_agent_image_transfer_interruptions_total",
    ] {
        assert_eq!(get(&s, name, &[]), Some(0.0), "{name}");
    }
    m.images().received(65_536);
    m.images().received(10);
    m.images().loaded();
    m.images().failed();
    m.images().interrupted();
    m.images().interrupted();
    let s = parse(&m.encode().unwrap());
    assert_eq!(
        get(&s, "drover_agent_image_bytes_received_total", &[]),
        Some(65_546.0)
    );
    assert_eq!(get(&s, "drover_agent_image_loads_total", &[]), Some(1.0));
    assert_eq!(
        get(&s, "drover_agent_image_fetch_failures_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        get(&s, "drover_agent_image_transfer_interruptions_total", &[]),
        Some(2.0)
    );
}
