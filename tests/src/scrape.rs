//! Reading an agent's metrics server: the address it logs and plain HTTP/1.1 GETs.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The address in an agent log's `metrics listening on ADDR` line, once it is there.
pub fn metrics_addr_in(log: &str) -> Option<String> {
    let rest = log.split("metrics listening on ").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// `GET path` on `addr` with `Connection: close`; the whole response, head included.
pub async fn http_get(addr: &str, path: &str) -> String {
    let mut c = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics server");
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send request");
    let mut out = String::new();
    c.read_to_string(&mut out).await.expect("read response");
    out
}
