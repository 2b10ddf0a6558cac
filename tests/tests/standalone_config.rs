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
