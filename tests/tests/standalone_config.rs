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
    let expected = format!(
        "{}:5:14: runners[0].executor: runner \"sh\"",
        config.display()
    );
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
        stderr.contains(&format!("{}:3:9: runners[0].url: ", bad.display())),
        "error does not name file, line, column and key:\n{stderr}"
    );
}

fn check(config: &std::path::Path) -> (bool, String, String) {
    let out = std::process::Command::new(drover_tests::harness::agent_bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run drover-agent check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// gitlab-runner's documented examples and `register` output, free-text names included,
/// pass `check` (warning about what Drover ignores); an oversized file is refused before it
/// is read.
#[test]
fn check_accepts_gitlab_runner_files_and_bounds_size() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/tests/fixtures/gitlab-runner");
    let (ok, stdout, stderr) = check(&fixtures.join("register_free_text_names.toml"));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "valid, 3 runner(s): gitlab runner for ci, Bob's runner: build/test (prod) #2 — 本番 🚀, \
             terraform/openstack ../../etc"
        ),
        "{stdout}"
    );
    let (ok, stdout, stderr) = check(&fixtures.join("advanced_configuration.toml"));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("valid, 1 runner(s): ruby-2.7-docker"),
        "{stdout}"
    );
    assert!(
        stderr.contains("runners[0].docker.volumes_from: unknown key; ignored"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.toml");
    let image = "a".repeat(50 << 20);
    std::fs::write(
        &big,
        format!("[[runners]]\n  name = \"x\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"{image}\"\n"),
    )
    .expect("write config");
    let (ok, _, stderr) = check(&big);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("{}: file is ", big.display()))
            && stderr.contains("at most 1048576 bytes (1 MiB) are accepted"),
        "{stderr}"
    );
    let newline = dir.path().join("newline.toml");
    std::fs::write(
        &newline,
        "[[runners]]\n  name = \"x\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-x\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"alpine\\nrm -rf /\"\n",
    )
    .expect("write config");
    let (ok, _, stderr) = check(&newline);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}:7:13: runners[0].docker.image: value holds the control character '\\n'",
            newline.display()
        )),
        "{stderr}"
    );
}
