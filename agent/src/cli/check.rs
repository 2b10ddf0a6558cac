//! `drover-agent check --config PATH`: validates a gitlab-runner `config.toml` the way
//! `run --config` would load it, without serving anything (like `nginx -t`). Warnings for
//! keys Drover ignores go to stderr; the exit status says whether `run` would accept it.

use std::path::PathBuf;

/// Arguments of `drover-agent check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The gitlab-runner `config.toml` to validate.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let parsed = crate::standalone::load::load(&args.config)?;
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    let names: Vec<&str> = parsed
        .config
        .runners
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    drover_proto::stdout::line(&format!(
        "{}: valid, {} runner(s): {}",
        args.config.display(),
        names.len(),
        names.join(", ")
    ))?;
    Ok(())
}
