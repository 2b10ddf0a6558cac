//! `drover` binary: parses arguments, sets up logging and the crypto provider, and hands
//! over to the subcommand in [`drover_controller::cli`].

use clap::Parser;
use drover_controller::cli;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // DROVER_LOG, else RUST_LOG, else `info` (see `drover --help`).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RUST_LOG"))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    match rt.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `drover agents -o json | grep -q ...`: the reader had what it wanted.
        Err(e) if drover_proto::stdout::reader_went_away(e.as_ref()) => {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", cli::output::clean(&cli::error_text(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}
