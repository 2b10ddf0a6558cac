//! The distributed cache: archives copied to and from an object store, around the local
//! [`super::CacheStore`] (which stays the first level, and the fallback when the store is
//! down).
//!
//! - [`RemoteCache`]: the IO seam (download an object into a file, upload a file), with
//!   [`MemoryRemote`] beside it for tests.
//! - [`s3`]: [`S3Remote`], S3-compatible servers over reqwest with [`sigv4`] signing.
//! - [`ObjectNames`]: object names exactly as gitlab-runner's `cache/cache.go`
//!   (`generateObjectName`) makes them, so a cache gitlab-runner wrote is found:
//!   `<Path>/runner/<short token>/project/<id>/<key>`, without `runner/<short token>` when
//!   `Shared = true`.

pub mod s3;
pub mod sigv4;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use s3::S3Remote;

/// Why a download or upload failed. Never fails a job: it becomes a trace warning.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{object}: {message}")]
    Request { object: String, message: String },
    #[error("{object}: the server answered {status}: {body}")]
    Status {
        object: String,
        status: u16,
        body: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{object}: {size} bytes, more than this runner's cache bound of {max} bytes")]
    TooLarge { object: String, size: u64, max: u64 },
    #[error("cache key {0:?}: the object name would leave the project's prefix")]
    Traversal(String),
    #[error("s3 client: {0}")]
    Client(String),
}

impl RemoteError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> RemoteError {
        RemoteError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// An object store holding cache archives.
#[async_trait::async_trait]
pub trait RemoteCache: Send + Sync {
    /// Where `object` lives, for the trace (no secrets): `s3://bucket/object`.
    fn describe(&self, object: &str) -> String;
    /// Downloads `object` into `dest` (atomically: a temporary file beside it, renamed).
    /// `Ok(false)` when there is no such object; refuses objects over `max_bytes`.
    async fn download(
        &self,
        object: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<bool, RemoteError>;
    /// Uploads the file `src` as `object`.
    async fn upload(&self, object: &str, src: &Path) -> Result<(), RemoteError>;
}

/// gitlab-runner's object naming (`cache/cache.go`, `generateObjectName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectNames {
    /// `[runners.cache] Path`.
    pub path: String,
    /// `[runners.cache] Shared`.
    pub shared: bool,
    /// The runner's short token (gitlab-runner's `ShortDescription()`).
    pub short_token: String,
}

impl ObjectNames {
    /// The object name of `key` for `project_id`; refuses names outside the project prefix.
    pub fn object(&self, project_id: i64, key: &str) -> Result<String, RemoteError> {
        let namespace = if self.shared {
            String::new()
        } else {
            go_path_join(&["runner", &self.short_token])
        };
        let id = project_id.to_string();
        let base = go_path_join(&[&self.path, &namespace, "project", &id]);
        let full = go_path_join(&[&base, key]);
        if key.is_empty() || !full.starts_with(&format!("{base}/")) {
            return Err(RemoteError::Traversal(key.to_string()));
        }
        Ok(full)
    }
}

/// Go's `path.Join`: the non-empty elements joined by `/`, then `path.Clean` (no empty,
/// `.` or resolvable `..` segments; a leading `/` kept); all empty → `""`.
fn go_path_join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    if joined.is_empty() {
        return String::new();
    }
    let rooted = joined.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// A runner's distributed cache: where objects go and how they are named.
#[derive(Clone)]
pub struct Remote {
    pub client: Arc<dyn RemoteCache>,
    pub names: ObjectNames,
    /// `MaxUploadedArchiveSize`: larger archives are not uploaded.
    pub max_upload_bytes: Option<u64>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("names", &self.names)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .finish_non_exhaustive()
    }
}

/// The distributed cache a runner's `[runners.cache]` sets: `Ok(None)` when it sets none
/// that Drover implements (no `Type`, `gcs`, `azure`, IAM authentication: warned about
/// when the file was read). `tls_ca_file` is the runner's `tls-ca-file`.
pub fn remote_for(
    cache: &drover_proto::spec::CacheConfig,
    short_token: &str,
    tls_ca_file: Option<&Path>,
) -> Result<Option<Remote>, RemoteError> {
    let Some(s3) = cache.s3_access_keys() else {
        return Ok(None);
    };
    Ok(Some(Remote {
        client: Arc::new(S3Remote::new(s3, tls_ca_file)?),
        names: ObjectNames {
            path: cache.path.clone().unwrap_or_default(),
            shared: cache.is_shared(),
            short_token: short_token.to_string(),
        },
        max_upload_bytes: cache.max_upload_bytes(),
    }))
}

/// An in-memory [`RemoteCache`] for tests; `set_down(true)` makes every call fail.
#[derive(Default)]
pub struct MemoryRemote {
    objects: std::sync::Mutex<BTreeMap<String, Vec<u8>>>,
    down: AtomicBool,
}

impl MemoryRemote {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    pub fn insert(&self, object: &str, bytes: Vec<u8>) {
        self.lock().insert(object.to_string(), bytes);
    }
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn check_up(&self, object: &str) -> Result<(), RemoteError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(RemoteError::Request {
                object: object.to_string(),
                message: "connection refused".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl RemoteCache for MemoryRemote {
    fn describe(&self, object: &str) -> String {
        format!("memory://{object}")
    }
    async fn download(
        &self,
        object: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<bool, RemoteError> {
        self.check_up(object)?;
        let Some(bytes) = self.lock().get(object).cloned() else {
            return Ok(false);
        };
        if bytes.len() as u64 > max_bytes {
            return Err(RemoteError::TooLarge {
                object: object.to_string(),
                size: bytes.len() as u64,
                max: max_bytes,
            });
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RemoteError::io(parent, e))?;
        }
        std::fs::write(dest, bytes).map_err(|e| RemoteError::io(dest, e))?;
        Ok(true)
    }
    async fn upload(&self, object: &str, src: &Path) -> Result<(), RemoteError> {
        self.check_up(object)?;
        let bytes = std::fs::read(src).map_err(|e| RemoteError::io(src, e))?;
        self.insert(object, bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(path: &str, shared: bool) -> ObjectNames {
        ObjectNames {
            path: path.into(),
            shared,
            short_token: "abcd1234".into(),
        }
    }

    #[test]
    fn object_names_as_gitlab_runner() {
        assert_eq!(
            names("", false).object(42, "main-protected").unwrap(),
            "runner/abcd1234/project/42/main-protected"
        );
        assert_eq!(
            names("ci/cache/", true).object(42, "k").unwrap(),
            "ci/cache/project/42/k"
        );
        assert_eq!(
            names("./a//b", false).object(7, "k").unwrap(),
            "a/b/runner/abcd1234/project/7/k"
        );
        assert!(names("", false).object(1, "../2/k").is_err());
        assert!(names("", false).object(1, "..").is_err());
        assert!(names("", false).object(1, "").is_err());
    }

    #[test]
    fn go_join_cleans_like_go() {
        assert_eq!(go_path_join(&["", "", ""]), "");
        assert_eq!(go_path_join(&["/x/../..", "y"]), "/y");
        assert_eq!(go_path_join(&["a", "../../b"]), "../b");
    }
}
