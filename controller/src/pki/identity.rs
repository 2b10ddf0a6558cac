//! Who a certificate speaks for: `drover://agent/<id>` or `drover://admin/<name>` in the
//! URI SAN. The agent id comes only from the certificate, never from a message field.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

const AGENT_PREFIX: &str = "drover://agent/";
const ADMIN_PREFIX: &str = "drover://admin/";

/// The identity of a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An enrolled agent, by its id.
    Agent(String),
    /// An administrator (the CLI), by name.
    Admin(String),
}

impl Identity {
    /// The URI SAN that carries this identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Agent(id) => format!("{AGENT_PREFIX}{id}"),
            Identity::Admin(name) => format!("{ADMIN_PREFIX}{name}"),
        }
    }
}

/// Why a certificate carries no usable identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Not a parseable X.509 certificate.
    #[error("client certificate does not parse: {0}")]
    Parse(String),
    /// Zero or several `drover://` URI SANs, or an unknown kind.
    #[error("client certificate has no single drover:// identity (found {0:?})")]
    NoIdentity(Vec<String>),
    /// The id part is empty or has characters outside `[a-z0-9-]`.
    #[error("client certificate identity {0:?} is malformed")]
    Malformed(String),
}

/// Whether `id` is a well-formed agent id or admin name: 1–64 of `[a-z0-9-]`.
pub fn valid_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Reads the identity from a DER certificate's URI SAN (the chain was verified before).
pub fn from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let uris: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with("drover://") => Some((*u).to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(IdentityError::Parse(e.to_string())),
    };
    let [uri] = uris.as_slice() else {
        return Err(IdentityError::NoIdentity(uris));
    };
    let (name, identity): (&str, fn(String) -> Identity) =
        if let Some(id) = uri.strip_prefix(AGENT_PREFIX) {
            (id, Identity::Agent)
        } else if let Some(name) = uri.strip_prefix(ADMIN_PREFIX) {
            (name, Identity::Admin)
        } else {
            return Err(IdentityError::NoIdentity(uris.clone()));
        };
    if !valid_name(name) {
        return Err(IdentityError::Malformed(uri.clone()));
    }
    Ok(identity(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        assert!(valid_name("0123abcd"));
        assert!(valid_name("local"));
        assert!(!valid_name(""));
        assert!(!valid_name("A"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn uri_roundtrip() {
        assert_eq!(Identity::Agent("x1".into()).uri(), "drover://agent/x1");
        assert_eq!(
            Identity::Admin("local".into()).uri(),
            "drover://admin/local"
        );
    }
}
