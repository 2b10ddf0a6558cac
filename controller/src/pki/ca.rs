//! The controller CA: created on first start (`ca.crt`, `ca.key` 0600 in the data dir),
//! loaded afterwards. Its key signs certificates through [`super::policy`] and nowhere else.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use super::PkiError;
use crate::files;

/// File name of the CA certificate in the data dir.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key in the data dir (0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a new CA is valid.
const CA_LIFETIME: Duration = Duration::days(3650);

/// The controller's certificate authority.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// The signing key; never serialized except into `ca.key`, never printed.
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Ca {
    /// Loads the CA from `dir`, or creates it (key 0600) when neither file exists.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !cert_path.exists() && !key_path.exists() {
            let ca = Ca::generate()?;
            drover_runtime::atomic_file::write(
                &key_path,
                ca.key.serialize_pem().as_bytes(),
                files::PRIVATE,
            )
            .map_err(|source| PkiError::Io {
                action: "write",
                path: key_path.clone(),
                source,
            })?;
            drover_runtime::atomic_file::write(&cert_path, ca.cert_pem.as_bytes(), files::PUBLIC)
                .map_err(|source| PkiError::Io {
                action: "write",
                path: cert_path.clone(),
                source,
            })?;
            return Ok(ca);
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| PkiError::Io {
                action: "read",
                path: p.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        Ca::from_pem(&cert_pem, &key_pem)
    }

    /// A fresh self-signed CA (ECDSA P-256), in memory.
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Drover");
        dn.push(
            DnType::CommonName,
            format!("Drover CA {}", hex::encode(rand::random::<[u8; 4]>())),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(super::policy::random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Builds a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::Parse {
                what: CA_CERT_FILE.into(),
                detail: e.to_string(),
            })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Parse {
            what: CA_KEY_FILE.into(),
            detail: e.to_string(),
        })?;
        Ok(Ca {
            cert_der,
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate's DER, lower-case hex.
    pub fn fingerprint(&self) -> String {
        super::fingerprint(&self.cert_der)
    }

    /// The key as PEM, only to be sealed into the shared store under the key-encryption
    /// key (`replicas::shared_secrets`): it goes to no file, log or peer.
    pub(crate) fn key_pem(&self) -> secrecy::SecretString {
        secrecy::SecretString::from(self.key.serialize_pem())
    }

    /// The issuer used by [`super::policy`] to sign.
    pub(super) fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_then_loads_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(dir.path()).unwrap();
        let b = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn half_present_ca_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = Ca::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
    }
}
