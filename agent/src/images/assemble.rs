//! The `docker save` archive the agent loads: `manifest.json` listing every layer, the
//! config, and the files of the missing layers only (a layer the engine holds is not read
//! by `docker load`).

use std::collections::HashSet;
use std::path::Path;

use super::FetchImage;

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The path of a layer's file in the archive.
fn layer_path(digest: &str) -> String {
    format!("{}/layer.tar", hex_of(digest))
}

/// Writes the archive of `f` to `out`: the config from `config`, and each layer of
/// `missing` (digest, file) from its file.
pub fn write(
    out: &Path,
    f: &FetchImage,
    config: &Path,
    missing: &[(String, std::path::PathBuf)],
) -> std::io::Result<()> {
    let config_name = format!("{}.json", hex_of(&f.image_id));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [f.reference],
        "Layers": f.layers.iter().map(|l| layer_path(&l.digest)).collect::<Vec<_>>(),
    }]);
    let manifest = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    let file = std::fs::File::create(out)?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    let header = |size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h
    };
    b.append_data(
        &mut header(manifest.len() as u64),
        "manifest.json",
        &manifest[..],
    )?;
    let c = std::fs::File::open(config)?;
    b.append_data(&mut header(c.metadata()?.len()), &config_name, c)?;
    let mut written = HashSet::new();
    for (digest, path) in missing {
        if !written.insert(digest.clone()) {
            continue;
        }
        let l = std::fs::File::open(path)?;
        b.append_data(&mut header(l.metadata()?.len()), layer_path(digest), l)?;
    }
    b.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}
