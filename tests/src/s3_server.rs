//! A real S3-compatible server for the cache tests: moto's server mode (PyPI `moto[server]`,
//! installed by `tests/run.sh`), started on a free port of 127.0.0.1 and killed on drop.
//! Missing, the test is skipped with the reason printed, except under CI (`CI` set and not
//! `false`), where it fails: CI never passes by skipping.
//!
//! moto answers without checking signatures; the agent's SigV4 signing is checked against
//! AWS's published example in `drover_job::cache::remote::sigv4`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running moto server.
pub struct S3Server {
    child: Child,
    pub addr: SocketAddr,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The command that runs moto's server: `moto_server`, else `python3 -m moto.server`.
fn moto_command() -> Option<Command> {
    let found = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found("moto_server", &["--help"]) {
        return Some(Command::new("moto_server"));
    }
    if found("python3", &["-c", "import moto.server"]) {
        let mut c = Command::new("python3");
        c.args(["-m", "moto.server"]);
        return Some(c);
    }
    None
}

impl S3Server {
    /// Starts moto for `test`; `None` (reason printed) when it is not installed outside CI.
    pub async fn start(test: &str) -> Option<S3Server> {
        let Some(mut cmd) = moto_command() else {
            let msg = format!(
                "{test}: moto_server not installed (pip install 'moto[server]'; tests/run.sh does)"
            );
            assert!(!in_ci(), "{msg}");
            eprintln!("skipped: {msg}");
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            l.local_addr().expect("local addr").port()
        };
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto server");
        let server = S3Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let end = Instant::now() + Duration::from_secs(30);
        while server.request("GET", "/", &[]).await.is_err() {
            assert!(
                Instant::now() < end,
                "moto server did not answer on {}",
                server.addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(server)
    }

    /// One HTTP/1.1 request (no signature: moto does not check them); (status, body).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = tokio::net::TcpStream::connect(self.addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .map_err(|_| std::io::Error::other("moto answer timed out"))??;
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no http head"))?;
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
        Ok((status, out[split + 4..].to_vec()))
    }

    /// Creates `bucket`.
    pub async fn create_bucket(&self, bucket: &str) {
        let (status, body) = self
            .request("PUT", &format!("/{bucket}"), &[])
            .await
            .expect("create bucket");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// The object `key` of `bucket`, if any, read with boto3 (the AWS SDK moto ships with).
    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let out = self.boto3(
            "import sys\ntry:\n    sys.stdout.buffer.write(s.get_object(Bucket=sys.argv[2], Key=sys.argv[3])['Body'].read())\nexcept s.exceptions.NoSuchKey:\n    sys.exit(3)",
            &[bucket, key],
        );
        match out.status.code() {
            Some(0) => Some(out.stdout),
            Some(3) => None,
            _ => panic!("boto3 get {key}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// Writes the object `key` of `bucket` with boto3, as gitlab-runner's uploader would.
    pub async fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), bytes).expect("write temp file");
        let path = file.path().display().to_string();
        let out = self.boto3(
            "import sys\ns.upload_file(sys.argv[4], sys.argv[2], sys.argv[3])",
            &[bucket, key, &path],
        );
        assert!(
            out.status.success(),
            "boto3 put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `script` with `s`, a boto3 S3 client of this server, and `sys.argv[2..]` = `args`.
    fn boto3(&self, script: &str, args: &[&str]) -> std::process::Output {
        let prelude = "import sys, boto3\ns = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='AKIAS3CACHETEST', aws_secret_access_key='s3cache-test-secret', region_name='us-east-1')\n";
        Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .arg(format!("http://{}", self.addr))
            .args(args)
            .output()
            .expect("run python3 with boto3")
    }

    /// Kills the server (a crash: no goodbye to open connections).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
