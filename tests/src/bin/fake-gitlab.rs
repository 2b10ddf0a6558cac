//! `fake-gitlab`: the test suite's fake GitLab as a standalone server, for the demo
//! (`deploy/demo.sh`) and manual runs.
//!
//! Serves GitLab's runner API (`/api/v4/runners*`, `/api/v4/jobs*`) as `FakeGitLab` does in
//! the end-to-end tests, plus a small JSON control API under `/fake/` that is NOT part of
//! GitLab's API (see `drover_tests::fake_gitlab` `control_http`):
//!
//! ```text
//! fake-gitlab --listen 0.0.0.0:8080 --registration-token TOKEN --runner-token glrt-TOKEN
//! curl -X POST localhost:8080/fake/jobs -d '{"name":"hello","image":"busybox","script":["echo hi"]}'
//! curl localhost:8080/fake/jobs/1     # {"status":"success","trace":"...", ...}
//! ```
//!
//! State lives in memory only; stops on SIGINT/SIGTERM.

use anyhow::{Context, Result, bail};
use clap::Parser;
use drover_tests::fake_gitlab::FakeGitLab;

#[derive(Debug, Parser)]
#[command(
    name = "fake-gitlab",
    about = "A fake GitLab speaking the runner API, with a JSON control API under /fake/ \
             (not part of GitLab's API)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The base URL runners reach this server at (put into job payloads); default
    /// `http://<listen address>`.
    #[arg(long)]
    url: Option<String>,
    /// A registration token accepted by `POST /api/v4/runners` (repeatable).
    #[arg(long = "registration-token", value_name = "TOKEN")]
    registration_tokens: Vec<String>,
    /// Pre-creates a runner with this authentication token, as the GitLab 16+ UI does
    /// (repeatable; must start with `glrt-`).
    #[arg(long = "runner-token", value_name = "TOKEN")]
    runner_tokens: Vec<String>,
    /// `X-GitLab-Trace-Update-Interval` sent to runners, seconds.
    #[arg(long, default_value_t = 1)]
    trace_update_interval: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for token in &args.runner_tokens {
        if !token.starts_with("glrt-") || token.len() <= "glrt-".len() {
            bail!("--runner-token `{token}` must start with `glrt-` and have a body");
        }
    }
    if args.registration_tokens.iter().any(|t| t.is_empty()) {
        bail!("--registration-token must not be empty");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("bind --listen {}", args.listen))?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("local address of --listen {}", args.listen))?;
    let url = args.url.unwrap_or_else(|| format!("http://{addr}"));
    let gitlab = FakeGitLab::start_with_control_api(listener, url.clone());
    gitlab.set_trace_update_interval(args.trace_update_interval);
    for token in &args.registration_tokens {
        gitlab.add_registration_token(token);
    }
    for token in &args.runner_tokens {
        let id = gitlab.add_runner(token);
        eprintln!("fake-gitlab: runner {id} created with its given token");
    }
    eprintln!("fake-gitlab: listening on {addr} (url {url}); control API under /fake/");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for SIGINT")?,
        _ = term.recv() => {}
    }
    eprintln!("fake-gitlab: stopping");
    gitlab.shutdown();
    Ok(())
}
