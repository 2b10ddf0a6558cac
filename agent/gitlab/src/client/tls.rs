//! The rustls configuration of [`super::HttpGitLab`]: the ring provider, the system roots
//! (read once per process and shared by every client built after) plus an optional
//! `tls-ca-file`.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::build::ClientBuildError;

/// How many times the system roots were read (once per process, whatever the clients).
#[cfg(test)]
static SYSTEM_ROOT_LOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The system roots, read on first use and kept: a second client (the controller's per
/// GitLab URL, the agent's fresh clients after an IP change) does not read them again.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        #[cfg(test)]
        SYSTEM_ROOT_LOADS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped: the tls-ca-file may be all we need, and
        // a missing root shows as a clear certificate error on the first request.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        roots
    })
}

/// rustls with the ring provider, trusting the system roots plus `ca_file`.
pub fn tls_config(
    base_url: &str,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = system_roots().clone();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientBuildError::ReadCaFile {
            path: path.to_owned(),
            source,
        })?;
        let bad = |reason: String| ClientBuildError::BadCaFile {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("parse pem: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("add certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Tls {
            url: base_url.to_owned(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::{ClientOptions, HttpGitLab};
    use super::*;

    #[test]
    fn system_roots_are_read_once_for_every_client() {
        for _ in 0..2 {
            HttpGitLab::new("https://gitlab.example.com", ClientOptions::default()).unwrap();
        }
        tls_config("https://other.example.com", None).unwrap();
        assert_eq!(SYSTEM_ROOT_LOADS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn missing_ca_file_is_named() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let err = HttpGitLab::new(
            "https://gitlab.example.com",
            ClientOptions {
                tls_ca_file: Some("/nonexistent/ca.pem".into()),
                ..ClientOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn ca_file_without_certs_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a pem").unwrap();
        let err = HttpGitLab::new(
            "https://gitlab.example.com",
            ClientOptions {
                tls_ca_file: Some(path.clone()),
                ..ClientOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no certificate"), "{err}");
    }
}
