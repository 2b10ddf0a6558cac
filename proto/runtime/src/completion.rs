//! Shell completion scripts made from a binary's clap definition (`drover completion
//! bash`, `drover-agent completion zsh`): what the packages install and what a user sources.

use std::io::Write;

pub use clap_complete::Shell;

/// Writes the completion script of `cmd` for `shell` to `out`, for the binary `bin_name`.
/// Hidden subcommands (`man`) are not offered.
pub fn write(shell: Shell, cmd: clap::Command, bin_name: &str, out: &mut dyn Write) {
    let mut cmd = without_hidden(&cmd);
    if shell != Shell::Bash || !bin_name.contains('-') {
        clap_complete::generate(shell, &mut cmd, bin_name, out);
        return;
    }
    // clap_complete's bash script spells a hyphenated binary's state two ways: the loop
    // over the words makes `drover__agent__subcmd__run`, the case arms match
    // `drover__subcmd__agent__subcmd__run`, so no subcommand's options ever complete
    // (clap-rs/clap#6421). The arms are respelled the loop's way.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin_name, &mut script);
    let script = String::from_utf8_lossy(&script).replace(
        &bin_name.replace('-', "__subcmd__"),
        &bin_name.replace('-', "__"),
    );
    let _ = out.write_all(script.as_bytes());
}

/// `cmd` without its hidden subcommands, at any depth (clap_complete offers them, and clap
/// cannot remove a subcommand): its name, version, about, arguments and visible
/// subcommands, which is all a completion script reads.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_string());
    if let Some(v) = cmd.get_version() {
        out = out.version(v.to_string());
    }
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    for arg in cmd.get_arguments() {
        out = out.arg(arg.clone());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(without_hidden(sub));
    }
    out
}

/// The file name a script of `bin_name` has in the shell's usual completion directory:
/// bash `/usr/share/bash-completion/completions/NAME`, zsh `.../site-functions/_NAME`,
/// fish `.../vendor_completions.d/NAME.fish`.
pub fn file_name(shell: Shell, bin_name: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{bin_name}"),
        Shell::Fish => format!("{bin_name}.fish"),
        Shell::Elvish => format!("{bin_name}.elv"),
        Shell::PowerShell => format!("_{bin_name}.ps1"),
        _ => bin_name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("tool")
            .subcommand(clap::Command::new("agents"))
            .subcommand(clap::Command::new("serve").arg(clap::Arg::new("listen").long("listen")))
            .subcommand(clap::Command::new("manpages").hide(true))
    }

    #[test]
    fn every_shell_names_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            write(shell, cmd(), "tool", &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("agents"), "{shell}: {text}");
            assert!(text.contains("listen"), "{shell}: {text}");
            assert!(
                !text.contains("manpages"),
                "{shell} offers a hidden command: {text}"
            );
        }
    }

    /// What bash offers for `words` (the last one being completed).
    fn bash_offers(script: &str, name: &str, words: &str) -> String {
        let func = format!("_{}", name.replace('-', "__"));
        let out = std::process::Command::new("bash")
            .args(["--norc", "--noprofile", "-c"])
            .arg(format!(
                "{script}\nCOMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 {func} {name} \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
                 echo \"${{COMPREPLY[*]}}\""
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn bash_completes_a_hyphenated_binarys_subcommand_options() {
        let cmd = clap::Command::new("my-tool")
            .subcommand(clap::Command::new("run").arg(clap::Arg::new("dir").long("state-dir")));
        let mut out = Vec::new();
        write(Shell::Bash, cmd, "my-tool", &mut out);
        let script = String::from_utf8(out).unwrap();
        assert!(!script.contains("my__subcmd__tool"), "{script}");
        assert!(bash_offers(&script, "my-tool", "my-tool run --").contains("--state-dir"));
        assert!(bash_offers(&script, "my-tool", "my-tool r").contains("run"));
    }

    #[test]
    fn file_names_follow_each_shells_directory_rule() {
        assert_eq!(file_name(Shell::Bash, "drover"), "drover");
        assert_eq!(file_name(Shell::Zsh, "drover"), "_drover");
        assert_eq!(file_name(Shell::Fish, "drover"), "drover.fish");
    }
}
