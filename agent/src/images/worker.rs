//! One fetch at a time: plan, download the missing blobs (progress at most once a second),
//! assemble, load, record as delivered, report. An interrupted transfer is tried again
//! after [`Worker::retry`] or at once when the controller sends the fetch again (every new
//! session does, while the delivery is open); a newer command for the same image replaces
//! the one waiting, and the commands for an image that arrived while it was fetched are
//! dropped once its result is reported.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_job::disk::ledger::Ledger;
use drover_job::executor::{ConnectOptions, DockerExecutor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::blobs::BlobDir;
use super::plan::plan;
use super::{BlobSource, FetchError, FetchImage, ImageEngine, ImageReport, assemble};
use crate::fleet::messages::ToController;
use crate::metrics::Metrics;

/// How often progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The image fetcher.
pub struct Worker {
    pub dir: BlobDir,
    pub source: Arc<dyn BlobSource>,
    pub engine: Arc<dyn ImageEngine>,
    pub ledger: Ledger,
    pub out: mpsc::Sender<ToController>,
    /// Wait before trying an interrupted transfer again.
    pub retry: Duration,
    /// Bytes received, loads, failures and interruptions are counted here.
    pub metrics: Metrics,
}

/// How one attempt ended.
enum Attempt {
    Done(ImageReport),
    Interrupted(String),
}

impl Worker {
    /// Runs fetches from `commands` until `stop`.
    pub async fn run(
        self,
        mut commands: mpsc::UnboundedReceiver<FetchImage>,
        stop: CancellationToken,
    ) {
        let mut queue: VecDeque<FetchImage> = VecDeque::new();
        loop {
            if queue.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    c = commands.recv() => match c {
                        Some(c) => queue.push_back(c),
                        None => return,
                    },
                }
            }
            while let Ok(c) = commands.try_recv() {
                queue.push_back(c);
            }
            let Some(cmd) = take_newest(&mut queue) else {
                continue;
            };
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                a = self.attempt(&cmd) => a,
            };
            match attempt {
                Attempt::Done(report) => {
                    if let ImageReport::Loaded { outcome, .. } = &report {
                        match outcome {
                            Ok(_) => self.metrics.images().loaded(),
                            Err(_) => self.metrics.images().failed(),
                        }
                    }
                    if self.out.send(ToController::Image(report)).await.is_err() {
                        return;
                    }
                    // The fetch sent again meanwhile (each new session sends every open
                    // delivery) is answered by this report: not fetched a second time.
                    while let Ok(c) = commands.try_recv() {
                        queue.push_back(c);
                    }
                    queue.retain(|c| c.image_id != cmd.image_id);
                }
                Attempt::Interrupted(why) => {
                    self.metrics.images().interrupted();
                    tracing::warn!(image = %cmd.image_id, reason = %why, "image transfer interrupted; trying again");
                    // A command sent meanwhile (a new session) is taken at once.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(self.retry) => {}
                        c = commands.recv() => if let Some(c) = c { queue.push_back(c) },
                    }
                    queue.push_front(cmd);
                }
            }
        }
    }

    /// One try at `cmd`.
    async fn attempt(&self, cmd: &FetchImage) -> Attempt {
        let failed = |why: String, present: u32| {
            tracing::warn!(image = %cmd.image_id, reference = %cmd.reference, reason = %why, "image fetch failed");
            Attempt::Done(ImageReport::Loaded {
                image_id: cmd.image_id.clone(),
                reference: cmd.reference.clone(),
                outcome: Err(why),
                layers_present: present,
            })
        };
        let chains = match self.engine.layer_chains().await {
            Ok(c) => c,
            Err(e) => return Attempt::Interrupted(format!("docker engine: {e:#}")),
        };
        let plan = plan(cmd, &chains);
        let total = plan.bytes_total();
        let mut done: u64 = plan
            .blobs
            .iter()
            .map(|(d, s)| self.dir.held(d).min(*s))
            .sum();
        tracing::info!(image = %cmd.image_id, reference = %cmd.reference, layers = cmd.layers.len(), present = plan.present, bytes = total, held = done, "fetching image");
        let progress = |done: u64| {
            ToController::Image(ImageReport::Progress {
                image_id: cmd.image_id.clone(),
                bytes_total: total,
                bytes_done: done,
                layers_present: plan.present,
            })
        };
        let _ = self.out.try_send(progress(done));
        let mut last = Instant::now();
        let mut paths = Vec::new();
        for (digest, size) in &plan.blobs {
            let mut on_bytes = |n: u64| {
                self.metrics.images().received(n);
                done += n;
                if last.elapsed() >= PROGRESS_EVERY {
                    last = Instant::now();
                    let _ = self.out.try_send(progress(done));
                }
            };
            match self
                .dir
                .fetch(
                    self.source.as_ref(),
                    &cmd.image_id,
                    digest,
                    *size,
                    &mut on_bytes,
                )
                .await
            {
                Ok(p) => paths.push((digest.clone(), p)),
                Err(FetchError::Interrupted(why)) => return Attempt::Interrupted(why),
                // The partial file is gone: downloaded again from the start next time.
                Err(FetchError::Corrupt { digest, detail }) => {
                    return Attempt::Interrupted(format!("blob {digest}: {detail}"));
                }
                Err(e) => return failed(e.to_string(), plan.present),
            }
        }
        let _ = self.out.try_send(progress(total));
        let archive = self.dir.root().join(format!(
            "load-{}.tar",
            cmd.image_id.trim_start_matches("sha256:")
        ));
        let config = paths[0].1.clone();
        let layers: Vec<(String, std::path::PathBuf)> = paths[1..].to_vec();
        let (out, c) = (archive.clone(), cmd.clone());
        let written =
            tokio::task::spawn_blocking(move || assemble::write(&out, &c, &config, &layers)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return failed(
                    format!("write load archive {}: {e}", archive.display()),
                    plan.present,
                );
            }
            Err(e) => return failed(format!("write load archive: {e}"), plan.present),
        }
        let loaded = self.engine.load(&archive, &cmd.reference).await;
        let _ = std::fs::remove_file(&archive);
        let id = match loaded {
            Ok(id) => id,
            // The engine may be restarting: the blobs stay, try again.
            Err(e) => return Attempt::Interrupted(format!("docker load: {e:#}")),
        };
        if id != cmd.image_id {
            return failed(
                format!(
                    "the engine gave {} the id {id}, not {}",
                    cmd.reference, cmd.image_id
                ),
                plan.present,
            );
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Err(e) = self.ledger.record_delivered(&cmd.reference, &id, now) {
            return failed(
                format!("record the image in the disk ledger: {e}"),
                plan.present,
            );
        }
        for (digest, _) in &plan.blobs {
            self.dir.remove(digest);
        }
        tracing::info!(image = %id, reference = %cmd.reference, "image delivered");
        Attempt::Done(ImageReport::Loaded {
            image_id: cmd.image_id.clone(),
            reference: cmd.reference.clone(),
            outcome: Ok(id),
            layers_present: plan.present,
        })
    }
}

/// The first waiting command, replaced by the newest one for the same image (which
/// leaves the queue too).
fn take_newest(queue: &mut VecDeque<FetchImage>) -> Option<FetchImage> {
    let first = queue.pop_front()?;
    let mut cmd = first;
    queue.retain(|c| {
        if c.image_id == cmd.image_id {
            cmd = c.clone();
            false
        } else {
            true
        }
    });
    Some(cmd)
}

/// The local engine through the executor (the only code that talks to Docker).
#[derive(Default)]
pub struct DockerImages {
    client: tokio::sync::Mutex<Option<DockerExecutor>>,
}

impl DockerImages {
    async fn docker(&self) -> anyhow::Result<DockerExecutor> {
        let mut g = self.client.lock().await;
        if let Some(d) = g.as_ref() {
            return Ok(d.clone());
        }
        let d = DockerExecutor::connect(ConnectOptions::default()).await?;
        *g = Some(d.clone());
        Ok(d)
    }
}

#[async_trait]
impl ImageEngine for DockerImages {
    async fn layer_chains(&self) -> anyhow::Result<HashSet<String>> {
        Ok(self.docker().await?.layer_chains().await?)
    }

    async fn load(&self, archive: &Path, reference: &str) -> anyhow::Result<String> {
        Ok(self
            .docker()
            .await?
            .load_image_archive(archive, reference)
            .await?)
    }
}
