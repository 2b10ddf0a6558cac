//! Keys, CSRs and checks on what the controller returns.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// A key generated on this box and the CSR over it.
pub struct KeyAndCsr {
    /// PKCS#8 PEM of the private key; written 0600, never sent.
    pub key_pem: SecretString,
    /// The raw public key bits, to check the returned certificate.
    pub public_key: Vec<u8>,
    /// DER CSR (its subject and extensions are ignored by the controller).
    pub csr_der: Vec<u8>,
}

/// Generates an ECDSA P-256 key and a CSR for it.
pub fn new_key_and_csr() -> Result<KeyAndCsr, rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok(KeyAndCsr {
        key_pem: SecretString::from(key.serialize_pem()),
        public_key: key.public_key_raw().to_vec(),
        csr_der: csr.der().to_vec(),
    })
}

/// Lower-case hex SHA-256 of DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What the agent reads from its certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The id in `drover://agent/<id>`, if any.
    pub agent_id: Option<String>,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
    /// Raw public key bits.
    pub public_key: Vec<u8>,
    /// DER.
    pub der: Vec<u8>,
}

/// Parses the first certificate of a PEM text.
pub fn inspect(pem: &str) -> Result<CertInfo, String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("no PEM certificate: {e}"))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let agent_id = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => u.strip_prefix("drover://agent/").map(str::to_string),
                _ => None,
            })
        });
    let ts = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|e| e.to_string());
    Ok(CertInfo {
        agent_id,
        not_before: ts(cert.validity().not_before.timestamp())?,
        not_after: ts(cert.validity().not_after.timestamp())?,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        der: der.to_vec(),
    })
}

/// Checks an issued certificate: signed by `ca_pem`, over `public_key`, naming `agent_id`.
pub fn check_issued(
    cert_pem: &str,
    ca_pem: &str,
    public_key: &[u8],
    agent_id: &str,
) -> Result<CertInfo, String> {
    let info = inspect(cert_pem)?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| format!("CA: no PEM certificate: {e}"))?;
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca_der)
        .map_err(|e| format!("CA does not parse: {e}"))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&info.der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| "certificate is not signed by the pinned CA".to_string())?;
    if info.public_key != public_key {
        return Err("certificate is not for the key this agent generated".into());
    }
    if info.agent_id.as_deref() != Some(agent_id) {
        return Err(format!(
            "certificate names agent {:?}, the controller said {agent_id:?}",
            info.agent_id
        ));
    }
    Ok(info)
}

/// `t` as RFC 3339, for messages.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// When to renew: at two thirds of the certificate's lifetime.
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn renews_at_two_thirds() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(renew_at(t, t + Duration::days(3)), t + Duration::days(2));
    }

    #[test]
    fn csr_is_self_signed_over_our_key() {
        let k = new_key_and_csr().unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&k.csr_der)
                .unwrap();
        csr.verify_signature().unwrap();
        assert_eq!(
            csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            k.public_key.as_slice()
        );
    }
}
