//! Reading an uploaded image archive: a `docker save` archive (`manifest.json`, the config,
//! layer tars) or an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`), as
//! Docker 20.10's `docker load` reads them. The archive is untrusted: every entry name is
//! checked (no absolute path, no `..`, links resolved inside the archive only), JSON files
//! are bounded, and every blob is hashed: the config's digest is the image id, each layer
//! tar's uncompressed digest must be the config's `rootfs.diff_ids` entry, an OCI blob's
//! digest its name. Nothing here writes anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Bounds on an archive.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries in the tar.
    pub max_entries: usize,
    /// `manifest.json`, `index.json`, an OCI manifest, the config.
    pub max_json_bytes: u64,
    /// Layers of the image.
    pub max_layers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 10_000,
            max_json_bytes: 1024 * 1024,
            max_layers: 256,
        }
    }
}

/// Why an archive is refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a tar archive: {0}")]
    NotTar(String),
    #[error("entry {0:?} leaves the archive (absolute path or '..')")]
    Traversal(String),
    #[error("entry {name:?} is a {kind}, which an image archive does not hold")]
    EntryType { name: String, kind: String },
    #[error("entry {0:?} appears twice")]
    Duplicate(String),
    #[error("more than {0} entries")]
    TooManyEntries(usize),
    #[error(
        "neither a docker save archive (no manifest.json) nor an OCI image layout (no index.json)"
    )]
    Unknown,
    #[error("{0} is missing from the archive")]
    Missing(String),
    #[error("{name} is {size} bytes, more than the {limit} bytes allowed")]
    TooBig { name: String, size: u64, limit: u64 },
    #[error("{name}: {detail}")]
    Json { name: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: digest is {actual}, not {expected}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
}

/// Where a blob's bytes are in the archive file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    pub offset: u64,
    pub size: u64,
}

/// A layer: its blob (a tar, maybe gzip-compressed) and the digest of the uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub blob: Blob,
    pub diff_id: String,
}

/// A checked image archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `name:tag` the archive names (or the fallback given).
    pub reference: String,
    /// The config; its digest is the image id.
    pub config: Blob,
    pub layers: Vec<Layer>,
}

/// A regular file of the tar, or a link to another entry.
#[derive(Debug, Clone)]
enum Entry {
    File { offset: u64, size: u64 },
    Link(String),
}

/// Whether `d` is `sha256:` and 64 lowercase hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `name` without `./`, with `..` and absolute paths refused.
fn clean(name: &str) -> Result<String, ArchiveError> {
    if name.starts_with('/') {
        return Err(ArchiveError::Traversal(name.to_string()));
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(ArchiveError::Traversal(name.to_string())),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// The archive's entries by cleaned name.
fn index(file: &mut File, limits: &Limits) -> Result<BTreeMap<String, Entry>, ArchiveError> {
    file.seek(SeekFrom::Start(0))?;
    let mut archive = tar::Archive::new(&mut *file);
    let mut out = BTreeMap::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| ArchiveError::NotTar(e.to_string()))?;
    for (n, entry) in entries.enumerate() {
        if n >= limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let entry = entry.map_err(|e| ArchiveError::NotTar(e.to_string()))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = clean(&raw)?;
        let kind = entry.header().entry_type();
        let value = match kind {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => Entry::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            },
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if target.starts_with('/') {
                    return Err(ArchiveError::Traversal(format!("{raw} -> {target}")));
                }
                // A symlink is relative to its directory, a hard link to the root.
                let joined = match (kind, name.rsplit_once('/')) {
                    (tar::EntryType::Symlink, Some((dir, _))) => format!("{dir}/{target}"),
                    _ => target.clone(),
                };
                Entry::Link(
                    clean(&joined)
                        .map_err(|_| ArchiveError::Traversal(format!("{raw} -> {target}")))?,
                )
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(ArchiveError::EntryType {
                    name: raw,
                    kind: format!("{other:?}").to_lowercase(),
                });
            }
        };
        if out.insert(name.clone(), value).is_some() {
            return Err(ArchiveError::Duplicate(name));
        }
    }
    Ok(out)
}

/// The file `name` (links followed, at most 8 deep).
fn file_of(entries: &BTreeMap<String, Entry>, name: &str) -> Result<(u64, u64), ArchiveError> {
    let mut at = clean(name)?;
    for _ in 0..8 {
        match entries.get(&at) {
            Some(Entry::File { offset, size }) => return Ok((*offset, *size)),
            Some(Entry::Link(to)) => at = to.clone(),
            None => return Err(ArchiveError::Missing(name.to_string())),
        }
    }
    Err(ArchiveError::Invalid(format!("{name}: too many links")))
}

/// The bytes of a bounded JSON file.
fn read_small(
    file: &mut File,
    entries: &BTreeMap<String, Entry>,
    name: &str,
    limits: &Limits,
) -> Result<(Vec<u8>, Blob), ArchiveError> {
    let (offset, size) = file_of(entries, name)?;
    if size > limits.max_json_bytes {
        return Err(ArchiveError::TooBig {
            name: name.to_string(),
            size,
            limit: limits.max_json_bytes,
        });
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(size as usize);
    (&mut *file).take(size).read_to_end(&mut buf)?;
    if buf.len() as u64 != size {
        return Err(ArchiveError::Invalid(format!(
            "{name}: archive ends inside it"
        )));
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&buf)));
    Ok((
        buf,
        Blob {
            digest,
            offset,
            size,
        },
    ))
}

fn json<T: for<'de> Deserialize<'de>>(name: &str, bytes: &[u8]) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::Json {
        name: name.to_string(),
        detail: e.to_string(),
    })
}

/// The digest of a region, and of its content after gzip decompression when it is gzip
/// (else the same).
fn hash_layer(file: &mut File, offset: u64, size: u64) -> Result<(String, String), ArchiveError> {
    file.seek(SeekFrom::Start(offset))?;
    let mut magic = [0u8; 2];
    let gz = size >= 2 && {
        file.read_exact(&mut magic)?;
        magic == [0x1f, 0x8b]
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut outer = Sha256::new();
    let mut inner = Sha256::new();
    let region = Tee {
        inner: (&mut *file).take(size),
        hash: &mut outer,
        read: 0,
    };
    let read = if gz {
        let mut dec = flate2::read::GzDecoder::new(region);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = dec
                .read(&mut buf)
                .map_err(|e| ArchiveError::Invalid(format!("gzip layer at {offset}: {e}")))?;
            if n == 0 {
                break;
            }
            inner.update(&buf[..n]);
        }
        // Bytes after the gzip stream are hashed too.
        let mut rest = dec.into_inner();
        std::io::copy(&mut rest, &mut std::io::sink())?;
        rest.read
    } else {
        let mut region = region;
        std::io::copy(&mut region, &mut std::io::sink())?;
        region.read
    };
    if read != size {
        return Err(ArchiveError::Invalid(format!(
            "archive ends inside the layer at offset {offset}"
        )));
    }
    let blob = format!("sha256:{}", hex::encode(outer.finalize()));
    let diff = if gz {
        format!("sha256:{}", hex::encode(inner.finalize()))
    } else {
        blob.clone()
    };
    Ok((blob, diff))
}

/// A reader that hashes what it reads.
struct Tee<'a, R> {
    inner: R,
    hash: &'a mut Sha256,
    read: u64,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Reads and checks the archive in `file`; `fallback` is the reference used when the
/// archive names none.
pub fn read(file: &mut File, fallback: &str, limits: &Limits) -> Result<Image, ArchiveError> {
    let entries = index(file, limits)?;
    if entries.contains_key("manifest.json") {
        docker_save(file, &entries, fallback, limits)
    } else if entries.contains_key("index.json") {
        oci_layout(file, &entries, fallback, limits)
    } else {
        Err(ArchiveError::Unknown)
    }
}

/// The config's diff ids, checked against the number of layers.
fn diff_ids(config: &[u8], layers: usize, limits: &Limits) -> Result<Vec<String>, ArchiveError> {
    let config: Config = json("config", config)?;
    let ids = config.rootfs.diff_ids;
    if layers > limits.max_layers {
        return Err(ArchiveError::Invalid(format!(
            "{layers} layers, more than the {} allowed",
            limits.max_layers
        )));
    }
    if ids.len() != layers {
        return Err(ArchiveError::Invalid(format!(
            "the config lists {} diff_ids for {layers} layers",
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|d| !valid_digest(d)) {
        return Err(ArchiveError::Invalid(format!(
            "config: diff_id {bad:?} is not a sha256 digest"
        )));
    }
    Ok(ids)
}

fn reference_or(name: Option<String>, fallback: &str) -> Result<String, ArchiveError> {
    let r = name
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| fallback.to_string());
    if r.is_empty() {
        return Err(ArchiveError::Invalid(
            "the archive names no image (no RepoTags or ref name): give one with --tag".into(),
        ));
    }
    check_reference(&r)?;
    Ok(r)
}

/// A `name[:tag]` Docker would accept, bounded.
pub fn check_reference(r: &str) -> Result<(), ArchiveError> {
    let ok = r.len() <= 255
        && !r.starts_with(['-', '.', ':', '/'])
        && r.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b"._-/:".contains(&b)
                || b.is_ascii_uppercase()
        });
    if ok {
        Ok(())
    } else {
        Err(ArchiveError::Invalid(format!(
            "image reference {r:?} is not a valid name[:tag]"
        )))
    }
}

/// The layer at `offset`, its blob digest checked against `blob` (when the archive names
/// it) and its uncompressed digest against `diff_id`; `what` names it in errors.
fn checked_layer(
    file: &mut File,
    what: &str,
    offset: u64,
    size: u64,
    blob: Option<&str>,
    diff_id: String,
) -> Result<Layer, ArchiveError> {
    let (digest, actual) = hash_layer(file, offset, size)?;
    if let Some(expected) = blob.filter(|b| *b != digest) {
        return Err(ArchiveError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: digest,
        });
    }
    if actual != diff_id {
        return Err(ArchiveError::DigestMismatch {
            what: format!("{what} (uncompressed)"),
            expected: diff_id,
            actual,
        });
    }
    Ok(Layer {
        blob: Blob {
            digest,
            offset,
            size,
        },
        diff_id,
    })
}

fn docker_save(
    file: &mut File,
    entries: &BTreeMap<String, Entry>,
    fallback: &str,
    limits: &Limits,
) -> Result<Image, ArchiveError> {
    let (bytes, _) = read_small(file, entries, "manifest.json", limits)?;
    let mut manifests: Vec<SaveManifest> = json("manifest.json", &bytes)?;
    if manifests.len() != 1 {
        return Err(ArchiveError::Invalid(format!(
            "manifest.json holds {} images; push one image per archive",
            manifests.len()
        )));
    }
    let m = manifests.remove(0);
    let (config_bytes, config) = read_small(file, entries, &m.config, limits)?;
    let ids = diff_ids(&config_bytes, m.layers.len(), limits)?;
    let mut layers = Vec::with_capacity(ids.len());
    for (path, diff_id) in m.layers.iter().zip(ids) {
        let (offset, size) = file_of(entries, path)?;
        let what = format!("layer {path}");
        layers.push(checked_layer(file, &what, offset, size, None, diff_id)?);
    }
    let named = m.repo_tags.and_then(|t| t.into_iter().next());
    Ok(Image {
        reference: reference_or(named, fallback)?,
        config,
        layers,
    })
}

/// The OCI blob `d`, its digest and size checked when it is small (JSON), else returned
/// for hashing.
fn oci_blob(
    entries: &BTreeMap<String, Entry>,
    d: &Descriptor,
) -> Result<(String, u64, u64), ArchiveError> {
    if !valid_digest(&d.digest) {
        return Err(ArchiveError::Invalid(format!(
            "descriptor digest {:?} is not a sha256 digest",
            d.digest
        )));
    }
    let name = format!("blobs/sha256/{}", &d.digest["sha256:".len()..]);
    let (offset, size) = file_of(entries, &name)?;
    if size != d.size {
        return Err(ArchiveError::Invalid(format!(
            "{name} is {size} bytes, its descriptor says {}",
            d.size
        )));
    }
    Ok((name, offset, size))
}

fn oci_layout(
    file: &mut File,
    entries: &BTreeMap<String, Entry>,
    fallback: &str,
    limits: &Limits,
) -> Result<Image, ArchiveError> {
    let (bytes, _) = read_small(file, entries, "index.json", limits)?;
    let mut index: OciIndex = json("index.json", &bytes)?;
    if index.manifests.len() != 1 {
        return Err(ArchiveError::Invalid(format!(
            "index.json lists {} manifests; push one image per archive",
            index.manifests.len()
        )));
    }
    let top = index.manifests.remove(0);
    if top.media_type.contains("index") || top.media_type.contains("manifest.list") {
        return Err(ArchiveError::Invalid(
            "index.json points to a multi-platform index: save a single platform".into(),
        ));
    }
    let (name, _, _) = oci_blob(entries, &top)?;
    let (mbytes, mblob) = read_small(file, entries, &name, limits)?;
    if mblob.digest != top.digest {
        return Err(ArchiveError::DigestMismatch {
            what: name,
            expected: top.digest,
            actual: mblob.digest,
        });
    }
    let manifest: OciManifest = json(&name, &mbytes)?;
    let (cname, _, _) = oci_blob(entries, &manifest.config)?;
    let (config_bytes, config) = read_small(file, entries, &cname, limits)?;
    if config.digest != manifest.config.digest {
        return Err(ArchiveError::DigestMismatch {
            what: cname,
            expected: manifest.config.digest,
            actual: config.digest,
        });
    }
    let ids = diff_ids(&config_bytes, manifest.layers.len(), limits)?;
    let mut layers = Vec::with_capacity(ids.len());
    for (d, diff_id) in manifest.layers.iter().zip(ids) {
        if d.media_type.contains("zstd") {
            return Err(ArchiveError::Invalid(format!(
                "layer {} is zstd-compressed, which Docker 20.10 cannot load",
                d.digest
            )));
        }
        let (lname, offset, size) = oci_blob(entries, d)?;
        layers.push(checked_layer(
            file,
            &lname,
            offset,
            size,
            Some(&d.digest),
            diff_id,
        )?);
    }
    let named = [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ]
    .iter()
    .find_map(|k| top.annotations.get(*k))
    .filter(|r| r.contains(':') || r.contains('/'))
    .cloned();
    Ok(Image {
        reference: reference_or(named, fallback)?,
        config,
        layers,
    })
}

#[cfg(test)]
mod tests;
