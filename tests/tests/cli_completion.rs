//! Shell completions and man pages of the real binaries: `drover completion bash` and
//! `drover-agent completion bash` load in bash and complete subcommands and flags; zsh and
//! fish scripts name the subcommands; `man DIR` writes a page for every subcommand, each
//! one `man` can read as roff (checked with `groff` when present).

use std::path::Path;
use std::process::Command;

use drover_tests::harness::{agent_bin, drover_bin};

/// Runs `script` in a clean non-interactive bash and returns its stdout.
fn bash(script: &str) -> String {
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash failed: {}\nscript: {script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What bash completion offers for `words` (the last one being completed), as the shell
/// would ask for it on TAB.
fn complete(bin: &Path, name: &str, words: &[&str]) -> Vec<String> {
    let words_list: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source <('{bin}' completion bash) || exit 1
         func=$(complete -p {name} | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')
         [ -n \"$func\" ] || {{ echo 'no completion function' >&2; exit 1; }}
         COMP_WORDS=({words})
         COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
         COMP_LINE=\"${{COMP_WORDS[*]}}\"
         COMP_POINT=${{#COMP_LINE}}
         \"$func\" {name} \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        bin = bin.display(),
        words = words_list.join(" "),
    );
    bash(&script).lines().map(str::to_string).collect()
}

#[test]
fn drover_bash_completion_loads_and_completes_subcommands() {
    let bin = drover_bin();
    let registered = bash(&format!(
        "source <('{}' completion bash) && complete -p drover",
        bin.display()
    ));
    assert!(registered.contains("drover"), "{registered}");
    let top = complete(&bin, "drover", &["drover", ""]);
    for sub in ["agents", "agent", "serve", "token", "runner", "completion"] {
        assert!(top.iter().any(|w| w == sub), "no `{sub}` in {top:?}");
    }
    assert!(
        !top.iter().any(|w| w == "man"),
        "hidden `man` offered: {top:?}"
    );
    let prefix = complete(&bin, "drover", &["drover", "ag"]);
    assert!(prefix.iter().any(|w| w == "agents"), "{prefix:?}");
    assert!(prefix.iter().all(|w| w.starts_with("ag")), "{prefix:?}");
    let token = complete(&bin, "drover", &["drover", "token", ""]);
    assert!(token.iter().any(|w| w == "create"), "{token:?}");
    let serve = complete(&bin, "drover", &["drover", "serve", "--"]);
    assert!(serve.iter().any(|w| w == "--database"), "{serve:?}");
    let shells = complete(&bin, "drover", &["drover", "completion", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == shell), "{shells:?}");
    }
}

#[test]
fn agent_bash_completion_loads_and_completes_subcommands() {
    let bin = agent_bin();
    bash(&format!(
        "source <('{}' completion bash) && complete -p drover-agent",
        bin.display()
    ));
    let top = complete(&bin, "drover-agent", &["drover-agent", ""]);
    for sub in ["enroll", "run", "status", "check", "completion"] {
        assert!(top.iter().any(|w| w == sub), "no `{sub}` in {top:?}");
    }
    let run = complete(&bin, "drover-agent", &["drover-agent", "run", "--"]);
    assert!(run.iter().any(|w| w == "--state-dir"), "{run:?}");
}

#[test]
fn zsh_and_fish_scripts_name_the_subcommands() {
    for (bin, sub) in [(drover_bin(), "agents"), (agent_bin(), "enroll")] {
        for shell in ["zsh", "fish"] {
            let out = Command::new(&bin)
                .args(["completion", shell])
                .output()
                .expect("run completion");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(sub), "{shell} script lacks {sub}: {text}");
        }
    }
    let out = Command::new(drover_bin())
        .args(["completion", "tcsh"])
        .output()
        .expect("run completion");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tcsh"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn man_writes_a_readable_page_for_every_subcommand() {
    let controller = man_page_names(&drover_bin());
    let agent = man_page_names(&agent_bin());
    for (names, must) in [
        (
            &controller,
            &[
                "drover.1",
                "drover-serve.1",
                "drover-token-create.1",
                "drover-agent-drain.1",
                "drover-agent-undrain.1",
                "drover-image-push.1",
                "drover-image-ls.1",
                "drover-agent-upgrade.1",
                "drover-agent-upgrade-status.1",
            ][..],
        ),
        (&agent, &["drover-agent.1", "drover-agent-run.1"][..]),
    ] {
        for m in must {
            assert!(names.iter().any(|n| n == m), "no {m} in {names:?}");
        }
    }
    // The two packages install into one directory: a name in both would make dpkg refuse
    // the second package.
    let both: Vec<&String> = controller.iter().filter(|n| agent.contains(n)).collect();
    assert!(both.is_empty(), "pages in both packages: {both:?}");
}

/// Runs `BIN man DIR` into a fresh directory, checks every page renders, and returns the
/// file names.
fn man_page_names(bin: &Path) -> Vec<String> {
    let groff = Command::new("groff").arg("--version").output().is_ok();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .arg("man")
        .arg(dir.path())
        .output()
        .expect("run man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        let page = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(page.contains(".TH "), "{name}: {page}");
        if groff {
            let out = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(dir.path().join(name))
                .output()
                .expect("run groff");
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "groff on {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    names
}
