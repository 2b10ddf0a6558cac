use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::blobs::BlobDir;
use super::worker::Worker;
use super::*;
use crate::fleet::messages::ToController;
use crate::metrics::Metrics;
use drover_job::disk::ledger::{ImageOrigin, Ledger};
use drover_job::executor::chain_ids;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Blobs by digest; the first open of `cut` ends after `cut_after` bytes.
#[derive(Default)]
struct FakeSource {
    blobs: HashMap<String, Vec<u8>>,
    opens: Mutex<Vec<(String, u64)>>,
    cut: Mutex<Option<(String, usize)>>,
}

#[async_trait]
impl BlobSource for FakeSource {
    async fn open(
        &self,
        _image: &str,
        digest: &str,
        offset: u64,
    ) -> Result<BlobStream, FetchError> {
        self.opens
            .lock()
            .unwrap()
            .push((digest.to_string(), offset));
        let Some(b) = self.blobs.get(digest) else {
            return Err(FetchError::Refused(format!("no blob {digest}")));
        };
        let rest = b[offset as usize..].to_vec();
        let cut = self.cut.lock().unwrap().take_if(|(d, _)| d == digest);
        let items: Vec<Result<Vec<u8>, FetchError>> = match cut {
            Some((_, n)) => vec![
                Ok(rest[..n].to_vec()),
                Err(FetchError::Interrupted("link cut".into())),
            ],
            None => rest.chunks(7).map(|c| Ok(c.to_vec())).collect(),
        };
        Ok(futures::stream::iter(items).boxed())
    }
}

/// An engine holding `chains`; a load reads the archive's entry names and gives the id
/// `sha256:<config stem>`.
#[derive(Default)]
struct FakeEngine {
    chains: HashSet<String>,
    loads: Mutex<Vec<Vec<String>>>,
    /// Run at the start of the next load.
    on_load: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

#[async_trait]
impl ImageEngine for FakeEngine {
    async fn layer_chains(&self) -> anyhow::Result<HashSet<String>> {
        Ok(self.chains.clone())
    }
    async fn load(&self, archive: &Path, _reference: &str) -> anyhow::Result<String> {
        let hook = self.on_load.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        let mut a = tar::Archive::new(std::fs::File::open(archive)?);
        let mut names = Vec::new();
        let mut id = String::new();
        for e in a.entries()? {
            let e = e?;
            let name = e.path()?.display().to_string();
            if let Some(stem) = name.strip_suffix(".json").filter(|s| s.len() == 64) {
                id = format!("sha256:{stem}");
            }
            names.push(name);
        }
        self.loads.lock().unwrap().push(names);
        Ok(id)
    }
}

struct Fixture {
    cmd: FetchImage,
    blobs: HashMap<String, Vec<u8>>,
}

/// An image of two layers.
fn fixture() -> Fixture {
    let (l0, l1) = (b"layer zero".repeat(10), b"layer one".repeat(10));
    let config = format!(
        "{{\"rootfs\":{{\"diff_ids\":[\"{}\",\"{}\"]}}}}",
        sha(&l0),
        sha(&l1)
    )
    .into_bytes();
    let cmd = FetchImage {
        image_id: sha(&config),
        reference: "app:1".into(),
        config_size: config.len() as u64,
        layers: vec![
            LayerSpec {
                digest: sha(&l0),
                diff_id: sha(&l0),
                size: l0.len() as u64,
            },
            LayerSpec {
                digest: sha(&l1),
                diff_id: sha(&l1),
                size: l1.len() as u64,
            },
        ],
    };
    let blobs = HashMap::from([(sha(&config), config), (sha(&l0), l0), (sha(&l1), l1)]);
    Fixture { cmd, blobs }
}

/// Runs a worker on one command until it reports the result.
async fn deliver(
    dir: &Path,
    source: Arc<FakeSource>,
    engine: Arc<FakeEngine>,
    cmd: FetchImage,
    metrics: &Metrics,
) -> (ImageReport, Vec<ImageReport>) {
    let (out, mut rx) = mpsc::channel(64);
    let (tx, commands) = mpsc::unbounded_channel();
    let worker = Worker {
        dir: BlobDir::in_state_dir(dir),
        source,
        engine,
        ledger: Ledger::in_state_dir(dir),
        out,
        retry: Duration::from_millis(10),
        metrics: metrics.clone(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(commands, stop.clone()));
    tx.send(cmd).unwrap();
    let mut progress = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(ToController::Image(r @ ImageReport::Loaded { .. }))) => {
                stop.cancel();
                task.await.unwrap();
                return (r, progress);
            }
            Ok(Some(ToController::Image(p))) => progress.push(p),
            other => panic!("no result: {other:?}"),
        }
    }
}

#[tokio::test]
async fn only_the_layers_the_engine_lacks_are_fetched_and_loaded() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(FakeSource {
        blobs: f.blobs.clone(),
        ..FakeSource::default()
    });
    // The engine has the base layer.
    let engine = Arc::new(FakeEngine {
        chains: HashSet::from([f.cmd.layers[0].diff_id.clone()]),
        ..FakeEngine::default()
    });
    let metrics = Metrics::new();
    let (result, progress) = deliver(
        dir.path(),
        source.clone(),
        engine.clone(),
        f.cmd.clone(),
        &metrics,
    )
    .await;
    assert_eq!(
        result,
        ImageReport::Loaded {
            image_id: f.cmd.image_id.clone(),
            reference: "app:1".into(),
            outcome: Ok(f.cmd.image_id.clone()),
            layers_present: 1,
        }
    );
    let opened: Vec<String> = source
        .opens
        .lock()
        .unwrap()
        .iter()
        .map(|(d, _)| d.clone())
        .collect();
    assert_eq!(
        opened,
        vec![f.cmd.image_id.clone(), f.cmd.layers[1].digest.clone()]
    );
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    assert_eq!(
        engine.loads.lock().unwrap()[0],
        vec![
            "manifest.json".to_string(),
            format!("{}.json", hex(&f.cmd.image_id)),
            format!("{}/layer.tar", hex(&f.cmd.layers[1].digest)),
        ]
    );
    let want_total = f.cmd.config_size + f.cmd.layers[1].size;
    assert!(progress.iter().any(|p| matches!(p, ImageReport::Progress { bytes_total, bytes_done, .. } if *bytes_total == want_total && bytes_done == bytes_total)));
    let text = metrics.encode().unwrap();
    for line in [
        format!("drover_agent_image_bytes_received_total {want_total}"),
        "drover_agent_image_loads_total 1".to_string(),
        "drover_agent_image_fetch_failures_total 0".to_string(),
        "drover_agent_image_transfer_interruptions_total 0".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    // Delivered in the ledger (never collected); the blobs are gone.
    let ledger = Ledger::in_state_dir(dir.path()).read().unwrap();
    assert_eq!(
        ledger.images[&f.cmd.image_id].origin,
        ImageOrigin::Delivered
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/blobs"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn a_cut_transfer_resumes_from_the_partial_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let l1 = f.cmd.layers[1].digest.clone();
    let source = Arc::new(FakeSource {
        blobs: f.blobs.clone(),
        cut: Mutex::new(Some((l1.clone(), 40))),
        ..FakeSource::default()
    });
    let engine = Arc::new(FakeEngine::default());
    let metrics = Metrics::new();
    let (result, _) = deliver(dir.path(), source.clone(), engine, f.cmd.clone(), &metrics).await;
    assert!(
        matches!(
            result,
            ImageReport::Loaded {
                outcome: Ok(_),
                layers_present: 0,
                ..
            }
        ),
        "{result:?}"
    );
    let opens = source.opens.lock().unwrap().clone();
    assert!(
        opens.contains(&(l1.clone(), 0)) && opens.contains(&(l1, 40)),
        "{opens:?}"
    );
    // The 40 bytes before the cut are not received again.
    let total: u64 = f.cmd.config_size + f.cmd.layers.iter().map(|l| l.size).sum::<u64>();
    let text = metrics.encode().unwrap();
    for line in [
        format!("drover_agent_image_bytes_received_total {total}"),
        "drover_agent_image_transfer_interruptions_total 1".to_string(),
        "drover_agent_image_loads_total 1".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
}

#[tokio::test]
async fn a_blob_that_is_not_its_digest_is_refused_and_dropped() {
    let f = fixture();
    let dir = BlobDir::in_state_dir(tempfile::tempdir().unwrap().keep().as_path());
    let digest = f.cmd.layers[0].digest.clone();
    let mut blobs = f.blobs.clone();
    blobs.insert(digest.clone(), b"x".repeat(f.cmd.layers[0].size as usize));
    let source = FakeSource {
        blobs,
        ..FakeSource::default()
    };
    let err = dir
        .fetch(
            &source,
            &f.cmd.image_id,
            &digest,
            f.cmd.layers[0].size,
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Corrupt { .. }), "{err}");
    assert_eq!(dir.held(&digest), 0);
    let _ = std::fs::remove_dir_all(dir.root().parent().unwrap());
}

#[test]
fn the_plan_skips_layers_by_chain_not_by_diff_id_alone() {
    let f = fixture();
    // Layer one present on another base is not the same layer.
    let other_base = chain_ids(&["sha256:other".into(), f.cmd.layers[1].diff_id.clone()]);
    let p = plan::plan(&f.cmd, &other_base.into_iter().collect());
    assert_eq!((p.present, p.missing.len(), p.blobs.len()), (0, 2, 3));
    let all = chain_ids(
        &f.cmd
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>(),
    );
    let p = plan::plan(&f.cmd, &all.into_iter().collect());
    assert_eq!((p.present, p.bytes_total()), (2, f.cmd.config_size));
}

#[tokio::test]
async fn a_fetch_sent_again_during_the_transfer_is_not_fetched_twice() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(FakeSource {
        blobs: f.blobs.clone(),
        ..FakeSource::default()
    });
    let engine = Arc::new(FakeEngine::default());
    let (out, mut rx) = mpsc::channel(64);
    let (tx, commands) = mpsc::unbounded_channel();
    // Two reconnects while the image loads: each new session sends the fetch again.
    let again = (tx.clone(), f.cmd.clone());
    *engine.on_load.lock().unwrap() = Some(Box::new(move || {
        again.0.send(again.1.clone()).unwrap();
        again.0.send(again.1).unwrap();
    }));
    let metrics = Metrics::new();
    let worker = Worker {
        dir: BlobDir::in_state_dir(dir.path()),
        source: source.clone(),
        engine: engine.clone(),
        ledger: Ledger::in_state_dir(dir.path()),
        out,
        retry: Duration::from_millis(10),
        metrics: metrics.clone(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(commands, stop.clone()));
    tx.send(f.cmd.clone()).unwrap();
    let mut results = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let ToController::Image(r @ ImageReport::Loaded { .. }) = m {
            results.push(r);
        }
    }
    stop.cancel();
    task.await.unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(engine.loads.lock().unwrap().len(), 1);
    // The config and both layers, once each.
    assert_eq!(source.opens.lock().unwrap().len(), 3);
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("drover_agent_image_loads_total 1")
            && text.contains("drover_agent_image_fetch_failures_total 0"),
        "{text}"
    );
}
