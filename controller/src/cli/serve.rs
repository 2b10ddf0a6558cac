//! `drover serve [--listen ADDR] [--http-listen ADDR]`.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::datadir::DataDir;
use crate::server::http::HttpAuth;
use crate::server::{self, ServeConfig, ServerOptions};
use crate::tokens::parse_duration;

/// Arguments of `drover serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// gRPC listener for agents and admins (mutual TLS).
    #[arg(long, default_value = "0.0.0.0:7443", env = "DROVER_LISTEN")]
    pub listen: String,
    /// HTTP listener for the status page, `/metrics` and `/healthz`. Beyond loopback it
    /// needs --http-token or --http-basic-auth.
    #[arg(long, default_value = "127.0.0.1:7080", env = "DROVER_HTTP_LISTEN")]
    pub http_listen: String,
    /// Token for the status page and `/metrics` (`Authorization: Bearer TOKEN` or
    /// `?token=TOKEN`).
    #[arg(long, env = "DROVER_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// Basic auth for the status page and `/metrics`, `USER:PASSWORD`.
    #[arg(long, conflicts_with = "http_token")]
    pub http_basic_auth: Option<String>,
    /// Like --http-basic-auth, read from a file holding `USER:PASSWORD`.
    #[arg(long, conflicts_with_all = ["http_token", "http_basic_auth"])]
    pub http_basic_auth_file: Option<std::path::PathBuf>,
    /// An agent without a heartbeat for this long is `lost` (default: 3 heartbeat intervals).
    #[arg(long)]
    pub lease_grace: Option<String>,
    /// Degraded when a disk (Docker root or builds dir) has less than this percent free.
    #[arg(long, default_value_t = 10.0)]
    pub min_disk_free_percent: f64,
    /// ... or less than this free (`2GiB`, `500MiB`).
    #[arg(long, default_value = "2GiB", value_parser = size)]
    pub min_disk_free: u64,
    /// Degraded when less memory than this is available.
    #[arg(long, default_value = "256MiB", value_parser = size)]
    pub min_memory_available: u64,
    /// Degraded when an agent's clock is off by more than this.
    #[arg(long, default_value = "60s")]
    pub max_clock_skew: String,
    /// Degraded when a runner token the agent does not rotate expires within this (a token
    /// it rotates degrades only when its rotation failed or is overdue).
    #[arg(long, default_value = "24h")]
    pub token_expiry_warning: String,
    /// The store on PostgreSQL: `postgres://USER[:PASSWORD]@HOST:PORT/DB`, with
    /// `?sslmode=require|verify-ca|verify-full&sslrootcert=FILE` for TLS. Default: SQLite in
    /// the data dir. Replicas started on one database with the same --secrets-key-file
    /// form one controller.
    #[arg(long, env = "DROVER_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// With --database: the key-encryption key sealing the CA and secrets key the
    /// replicas share in the database (32 bytes, 0600). The first replica creates it when
    /// missing; give every other replica a copy. Default: DATA_DIR/kek.key.
    #[arg(long, env = "DROVER_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<std::path::PathBuf>,
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
    let heartbeat_interval = std::time::Duration::from_secs(
        u64::try_from(heartbeat.whole_seconds())
            .unwrap_or(10)
            .max(1),
    );
    let mut thresholds = crate::health::Thresholds::for_interval(
        time::Duration::try_from(heartbeat_interval).unwrap_or(time::Duration::seconds(10)),
    );
    if let Some(g) = &args.lease_grace {
        thresholds.grace = parse_duration(g).map_err(|e| anyhow::anyhow!("--lease-grace: {e}"))?;
    }
    if !(0.0..=100.0).contains(&args.min_disk_free_percent) {
        anyhow::bail!(
            "--min-disk-free-percent {}: expected 0 to 100",
            args.min_disk_free_percent
        );
    }
    thresholds.min_disk_free_ratio = args.min_disk_free_percent / 100.0;
    thresholds.min_disk_free_bytes = args.min_disk_free;
    thresholds.min_memory_available_bytes = args.min_memory_available;
    thresholds.max_clock_skew = parse_duration(&args.max_clock_skew)
        .map_err(|e| anyhow::anyhow!("--max-clock-skew: {e}"))?;
    thresholds.token_expiry_warning = parse_duration(&args.token_expiry_warning)
        .map_err(|e| anyhow::anyhow!("--token-expiry-warning: {e}"))?;
    let http_auth = http_auth(args)?;
    let database = args
        .database
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| {
            crate::store::postgres::DatabaseUrl::parse(u).map_err(|e| {
                anyhow::anyhow!("--database {}: {e}", crate::store::postgres::redact(u))
            })
        })
        .transpose()?;
    if args.secrets_key_file.is_some() && database.is_none() {
        anyhow::bail!(
            "--secrets-key-file needs --database: it seals the secrets replicas share in PostgreSQL (with SQLite the secrets key is DATA_DIR/secrets.key)"
        );
    }
    if let Ok(addr) = args.http_listen.parse::<std::net::SocketAddr>() {
        http_auth.check_listener(addr)?;
    }
    // Before binding: a second controller on this dir is told so, not "address in use".
    let dir = DataDir::new(&cli.data_dir);
    crate::files::create_private_dir(dir.root())
        .with_context(|| format!("create data dir {}", dir.root().display()))?;
    let lock = dir.lock()?;
    let grpc = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("bind --listen {}", args.listen))?;
    let http = tokio::net::TcpListener::bind(&args.http_listen)
        .await
        .with_context(|| format!("bind --http-listen {}", args.http_listen))?;
    let config = ServeConfig {
        dir,
        lock,
        options: ServerOptions {
            cert_ttl,
            heartbeat_interval,
            thresholds,
            http_auth,
            database,
            secrets_key_file: args.secrets_key_file.clone(),
        },
        grpc,
        http,
    };
    // The signal only cancels the root token; `server::run` stops everything under it.
    let shutdown = CancellationToken::new();
    let serve = server::run(config, shutdown.clone());
    tokio::pin!(serve);
    let result = tokio::select! {
        result = &mut serve => result,
        () = drover_runtime::signal::terminated() => {
            tracing::info!("shutting down");
            shutdown.cancel();
            serve.await
        }
    };
    result.with_context(|| format!("serve from data dir {}", cli.data_dir.display()))
}

/// A size flag (`2GiB`, `500MiB`, `1.5G`, `1048576` bytes): `drover_proto::spec::size`.
fn size(s: &str) -> Result<u64, drover_proto::spec::SizeError> {
    drover_proto::spec::parse_size(s)
}

fn http_auth(args: &ServeArgs) -> anyhow::Result<HttpAuth> {
    if let Some(t) = args.http_token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(HttpAuth::Token(secrecy::SecretString::from(t.to_string())));
    }
    if let Some(b) = &args.http_basic_auth {
        return Ok(HttpAuth::basic(b)?);
    }
    if let Some(path) = &args.http_basic_auth_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read --http-basic-auth-file {}", path.display()))?;
        return HttpAuth::basic(text.trim())
            .with_context(|| format!("--http-basic-auth-file {}", path.display()));
    }
    Ok(HttpAuth::Open)
}
