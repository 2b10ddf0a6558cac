//! `[runners.cache]` and `[runners.cache.s3]`: gitlab-runner's distributed cache settings,
//! decoded as gitlab-runner's Go decodes them (a missing key is its zero value).
//!
//! Key names, defaults and meanings follow gitlab-runner's `common/config.go`
//! (`CacheConfig`, `CacheS3Config`, `AuthType`, `EncryptionType`, `GetEndpoint`,
//! `PathStyleEnabled`); object names follow `cache/cache.go` (`generateObjectName`).
//!
//! What Drover does with them (the agent caches natively, see `drover_job::cache`):
//! - `Type = "s3"` with access keys: archives go to and come from the S3-compatible server;
//!   the local cache on the box stays as a first level.
//! - `Type = "gcs"` / `"azure"`, and `AuthenticationType = "iam"` (or missing keys, which
//!   gitlab-runner takes as IAM): warned about when the file is read; caches stay on the box.
//! - `RoleARN`, `UploadRoleARN`, `Accelerate`, `DualStack`: AWS-only features, warned about
//!   and ignored.
//! - Any other `Type`, an unknown `AuthenticationType` or `ServerSideEncryption`, an
//!   `s3` cache without `BucketName`, a `ServerAddress` with a scheme or path, or a negative
//!   `MaxUploadedArchiveSize`: refused.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::locate::TomlPath;
use super::runner::ser_secret;
use super::validate::Violation;

/// `[runners.cache]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheConfig {
    /// `s3` (implemented), `gcs` or `azure` (warned about); empty = caches stay on the box.
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    /// Prefix of every object name.
    #[serde(rename = "Path")]
    pub path: Option<String>,
    /// One namespace for all runners (no `runner/<short token>/`); Drover also shares the
    /// local cache between the runners of one box.
    #[serde(rename = "Shared")]
    pub shared: Option<bool>,
    /// Archives larger than this many bytes are not uploaded (0 = no limit).
    #[serde(rename = "MaxUploadedArchiveSize")]
    pub max_uploaded_archive_size: Option<i64>,
    pub s3: Option<CacheS3Config>,
    pub gcs: Option<toml::Table>,
    pub azure: Option<toml::Table>,
}

/// `[runners.cache.s3]`, gitlab-runner's advanced-configuration keys. The three secrets are
/// serialized in clear (the controller seals the whole spec); `Debug` redacts them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheS3Config {
    /// `host[:port]` of the S3-compatible server (no scheme); empty = `s3.amazonaws.com`.
    #[serde(rename = "ServerAddress")]
    pub server_address: String,
    #[serde(
        rename = "AccessKey",
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_secret"
    )]
    pub access_key: Option<SecretString>,
    #[serde(
        rename = "SecretKey",
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_secret"
    )]
    pub secret_key: Option<SecretString>,
    #[serde(
        rename = "SessionToken",
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_secret"
    )]
    pub session_token: Option<SecretString>,
    #[serde(rename = "BucketName")]
    pub bucket_name: String,
    /// The region signed for; empty = `us-east-1`.
    #[serde(rename = "BucketLocation")]
    pub bucket_location: String,
    /// Plain HTTP instead of HTTPS.
    #[serde(rename = "Insecure")]
    pub insecure: bool,
    /// `access-key` or `iam` (any case); empty = `iam` unless address and both keys are set.
    #[serde(rename = "AuthenticationType")]
    pub authentication_type: String,
    /// `S3`/`AES256`, `KMS`/`aws:kms`, `DSSE-KMS`/`aws:kms:dsse` (any case), or empty.
    #[serde(rename = "ServerSideEncryption")]
    pub server_side_encryption: String,
    #[serde(rename = "ServerSideEncryptionKeyID")]
    pub server_side_encryption_key_id: String,
    #[serde(rename = "DualStack", skip_serializing_if = "Option::is_none")]
    pub dual_stack: Option<bool>,
    /// Path-style URLs (`host/bucket/key`); missing = virtual-host style only for AWS and
    /// Google endpoints, path style for everything else.
    #[serde(rename = "PathStyle", skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    #[serde(rename = "Accelerate")]
    pub accelerate: bool,
    #[serde(rename = "RoleARN")]
    pub role_arn: String,
    #[serde(rename = "UploadRoleARN")]
    pub upload_role_arn: String,
}

/// How the agent signs its S3 requests (gitlab-runner's `S3AuthType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3AuthType {
    AccessKey,
    Iam,
}

/// Server-side encryption asked for on upload (gitlab-runner's `S3EncryptionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Encryption {
    None,
    Aes256,
    Kms,
    DsseKms,
}

impl S3Encryption {
    /// The `x-amz-server-side-encryption` header value, if any.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            S3Encryption::None => None,
            S3Encryption::Aes256 => Some("AES256"),
            S3Encryption::Kms => Some("aws:kms"),
            S3Encryption::DsseKms => Some("aws:kms:dsse"),
        }
    }
}

fn secret_set(s: &Option<SecretString>) -> bool {
    s.as_ref().is_some_and(|s| !s.expose_secret().is_empty())
}

impl CacheS3Config {
    /// gitlab-runner's `AuthType`: an explicit type wins; else IAM unless the address and
    /// both keys are set. `None` for an unknown explicit type.
    pub fn auth_type(&self) -> Option<S3AuthType> {
        match self.authentication_type.to_ascii_lowercase().as_str() {
            "access-key" => Some(S3AuthType::AccessKey),
            "iam" => Some(S3AuthType::Iam),
            "" if self.server_address.is_empty()
                || !secret_set(&self.access_key)
                || !secret_set(&self.secret_key) =>
            {
                Some(S3AuthType::Iam)
            }
            "" => Some(S3AuthType::AccessKey),
            _ => None,
        }
    }

    /// gitlab-runner's `EncryptionType`; `None` for an unknown value.
    pub fn encryption(&self) -> Option<S3Encryption> {
        match self.server_side_encryption.to_ascii_uppercase().as_str() {
            "" => Some(S3Encryption::None),
            "S3" | "AES256" => Some(S3Encryption::Aes256),
            "KMS" | "AWS:KMS" => Some(S3Encryption::Kms),
            "DSSE-KMS" | "AWS:KMS:DSSE" => Some(S3Encryption::DsseKms),
            _ => None,
        }
    }

    /// The server's `host[:port]`, with gitlab-runner's default for an empty address.
    pub fn host(&self) -> &str {
        if self.server_address.is_empty() {
            "s3.amazonaws.com"
        } else {
            &self.server_address
        }
    }

    /// gitlab-runner's `GetEndpoint`: `http(s)://host[:port]`, the canonical port omitted.
    pub fn endpoint(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        let host = self.host();
        let canonical = if self.insecure { ":80" } else { ":443" };
        let host = host.strip_suffix(canonical).unwrap_or(host);
        format!("{scheme}://{host}")
    }

    /// gitlab-runner's `PathStyleEnabled`: explicit, else virtual-host style only where
    /// minio-go's `IsVirtualHostSupported` says so (AWS and Google endpoints) for a bucket
    /// name without dots.
    pub fn path_style(&self) -> bool {
        if let Some(p) = self.path_style {
            return p;
        }
        let host = self.host().split(':').next().unwrap_or_default();
        let virtual_host = (host.ends_with("amazonaws.com") || host == "storage.googleapis.com")
            && !(self.insecure && self.bucket_name.contains('.'))
            && !self.bucket_name.contains('.');
        !virtual_host
    }

    /// The region signed for: `BucketLocation`, else `us-east-1`.
    pub fn region(&self) -> &str {
        if self.bucket_location.is_empty() {
            "us-east-1"
        } else {
            &self.bucket_location
        }
    }
}

impl CacheConfig {
    /// The S3 settings when this cache goes to S3 with access keys (the only distributed
    /// cache Drover implements); `None` otherwise.
    pub fn s3_access_keys(&self) -> Option<&CacheS3Config> {
        if self.kind.as_deref() != Some("s3") {
            return None;
        }
        self.s3
            .as_ref()
            .filter(|s| s.auth_type() == Some(S3AuthType::AccessKey))
    }

    /// `Shared = true`.
    pub fn is_shared(&self) -> bool {
        self.shared == Some(true)
    }

    /// `MaxUploadedArchiveSize` in bytes when positive (0 = no limit).
    pub fn max_upload_bytes(&self) -> Option<u64> {
        self.max_uploaded_archive_size
            .filter(|m| *m > 0)
            .map(|m| m as u64)
    }
}

/// The secrets of a runner's `[runners.cache.s3]`: in a fleet they travel beside the spec
/// (`RunnerAssignment` fields 10-12), never inside its JSON.
#[derive(Debug, Clone, Default)]
pub struct CacheSecrets {
    pub access_key: Option<SecretString>,
    pub secret_key: Option<SecretString>,
    pub session_token: Option<SecretString>,
}

impl CacheSecrets {
    /// Takes the secrets out of `r` (they are left unset there).
    pub fn take(r: &mut super::RunnerConfig) -> CacheSecrets {
        match r.cache.as_mut().and_then(|c| c.s3.as_mut()) {
            Some(s3) => CacheSecrets {
                access_key: s3.access_key.take(),
                secret_key: s3.secret_key.take(),
                session_token: s3.session_token.take(),
            },
            None => CacheSecrets::default(),
        }
    }

    /// Puts the secrets that are set (non-empty) back into `r`'s `[runners.cache.s3]`;
    /// nothing when `r` has no such table.
    pub fn put_into(self, r: &mut super::RunnerConfig) {
        let Some(s3) = r.cache.as_mut().and_then(|c| c.s3.as_mut()) else {
            return;
        };
        let set = |s: Option<SecretString>| s.filter(|s| !s.expose_secret().is_empty());
        if let Some(k) = set(self.access_key) {
            s3.access_key = Some(k);
        }
        if let Some(k) = set(self.secret_key) {
            s3.secret_key = Some(k);
        }
        if let Some(k) = set(self.session_token) {
            s3.session_token = Some(k);
        }
    }

    /// Each secret as text, empty when unset (the wire form).
    pub fn exposed(&self) -> [String; 3] {
        let e = |s: &Option<SecretString>| {
            s.as_ref()
                .map(|s| s.expose_secret().to_string())
                .unwrap_or_default()
        };
        [
            e(&self.access_key),
            e(&self.secret_key),
            e(&self.session_token),
        ]
    }

    /// From the wire form (empty = unset).
    pub fn from_wire(access_key: String, secret_key: String, session_token: String) -> Self {
        let s = |v: String| (!v.is_empty()).then(|| SecretString::from(v));
        CacheSecrets {
            access_key: s(access_key),
            secret_key: s(secret_key),
            session_token: s(session_token),
        }
    }
}

/// Refusals of `[runners.cache]` (see the module documentation); `base` is the runner's
/// path, `who` names the runner.
pub(super) fn validate_cache(c: &CacheConfig, base: &TomlPath, who: &str) -> Result<(), Violation> {
    let cp = base.key("cache");
    let bad = |path: TomlPath, message: String| Violation { path, message };
    if let Some(m) = c.max_uploaded_archive_size
        && m < 0
    {
        return Err(bad(
            cp.key("MaxUploadedArchiveSize"),
            format!("{who}: MaxUploadedArchiveSize = {m}: must be 0 (no limit) or a byte count"),
        ));
    }
    match c.kind.as_deref().unwrap_or_default() {
        "" | "gcs" | "azure" => return Ok(()),
        "s3" => {}
        other => {
            return Err(bad(
                cp.key("Type"),
                format!(
                    "{who}: cache Type {other:?} is not known; expected \"s3\", \"gcs\" or \"azure\" (or none for a cache on this box)"
                ),
            ));
        }
    }
    let sp = cp.key("s3");
    let Some(s3) = &c.s3 else {
        return Err(bad(
            cp.key("Type"),
            format!("{who}: cache Type = \"s3\" needs a [runners.cache.s3] table with BucketName"),
        ));
    };
    if s3.bucket_name.trim().is_empty() {
        return Err(bad(
            sp.key("BucketName"),
            format!("{who}: [runners.cache.s3] BucketName missing"),
        ));
    }
    let addr = &s3.server_address;
    if addr.contains("://")
        || addr.contains('/')
        || addr.chars().any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Err(bad(
            sp.key("ServerAddress"),
            format!(
                "{who}: ServerAddress {addr:?}: expected host[:port] without scheme or path (use Insecure = true for plain HTTP)"
            ),
        ));
    }
    if s3.encryption().is_none() {
        return Err(bad(
            sp.key("ServerSideEncryption"),
            format!(
                "{who}: ServerSideEncryption {:?} is not known; expected S3, AES256, KMS, aws:kms, DSSE-KMS or aws:kms:dsse",
                s3.server_side_encryption
            ),
        ));
    }
    match s3.auth_type() {
        None => Err(bad(
            sp.key("AuthenticationType"),
            format!(
                "{who}: AuthenticationType {:?} is not known; expected \"access-key\" or \"iam\"",
                s3.authentication_type
            ),
        )),
        Some(S3AuthType::AccessKey)
            if !secret_set(&s3.access_key) || !secret_set(&s3.secret_key) =>
        {
            Err(bad(
                sp.key("AuthenticationType"),
                format!("{who}: AuthenticationType = \"access-key\" needs AccessKey and SecretKey"),
            ))
        }
        _ => Ok(()),
    }
}

/// Keys of `[runners.cache]` that are set but that Drover does not act on, relative to the
/// runner table, with why: warnings, not refusals.
pub(super) fn cache_warnings(c: &CacheConfig) -> Vec<(&'static [&'static str], &'static str)> {
    let mut out: Vec<(&'static [&'static str], &'static str)> = Vec::new();
    match c.kind.as_deref() {
        Some("gcs") | Some("azure") => out.push((
            &["cache", "Type"],
            "gcs and azure caches are not implemented (only s3); caches stay on this box",
        )),
        Some("s3") => {
            if let Some(s3) = &c.s3
                && s3.auth_type() == Some(S3AuthType::Iam)
            {
                out.push((
                    &["cache", "s3"],
                    "IAM authentication (AuthenticationType = \"iam\", or AccessKey, SecretKey or ServerAddress missing) is not supported: drover-agent reads no instance metadata; caches stay on this box",
                ));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(text: &str) -> CacheS3Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn auth_type_as_gitlab_runner() {
        let full = "ServerAddress = \"h:9000\"\nAccessKey = \"a\"\nSecretKey = \"s\"\n";
        assert_eq!(s3(full).auth_type(), Some(S3AuthType::AccessKey));
        assert_eq!(
            s3("AccessKey = \"a\"\nSecretKey = \"s\"").auth_type(),
            Some(S3AuthType::Iam)
        );
        assert_eq!(
            s3(&format!("{full}AuthenticationType = \"IAM\"")).auth_type(),
            Some(S3AuthType::Iam)
        );
        assert_eq!(s3("AuthenticationType = \"x\"").auth_type(), None);
    }

    #[test]
    fn endpoint_and_path_style() {
        let c = s3("ServerAddress = \"minio:443\"");
        assert_eq!(c.endpoint(), "https://minio");
        assert!(c.path_style());
        let c = s3("ServerAddress = \"minio:80\"\nInsecure = true");
        assert_eq!(c.endpoint(), "http://minio");
        let c = s3("BucketName = \"b\"");
        assert_eq!(c.endpoint(), "https://s3.amazonaws.com");
        assert!(!c.path_style());
        let c = s3("BucketName = \"b\"\nPathStyle = true");
        assert!(c.path_style());
        assert_eq!(c.region(), "us-east-1");
    }

    #[test]
    fn encryption_values() {
        assert_eq!(s3("").encryption(), Some(S3Encryption::None));
        assert_eq!(
            s3("ServerSideEncryption = \"aws:kms\"").encryption(),
            Some(S3Encryption::Kms)
        );
        assert_eq!(
            s3("ServerSideEncryption = \"s3\"").encryption(),
            Some(S3Encryption::Aes256)
        );
        assert_eq!(s3("ServerSideEncryption = \"rot13\"").encryption(), None);
    }

    #[test]
    fn debug_redacts_keys() {
        let c =
            s3("AccessKey = \"AKIAVISIBLE\"\nSecretKey = \"verysecret\"\nSessionToken = \"tok\"");
        let d = format!("{c:?}");
        assert!(!d.contains("AKIAVISIBLE") && !d.contains("verysecret") && !d.contains("tok\""));
    }
}
