//! `drover serve [--listen ADDR] [--http-listen ADDR]`.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::datadir::DataDir;
use crate::server::{self, ServerOptions};
use crate::tokens::parse_duration;

/// Arguments of `drover serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// gRPC listener for agents and admins (mutual TLS).
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: String,
    /// HTTP listener for `/healthz` (and later the status page and metrics).
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub http_listen: String,
    /// Lifetime of issued agent certificates (e.g. `7d`, `10s` in tests).
    #[arg(long, default_value = "7d", hide = true, env = "DROVER_CERT_TTL")]
    pub cert_ttl: String,
    /// Heartbeat interval asked of agents.
    #[arg(
        long,
        default_value = "10s",
        hide = true,
        env = "DROVER_HEARTBEAT_INTERVAL"
    )]
    pub heartbeat_interval: String,
}

/// Runs the controller until SIGINT or SIGTERM.
pub async fn run(cli: &super::Cli, args: &ServeArgs) -> anyhow::Result<()> {
    let cert_ttl =
        parse_duration(&args.cert_ttl).map_err(|e| anyhow::anyhow!("--cert-ttl: {e}"))?;
    let heartbeat = parse_duration(&args.heartbeat_interval)
        .map_err(|e| anyhow::anyhow!("--heartbeat-interval: {e}"))?;
    let grpc = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("bind --listen {}", args.listen))?;
    let http = tokio::net::TcpListener::bind(&args.http_listen)
        .await
        .with_context(|| format!("bind --http-listen {}", args.http_listen))?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    let options = ServerOptions {
        cert_ttl,
        heartbeat_interval: std::time::Duration::from_secs(
            u64::try_from(heartbeat.whole_seconds()).unwrap_or(10),
        ),
    };
    server::run(&DataDir::new(&cli.data_dir), options, grpc, http, shutdown)
        .await
        .with_context(|| format!("serve from data dir {}", cli.data_dir.display()))
}

async fn wait_for_signal() {
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
}
