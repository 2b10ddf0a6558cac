//! TLS to PostgreSQL through rustls on ring, per libpq's `sslmode`: `disable` and `prefer`
//! (TLS when offered), `require` (encrypted, the certificate unchecked, as libpq does),
//! `verify-ca` (`require` with `sslrootcert`: signed by that CA) and `verify-full` (signed by
//! that CA and naming the host).

use std::path::Path;
use std::sync::Arc;

use drover_proto::cert_check::{CertCheck, CheckedVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::url::UrlError;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The CA certificates of `path` (PEM).
pub(super) fn read_roots(path: &Path) -> Result<RootCertStore, UrlError> {
    use rustls::pki_types::pem::PemObject;
    let err = |detail: String| UrlError::RootCert {
        path: path.to_path_buf(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The connector for `mode`; `roots` are given for the verifying modes.
pub(super) fn connector(mode: TlsMode, roots: Option<RootCertStore>) -> MakeRustlsConnect {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (TlsMode::VerifyCa | TlsMode::VerifyFull, Some(roots)) => {
            match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
            {
                Ok(webpki) if mode == TlsMode::VerifyFull => webpki,
                Ok(webpki) => Arc::new(CheckedVerifier::new(AnyName(webpki), provider.clone())),
                // Only an empty root store fails, which `read_roots` refuses.
                Err(_) => Arc::new(CheckedVerifier::new(Unchecked, provider.clone())),
            }
        }
        _ => Arc::new(CheckedVerifier::new(Unchecked, provider.clone())),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    match config {
        Ok(c) => MakeRustlsConnect::new(c),
        // ring supports the default versions; kept total rather than unwrapped.
        Err(_) => MakeRustlsConnect::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
}

/// `require` and `prefer`: encryption without checking who the server is (libpq's meaning);
/// the handshake's signatures are still verified (by [`CheckedVerifier`]).
#[derive(Debug)]
struct Unchecked;

impl CertCheck for Unchecked {
    fn check(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
}

/// `verify-ca`: the chain must lead to the given CA; the host name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl CertCheck for AnyName {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
}
