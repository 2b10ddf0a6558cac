//! How a client reaches a controller: gRPC over TLS, the server verified as [`SERVER_NAME`]
//! whatever host or address is dialed. Agents (mutual TLS with their enrolled identity) and
//! the admin CLI dial the same way; each brings its own `rustls::ClientConfig`.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

/// The DNS name every controller server certificate carries and every client verifies.
pub const SERVER_NAME: &str = "controller.drover.internal";

/// How long a TCP connect plus TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on an idle connection, so a dead peer or a cut link is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Dialing a controller failed.
#[derive(Debug, thiserror::Error)]
#[error("connect to controller at {addr}: {source}")]
pub struct DialError {
    /// The address dialed (`host:port`).
    pub addr: String,
    /// The cause.
    #[source]
    pub source: tonic::transport::Error,
}

/// Dials `addr` (`host:port`) with `config`, verifying the server as [`SERVER_NAME`].
pub async fn dial(addr: &str, config: rustls::ClientConfig) -> Result<Channel, DialError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = addr.to_string();
    let failed = |source| DialError {
        addr: addr.to_string(),
        source,
    };
    // TLS is done by the connector below; tonic sees a plain http endpoint.
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(failed)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                let name = ServerName::try_from(SERVER_NAME)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(failed)
}
