use std::sync::Arc;
use std::time::Duration;

use drover_proto::spec::parse_config;

use super::*;
use crate::runner::fake_executor::FakeExecutor;
use drover_gitlab::fake::{Call, FakeGitLab, job};

fn config(text: &str) -> Config {
    parse_config(text, "test.toml").unwrap().config
}

const ONE: &str = r#"
concurrent = 2
check_interval = 1
[[runners]]
name = "a"
url = "http://gitlab.test"
token = "glrt-aaaaaaaa"
executor = "docker"
"#;

/// An engine whose GitLab factory counts the job loops it started (one client each).
fn engine_counting(
    gl: Arc<FakeGitLab>,
    ex: FakeExecutor,
    starts: Arc<std::sync::atomic::AtomicUsize>,
) -> Engine {
    let factory: GitLabFactory = Box::new(move |_| {
        starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(gl.clone() as Arc<dyn GitLab>)
    });
    Engine::new(
        Arc::new(ex),
        factory,
        "s_0123456789ab".into(),
        "agent-engine-test".into(),
    )
    .with_tuning(|s| {
        s.check_interval = Duration::from_millis(20);
        s.upload.interval = Duration::from_millis(20);
        s.upload.keepalive = Duration::from_millis(100);
        s.backoff_min = Duration::from_millis(5);
        s.backoff_max = Duration::from_millis(20);
    })
}

fn requests(gl: &FakeGitLab) -> usize {
    gl.calls()
        .iter()
        .filter(|c| matches!(c, Call::RequestJob { .. }))
        .count()
}

#[tokio::test]
async fn reload_keeps_unchanged_restarts_changed_and_stops_removed() {
    let gl = Arc::new(FakeGitLab::new());
    let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = || starts.load(std::sync::atomic::Ordering::SeqCst);
    let mut e = engine_counting(gl.clone(), FakeExecutor::default(), starts.clone());
    e.apply(&config(ONE)).unwrap();
    assert!(
        gl.wait_until(Duration::from_secs(5), |g| requests(g) >= 1)
            .await
    );
    assert!(
        !gl.calls().iter().any(|c| matches!(c, Call::Verify { .. })),
        "run never verifies"
    );
    assert_eq!(started(), 1);

    // Same file again: nothing restarts.
    e.apply(&config(ONE)).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(started(), 1);
    assert_eq!(e.running(), 1);

    // A second runner and a changed first one.
    let two = format!(
        "{}\n[[runners]]\nname = \"b\"\nurl = \"http://gitlab.test\"\ntoken = \"glrt-bbbbbbbb\"\nexecutor = \"docker\"\n",
        ONE.replace("glrt-aaaaaaaa", "glrt-aaaaaaa2")
    );
    e.apply(&config(&two)).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), e.join_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.runner, "a");
    assert!(!ended.current && ended.result.is_ok());
    assert_eq!(started(), 3);
    assert_eq!(e.running(), 2);

    // Remove "b".
    e.apply(&config(&ONE.replace("glrt-aaaaaaaa", "glrt-aaaaaaa2")))
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), e.join_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.runner, "b");
    assert_eq!(e.stats().len(), 1);

    e.stop_graceful();
    let ended = e.join_next().await.unwrap();
    assert!(ended.current && ended.result.is_ok());
    assert!(e.join_next().await.is_none());
}

#[tokio::test]
async fn concurrent_is_shared_by_all_runners() {
    let gl = Arc::new(FakeGitLab::new());
    for id in 1..=6 {
        gl.push_job(job(id, &["x"]));
    }
    let ex = FakeExecutor {
        hold: Duration::from_millis(150),
        ..Default::default()
    };
    let two = format!(
        "{ONE}\n[[runners]]\nname = \"b\"\nurl = \"http://gitlab.test\"\ntoken = \"glrt-bbbbbbbb\"\nexecutor = \"docker\"\n"
    );
    let factory_gl = gl.clone();
    let ex = Arc::new(ex);
    let ex2 = ex.clone();
    let factory: GitLabFactory = Box::new(move |_| Ok(factory_gl.clone() as Arc<dyn GitLab>));
    let mut e =
        Engine::new(ex2, factory, "s_0123456789ab".into(), "agent".into()).with_tuning(|s| {
            s.check_interval = Duration::from_millis(10);
            s.upload.interval = Duration::from_millis(20);
        });
    e.apply(&config(&two)).unwrap();
    assert!(
        gl.wait_until(Duration::from_secs(10), |g| (1..=6)
            .all(|id| g.job(id).is_some_and(|j| j.state == "success")))
            .await
    );
    assert_eq!(ex.max_running.load(std::sync::atomic::Ordering::SeqCst), 2);
    e.stop_now();
    while e.join_next().await.is_some() {}
}
