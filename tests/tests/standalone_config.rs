//! `drover-agent run --config` refuses bad files before touching GitLab or Docker.

mod standalone_support;

use std::time::Duration;

use standalone_support::run_to_exit;

#[test]
fn malformed_config_exits_non_zero_naming_file_and_line() {
    let (status, stderr, config) = run_to_exit(
        "concurrent = 1\n\n[[runners]]\n  name = \"x\"\n  url = \"https://gitlab.example.com\n",
        Duration::from_secs(30),
    );
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    let expected = format!("{}:5:", config.display());
    assert!(
        stderr.contains(&expected),
        "stderr lacks {expected:?}:\n{stderr}"
    );
}

#[test]
fn other_executor_is_refused_naming_runner_and_line() {
    let (status, stderr, config) = run_to_exit(
        "[[runners]]\n  name = \"sh\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"shell\"\n",
        Duration::from_secs(30),
    );
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    let expected = format!("{}:5: runners[0].executor: runner \"sh\"", config.display());
    assert!(
        stderr.contains(&expected),
        "stderr lacks {expected:?}:\n{stderr}"
    );
    assert!(!stderr.contains("glrt-x"), "token in stderr:\n{stderr}");
}

#[test]
fn missing_token_is_refused() {
    let (status, stderr, _) = run_to_exit(
        "[[runners]]\n  name = \"nt\"\n  url = \"https://gitlab.example.com\"\n  executor = \"docker\"\n",
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("runner \"nt\": token missing"), "{stderr}");
}

/// `drover-agent check --config` accepts what `run` accepts and refuses what it refuses,
/// naming the file and line, without touching GitLab or Docker.
#[test]
fn check_validates_without_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "concurrent = 2\n[[runners]]\n  name = \"edge\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"alpine:3.20\"\n    pull_policy = [\"never\"]\n    tls_verify = true\n",
    )
    .expect("write config");
    let bin = drover_tests::harness::agent_bin();
    let out = std::process::Command::new(&bin)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .expect("run drover-agent check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("valid, 1 runner(s): edge"), "{stdout}");
    assert!(
        stderr.contains("tls_verify"),
        "no warning for an unimplemented key:\n{stderr}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[runners]]\n  name = \"edge\"\n  url = 3\n").expect("write config");
    let out = std::process::Command::new(&bin)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("run drover-agent check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:3:", bad.display())),
        "error does not name file and line:\n{stderr}"
    );
}
