//! `drover` binary: parses arguments, sets up logging and the crypto provider, and hands
//! over to the subcommand in [`drover_controller::cli`].

use clap::Parser;
use drover_controller::cli;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    drover_runtime::log::init();
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
