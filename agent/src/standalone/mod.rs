//! Standalone mode: the runners of a gitlab-runner `config.toml`, no controller.

/// Serves every docker runner in `config`.
pub async fn run(
    config: std::path::PathBuf,
    _args: crate::cli::run::RunArgs,
) -> anyhow::Result<()> {
    anyhow::bail!("standalone mode with {} is not built yet", config.display())
}
