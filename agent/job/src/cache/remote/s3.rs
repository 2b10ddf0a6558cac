//! [`S3Remote`]: cache archives on an S3-compatible server (AWS S3, MinIO, Garage,
//! SeaweedFS, ...), signed with [`super::sigv4`], over reqwest with rustls (plain HTTP when
//! `Insecure = true`, as gitlab-runner's `GetEndpoint` does).
//!
//! Timeouts are bounded so a slow or dead server delays a job by at most
//! [`CONNECT_TIMEOUT`] per attempt, or [`STALL_TIMEOUT`] without progress, and never more
//! than [`TRANSFER_TIMEOUT`] per archive.

use std::path::Path;
use std::time::Duration;

use drover_proto::spec::{CacheS3Config, S3Encryption};
use futures::StreamExt;
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::sigv4::{EMPTY_SHA256, Request, Signer, amz_date, encode_path};
use super::{RemoteCache, RemoteError};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// At most this much of an error answer is read into the warning.
const MAX_ERROR_BODY: usize = 512;

/// One runner's S3 cache bucket.
pub struct S3Remote {
    client: reqwest::Client,
    /// `http(s)://host[:port]` (path style) or `http(s)://bucket.host[:port]`.
    base: Url,
    path_style: bool,
    bucket: String,
    region: String,
    access_key: SecretString,
    secret_key: SecretString,
    session_token: Option<SecretString>,
    encryption: S3Encryption,
    kms_key_id: String,
}

impl S3Remote {
    /// The client for `cfg` (which must carry access keys), trusting the system roots plus
    /// `tls_ca_file` (the runner's `tls-ca-file`, as gitlab-runner's helper does).
    pub fn new(cfg: &CacheS3Config, tls_ca_file: Option<&Path>) -> Result<S3Remote, RemoteError> {
        let client_err = |m: String| RemoteError::Client(m);
        let (Some(access_key), Some(secret_key)) = (&cfg.access_key, &cfg.secret_key) else {
            return Err(client_err("AccessKey and SecretKey are needed".into()));
        };
        let path_style = cfg.path_style();
        let endpoint = cfg.endpoint();
        let base = if path_style {
            endpoint.clone()
        } else {
            endpoint.replacen("://", &format!("://{}.", cfg.bucket_name), 1)
        };
        let base = Url::parse(&base)
            .map_err(|e| client_err(format!("ServerAddress {:?}: {e}", cfg.server_address)))?;
        let tls = drover_gitlab::client::tls_config(&endpoint, tls_ca_file)
            .map_err(|e| client_err(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STALL_TIMEOUT)
            .timeout(TRANSFER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("drover-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| client_err(e.to_string()))?;
        Ok(S3Remote {
            client,
            base,
            path_style,
            bucket: cfg.bucket_name.clone(),
            region: cfg.region().to_string(),
            access_key: access_key.clone(),
            secret_key: secret_key.clone(),
            session_token: cfg
                .session_token
                .clone()
                .filter(|t| !t.expose_secret().is_empty()),
            encryption: cfg.encryption().unwrap_or(S3Encryption::None),
            kms_key_id: cfg.server_side_encryption_key_id.clone(),
        })
    }

    /// The URL and its encoded path for `object`.
    fn url(&self, object: &str) -> Result<(Url, String), RemoteError> {
        let path = if self.path_style {
            encode_path(&format!("/{}/{object}", self.bucket))
        } else {
            encode_path(&format!("/{object}"))
        };
        let mut url = self.base.clone();
        url.set_path(&path);
        Ok((url, path))
    }

    /// A signed request for `object`; `extra` are more `x-amz-*` headers to sign.
    fn signed(
        &self,
        method: Method,
        object: &str,
        payload_sha256: &str,
        mut extra: Vec<(String, String)>,
    ) -> Result<reqwest::RequestBuilder, RemoteError> {
        let (url, path) = self.url(object)?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(RemoteError::Client(format!("{url}: no host"))),
        };
        let date = amz_date(time::OffsetDateTime::now_utc());
        extra.push(("host".into(), host));
        extra.push(("x-amz-date".into(), date.clone()));
        extra.push(("x-amz-content-sha256".into(), payload_sha256.to_string()));
        if let Some(t) = &self.session_token {
            extra.push(("x-amz-security-token".into(), t.expose_secret().to_string()));
        }
        let auth = Signer {
            access_key: self.access_key.expose_secret(),
            secret_key: self.secret_key.expose_secret(),
            region: &self.region,
        }
        .authorization(&Request {
            method: method.as_str(),
            path: &path,
            headers: &extra,
            payload_sha256,
            amz_date: &date,
        });
        let mut req = self.client.request(method, url);
        for (k, v) in extra.iter().filter(|(k, _)| k != "host") {
            req = req.header(k.as_str(), v.as_str());
        }
        Ok(req.header(reqwest::header::AUTHORIZATION, auth))
    }

    async fn refused(object: &str, resp: reqwest::Response) -> RemoteError {
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let mut body: String = body.chars().filter(|c| !c.is_control()).collect();
        if body.len() > MAX_ERROR_BODY {
            let mut cut = MAX_ERROR_BODY;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        RemoteError::Status {
            object: object.to_string(),
            status,
            body,
        }
    }
}

fn request_error(object: &str, e: reqwest::Error) -> RemoteError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    RemoteError::Request {
        object: object.to_string(),
        message,
    }
}

#[async_trait::async_trait]
impl RemoteCache for S3Remote {
    fn describe(&self, object: &str) -> String {
        format!("s3://{}/{object}", self.bucket)
    }

    async fn download(
        &self,
        object: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<bool, RemoteError> {
        let resp = self
            .signed(Method::GET, object, EMPTY_SHA256, Vec::new())?
            .send()
            .await
            .map_err(|e| request_error(object, e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !resp.status().is_success() {
            return Err(Self::refused(object, resp).await);
        }
        let too_large = |size| RemoteError::TooLarge {
            object: object.to_string(),
            size,
            max: max_bytes,
        };
        if let Some(len) = resp.content_length()
            && len > max_bytes
        {
            return Err(too_large(len));
        }
        let parent = dest
            .parent()
            .ok_or_else(|| RemoteError::io(dest, std::io::ErrorKind::InvalidInput.into()))?;
        std::fs::create_dir_all(parent).map_err(|e| RemoteError::io(parent, e))?;
        // The local store skips `.tmp-cache-*` files, so a half download is never restored.
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-cache-")
            .suffix(".zip")
            .tempfile_in(parent)
            .map_err(|e| RemoteError::io(parent, e))?;
        let handle = tmp.reopen().map_err(|e| RemoteError::io(tmp.path(), e))?;
        let mut file = tokio::fs::File::from_std(handle);
        let mut body = resp.bytes_stream();
        let mut written: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| request_error(object, e))?;
            written += chunk.len() as u64;
            if written > max_bytes {
                return Err(too_large(written));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| RemoteError::io(tmp.path(), e))?;
        }
        file.flush()
            .await
            .map_err(|e| RemoteError::io(tmp.path(), e))?;
        file.sync_all()
            .await
            .map_err(|e| RemoteError::io(tmp.path(), e))?;
        tmp.persist(dest)
            .map_err(|e| RemoteError::io(dest, e.error))?;
        Ok(true)
    }

    async fn upload(&self, object: &str, src: &Path) -> Result<(), RemoteError> {
        let path = src.to_path_buf();
        let (size, sha) = tokio::task::spawn_blocking(move || -> Result<_, RemoteError> {
            let mut f = std::fs::File::open(&path).map_err(|e| RemoteError::io(&path, e))?;
            let mut h = Sha256::new();
            let size = std::io::copy(&mut f, &mut h).map_err(|e| RemoteError::io(&path, e))?;
            Ok((size, hex::encode(h.finalize())))
        })
        .await
        .map_err(|e| RemoteError::Client(format!("hash task: {e}")))??;
        let mut extra = Vec::new();
        if let Some(v) = self.encryption.header_value() {
            extra.push(("x-amz-server-side-encryption".to_string(), v.to_string()));
            if self.encryption != S3Encryption::Aes256 && !self.kms_key_id.is_empty() {
                extra.push((
                    "x-amz-server-side-encryption-aws-kms-key-id".to_string(),
                    self.kms_key_id.clone(),
                ));
            }
        }
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|e| RemoteError::io(src, e))?;
        let resp = self
            .signed(Method::PUT, object, &sha, extra)?
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/zip")
            .body(reqwest::Body::from(file))
            .send()
            .await
            .map_err(|e| request_error(object, e))?;
        if !resp.status().is_success() {
            return Err(Self::refused(object, resp).await);
        }
        Ok(())
    }
}
