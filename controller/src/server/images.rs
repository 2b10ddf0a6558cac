//! The image calls: `PushImage` and `ListImages` (Admin), `DownloadBlob` (AgentControl),
//! and what a session does for images (send `FetchImage` for open deliveries, record the
//! agent's reports). See [`crate::images`].

use std::collections::{BTreeMap, HashSet};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;

use drover_proto::v1;
use futures::Stream;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::state::AppState;
use crate::fleet::selector;
use crate::images::archive::{self, Limits, valid_digest};
use crate::images::{DeliveryState, LayerRef, MAX_ARCHIVE_BYTES, Manifest};
use crate::store::{self, BLOB_CHUNK_BYTES, DeliveryRecord, ImageRecord, StoreError};
use crate::wire::images::{ImageReport, delivery, fetch_image};

/// Bytes per `BlobChunk` message (the pacing step).
const PIECE_BYTES: usize = 64 * 1024;

/// The stream `DownloadBlob` answers with.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<v1::BlobChunk, Status>> + Send>>;

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A spooled upload, removed when dropped.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `PushImage`: spool the upload, check the archive whole, store its blobs and the
/// deliveries, tell the selected agents.
pub async fn push(
    state: &AppState,
    admin: &str,
    mut inbound: Streaming<v1::PushImageChunk>,
) -> Result<v1::PushImageResponse, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty upload"))?;
    let header = first
        .header
        .ok_or_else(|| Status::invalid_argument("the first message must carry the header"))?;
    drover_proto::spec::validate_labels(header.selector.iter())
        .map_err(|e| Status::invalid_argument(format!("selector: {e}")))?;
    if header.archive_size > MAX_ARCHIVE_BYTES {
        return Err(Status::invalid_argument(format!(
            "archive is {} bytes, more than the {MAX_ARCHIVE_BYTES} bytes allowed",
            header.archive_size
        )));
    }
    if !header.reference.is_empty() {
        archive::check_reference(&header.reference)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let selector: BTreeMap<String, String> = header.selector.clone().into_iter().collect();
    let agents: Vec<String> = store::blocking(&state.store, |s| s.list_agents())
        .await?
        .into_iter()
        .filter(|a| a.revoked_at.is_none() && selector::matches(&selector, &a.labels))
        .map(|a| a.id)
        .collect();
    if agents.is_empty() {
        return Err(Status::failed_precondition(
            "no enrolled agent matches the selector; nothing was stored",
        ));
    }

    let spool = spool_upload(state, &header, first.data, &mut inbound).await?;
    let path = spool.0.clone();
    let fallback = header.reference.clone();
    let image = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        archive::read(&mut f, &fallback, &Limits::default())
    })
    .await
    .map_err(|e| Status::internal(format!("archive check: {e}")))?
    .map_err(|e| Status::invalid_argument(format!("archive refused, nothing stored: {e}")))?;

    let mut blobs = vec![image.config.clone()];
    blobs.extend(image.layers.iter().map(|l| l.blob.clone()));
    let mut stored_bytes = 0u64;
    let mut seen = HashSet::new();
    for b in blobs.into_iter().filter(|b| seen.insert(b.digest.clone())) {
        let path = spool.0.clone();
        let added = store::blocking(&state.store, move |s| {
            if s.blob_size(&b.digest)?.is_some() {
                return Ok(0);
            }
            let mut f = open_at(&path, b.offset).map_err(|e| StoreError::BlobRead {
                digest: b.digest.clone(),
                detail: e.to_string(),
            })?;
            let added = s.put_blob(&b.digest, b.size, &mut std::io::Read::take(&mut f, b.size))?;
            Ok(if added { b.size } else { 0 })
        })
        .await?;
        stored_bytes += added;
    }
    drop(spool);

    let manifest = Manifest {
        config_size: image.config.size,
        layers: image
            .layers
            .iter()
            .map(|l| LayerRef {
                digest: l.blob.digest.clone(),
                diff_id: l.diff_id.clone(),
                size: l.blob.size,
            })
            .collect(),
    };
    let record = ImageRecord {
        id: image.config.digest.clone(),
        reference: image.reference.clone(),
        manifest_json: serde_json::to_string(&manifest)
            .map_err(|e| Status::internal(format!("image manifest: {e}")))?,
        created_at: now(),
    };
    let deliveries: Vec<DeliveryRecord> = agents
        .iter()
        .map(|a| DeliveryRecord {
            agent_id: a.clone(),
            image_id: record.id.clone(),
            reference: record.reference.clone(),
            state: DeliveryState::Pending.as_str().to_string(),
            rate_limit: header.rate_limit_bytes_per_second,
            updated_at: Some(now()),
            ..DeliveryRecord::default()
        })
        .collect();
    let stored = record.clone();
    store::blocking(&state.store, move |s| s.add_push(&stored, &deliveries)).await?;
    for a in &agents {
        state.transfers.restart(a, &record.id);
        state.sessions.kick(a);
    }
    state.metrics.images().push(stored_bytes);
    tracing::info!(admin, image = %record.id, reference = %record.reference, agents = agents.len(), stored_bytes, "image pushed");
    Ok(v1::PushImageResponse {
        image_id: record.id,
        reference: record.reference,
        agent_ids: agents,
        stored_bytes,
        layers: u32::try_from(manifest.layers.len()).unwrap_or(u32::MAX),
    })
}

fn open_at(path: &Path, offset: u64) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    Ok(f)
}

/// Writes the upload to a 0600 file in the spool dir, exactly `archive_size` bytes.
async fn spool_upload(
    state: &AppState,
    header: &v1::PushImageHeader,
    first: Vec<u8>,
    inbound: &mut Streaming<v1::PushImageChunk>,
) -> Result<Spool, Status> {
    let dir = &state.transfers.spool_dir;
    let io = |what: &str, e: std::io::Error| {
        tracing::error!(error = %e, dir = %dir.display(), "image upload spool: {what}");
        Status::internal(format!(
            "controller could not {what} the upload; see its log"
        ))
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io("spool", e))?;
    let path = dir.join(format!("push-{:016x}.tar", rand::random::<u64>()));
    let spool = Spool(path.clone());
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .await
        .map_err(|e| io("spool", e))?;
    let mut total = 0u64;
    let mut data = first;
    loop {
        total += data.len() as u64;
        if total > header.archive_size {
            return Err(Status::invalid_argument(format!(
                "upload is longer than the {} bytes announced",
                header.archive_size
            )));
        }
        f.write_all(&data).await.map_err(|e| io("spool", e))?;
        match inbound.message().await? {
            Some(c) if c.header.is_some() => {
                return Err(Status::invalid_argument(
                    "only the first message may carry the header",
                ));
            }
            Some(c) => data = c.data,
            None => break,
        }
    }
    if total != header.archive_size {
        return Err(Status::invalid_argument(format!(
            "upload ended after {total} of the {} bytes announced",
            header.archive_size
        )));
    }
    f.flush().await.map_err(|e| io("spool", e))?;
    Ok(spool)
}

/// `ListImages`: every delivery, with the bytes this process sent for open ones.
pub async fn list(state: &AppState) -> Result<v1::ListImagesResponse, Status> {
    let rows = store::blocking(&state.store, |s| s.list_deliveries(None)).await?;
    Ok(v1::ListImagesResponse {
        deliveries: rows
            .into_iter()
            .map(|mut d| {
                if let Some(sent) = state.transfers.sent_so_far(&d.agent_id, &d.image_id) {
                    d.bytes_sent = d.bytes_sent.max(sent);
                }
                delivery(&d)
            })
            .collect(),
    })
}

/// `DownloadBlob` for `agent_id`: a blob of an image the agent was told to fetch, paced by
/// the push's rate limit.
pub async fn download(
    state: &AppState,
    agent_id: &str,
    r: v1::DownloadBlobRequest,
) -> Result<BlobStream, Status> {
    if !valid_digest(&r.digest) || !valid_digest(&r.image_id) {
        return Err(Status::invalid_argument(format!(
            "digest {:?} or image_id {:?} is not a sha256 digest",
            r.digest.chars().take(80).collect::<String>(),
            r.image_id.chars().take(80).collect::<String>()
        )));
    }
    let (agent, image_id, digest) = (agent_id.to_string(), r.image_id.clone(), r.digest.clone());
    let (open, image, size) = store::blocking(&state.store, move |s| {
        let open = s
            .list_deliveries(Some(&agent))?
            .into_iter()
            .find(|d| d.image_id == image_id)
            .filter(|d| DeliveryState::parse(&d.state).is_some_and(DeliveryState::open));
        Ok((open, s.get_image(&image_id)?, s.blob_size(&digest)?))
    })
    .await?;
    let not_found = || {
        Status::not_found(format!(
            "blob {} is not part of an image this agent is fetching",
            r.digest
        ))
    };
    let (Some(open), Some(image), Some(size)) = (open, image, size) else {
        return Err(not_found());
    };
    let manifest: Manifest = serde_json::from_str(&image.manifest_json)
        .map_err(|e| Status::internal(format!("stored manifest of {}: {e}", image.id)))?;
    if !manifest.holds(&image.id, &r.digest) {
        return Err(not_found());
    }
    if r.offset > size {
        return Err(Status::out_of_range(format!(
            "offset {} is past the end of blob {} ({size} bytes)",
            r.offset, r.digest
        )));
    }
    let pacer = state.transfers.pacer(agent_id, open.rate_limit);
    let sent = state.transfers.sent(agent_id, &image.id);
    let (tx, rx) = mpsc::channel::<Result<v1::BlobChunk, Status>>(4);
    let (store, stop, digest) = (state.store.clone(), state.shutdown.clone(), r.digest);
    let metrics = state.metrics.clone();
    let mut pos = r.offset;
    state.tasks.spawn(async move {
        let send = async {
            while pos < size {
                let idx = pos / BLOB_CHUNK_BYTES as u64;
                let within = (pos % BLOB_CHUNK_BYTES as u64) as usize;
                let d = digest.clone();
                let chunk = match store::blocking(&store, move |s| s.blob_chunk(&d, idx)).await {
                    Ok(Some(c)) if c.len() > within => c,
                    Ok(_) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "blob {digest}: chunk {idx} is missing"
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                for piece in chunk[within..].chunks(PIECE_BYTES) {
                    pacer.wait(piece.len() as u64).await;
                    let msg = v1::BlobChunk {
                        data: piece.to_vec(),
                        size,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
                    metrics.images().sent(piece.len() as u64);
                    pos += piece.len() as u64;
                }
            }
        };
        tokio::select! {
            _ = send => {}
            _ = stop.cancelled() => {}
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Sends `FetchImage` for each open delivery of `agent_id` not yet sent on this session
/// (`sent`); forgets the ones that closed, so a later push is sent again. `Err` when the
/// agent went away.
/// `deliveries` are the agent's, read with its session's batch (`session_reads.rs`): the
/// images are read only when one is open.
pub async fn send_fetches(
    state: &AppState,
    agent_id: &str,
    deliveries: &[DeliveryRecord],
    tx: &mpsc::Sender<Result<v1::ControllerMessage, Status>>,
    sent: &mut HashSet<String>,
) -> Result<(), ()> {
    let open_ids: Vec<String> = deliveries
        .iter()
        .filter(|d| DeliveryState::parse(&d.state).is_some_and(DeliveryState::open))
        .map(|d| d.image_id.clone())
        .collect();
    if open_ids.is_empty() {
        sent.clear();
        return Ok(());
    }
    let found = store::blocking(&state.store, move |s| {
        let mut out = Vec::new();
        for id in open_ids {
            let image = s.get_image(&id)?;
            out.push((id, image));
        }
        Ok(out)
    })
    .await;
    let open = match found {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(agent = %agent_id, error = %e, "image deliveries");
            return Ok(());
        }
    };
    sent.retain(|id| open.iter().any(|(o, _)| o == id));
    for (id, image) in open {
        let Some(image) = image else { continue };
        if sent.contains(&id) {
            continue;
        }
        let manifest: Manifest = match serde_json::from_str(&image.manifest_json) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(image = %id, error = %e, "stored image manifest");
                continue;
            }
        };
        tracing::info!(agent = %agent_id, image = %id, reference = %image.reference, "telling agent to fetch image");
        let msg = v1::ControllerMessage {
            kind: Some(v1::controller_message::Kind::Command(fetch_image(
                &image, &manifest,
            ))),
        };
        if tx.send(Ok(msg)).await.is_err() {
            return Err(());
        }
        sent.insert(id);
    }
    Ok(())
}

/// Records an agent's report on one of its fetches (only while the delivery is open: a
/// late progress report never reopens a finished one).
pub async fn on_report(state: &AppState, agent_id: &str, r: ImageReport) {
    let sent = state.transfers.sent_so_far(agent_id, r.image_id());
    let (agent, image) = (agent_id.to_string(), r.image_id().to_string());
    let report = r.clone();
    let result = store::blocking(&state.store, move |s| {
        let Some(mut d) = s
            .list_deliveries(Some(&agent))?
            .into_iter()
            .find(|d| d.image_id == image)
        else {
            return Ok(None);
        };
        if !DeliveryState::parse(&d.state).is_some_and(DeliveryState::open) {
            return Ok(None);
        }
        if let Some(sent) = sent {
            d.bytes_sent = d.bytes_sent.max(sent);
        }
        d.updated_at = Some(now());
        match &report {
            ImageReport::Progress {
                bytes_total,
                bytes_done,
                layers_present,
                ..
            } => {
                d.state = DeliveryState::Fetching.as_str().into();
                d.bytes_total = *bytes_total;
                d.bytes_done = *bytes_done;
                d.layers_present = *layers_present;
            }
            ImageReport::Loaded {
                outcome,
                layers_present,
                ..
            } => {
                d.layers_present = *layers_present;
                match outcome {
                    Ok(()) => {
                        d.state = DeliveryState::Delivered.as_str().into();
                        d.bytes_done = d.bytes_total;
                        d.error.clear();
                    }
                    Err(e) => {
                        d.state = DeliveryState::Failed.as_str().into();
                        d.error = e.clone();
                    }
                }
            }
        }
        s.update_delivery(&d)?;
        Ok(Some(d))
    })
    .await;
    match result {
        Ok(Some(d)) if matches!(r, ImageReport::Loaded { .. }) => {
            let (kind, message) = if d.state == DeliveryState::Delivered.as_str() {
                (
                    "image-delivered",
                    format!(
                        "image {} ({}) loaded, {} bytes sent",
                        d.reference, d.image_id, d.bytes_sent
                    ),
                )
            } else {
                (
                    "image-failed",
                    format!("image {} ({}): {}", d.reference, d.image_id, d.error),
                )
            };
            if let Some(s) = DeliveryState::parse(&d.state) {
                state.metrics.images().finished(s);
            }
            tracing::info!(agent = %agent_id, image = %d.image_id, state = %d.state, "image fetch finished");
            state.health.agent_event(agent_id, kind, "", message);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(agent = %agent_id, error = %e, "record image report"),
    }
}
