//! `docker save` archives made by hand for `drover image push` (the image push test and
//! `bin/bench-image-push.rs`): layers given as tars, a config naming their diff ids, and
//! a tag; hostile variants are made by editing the parts.

use std::path::Path;

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `b`.
pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A layer tar holding one file `path` with `content`.
pub fn file_layer(path: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, path, content)
        .expect("append to a layer tar");
    b.into_inner().expect("finish a layer tar")
}

/// `n` random bytes (a layer no engine holds yet).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

/// An image as `docker save` writes it.
#[derive(Debug, Clone)]
pub struct SaveArchive {
    pub tag: String,
    pub layers: Vec<Vec<u8>>,
}

impl SaveArchive {
    /// The config (linux/amd64, `sh` as command, the layers' diff ids).
    pub fn config(&self) -> Vec<u8> {
        let ids: Vec<String> = self.layers.iter().map(|l| sha(l)).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]},
            "rootfs": {"type": "layers", "diff_ids": ids},
            "history": self.layers.iter().map(|_| serde_json::json!({"created_by": "drover test"})).collect::<Vec<_>>(),
        }))
        .expect("config json")
    }

    /// The image id Docker gives it.
    pub fn id(&self) -> String {
        sha(&self.config())
    }

    /// The archive's entries (name, bytes), in `docker save` order.
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        let config = self.config();
        let hex = |b: &[u8]| sha(b)[7..].to_string();
        let layer_names: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("{}/layer.tar", hex(l)))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": format!("{}.json", hex(&config)),
            "RepoTags": [self.tag],
            "Layers": layer_names,
        }]))
        .expect("manifest json");
        let mut out = vec![
            ("manifest.json".to_string(), manifest),
            (format!("{}.json", hex(&config)), config),
        ];
        for (name, l) in layer_names.into_iter().zip(&self.layers) {
            out.push((name, l.clone()));
        }
        out
    }

    /// Writes the archive to `path`.
    pub fn write(&self, path: &Path) {
        write_entries(path, &self.entries());
    }
}

/// Writes a tar of `entries` with raw names (so a hostile `../x` stays as it is).
pub fn write_entries(path: &Path, entries: &[(String, Vec<u8>)]) {
    let file = std::fs::File::create(path).expect("create archive");
    let mut b = tar::Builder::new(file);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &data[..]).expect("append to archive");
    }
    b.finish().expect("finish archive");
}
