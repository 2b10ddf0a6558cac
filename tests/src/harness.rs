//! Starts the real `drover` and `drover-agent` binaries on loopback with temporary dirs.
//!
//! Binaries are found next to the test executable (`target/<profile>/`). `cargo test -p
//! drover-tests` does not build another package's binaries, so the first use of a binary
//! runs `cargo test --workspace --no-run` (a no-op when the workspace's test build is fresh,
//! and it builds every package's binaries); `DROVER_BIN` / `DROVER_AGENT_BIN` override the
//! path.
//! Every child process is killed when its handle drops; its stderr goes to a log file that
//! is printed when the test panics.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Path of a workspace binary: `$ENV`, or `target/<profile>/<name>` built on first use.
pub fn binary(package: &str, name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let mut dir = exe.parent().expect("test executable dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    // One build makes every binary, so it runs once per test process.
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(env!("CARGO"));
        // The very build `cargo test --workspace` makes, not `cargo build --bin NAME`: a
        // plain build leaves dev-dependencies out of feature unification (tokio's
        // `test-util`, ...), so it compiled a second copy of the whole dependency tree
        // (minutes, and gigabytes of a small CI disk) and the next test build a third.
        cmd.args(["test", "--quiet", "--workspace", "--no-run"])
            .arg("--manifest-path")
            .arg(&manifest);
        // Without what cargo set for this test process: ring's build script reruns when
        // `CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR` or `OUT_DIR` differ from the last build's,
        // so inheriting them rebuilt ring and all above it here, and again in the next
        // `cargo test` from a shell.
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if set_by_cargo_for_tests(key) {
                cmd.env_remove(key);
            }
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo test --no-run");
        assert!(
            status.success(),
            "cargo test --workspace --no-run (for {name} of package {package}) failed"
        );
        *built = true;
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} missing after cargo test --workspace --no-run",
        path.display()
    );
    path
}

/// Whether `cargo test` sets `key` for the test process (it describes the test's package,
/// not the user's build settings such as `CARGO_TARGET_DIR` or `CARGO_INCREMENTAL`).
fn set_by_cargo_for_tests(key: &str) -> bool {
    matches!(
        key,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "CARGO_CRATE_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
            | "OUT_DIR"
    ) || key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_")
}

/// The `drover` binary.
pub fn drover_bin() -> PathBuf {
    binary("drover-controller", "drover", "DROVER_BIN")
}

/// The `drover-agent` binary.
pub fn agent_bin() -> PathBuf {
    binary("drover-agent", "drover-agent", "DROVER_AGENT_BIN")
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed on drop; its stderr is kept in `log`.
pub struct Proc {
    child: Child,
    /// The file holding the child's stderr (and stdout).
    pub log: PathBuf,
    name: String,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create log file");
        let out = file.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .env("DROVER_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            log,
            name: name.to_string(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a clean stop, as systemd does) with `kill`.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        wait_for(timeout, &format!("{name} to exit"), || self.try_exit())
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log_text());
        }
    }
}

/// A running `drover serve` with its own data dir.
pub struct Controller {
    /// The data dir (a temp dir).
    pub dir: TempDir,
    /// The server process.
    pub proc: Proc,
    /// The bound gRPC address (`127.0.0.1:PORT`).
    pub grpc_addr: String,
    /// The bound HTTP address.
    pub http_addr: String,
    extra: Vec<String>,
}

impl Controller {
    /// Starts a controller on `127.0.0.1:0` with a short heartbeat.
    pub fn start() -> Controller {
        Controller::start_with(&["--heartbeat-interval", "1s"])
    }

    /// Starts a controller with extra `drover serve` flags.
    pub fn start_with(extra: &[&str]) -> Controller {
        Controller::start_listening("127.0.0.1:0", extra)
    }

    /// Starts a controller whose gRPC listener binds `listen` (e.g. `0.0.0.0:0` for agents
    /// in another network namespace); `grpc_addr` is then what it bound (`0.0.0.0:PORT`).
    pub fn start_listening(listen: &str, extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().expect("temp data dir");
        let data = dir.path().join("data");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, grpc_addr, http_addr) = Controller::spawn(dir.path(), &data, listen, &extra);
        Controller {
            dir,
            proc,
            grpc_addr,
            http_addr,
            extra,
        }
    }

    /// Starts a controller on a copy of `data` (another controller's data dir, copied
    /// whole: its database, CA and keys) listening on `listen`: the same controller
    /// brought up elsewhere, as after a failover or a restore.
    pub fn start_from_copy(data: &Path, listen: &str, extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().expect("temp data dir");
        let copy = dir.path().join("data");
        copy_dir(data, &copy);
        Controller::start_on(dir, listen, extra)
    }

    /// Starts a controller on `dir/data` as it is (a data dir the caller prepared).
    pub fn start_on(dir: TempDir, listen: &str, extra: &[&str]) -> Controller {
        let data = dir.path().join("data");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, grpc_addr, http_addr) = Controller::spawn(dir.path(), &data, listen, &extra);
        Controller {
            dir,
            proc,
            grpc_addr,
            http_addr,
            extra,
        }
    }

    fn spawn(tmp: &Path, data: &Path, listen: &str, extra: &[String]) -> (Proc, String, String) {
        let _ = std::fs::remove_file(data.join("grpc.addr"));
        let mut cmd = Command::new(drover_bin());
        cmd.arg("--data-dir")
            .arg(data)
            .args(["serve", "--listen", listen, "--http-listen", "127.0.0.1:0"])
            .args(extra);
        // The test machine's own disk says nothing about what a test checks: a CI box with
        // little free space would otherwise turn every real agent `degraded`. A test of the
        // disk thresholds passes them itself.
        if !extra.iter().any(|a| a.starts_with("--min-disk-free")) {
            cmd.args(["--min-disk-free-percent", "0", "--min-disk-free", "0"]);
        }
        let mut proc = Proc::spawn("drover-serve", cmd, tmp);
        let grpc = wait_for(Duration::from_secs(30), "grpc.addr", || {
            if let Some(status) = proc.try_exit() {
                panic!("drover serve exited ({status}):\n{}", proc.log_text());
            }
            std::fs::read_to_string(data.join("grpc.addr"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
        let http = std::fs::read_to_string(data.join("http.addr"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        (proc, grpc, http)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same data dir and the same gRPC port.
    pub fn restart(&mut self) {
        self.proc.kill();
        let data = self.data_dir();
        let (proc, grpc, http) =
            Controller::spawn(self.dir.path(), &data, &self.grpc_addr.clone(), &self.extra);
        self.proc = proc;
        assert_eq!(grpc, self.grpc_addr);
        self.http_addr = http;
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `https://127.0.0.1:PORT`, what agents are given.
    pub fn url(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// Runs `drover --data-dir DIR ARGS...` to completion.
    pub fn drover(&self, args: &[&str]) -> Output {
        Command::new(drover_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .output()
            .expect("run drover")
    }

    /// `drover token create ARGS...`, asserting success; returns stdout trimmed.
    pub fn create_token(&self, args: &[&str]) -> String {
        let mut full = vec!["token", "create"];
        full.extend_from_slice(args);
        let out = self.drover(&full);
        assert!(
            out.status.success(),
            "token create failed: {}",
            stderr(&out)
        );
        let token = stdout(&out).trim().to_string();
        assert_eq!(token.lines().count(), 1, "stdout must hold only the token");
        token
    }

    /// `drover agents -o json`, parsed.
    pub fn agents(&self) -> Vec<serde_json::Value> {
        let out = self.drover(&["agents", "-o", "json"]);
        assert!(
            out.status.success(),
            "drover agents failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).expect("agents json")
    }

    /// `drover token list -o json`, parsed.
    pub fn tokens(&self) -> Vec<serde_json::Value> {
        let out = self.drover(&["token", "list", "-o", "json"]);
        assert!(
            out.status.success(),
            "drover token list failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).expect("tokens json")
    }

    /// One agent from `drover agents -o json`.
    pub fn agent(&self, id: &str) -> Option<serde_json::Value> {
        self.agents().into_iter().find(|a| a["id"] == id)
    }

    /// Reads a file of the data dir.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.data_dir().join(name)).expect("read data dir file")
    }
}

/// An agent state dir (temp) and, while running, its `drover-agent run` process.
pub struct Agent {
    /// Holds the state dir and logs.
    pub dir: TempDir,
    /// `drover-agent run`, when started.
    pub proc: Option<Proc>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    /// A fresh, not yet enrolled agent.
    pub fn new() -> Agent {
        Agent {
            dir: tempfile::tempdir().expect("temp state dir"),
            proc: None,
        }
    }

    /// The state dir.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `drover-agent enroll --controller URL --token TOKEN --state-dir DIR`.
    pub fn enroll(&self, url: &str, token: &str) -> Output {
        Command::new(agent_bin())
            .args([
                "enroll",
                "--controller",
                url,
                "--token",
                token,
                "--state-dir",
            ])
            .arg(self.state_dir())
            .output()
            .expect("run drover-agent enroll")
    }

    /// `drover-agent enroll --controller URL1 --controller URL2 ... --token TOKEN`.
    pub fn enroll_many(&self, urls: &[&str], token: &str) -> Output {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("enroll");
        for url in urls {
            cmd.args(["--controller", url]);
        }
        cmd.args(["--token", token, "--state-dir"])
            .arg(self.state_dir())
            .output()
            .expect("run drover-agent enroll")
    }

    /// Enrolls, asserting success; returns the agent id.
    pub fn enroll_ok(&self, url: &str, token: &str) -> String {
        let out = self.enroll(url, token);
        assert!(out.status.success(), "enroll failed: {}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    /// Starts `drover-agent run --state-dir DIR`.
    pub fn run(&mut self) -> &mut Proc {
        self.run_with(&[], &[], &[])
    }

    /// Starts `PREFIX... drover-agent run --state-dir DIR ARGS...` with `env` added (e.g.
    /// prefix `ip netns exec NAME`, args `--metrics-listen 127.0.0.1:0`).
    pub fn run_with(&mut self, prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> &mut Proc {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        cmd.args(["run", "--state-dir"])
            .arg(self.state_dir())
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.proc = Some(Proc::spawn("drover-agent", cmd, self.dir.path()));
        self.proc.as_mut().expect("just set")
    }

    /// The running process.
    pub fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("agent is running")
    }

    /// Reads a state dir file.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.state_dir().join(name)).expect("read state file")
    }
}

/// Copies the directory `from` into `to` (created), files and subdirectories, keeping
/// each file's permissions.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read dir to copy") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `drover --data-dir DATA serve` on a free loopback gRPC port and its HTTP listener on
/// `http_listen`, to add flags to and run.
pub fn serve_command(data: &Path, http_listen: &str) -> Command {
    let mut cmd = Command::new(drover_bin());
    cmd.arg("--data-dir").arg(data).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        http_listen,
    ]);
    cmd
}

/// Runs [`serve_command`] with `extra` flags to completion: for a start that must be
/// refused (it exits at once).
pub fn serve_refused(data: &Path, extra: &[&str]) -> Output {
    serve_command(data, "127.0.0.1:0")
        .args(extra)
        .output()
        .expect("run drover serve")
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_for_tests;

    #[test]
    fn a_nested_cargo_gets_the_users_build_settings_not_the_tests_package() {
        // `cargo test` describes this package to the test process...
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        for key in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
            "CARGO_BIN_EXE_fake-gitlab",
            "CARGO_CRATE_NAME",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_for_tests(key), "{key}");
        }
        // ...while these are the user's, and a nested build must see them
        for key in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "CARGO_PROFILE_DEV_DEBUG",
            "CARGO_BUILD_JOBS",
            "RUSTFLAGS",
        ] {
            assert!(!set_by_cargo_for_tests(key), "{key}");
        }
    }
}
