//! Images the controller delivers (`drover image push`): the agent fetches only the blobs
//! of the layers its engine lacks and loads the image.
//!
//! - [`plan`]: which layers are missing (by chain id, as Docker's layer store keys them).
//! - [`blobs`]: downloading a blob to `STATE_DIR/images/partial/<hex>`, resumed from what
//!   is there after a cut link or a restart, checked against its digest, then moved to
//!   `STATE_DIR/images/blobs/<hex>`.
//! - [`assemble`]: the `docker save` archive holding the config and the missing layers
//!   only (`docker load` reads a layer's file only when the engine lacks the layer).
//! - [`worker`]: one fetch at a time; progress and the result go to the controller; the
//!   image is recorded as delivered in the disk ledger, so the collector never removes it.
//!
//! Seams: [`BlobSource`] (the controller's `DownloadBlob`, in `control/blobs.rs`) and
//! [`ImageEngine`] (the executor's engine calls).

pub mod assemble;
pub mod blobs;
pub mod plan;
#[cfg(test)]
mod tests;
pub mod worker;

use std::collections::HashSet;
use std::path::Path;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A `FetchImage` command, checked at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchImage {
    /// The config digest: the image id.
    pub image_id: String,
    /// `name:tag`.
    pub reference: String,
    pub config_size: u64,
    /// Base first.
    pub layers: Vec<LayerSpec>,
}

/// One layer of a [`FetchImage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// The blob's digest (what is downloaded).
    pub digest: String,
    /// The uncompressed tar's digest.
    pub diff_id: String,
    pub size: u64,
}

/// Why a blob could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The link failed (cut, controller away): tried again on the next session.
    #[error("transfer interrupted: {0}")]
    Interrupted(String),
    /// The controller refused (the delivery is gone, the blob unknown).
    #[error("controller refused: {0}")]
    Refused(String),
    /// What arrived is not the blob.
    #[error("blob {digest}: {detail}")]
    Corrupt { digest: String, detail: String },
    /// The state dir failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
}

impl FetchError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
        let path = path.display().to_string();
        move |source| FetchError::Io { op, path, source }
    }
}

/// Blob bytes from `offset` on.
pub type BlobStream = BoxStream<'static, Result<Vec<u8>, FetchError>>;

/// Where blobs come from: the controller's `DownloadBlob`.
#[async_trait]
pub trait BlobSource: Send + Sync {
    /// Blob `digest` of image `image_id` from `offset`.
    async fn open(
        &self,
        image_id: &str,
        digest: &str,
        offset: u64,
    ) -> Result<BlobStream, FetchError>;
}

/// The engine calls a delivery needs.
#[async_trait]
pub trait ImageEngine: Send + Sync {
    /// The chain id of every layer the engine holds.
    async fn layer_chains(&self) -> anyhow::Result<HashSet<String>>;
    /// Loads the `docker save` archive at `archive`; returns the id `reference` has then.
    async fn load(&self, archive: &Path, reference: &str) -> anyhow::Result<String>;
}

/// What the agent tells the controller of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageReport {
    Progress {
        image_id: String,
        bytes_total: u64,
        bytes_done: u64,
        layers_present: u32,
    },
    Loaded {
        image_id: String,
        reference: String,
        /// The id the engine gave it, or why the fetch failed.
        outcome: Result<String, String>,
        layers_present: u32,
    },
}
