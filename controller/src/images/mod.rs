//! Images pushed to air-gapped boxes (`drover image push`, `drover image ls`).
//!
//! - [`archive`]: reading and checking an uploaded `docker save` or OCI layout archive.
//! - [`pace`]: the per-agent send rate limit.
//!
//! The controller never talks to Docker: the CLI runs `docker save` on its own host and
//! uploads the archive. The controller keeps blobs by digest in the store (chunked rows, so
//! any PostgreSQL replica serves them), records a delivery per selected agent and tells each
//! agent to fetch the image (`FetchImage`, sent again on every session while the delivery
//! is not finished). The agent downloads only the blobs of layers its engine lacks
//! (`DownloadBlob`, resumable by offset), loads the image and reports its id.

pub mod archive;
pub mod pace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Largest archive `drover image push` accepts.
pub const MAX_ARCHIVE_BYTES: u64 = 32 * 1024 * 1024 * 1024;

/// What is stored of an image besides its blobs (the `images.manifest` column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub config_size: u64,
    pub layers: Vec<LayerRef>,
}

/// A layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// The blob (as stored, maybe compressed).
    pub digest: String,
    /// The uncompressed tar's digest.
    pub diff_id: String,
    pub size: u64,
}

impl Manifest {
    /// Whether `digest` is a blob of image `image_id` with this manifest.
    pub fn holds(&self, image_id: &str, digest: &str) -> bool {
        image_id == digest || self.layers.iter().any(|l| l.digest == digest)
    }
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Stored, the agent not yet heard from.
    Pending,
    /// The agent is downloading.
    Fetching,
    /// Loaded into the agent's engine.
    Delivered,
    /// The agent gave up (the error says why).
    Failed,
}

impl DeliveryState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Fetching => "fetching",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    /// A stored name; an unknown one reads as `None`.
    pub fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Fetching,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }

    /// Whether the agent still has to be told to fetch.
    pub fn open(self) -> bool {
        matches!(self, DeliveryState::Pending | DeliveryState::Fetching)
    }
}

/// What this controller process keeps of transfers: a pacer per agent and the bytes sent
/// per delivery since the push (written to the store with the agent's reports).
#[derive(Debug)]
pub struct Transfers {
    /// Where uploads are spooled while they are checked.
    pub spool_dir: PathBuf,
    pacers: Mutex<HashMap<String, Arc<pace::Pacer>>>,
    sent: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
}

impl Transfers {
    pub fn new(spool_dir: PathBuf) -> Transfers {
        Transfers {
            spool_dir,
            pacers: Mutex::default(),
            sent: Mutex::default(),
        }
    }

    /// The agent's pacer, set to `rate` bytes per second (0: unlimited).
    pub fn pacer(&self, agent_id: &str, rate: u64) -> Arc<pace::Pacer> {
        let mut g = self.pacers.lock().unwrap_or_else(|p| p.into_inner());
        let p = g
            .entry(agent_id.to_string())
            .or_insert_with(|| Arc::new(pace::Pacer::default()));
        p.set_rate(rate);
        p.clone()
    }

    /// The counter of bytes sent to `agent_id` for `image_id`.
    pub fn sent(&self, agent_id: &str, image_id: &str) -> Arc<AtomicU64> {
        let mut g = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        g.entry((agent_id.to_string(), image_id.to_string()))
            .or_default()
            .clone()
    }

    /// Bytes sent for the delivery, when this process sent any.
    pub fn sent_so_far(&self, agent_id: &str, image_id: &str) -> Option<u64> {
        let g = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&(agent_id.to_string(), image_id.to_string()))
            .map(|c| c.load(Ordering::Relaxed))
    }

    /// A new push of the image to the agent counts from zero.
    pub fn restart(&self, agent_id: &str, image_id: &str) {
        let mut g = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        g.remove(&(agent_id.to_string(), image_id.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_states_read_back_and_unknown_is_none() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Fetching,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("gone"), None);
        assert!(DeliveryState::Fetching.open() && !DeliveryState::Failed.open());
    }

    #[test]
    fn a_manifest_holds_its_config_and_layers_only() {
        let m = Manifest {
            config_size: 3,
            layers: vec![LayerRef {
                digest: "sha256:l".into(),
                diff_id: "sha256:d".into(),
                size: 1,
            }],
        };
        assert!(m.holds("sha256:c", "sha256:c"));
        assert!(m.holds("sha256:c", "sha256:l"));
        assert!(!m.holds("sha256:c", "sha256:d"));
    }

    #[test]
    fn sent_bytes_count_per_delivery_and_restart_at_zero() {
        let t = Transfers::new(PathBuf::from("/nonexistent"));
        assert_eq!(t.sent_so_far("a", "i"), None);
        t.sent("a", "i").fetch_add(5, Ordering::Relaxed);
        t.sent("a", "i").fetch_add(2, Ordering::Relaxed);
        assert_eq!(t.sent_so_far("a", "i"), Some(7));
        assert_eq!(t.sent_so_far("b", "i"), None);
        t.restart("a", "i");
        assert_eq!(t.sent_so_far("a", "i"), None);
    }
}
