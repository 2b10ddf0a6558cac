//! The signing policy: the only code that decides what goes into a certificate.
//!
//! A CSR contributes its public key, after its signature is verified, and nothing else:
//! subject, SANs, key usages, extensions, validity and serial are set here.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secrecy::SecretString;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

use super::ca::Ca;
use super::identity::Identity;
use super::{PkiError, SERVER_NAME};

/// Default lifetime of an agent certificate.
pub const DEFAULT_AGENT_CERT_TTL: Duration = Duration::days(7);
/// Lifetime of the admin certificate written to the data dir.
pub const ADMIN_CERT_TTL: Duration = Duration::days(365);
/// Lifetime of the controller's server certificate (re-issued at every start).
pub const SERVER_CERT_TTL: Duration = Duration::days(365);

/// Why a CSR is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// Not a DER PKCS#10 request.
    #[error("csr does not parse as DER PKCS#10: {0}")]
    Parse(String),
    /// The request's self-signature does not verify.
    #[error("csr signature does not verify")]
    BadSignature,
    /// A key type the policy does not sign (ECDSA P-256/P-384 and Ed25519 are accepted).
    #[error("csr public key algorithm is not supported: {0}")]
    UnsupportedKey(String),
}

/// A CSR whose signature verified: only its public key is kept.
#[derive(Debug)]
pub struct VerifiedCsr {
    public_key: SubjectPublicKeyInfo,
}

impl VerifiedCsr {
    /// The requested public key (SubjectPublicKeyInfo's key bits).
    pub fn public_key_bits(&self) -> &[u8] {
        self.public_key.der_bytes()
    }
}

/// Parses a DER CSR and verifies its self-signature; keeps only the public key.
pub fn verify_csr(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| CsrError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Parse(format!("{} trailing bytes", rest.len())));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let spki = csr.certification_request_info.subject_pki.raw;
    let public_key = SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
    let alg = public_key.algorithm();
    if ![
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ]
    .contains(&alg)
    {
        return Err(CsrError::UnsupportedKey(format!("{alg:?}")));
    }
    Ok(VerifiedCsr { public_key })
}

/// A certificate the policy issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// DER of the certificate.
    pub der: CertificateDer<'static>,
    /// PEM of the certificate.
    pub pem: String,
    /// Serial, lower-case hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// A random positive 128-bit serial (top bit cleared, never zero).
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Every field of a client certificate for `identity`, valid from `now` for `ttl`.
/// Nothing here comes from a CSR.
fn client_params(
    identity: &Identity,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Drover");
    dn.push(
        DnType::CommonName,
        match identity {
            Identity::Agent(id) => format!("agent {id}"),
            Identity::Admin(name) => format!("admin {name}"),
        },
    );
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = now;
    params.not_after = now.checked_add(ttl).ok_or_else(|| PkiError::Parse {
        what: "certificate lifetime".into(),
        detail: format!("{ttl} from {now} is out of range"),
    })?;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn finish(
    params: &CertificateParams,
    key: &impl PublicKeyData,
    ca: &Ca,
) -> Result<Issued, PkiError> {
    let cert = params.signed_by(key, &ca.issuer()?)?;
    Ok(Issued {
        der: cert.der().clone(),
        pem: cert.pem(),
        serial: params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default(),
        not_before: params.not_before,
        not_after: params.not_after,
    })
}

/// Signs a client certificate for `identity` over the CSR's public key.
/// The caller chose `identity`; the CSR chose nothing.
pub fn sign_client(
    ca: &Ca,
    csr: &VerifiedCsr,
    identity: &Identity,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<Issued, PkiError> {
    finish(&client_params(identity, now, ttl)?, &csr.public_key, ca)
}

/// A key pair generated on the controller together with its certificate (admin, server).
pub struct IssuedWithKey {
    /// The certificate.
    pub cert: Issued,
    /// The private key, PKCS#8 PEM.
    pub key_pem: SecretString,
    /// The private key, PKCS#8 DER.
    pub key_der: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for IssuedWithKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedWithKey")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn with_new_key(ca: &Ca, params: CertificateParams) -> Result<IssuedWithKey, PkiError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = finish(&params, &key, ca)?;
    Ok(IssuedWithKey {
        cert,
        key_pem: SecretString::from(key.serialize_pem()),
        key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

/// Issues the admin client certificate (`drover://admin/<name>`) with a fresh key.
pub fn issue_admin(ca: &Ca, name: &str, now: OffsetDateTime) -> Result<IssuedWithKey, PkiError> {
    let params = client_params(&Identity::Admin(name.to_string()), now, ADMIN_CERT_TTL)?;
    with_new_key(ca, params)
}

/// Issues the controller's server certificate: DNS SANs [`SERVER_NAME`] and `localhost`.
pub fn issue_server(ca: &Ca, now: OffsetDateTime) -> Result<IssuedWithKey, PkiError> {
    let params = {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Drover");
        dn.push(DnType::CommonName, SERVER_NAME);
        params.distinguished_name = dn;
        params.subject_alt_names = [SERVER_NAME, "localhost"]
            .into_iter()
            .filter_map(|n| n.try_into().ok().map(SanType::DnsName))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + SERVER_CERT_TTL;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params
    };
    with_new_key(ca, params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::identity;
    use proptest::prelude::*;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    fn csr_for(params: &CertificateParams, key: &rcgen::KeyPair) -> Vec<u8> {
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn bad_signature_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut der = csr_for(&CertificateParams::default(), &key);
        let last = der.len() - 1;
        der[last] ^= 0x55;
        assert_eq!(verify_csr(&der).unwrap_err(), CsrError::BadSignature);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            verify_csr(b"not a csr").unwrap_err(),
            CsrError::Parse(_)
        ));
    }

    /// What a CSR may ask for; the policy must ignore all of it.
    fn arb_request() -> impl Strategy<Value = CertificateParams> {
        (
            "[a-z]{1,12}",
            proptest::collection::vec("[a-z]{1,8}\\.[a-z]{2,4}", 0..3),
            proptest::collection::vec("drover://(agent|admin)/[a-z0-9]{1,8}", 0..2),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(cn, dns, uris, ca, server_auth, cert_sign)| {
                let mut p = CertificateParams::default();
                p.distinguished_name.push(DnType::CommonName, cn);
                for d in dns {
                    p.subject_alt_names
                        .push(SanType::DnsName(d.try_into().unwrap()));
                }
                for u in uris {
                    p.subject_alt_names
                        .push(SanType::URI(u.try_into().unwrap()));
                }
                if ca {
                    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                }
                if server_auth {
                    p.extended_key_usages
                        .push(ExtendedKeyUsagePurpose::ServerAuth);
                }
                if cert_sign {
                    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
                }
                p
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Whatever the CSR asks for, the certificate carries exactly the identity the
        /// controller chose, client-auth only, not a CA, the CSR's key, the policy's validity.
        #[test]
        fn csr_never_sets_certificate_fields(
            request in arb_request(),
            id in "[a-z0-9]{1,16}",
            ttl_secs in 1i64..(30 * 86400),
        ) {
            let ca = Ca::generate().unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let csr = verify_csr(&csr_for(&request, &key)).unwrap();
            let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
            let issued = sign_client(&ca, &csr, &Identity::Agent(id.clone()),
                now, Duration::seconds(ttl_secs)).unwrap();
            let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();

            prop_assert_eq!(identity::from_cert_der(&issued.der).unwrap(), Identity::Agent(id.clone()));
            let sans: Vec<String> = cert.subject_alternative_name().unwrap().unwrap()
                .value.general_names.iter().map(|n| match n {
                    GeneralName::URI(u) => format!("uri:{u}"),
                    other => format!("other:{other:?}"),
                }).collect();
            prop_assert_eq!(sans, vec![format!("uri:drover://agent/{id}")]);
            prop_assert!(!cert.is_ca());
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            prop_assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
            let ku = cert.key_usage().unwrap().unwrap().value;
            prop_assert!(ku.digital_signature() && !ku.key_cert_sign());
            prop_assert_eq!(cert.validity().not_before.timestamp(), now.unix_timestamp());
            prop_assert_eq!(cert.validity().not_after.timestamp(), now.unix_timestamp() + ttl_secs);
            prop_assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
            let want_cn = format!("agent {id}");
            prop_assert!(cert.subject().to_string().contains(&want_cn));
            prop_assert!(cert.verify_signature(Some(&X509Certificate::from_der(ca.cert_der()).unwrap().1.tbs_certificate.subject_pki)).is_ok());
            prop_assert!(!issued.serial.is_empty());
        }
    }

    #[test]
    fn serials_differ() {
        let ca = Ca::generate().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = verify_csr(&csr_for(&CertificateParams::default(), &key)).unwrap();
        let now = OffsetDateTime::now_utc();
        let a = sign_client(
            &ca,
            &csr,
            &Identity::Agent("a".into()),
            now,
            DEFAULT_AGENT_CERT_TTL,
        )
        .unwrap();
        let b = sign_client(
            &ca,
            &csr,
            &Identity::Agent("a".into()),
            now,
            DEFAULT_AGENT_CERT_TTL,
        )
        .unwrap();
        assert_ne!(a.serial, b.serial);
    }
}
