//! Dialing the controller over mutual TLS: used by the admin CLI, and by tests that need a
//! raw client (no certificate, a foreign one, an agent's).

use std::path::{Path, PathBuf};

use drover_proto::transport::{DialError, dial};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use tonic::transport::Channel;

use crate::datadir::DataDir;

/// Errors dialing the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A credentials file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM input did not hold what it should.
    #[error("parse {what}: {detail}")]
    Parse {
        /// Which input.
        what: String,
        /// Why.
        detail: String,
    },
    /// TLS setup failed.
    #[error("tls client configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Connecting failed.
    #[error(transparent)]
    Dial(#[from] DialError),
}

/// A client certificate and its key (PEM).
pub struct ClientIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: SecretString,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Where and how to reach the controller as an admin.
#[derive(Debug)]
pub struct Target {
    /// `host:port` of the gRPC listener.
    pub addr: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The client certificate; `None` dials without one (only Enrollment will answer).
    pub identity: Option<ClientIdentity>,
}

fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `--config FILE` for a remote admin: TOML with `address`, `ca`, `cert`, `key` (paths
/// relative to the file).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    address: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Target {
    /// The local controller of a data dir: the bound address it wrote and the admin credentials.
    pub fn from_data_dir(dir: &DataDir) -> Result<Target, ClientError> {
        let addr = read(&dir.grpc_addr()).map_err(|e| match e {
            ClientError::Read { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                ClientError::Parse {
                    what: path.display().to_string(),
                    detail: "missing: is `drover serve` running with this --data-dir?".into(),
                }
            }
            other => other,
        })?;
        Ok(Target {
            addr: dial_addr(addr.trim()),
            ca_pem: read(&dir.ca_cert())?,
            identity: Some(ClientIdentity {
                cert_pem: read(&dir.admin_cert())?,
                key_pem: SecretString::from(read(&dir.admin_key())?),
            }),
        })
    }

    /// A remote admin's config file.
    pub fn from_config_file(path: &Path) -> Result<Target, ClientError> {
        let text = read(path)?;
        let cfg: ConfigFile = toml::from_str(&text).map_err(|e| ClientError::Parse {
            what: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Target {
            addr: cfg.address,
            ca_pem: read(&base.join(cfg.ca))?,
            identity: Some(ClientIdentity {
                cert_pem: read(&base.join(cfg.cert))?,
                key_pem: SecretString::from(read(&base.join(cfg.key))?),
            }),
        })
    }

    /// Connects (TLS handshake included, so a refused certificate fails here or on the
    /// first call).
    pub async fn connect(&self) -> Result<Channel, ClientError> {
        connect(&self.addr, &self.ca_pem, self.identity.as_ref()).await
    }
}

/// A wildcard bind address (`0.0.0.0:7443`) is dialed on loopback.
fn dial_addr(bound: &str) -> String {
    match bound.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(ip, a.port()).to_string()
        }
        _ => bound.to_string(),
    }
}

/// The rustls client config: trust only `ca_pem`, present `identity` if given.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| ClientError::Parse {
            what: "CA certificate".into(),
            detail: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Parse {
                    what: "client certificate".into(),
                    detail: e.to_string(),
                })?;
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.expose_secret().as_bytes())
                .map_err(|e| ClientError::Parse {
                    what: "client key".into(),
                    detail: e.to_string(),
                })?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Dials `addr` trusting `ca_pem`, with an optional client certificate.
pub async fn connect(
    addr: &str,
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
) -> Result<Channel, ClientError> {
    tracing::debug!(
        controller = addr,
        client_certificate = identity.is_some(),
        "dialing"
    );
    Ok(dial(addr, client_config(ca_pem, identity)?).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_is_dialed_on_loopback() {
        assert_eq!(dial_addr("0.0.0.0:7443"), "127.0.0.1:7443");
        assert_eq!(dial_addr("[::]:7443"), "[::1]:7443");
        assert_eq!(dial_addr("10.1.2.3:7443"), "10.1.2.3:7443");
    }
}
