//! Blobs on disk: `images/partial/<hex>` while downloading (kept across a cut link or a
//! restart, resumed from its length), `images/blobs/<hex>` once complete and checked
//! against the digest.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{BlobSource, FetchError};

/// `STATE_DIR/images`.
#[derive(Debug, Clone)]
pub struct BlobDir {
    root: PathBuf,
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl BlobDir {
    pub fn in_state_dir(state_dir: &Path) -> BlobDir {
        BlobDir {
            root: state_dir.join("images"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn partial(&self, digest: &str) -> PathBuf {
        self.root.join("partial").join(hex_of(digest))
    }

    /// Where a complete blob is.
    pub fn complete(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(hex_of(digest))
    }

    /// Bytes of `digest` already on disk (complete or partial).
    pub fn held(&self, digest: &str) -> u64 {
        [self.complete(digest), self.partial(digest)]
            .iter()
            .find_map(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// Forgets blob `digest` (both files).
    pub fn remove(&self, digest: &str) {
        let _ = std::fs::remove_file(self.complete(digest));
        let _ = std::fs::remove_file(self.partial(digest));
    }

    /// Downloads blob `digest` (`size` bytes) of image `image_id` unless complete, from
    /// the end of its partial file; `on_bytes` hears of every chunk written. The result
    /// is checked against the digest (a mismatch removes the partial file).
    pub async fn fetch(
        &self,
        source: &dyn BlobSource,
        image_id: &str,
        digest: &str,
        size: u64,
        on_bytes: &mut (dyn FnMut(u64) + Send),
    ) -> Result<PathBuf, FetchError> {
        let done = self.complete(digest);
        if std::fs::metadata(&done).is_ok_and(|m| m.len() == size) {
            return Ok(done);
        }
        let partial = self.partial(digest);
        for dir in [partial.parent(), done.parent()].into_iter().flatten() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(FetchError::io("create", dir))?;
        }
        let mut have = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if have > size {
            tokio::fs::remove_file(&partial)
                .await
                .map_err(FetchError::io("remove", &partial))?;
            have = 0;
        }
        if have < size {
            if have > 0 {
                tracing::info!(blob = %digest, from = have, size, "resuming blob download");
            }
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&partial)
                .await
                .map_err(FetchError::io("open", &partial))?;
            let mut stream = source.open(image_id, digest, have).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if have + chunk.len() as u64 > size {
                    drop(file);
                    let _ = std::fs::remove_file(&partial);
                    return Err(FetchError::Corrupt {
                        digest: digest.to_string(),
                        detail: format!("more than its {size} bytes arrived"),
                    });
                }
                file.write_all(&chunk)
                    .await
                    .map_err(FetchError::io("write", &partial))?;
                have += chunk.len() as u64;
                on_bytes(chunk.len() as u64);
            }
            file.flush()
                .await
                .map_err(FetchError::io("write", &partial))?;
            if have < size {
                return Err(FetchError::Interrupted(format!(
                    "blob {digest} ended after {have} of {size} bytes"
                )));
            }
        }
        let check = partial.clone();
        let actual = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut f = std::fs::File::open(&check)?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h)?;
            Ok(format!("sha256:{}", hex::encode(h.finalize())))
        })
        .await
        .map_err(|e| FetchError::Interrupted(format!("digest check: {e}")))?
        .map_err(FetchError::io("read", &partial))?;
        if actual != digest {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::Corrupt {
                digest: digest.to_string(),
                detail: format!("what arrived has digest {actual}"),
            });
        }
        tokio::fs::rename(&partial, &done)
            .await
            .map_err(FetchError::io("rename", &partial))?;
        Ok(done)
    }
}
