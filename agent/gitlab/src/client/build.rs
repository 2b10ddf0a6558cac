//! How an [`super::HttpGitLab`] is built: its options, the API base URL, and the reqwest
//! client over the rustls configuration of [`super::tls`].

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use super::info::{architecture, revision};
use super::tls::tls_config;

/// How the HTTP client is built.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra CA certificates (PEM) trusted besides the system roots (`tls-ca-file`).
    pub tls_ca_file: Option<PathBuf>,
    /// Whole-request timeout of API calls; must exceed GitLab's ~50 s long poll of
    /// `/jobs/request`.
    pub request_timeout: Duration,
    /// Whole-request timeout of artifact uploads and downloads, which move whole archives.
    pub transfer_timeout: Duration,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls_ca_file: None,
            request_timeout: Duration::from_secs(70),
            transfer_timeout: Duration::from_secs(3600),
            user_agent: format!(
                "drover-agent {} ({}; {}/{})",
                env!("CARGO_PKG_VERSION"),
                revision(),
                std::env::consts::OS,
                architecture()
            ),
        }
    }
}

/// Errors building an [`super::HttpGitLab`].
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("gitlab url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("read tls-ca-file {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tls-ca-file {path}: {reason}")]
    BadCaFile { path: PathBuf, reason: String },
    #[error("tls setup for gitlab url {url}: {reason}")]
    Tls { url: String, reason: String },
    #[error("http client for gitlab url {url}: {source}")]
    Build {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The reqwest client for the GitLab at `base_url`, with `opts`.
pub(super) fn http_client(
    base_url: &str,
    opts: ClientOptions,
) -> Result<reqwest::Client, ClientBuildError> {
    let tls = tls_config(base_url, opts.tls_ca_file.as_deref())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(opts.request_timeout)
        .connect_timeout(Duration::from_secs(30))
        .user_agent(opts.user_agent)
        // Redirects are followed by hand (artifact downloads only), so a job token is
        // never forwarded to another origin such as object storage.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|source| ClientBuildError::Build {
            url: base_url.to_owned(),
            source,
        })
}

/// `<base>/api/v4/` from a GitLab URL; only http and https.
pub(super) fn api_url(base_url: &str) -> Result<Url, ClientBuildError> {
    let invalid = |reason: String| ClientBuildError::InvalidUrl {
        url: base_url.to_owned(),
        reason,
    };
    let mut url = Url::parse(base_url.trim()).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the url are not supported".into()));
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{path}/api/v4/"));
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_forms() {
        let u = |s: &str| api_url(s).map(|u| u.to_string());
        assert_eq!(
            u("https://gitlab.example.com").unwrap(),
            "https://gitlab.example.com/api/v4/"
        );
        assert_eq!(
            u("https://gitlab.example.com/").unwrap(),
            "https://gitlab.example.com/api/v4/"
        );
        assert_eq!(
            u("http://127.0.0.1:8080/gitlab/").unwrap(),
            "http://127.0.0.1:8080/gitlab/api/v4/"
        );
        let err = api_url("ftp://x").unwrap_err().to_string();
        assert!(err.contains("ftp://x") && err.contains("scheme"), "{err}");
        assert!(api_url("not a url").is_err());
        assert!(api_url("https://user:pw@gitlab.example.com").is_err());
    }
}
