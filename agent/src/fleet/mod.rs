//! Fleet mode: an enrolled agent connected to its controller.

use tokio_util::sync::CancellationToken;

use crate::identity::StateDir;

/// Runs the agent in fleet mode from `args.state_dir` until SIGINT/SIGTERM or until the
/// controller refuses this agent.
pub async fn run(args: crate::cli::run::RunArgs) -> anyhow::Result<()> {
    let state = StateDir::new(&args.state_dir);
    let identity = state.load()?;
    tracing::info!(agent = %identity.agent_id, controller = %identity.controller, "starting in fleet mode");
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        on_signal.cancel();
    });
    crate::control::run(state, shutdown).await
}
