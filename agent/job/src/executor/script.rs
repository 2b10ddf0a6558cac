//! The POSIX shell script fed to the build container's shell over stdin.
//!
//! Invariants: the script works in busybox `sh`, dash and bash; every command is echoed as
//! `$ cmd` in bold green before it runs; the script stops at the first failing command and
//! exits with its code; user commands never read the script itself from stdin (the body is
//! passed to `eval` as one quoted word with `:` piped into it).

/// The container's command: picks bash when the image has it, else `sh`, and execs it so
/// the shell reads the script from stdin (gitlab-runner's detection trick).
pub fn shell_command() -> Vec<String> {
    let shells = [
        "/usr/local/bin/bash",
        "/usr/bin/bash",
        "/bin/bash",
        "/usr/local/bin/sh",
        "/usr/bin/sh",
        "/bin/sh",
        "/busybox/sh",
    ];
    let mut detect = String::new();
    for (i, s) in shells.iter().enumerate() {
        detect.push_str(if i == 0 { "if" } else { "elif" });
        detect.push_str(&format!(" [ -x {s} ]; then exec {s}; "));
    }
    detect.push_str("else echo 'ERROR: no shell (bash or sh) found in the image' >&2; exit 1; fi");
    vec!["sh".to_string(), "-c".to_string(), detect]
}

/// Quotes `s` as one single-quoted shell word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The line printed before a command runs: its first line, noting when more follow.
fn echo_text(cmd: &str) -> String {
    let trimmed = cmd.trim_end_matches('\n');
    match trimmed.split_once('\n') {
        Some((first, _)) => format!("$ {first} # collapsed multi-line command"),
        None => format!("$ {trimmed}"),
    }
}

/// Generates the script for one step: `cd` into `workdir` (created if missing), then each
/// command echoed and run, stopping at the first failure with its exit code.
///
/// `preamble` lines run first, unechoed (e.g. emptying the project dir for
/// `GIT_STRATEGY=empty`).
pub fn generate(workdir: &str, preamble: &[String], commands: &[String]) -> String {
    let mut body = String::new();
    // pipefail where the shell has it (bash, busybox ash); dash has not.
    body.push_str("if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi\n");
    body.push_str("set -e\n");
    for line in preamble {
        body.push_str(line);
        body.push('\n');
    }
    let wd = quote(workdir);
    body.push_str(&format!("mkdir -p {wd}\ncd {wd}\n"));
    for cmd in commands {
        if cmd.trim().is_empty() {
            continue;
        }
        body.push_str(&format!(
            "printf '\\033[32;1m%s\\033[0;m\\n' {}\n",
            quote(&echo_text(cmd))
        ));
        // `set -e` does not stop at every failure (e.g. `false && true`); the explicit
        // check after each command does.
        body.push_str(cmd.trim_end_matches('\n'));
        body.push_str(
            "\n_drover_rc=$?; if [ \"$_drover_rc\" -ne 0 ]; then exit \"$_drover_rc\"; fi\n",
        );
    }
    body.push_str("exit 0\n");
    format!(": | eval {}\nexit $?\n", quote(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` with `sh` on stdin the way the container does; returns (stdout, code).
    fn run_sh(script: &str) -> (String, i32) {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write script");
        let out = child.wait_with_output().expect("wait sh");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    fn tmpdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn cmds(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn echoes_each_command_in_green_then_runs_it() {
        let dir = tmpdir();
        let wd = dir.path().join("p").display().to_string();
        let (out, code) = run_sh(&generate(
            &wd,
            &[],
            &cmds(&["echo hi", "echo 'it''s' \"%d\""]),
        ));
        assert_eq!(code, 0);
        assert!(out.contains("\x1b[32;1m$ echo hi\x1b[0;m\nhi\n"), "{out:?}");
        assert!(out.contains("$ echo 'it''s' \"%d\""), "{out:?}");
        assert!(out.contains("its %d\n"), "{out:?}");
    }

    #[test]
    fn stops_at_the_first_failing_command_with_its_code() {
        let dir = tmpdir();
        let wd = dir.path().display().to_string();
        let (out, code) = run_sh(&generate(
            &wd,
            &[],
            &cmds(&["echo one", "exit 3", "echo never"]),
        ));
        assert_eq!(code, 3);
        assert!(out.contains("one"));
        assert!(!out.contains("never"), "{out:?}");
    }

    #[test]
    fn failures_that_set_e_misses_still_stop_the_script() {
        let dir = tmpdir();
        let wd = dir.path().display().to_string();
        let (out, code) = run_sh(&generate(&wd, &[], &cmds(&["false && true", "echo never"])));
        assert_eq!(code, 1);
        assert!(!out.contains("never"), "{out:?}");
    }

    #[test]
    fn multi_line_commands_run_whole_and_echo_collapsed() {
        let dir = tmpdir();
        let wd = dir.path().display().to_string();
        let multi = "if true; then\n  echo inside\nfi\n";
        let (out, code) = run_sh(&generate(&wd, &[], &cmds(&[multi, "echo after"])));
        assert_eq!(code, 0);
        assert!(
            out.contains("$ if true; then # collapsed multi-line command"),
            "{out:?}"
        );
        assert!(out.contains("inside\n"));
        assert!(out.contains("after\n"));
        let (_, code) = run_sh(&generate(&wd, &[], &cmds(&["echo a\nexit 4\necho b"])));
        assert_eq!(code, 4);
    }

    #[test]
    fn commands_reading_stdin_do_not_eat_the_script() {
        let dir = tmpdir();
        let wd = dir.path().display().to_string();
        let (out, code) = run_sh(&generate(&wd, &[], &cmds(&["cat", "echo still-here"])));
        assert_eq!(code, 0);
        assert!(out.contains("still-here\n"), "{out:?}");
    }

    #[test]
    fn runs_in_the_created_workdir_after_the_preamble() {
        let dir = tmpdir();
        let wd = dir.path().join("a b").display().to_string();
        let (out, code) = run_sh(&generate(&wd, &cmds(&["echo pre"]), &cmds(&["pwd"])));
        assert_eq!(code, 0);
        assert!(out.starts_with("pre\n"), "{out:?}");
        assert!(out.contains(&format!("{wd}\n")), "{out:?}");
    }

    #[test]
    fn shell_command_prefers_bash_and_falls_back_to_sh() {
        let cmd = shell_command();
        assert_eq!(cmd[..2], ["sh".to_string(), "-c".to_string()]);
        let bash = cmd[2].find("/bin/bash").expect("bash");
        let sh = cmd[2].find("exec /bin/sh").expect("sh");
        assert!(bash < sh);
    }

    #[test]
    fn quote_handles_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
