//! `GET /system/df`, read by hand: bollard's model of it follows API 1.52 (`VolumeUsage`,
//! `ImageUsage` with `Items`), so against the engines edge boxes run (API 1.41 to 1.51,
//! which answer `Volumes` and `Images`) it reads nothing. One plain HTTP/1.0 request on the
//! engine's socket, both answer shapes read, sizes `-1` (not computed) kept as unknown.
//! TLS engine addresses are not supported here (sizes are then unknown, reported as an
//! error naming the address).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::executor::ExecutorError;
use crate::executor::api::{DiskUsage, ImageUsage, VolumeUsage};

/// Bound of the whole call: the engine walks every volume to size it.
pub(super) const DF_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer read (a box with thousands of images stays far below).
const MAX_ANSWER: u64 = 64 << 20;

/// Asks the engine at `host` (`unix:///...`, `tcp://...`, `http://...`) with API `version`
/// (`1.41`).
pub(super) async fn system_df(host: &str, version: &str) -> Result<DiskUsage, ExecutorError> {
    let op = format!("disk usage (GET /system/df) at {host}");
    let request = format!(
        "GET /v{version}/system/df?verbose=1 HTTP/1.0\r\nHost: docker\r\nUser-Agent: drover-agent\r\n\r\n"
    );
    let fail = |why: String| ExecutorError::Docker {
        op: op.clone(),
        source: why.into(),
    };
    let call = async {
        let raw = if let Some(path) = host.strip_prefix("unix://") {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| fail(format!("connect {path}: {e}")))?;
            exchange(s, &request).await
        } else if let Some(addr) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            let addr = addr.trim_end_matches('/');
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| fail(format!("connect {addr}: {e}")))?;
            exchange(s, &request).await
        } else {
            return Err(fail(
                "only unix:// and plain tcp:// engine addresses are supported for volume sizes"
                    .to_string(),
            ));
        }
        .map_err(|e| fail(e.to_string()))?;
        let body = http_body(&raw).map_err(fail)?;
        parse(&body).map_err(fail)
    };
    match tokio::time::timeout(DF_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(ExecutorError::NoAnswer {
            op,
            after: DF_TIMEOUT,
        }),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> std::io::Result<Vec<u8>> {
    s.write_all(request.as_bytes()).await?;
    s.flush().await?;
    let mut out = Vec::new();
    (&mut s).take(MAX_ANSWER).read_to_end(&mut out).await?;
    Ok(out)
}

/// The body of a `200` answer (HTTP/1.0 or 1.1, chunked or not).
fn http_body(raw: &[u8]) -> Result<Vec<u8>, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("answer without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if status != "200" {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)]).trim()
        ));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[derive(Deserialize, Default)]
struct Answer {
    #[serde(rename = "Volumes", default)]
    volumes: Option<Vec<Volume>>,
    #[serde(rename = "Images", default)]
    images: Option<Vec<Image>>,
    #[serde(rename = "VolumeUsage", default)]
    volume_usage: Option<Items<Volume>>,
    #[serde(rename = "ImageUsage", default)]
    image_usage: Option<Items<Image>>,
}

#[derive(Deserialize)]
struct Items<T> {
    #[serde(rename = "Items", default = "Vec::new")]
    items: Vec<T>,
}

#[derive(Deserialize)]
struct Volume {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
    #[serde(rename = "UsageData", default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(rename = "Size", default = "minus_one")]
    size: i64,
    #[serde(rename = "RefCount", default = "minus_one")]
    ref_count: i64,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Size", default)]
    size: i64,
    #[serde(rename = "Containers", default = "minus_one")]
    containers: i64,
}

fn minus_one() -> i64 {
    -1
}

fn known(n: i64) -> Option<u64> {
    u64::try_from(n).ok()
}

/// Reads either answer shape.
fn parse(body: &[u8]) -> Result<DiskUsage, String> {
    let a: Answer = serde_json::from_slice(body).map_err(|e| format!("read answer: {e}"))?;
    let volumes = a
        .volumes
        .or(a.volume_usage.map(|u| u.items))
        .unwrap_or_default()
        .into_iter()
        .map(|v| VolumeUsage {
            name: v.name,
            labels: v.labels.unwrap_or_default(),
            size_bytes: v.usage.as_ref().and_then(|u| known(u.size)),
            containers: v.usage.as_ref().and_then(|u| known(u.ref_count)),
        })
        .collect();
    let images = a
        .images
        .or(a.image_usage.map(|u| u.items))
        .unwrap_or_default()
        .into_iter()
        .map(|i| ImageUsage {
            id: i.id,
            tags: i
                .repo_tags
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .collect(),
            size_bytes: known(i.size).unwrap_or(0),
            containers: known(i.containers),
        })
        .collect();
    Ok(DiskUsage { volumes, images })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_api_1_41_answer() {
        let body = br#"{"LayersSize":100,"Images":[{"Id":"sha256:a","RepoTags":["busybox:1","<none>:<none>"],"Size":1200,"SharedSize":-1,"Containers":2},{"Id":"sha256:b","RepoTags":null,"Size":5,"Containers":-1}],
          "Containers":[],"Volumes":[{"Name":"v1","Labels":{"com.drover.kind":"builds"},"Mountpoint":"/x","UsageData":{"Size":4096,"RefCount":0}},{"Name":"v2","Labels":null,"UsageData":{"Size":-1,"RefCount":-1}}],"BuildCache":[]}"#;
        let u = parse(body).unwrap();
        assert_eq!(u.volumes.len(), 2);
        assert_eq!(u.volumes[0].size_bytes, Some(4096));
        assert_eq!(u.volumes[0].containers, Some(0));
        assert_eq!(u.volumes[0].labels["com.drover.kind"], "builds");
        assert_eq!(u.volumes[1].size_bytes, None);
        assert_eq!(u.images[0].tags, vec!["busybox:1".to_string()]);
        assert_eq!(u.images[0].containers, Some(2));
        assert_eq!(u.images[1].tags, Vec::<String>::new());
        assert_eq!(u.images[1].containers, None);
    }

    #[test]
    fn reads_the_api_1_52_answer() {
        let body = br#"{"ImageUsage":{"ActiveCount":1,"Items":[{"Id":"sha256:a","RepoTags":["x:1"],"Size":7,"Containers":0}]},
          "VolumeUsage":{"TotalCount":1,"Items":[{"Name":"v","UsageData":{"Size":9,"RefCount":1}}]}}"#;
        let u = parse(body).unwrap();
        assert_eq!(u.volumes[0].size_bytes, Some(9));
        assert_eq!(u.images[0].size_bytes, 7);
    }

    #[test]
    fn http_bodies_plain_chunked_and_refused() {
        assert_eq!(
            http_body(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}").unwrap(),
            b"{}"
        );
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3\r\na\"}\r\n0\r\n\r\n")
                .unwrap(),
            b"{\"a\"}"
        );
        let e = http_body(b"HTTP/1.0 400 Bad Request\r\n\r\nclient version too old").unwrap_err();
        assert!(e.contains("400") && e.contains("too old"), "{e}");
        assert!(http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(http_body(b"garbage").is_err());
    }
}
