//! The `fake-gitlab` binary: a job created through the control API (`/fake/jobs`) is handed
//! out by the real runner API and then reported running by the control API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// The binary, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Server {
    let bin = drover_tests::harness::binary("drover-tests", "fake-gitlab", "FAKE_GITLAB_BIN");
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fake-gitlab");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("fake-gitlab exited before listening:\n{}", seen.join("\n"));
        };
        if let Some(rest) = line.strip_prefix("fake-gitlab: listening on ") {
            break rest.split_whitespace().next().expect("address").to_string();
        }
        seen.push(line);
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

/// One HTTP/1.1 request; returns (status, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect fake-gitlab");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {resp}"));
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not json ({e}): {body}"))
}

#[test]
fn job_created_by_control_api_runs_through_runner_api() {
    let token = "glrt-fake-gitlab-bin-test";
    let server = start(&["--runner-token", token, "--registration-token", "reg-1"]);
    let addr = server.addr.as_str();

    let (status, body) = http(
        addr,
        "POST",
        "/fake/jobs",
        &[],
        &json!({"name": "hello", "image": "busybox:1", "script": ["echo hi"],
                "variables": {"GIT_STRATEGY": "none"}})
        .to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let id = json_of(&body)["id"].as_i64().expect("job id");

    let (status, body) = http(addr, "GET", &format!("/fake/jobs/{id}"), &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["status"], "pending");

    let (status, body) = http(
        addr,
        "POST",
        "/api/v4/jobs/request",
        &[],
        &json!({"token": token, "info": {"features": {}}}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let payload = json_of(&body);
    assert_eq!(payload["id"], id);
    assert_eq!(payload["image"]["name"], "busybox:1");
    assert_eq!(payload["steps"][0]["script"], json!(["echo hi"]));
    let vars = payload["variables"].as_array().expect("variables");
    assert!(
        vars.iter()
            .any(|v| v["key"] == "GIT_STRATEGY" && v["value"] == "none"),
        "{vars:?}"
    );

    let (status, body) = http(addr, "GET", &format!("/fake/jobs/{id}"), &[], "");
    assert_eq!(status, 200, "{body}");
    let job = json_of(&body);
    assert_eq!(job["status"], "running", "{job}");
    assert_eq!(job["runner_id"], 1, "{job}");

    // The runner API stays GitLab's: a wrong runner token is refused.
    let (status, _) = http(
        addr,
        "POST",
        "/api/v4/jobs/request",
        &[],
        &json!({"token": "glrt-wrong"}).to_string(),
    );
    assert_eq!(status, 403);
    // The registration token given on the command line registers a runner.
    let (status, body) = http(
        addr,
        "POST",
        "/api/v4/runners",
        &[],
        &json!({"token": "reg-1", "description": "d"}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(addr, "GET", "/fake/runners", &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body).as_array().map(Vec::len), Some(2), "{body}");
}

#[test]
fn bad_control_requests_are_refused_with_the_field_named() {
    let server = start(&[]);
    let (status, body) = http(&server.addr, "POST", "/fake/jobs", &[], r#"{"name":"x"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap_or("")
            .contains("script"),
        "{body}"
    );
    let (status, body) = http(&server.addr, "GET", "/fake/jobs/99", &[], "");
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(&server.addr, "GET", "/fake/jobs", &[], "");
    assert_eq!((status, body.as_str()), (200, "[]"));
}

#[test]
fn runner_token_without_glrt_prefix_is_refused() {
    let bin = drover_tests::harness::binary("drover-tests", "fake-gitlab", "FAKE_GITLAB_BIN");
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--runner-token", "abc"])
        .output()
        .expect("run fake-gitlab");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--runner-token `abc`"), "{err}");
}
