//! `drover-agent` subcommands, one module each.

pub mod check;
pub mod completion;
pub mod enroll;
pub mod environment;
pub mod gc;
pub mod man;
pub mod run;
pub mod status;

/// Drover agent: runs GitLab CI jobs in Docker on this box.
#[derive(Debug, clap::Parser)]
#[command(name = "drover-agent", version = drover_runtime::version(), about, after_help = environment::help())]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Enroll this box with a controller (one-time token).
    Enroll(enroll::EnrollArgs),
    /// Run the agent: fleet mode, or standalone with --config.
    Run(run::RunArgs),
    /// Validate a gitlab-runner config.toml as `run --config` would, without running it.
    Check(check::CheckArgs),
    /// Show the runner units of the agent running in fleet mode, like `systemctl status`.
    Status(status::StatusArgs),
    /// Run the disk collector now (builds volumes, pulled images) and print what it
    /// removed, or with --dry-run what it would remove.
    Gc(gc::GcArgs),
    /// Print the shell completion script: `source <(drover-agent completion bash)`.
    Completion(completion::CompletionArgs),
    /// Write the man pages into a directory (packaging).
    #[command(hide = true)]
    Man(man::ManArgs),
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Enroll(a) => enroll::run(a).await,
        Command::Run(a) => run::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Check(a) => check::run(a).await,
        Command::Gc(a) => gc::run(a).await,
        Command::Completion(a) => completion::run(&a),
        Command::Man(a) => man::run(&a),
    }
}
