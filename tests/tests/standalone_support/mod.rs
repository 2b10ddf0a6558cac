//! Shared by the `standalone_*` end-to-end tests: starts the real `drover-agent run
//! --config` process and kills it on drop.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `target/<profile>/drover-agent`, next to the directory holding this test executable.
///
/// `cargo test --workspace` builds it; `cargo test -p drover-tests` does not build a
/// dependency's binaries, so the first call runs `cargo build --bin drover-agent` (a no-op
/// when it is fresh). `DROVER_AGENT_BIN` overrides the path.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DROVER_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf();
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "drover-agent", "--bin", "drover-agent"])
            .arg("--manifest-path")
            .arg(&manifest);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for drover-agent");
        assert!(status.success(), "cargo build drover-agent failed");
    });
    let bin = dir.join("drover-agent");
    assert!(bin.exists(), "{} missing after cargo build", bin.display());
    bin
}

/// A running `drover-agent run --config`; killed on drop.
pub struct Agent {
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Agent {
    /// Writes `config_toml` to a fresh temp dir and starts the agent on it.
    pub fn start(config_toml: &str) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml).expect("write config.toml");
        let mut child = Command::new(agent_binary())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("DROVER_LOG", "info,drover_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start drover-agent");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Agent {
            child: Some(child),
            stderr,
            dir,
            config,
        }
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends `signal` (e.g. `libc`-free: "TERM", "QUIT", "HUP") with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `drover-agent run --config` on `config_toml` to completion (for configs that must be
/// refused); returns (exit status, stderr).
pub fn run_to_exit(config_toml: &str, timeout: Duration) -> (std::process::ExitStatus, String, PathBuf) {
    let mut a = Agent::start(config_toml);
    let status = a
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("drover-agent did not exit; stderr:\n{}", a.stderr()));
    let config = a.config.clone();
    (status, a.stderr(), config)
}
