//! `drover-agent` binary: parses arguments, sets up logging and the crypto provider, and
//! hands over to the subcommand in [`drover_agent::cli`].

use clap::Parser;
use drover_agent::cli;

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
    let cli = cli::Cli::parse();
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
    let result = rt.block_on(cli::run(cli));
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
