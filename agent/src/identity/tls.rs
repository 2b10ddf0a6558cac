//! TLS to the controller. At enrollment the agent has only the token's CA fingerprint:
//! [`PinnedCa`] accepts the server only if its chain holds a certificate with that
//! SHA-256 and the server certificate verifies under it. Afterwards the stored `ca.crt` is
//! the only trust root. The server name is always [`SERVER_NAME`], whatever host is dialed.

use std::sync::{Arc, Mutex};

use drover_proto::cert_check::{CertCheck, CheckedVerifier};
use drover_proto::transport::{DialError, dial};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use secrecy::ExposeSecret;
use tonic::transport::Channel;

use super::certs::fingerprint;

pub use drover_proto::transport::SERVER_NAME;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors setting up TLS or dialing.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Bad controller URL.
    #[error("controller address {0:?} must look like https://HOST:PORT")]
    Url(String),
    /// A PEM input is unusable.
    #[error("parse {what}: {detail}")]
    Parse {
        /// Which input.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Dialing failed.
    #[error(transparent)]
    Dial(#[from] DialError),
}

/// Accepts a server whose chain contains the pinned CA and verifies under it (the
/// handshake's signatures are checked by [`CheckedVerifier`], see [`pinned_config`]).
#[derive(Debug)]
pub struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    /// Fingerprints the controller presented when none matched (for the error message).
    pub mismatch: Mutex<Option<Vec<String>>>,
}

impl PinnedCa {
    /// Pins `fingerprint` (lower-case hex SHA-256 of the CA's DER).
    pub fn new(fingerprint: &str) -> PinnedCa {
        PinnedCa {
            fingerprint: fingerprint.to_ascii_lowercase(),
            provider: provider(),
            mismatch: Mutex::new(None),
        }
    }
}

impl CertCheck for PinnedCa {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
        else {
            let seen = intermediates.iter().map(|c| fingerprint(c)).collect();
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some(seen);
            }
            return Err(rustls::Error::General(
                "controller CA does not match the token's fingerprint".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }
}

/// Client config for enrollment: pinned CA, no client certificate.
pub fn pinned_config(pin: Arc<PinnedCa>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(CheckedVerifier::new(pin, provider.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Client config for an enrolled agent: trust only `ca_pem`, present the agent certificate.
pub fn agent_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &secrecy::SecretString,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| TlsError::Parse {
        what: "ca.crt",
        detail: e.to_string(),
    })?;
    roots.add(ca)?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            what: "agent.crt",
            detail: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose_secret().as_bytes()).map_err(|e| {
        TlsError::Parse {
            what: "agent.key",
            detail: e.to_string(),
        }
    })?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `https://HOST:PORT` → `HOST:PORT` (port 7443 when absent).
pub fn dial_addr(controller: &str) -> Result<String, TlsError> {
    let rest = controller
        .strip_prefix("https://")
        .ok_or_else(|| TlsError::Url(controller.to_string()))?
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(TlsError::Url(controller.to_string()));
    }
    let has_port = match rest.rfind(':') {
        Some(i) => !rest.ends_with(']') && rest[i + 1..].parse::<u16>().is_ok(),
        None => false,
    };
    Ok(if has_port {
        rest.to_string()
    } else {
        format!("{rest}:7443")
    })
}

/// Dials the controller at `controller` (`https://HOST:PORT`) with `config`.
pub async fn connect(controller: &str, config: rustls::ClientConfig) -> Result<Channel, TlsError> {
    Ok(dial(&dial_addr(controller)?, config).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_and_server() -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca.der().clone(), server.der().clone())
    }

    #[test]
    fn pinned_verifier_accepts_only_the_pinned_ca() {
        let (ca, server) = ca_and_server();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let good = PinnedCa::new(&fingerprint(&ca));
        assert!(
            good.check(
                &server,
                std::slice::from_ref(&ca),
                &name,
                &[],
                UnixTime::now()
            )
            .is_ok()
        );
        let (other_ca, _) = ca_and_server();
        let bad = PinnedCa::new(&fingerprint(&other_ca));
        assert!(
            bad.check(
                &server,
                std::slice::from_ref(&ca),
                &name,
                &[],
                UnixTime::now()
            )
            .is_err()
        );
        assert_eq!(
            bad.mismatch.lock().unwrap().clone(),
            Some(vec![fingerprint(&ca)])
        );
        // The pinned CA presented beside a server certificate it did not sign: refused.
        let (_, foreign_server) = ca_and_server();
        assert!(
            good.check(&foreign_server, &[ca], &name, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(dial_addr("https://h:1").unwrap(), "h:1");
        assert_eq!(dial_addr("https://h").unwrap(), "h:7443");
        assert_eq!(dial_addr("https://127.0.0.1:9/").unwrap(), "127.0.0.1:9");
        assert_eq!(dial_addr("https://[::1]:9").unwrap(), "[::1]:9");
        assert!(dial_addr("http://h:1").is_err());
        assert!(dial_addr("h:1").is_err());
    }
}
