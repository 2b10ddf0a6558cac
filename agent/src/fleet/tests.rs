//! Fleet mode's shutdown tree, run in-process on an enrolled state dir whose controller
//! never answers.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{FleetOptions, run_on};
use crate::identity::{AgentFile, StateDir};
use crate::shutdown::Tree;

/// A state dir as `enroll` leaves it, for agent `a1`, pointing at a port nobody listens on.
fn enrolled(root: &std::path::Path) -> StateDir {
    let state = StateDir::new(root);
    state.create().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from("drover://agent/a1").unwrap(),
    )];
    let cert = params.self_signed(&key).unwrap();
    state
        .write_credentials(&key.serialize_pem(), &cert.pem())
        .unwrap();
    state.write_ca(&cert.pem()).unwrap();
    state
        .write_agent_file(&AgentFile::new(
            "a1".into(),
            vec!["https://127.0.0.1:1".into()],
        ))
        .unwrap();
    state
}

/// Cancelling the root ends every task fleet mode started (session, supervisor, metrics
/// server, host probe): `run` returns and the tracker is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_root_ends_every_task() {
    let dir = tempfile::tempdir().unwrap();
    enrolled(dir.path());
    let root = CancellationToken::new();
    let tree = Tree::new(root.clone());
    let opts = FleetOptions {
        state_dir: dir.path().to_path_buf(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        stop_gracefully: CancellationToken::new(),
        upgrade_switch: crate::upgrade::Switch::new(),
    };
    let t = tree.clone();
    let run = tokio::spawn(async move { run_on(opts, &t).await });
    tokio::time::timeout(Duration::from_secs(10), async {
        let want = ["fleet supervisor", "host probe", "metrics server"];
        while want.iter().any(|w| !tree.tasks().running().contains(w)) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("tasks start; running: {:?}", tree.tasks().running()));

    root.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run returns once the root is cancelled")
        .unwrap()
        .unwrap();
    assert!(
        tree.tasks().is_empty(),
        "left: {:?}",
        tree.tasks().running()
    );
}
