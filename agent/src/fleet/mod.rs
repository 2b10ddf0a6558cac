//! Fleet mode: enrolled agent connected to a controller.

/// Runs the agent in fleet mode from `args.state_dir`.
pub async fn run(args: crate::cli::run::RunArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "fleet mode from {} is not built yet",
        args.state_dir.display()
    )
}
