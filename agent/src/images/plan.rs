//! Which blobs a fetch needs: the config, and each layer whose chain id (the layer on
//! everything below it, as Docker's layer store keys it) the engine lacks.

use std::collections::HashSet;

use drover_job::executor::chain_ids;

use super::{FetchImage, LayerSpec};

/// What one fetch downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Layers whose file the load archive must hold.
    pub missing: Vec<LayerSpec>,
    /// Layers the engine has.
    pub present: u32,
    /// Blobs to download (digest, size): the config first, then each missing layer once.
    pub blobs: Vec<(String, u64)>,
}

impl Plan {
    /// Bytes of the blobs to download.
    pub fn bytes_total(&self) -> u64 {
        self.blobs.iter().map(|(_, s)| s).sum()
    }
}

/// The plan of `f` on an engine holding `chains`.
pub fn plan(f: &FetchImage, chains: &HashSet<String>) -> Plan {
    let diff_ids: Vec<String> = f.layers.iter().map(|l| l.diff_id.clone()).collect();
    let mut missing = Vec::new();
    let mut present = 0u32;
    for (layer, chain) in f.layers.iter().zip(chain_ids(&diff_ids)) {
        if chains.contains(&chain) {
            present += 1;
        } else {
            missing.push(layer.clone());
        }
    }
    let mut blobs = vec![(f.image_id.clone(), f.config_size)];
    for l in &missing {
        if !blobs.iter().any(|(d, _)| *d == l.digest) {
            blobs.push((l.digest.clone(), l.size));
        }
    }
    Plan {
        missing,
        present,
        blobs,
    }
}
