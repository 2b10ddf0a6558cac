//! `drover-agent` binary: parses arguments, sets up logging and the crypto provider, and
//! hands over to the subcommand in [`drover_agent::cli`].

use clap::{Parser, Subcommand};
use drover_agent::cli;

/// Drover agent: runs GitLab CI jobs in Docker on this box.
#[derive(Debug, Parser)]
#[command(name = "drover-agent", version, about, after_help = drover_proto::LOG_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this box with a controller (one-time token).
    Enroll(cli::enroll::EnrollArgs),
    /// Run the agent: fleet mode, or standalone with --config.
    Run(cli::run::RunArgs),
    /// Validate a gitlab-runner config.toml as `run --config` would, without running it.
    Check(cli::check::CheckArgs),
    /// Show the runner units of the agent running in fleet mode, like `systemctl status`.
    Status(cli::status::StatusArgs),
}

fn main() -> std::process::ExitCode {
    // Release builds stop on any panic, as `panic = "abort"` did before the workspace
    // profile switched to unwinding for the controller: systemd restarts the agent whole.
    if !cfg!(debug_assertions) {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::abort();
        }));
    }
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    drover_runtime::log::init_with(drover_agent::metrics::ErrorCountLayer);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Enroll(a) => cli::enroll::run(a).await,
            Command::Run(a) => cli::run::run(a).await,
            Command::Status(a) => cli::status::run(a).await,
            Command::Check(a) => cli::check::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `drover-agent status -o json | grep -q ...`: the reader had what it wanted.
        Err(e) if drover_proto::stdout::reader_went_away(e.as_ref()) => {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
