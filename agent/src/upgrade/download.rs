//! Downloading an agent binary with resume, and checking it before it is kept: the bytes go
//! to `STATE_DIR/upgrade/<sha256>.part`, appended from its length (a kill -9 or a cut link
//! resumes there); once complete, the SHA-256 and the controller's signature (over the raw
//! SHA-256, with the pinned key) must match, else the part is deleted and the upgrade
//! refused. A checked binary becomes `STATE_DIR/upgrade/<sha256>` (0755).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::signature::{ED25519, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use super::Order;

/// Where the bytes come from (the controller's `DownloadBinary`; a fake in tests).
#[async_trait::async_trait]
pub trait Source: Send {
    /// The next bytes of binary `sha256` from `offset`; `None` at the end of what the
    /// source sends. An error is transient (retry later, from what was written).
    async fn next(&mut self, sha256: &str, offset: u64) -> Result<Option<Vec<u8>>, String>;
}

/// Why a download did not give a checked binary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Try again later from the part written so far (link cut, controller away).
    #[error("download interrupted: {0}")]
    Interrupted(String),
    /// The binary is refused; nothing of it is kept.
    #[error("{0}")]
    Refused(String),
}

/// The upgrade directory in `state_dir`.
pub fn upgrade_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("upgrade")
}

/// Downloads and checks `order`'s binary; `progress` gets the percentage as it grows.
pub async fn fetch(
    source: &mut dyn Source,
    state_dir: &Path,
    public_key: Option<[u8; 32]>,
    order: &Order,
    mut progress: impl FnMut(u8) + Send,
) -> Result<PathBuf, Failure> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Failure::Interrupted(format!("{what} {}: {e}", path.display()))
    };
    let dir = upgrade_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    let done = dir.join(&order.sha256);
    let part = dir.join(format!("{}.part", order.sha256));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| io("open", &part, e))?;
    let mut offset = file.metadata().map_err(|e| io("read", &part, e))?.len();
    if offset > order.size {
        file.set_len(0).map_err(|e| io("truncate", &part, e))?;
        offset = 0;
    }
    if offset > 0 {
        tracing::info!(sha256 = %order.sha256, offset, "resuming binary download");
    }
    while offset < order.size {
        let data = source
            .next(&order.sha256, offset)
            .await
            .map_err(Failure::Interrupted)?
            .ok_or_else(|| {
                Failure::Interrupted(format!("the controller stopped sending at {offset} bytes"))
            })?;
        if offset + data.len() as u64 > order.size {
            let _ = std::fs::remove_file(&part);
            return Err(Failure::Refused(format!(
                "binary {} is larger than the {} bytes announced",
                order.sha256, order.size
            )));
        }
        file.write_all(&data).map_err(|e| io("write", &part, e))?;
        offset += data.len() as u64;
        progress(u8::try_from(offset * 100 / order.size.max(1)).unwrap_or(100));
    }
    file.sync_all().map_err(|e| io("sync", &part, e))?;
    drop(file);
    if let Err(why) = check(&part, order, public_key) {
        let _ = std::fs::remove_file(&part);
        return Err(Failure::Refused(why));
    }
    std::fs::rename(&part, &done).map_err(|e| io("rename", &part, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&done, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io("chmod", &done, e))?;
    Ok(done)
}

/// The SHA-256 of `file` and the signature of `order` over it, with `public_key`.
fn check(file: &Path, order: &Order, public_key: Option<[u8; 32]>) -> Result<(), String> {
    let sha = sha256_of(file)?;
    if hex::encode(sha) != order.sha256 {
        return Err(format!(
            "checksum mismatch: the binary downloaded has SHA-256 {}, the upgrade names {}",
            hex::encode(sha),
            order.sha256
        ));
    }
    let Some(key) = public_key else {
        return Err("no upgrade signing key is pinned (enroll again, or connect to a controller that sends one)".into());
    };
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&sha, &order.signature)
        .map_err(|_| {
            format!(
                "signature mismatch: binary {} is not signed by the pinned upgrade key",
                order.sha256
            )
        })
}

/// The SHA-256 of `file`.
pub fn sha256_of(file: &Path) -> Result<[u8; 32], String> {
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(file).map_err(|e| format!("read {}: {e}", file.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", file.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    /// Sends `content` in `chunk`-byte pieces, failing once after `cut_after` pieces.
    struct Fake {
        content: Vec<u8>,
        chunk: usize,
        cut_after: Option<usize>,
        sent: usize,
        asked_from: Vec<u64>,
    }

    #[async_trait::async_trait]
    impl Source for Fake {
        async fn next(&mut self, _sha: &str, offset: u64) -> Result<Option<Vec<u8>>, String> {
            if self.asked_from.last() != Some(&offset) {
                self.asked_from.push(offset);
            }
            if self.cut_after == Some(self.sent) {
                self.cut_after = None;
                return Err("link cut".into());
            }
            self.sent += 1;
            let start = offset as usize;
            if start >= self.content.len() {
                return Ok(None);
            }
            let end = (start + self.chunk).min(self.content.len());
            Ok(Some(self.content[start..end].to_vec()))
        }
    }

    fn key() -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[5; 32]).unwrap()
    }

    fn order(content: &[u8], key: &Ed25519KeyPair) -> Order {
        let sha: [u8; 32] = Sha256::digest(content).into();
        Order {
            upgrade_id: 1,
            sha256: hex::encode(sha),
            size: content.len() as u64,
            signature: key.sign(&sha).as_ref().to_vec(),
            version: "2.0".into(),
            health_timeout_seconds: 60,
        }
    }

    fn pk(key: &Ed25519KeyPair) -> Option<[u8; 32]> {
        key.public_key().as_ref().try_into().ok()
    }

    #[tokio::test]
    async fn resumes_after_a_cut_from_the_part_written() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let k = key();
        let o = order(&content, &k);
        let mut src = Fake {
            content: content.clone(),
            chunk: 1000,
            cut_after: Some(4),
            sent: 0,
            asked_from: Vec::new(),
        };
        let mut seen = Vec::new();
        let e = fetch(&mut src, dir.path(), pk(&k), &o, |p| seen.push(p))
            .await
            .unwrap_err();
        assert!(matches!(e, Failure::Interrupted(_)), "{e}");
        let part = upgrade_dir(dir.path()).join(format!("{}.part", o.sha256));
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 4000);
        let done = fetch(&mut src, dir.path(), pk(&k), &o, |p| seen.push(p))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&done).unwrap(), content);
        assert!(!part.exists());
        assert_eq!(
            src.asked_from,
            vec![0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000]
        );
        assert_eq!(seen.last(), Some(&100));
    }

    #[tokio::test]
    async fn a_bad_checksum_or_signature_or_no_key_is_refused_and_nothing_kept() {
        let dir = tempfile::tempdir().unwrap();
        let content = b"agent binary".to_vec();
        let k = key();
        let fake = |c: &[u8]| Fake {
            content: c.to_vec(),
            chunk: 5,
            cut_after: None,
            sent: 0,
            asked_from: Vec::new(),
        };
        // The controller sends other bytes than it announced.
        let o = order(&content, &k);
        let e = fetch(&mut fake(b"agent binarX"), dir.path(), pk(&k), &o, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Failure::Refused(m) if m.contains("checksum mismatch")),
            "{e}"
        );
        // Signed by another key.
        let other = Ed25519KeyPair::from_seed_unchecked(&[6; 32]).unwrap();
        let e = fetch(&mut fake(&content), dir.path(), pk(&other), &o, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Failure::Refused(m) if m.contains("signature mismatch")),
            "{e}"
        );
        let e = fetch(&mut fake(&content), dir.path(), None, &o, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Failure::Refused(m) if m.contains("no upgrade signing key")),
            "{e}"
        );
        // Longer than announced.
        let e = fetch(
            &mut fake(b"agent binary and more"),
            dir.path(),
            pk(&k),
            &o,
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, Failure::Refused(m) if m.contains("larger")),
            "{e}"
        );
        let left: Vec<_> = std::fs::read_dir(upgrade_dir(dir.path()))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
