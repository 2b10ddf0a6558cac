//! `drover completion bash|zsh|fish`: the shell completion script, made from the CLI
//! definition. `source <(drover completion bash)`, or installed by the package.

use clap::CommandFactory;
use drover_runtime::completion::{self, Shell};

/// Arguments of `drover completion`.
#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell (bash, zsh, fish, elvish, powershell).
    pub shell: Shell,
}

/// Prints the script on stdout.
pub fn run(args: &CompletionArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    completion::write(args.shell, super::Cli::command(), "drover", &mut script);
    drover_proto::stdout::write(&String::from_utf8_lossy(&script))?;
    Ok(())
}
