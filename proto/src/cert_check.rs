//! A rustls server certificate verifier made of a certificate check alone: how the
//! server's certificate is judged varies ([`CertCheck`]), the handshake's signatures are
//! always verified with the crypto provider's algorithms ([`CheckedVerifier`]).

use std::fmt::Debug;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// How a server's certificate is judged (rustls's `verify_server_cert`).
pub trait CertCheck: Debug + Send + Sync {
    /// Accepts or refuses `end_entity`, presented with `intermediates` for `server_name`.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error>;
}

impl<C: CertCheck + ?Sized> CertCheck for Arc<C> {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        (**self).check(end_entity, intermediates, server_name, ocsp_response, now)
    }
}

/// A verifier judging the certificate by `C` and the handshake's signatures by the
/// provider's signature verification algorithms.
#[derive(Debug)]
pub struct CheckedVerifier<C> {
    check: C,
    provider: Arc<CryptoProvider>,
}

impl<C: CertCheck> CheckedVerifier<C> {
    /// Judges certificates by `check`, signatures by `provider`'s algorithms.
    pub fn new(check: C, provider: Arc<CryptoProvider>) -> CheckedVerifier<C> {
        CheckedVerifier { check, provider }
    }
}

impl<C: CertCheck> ServerCertVerifier for CheckedVerifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check
            .check(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refuses every certificate.
    #[derive(Debug)]
    struct Refuse;

    impl CertCheck for Refuse {
        fn check(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Err(rustls::Error::General("refused".into()))
        }
    }

    #[test]
    fn the_check_judges_the_certificate_and_the_provider_names_the_schemes() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = CheckedVerifier::new(Arc::new(Refuse), provider.clone());
        let name = ServerName::try_from("controller.drover.internal").unwrap();
        let cert = CertificateDer::from(vec![0u8; 4]);
        assert!(matches!(
            verifier.verify_server_cert(&cert, &[], &name, &[], UnixTime::now()),
            Err(rustls::Error::General(m)) if m == "refused"
        ));
        let schemes = verifier.supported_verify_schemes();
        assert!(!schemes.is_empty());
        assert_eq!(
            schemes,
            provider
                .signature_verification_algorithms
                .supported_schemes()
        );
    }
}
