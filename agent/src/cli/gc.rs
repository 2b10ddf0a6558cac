//! `drover-agent gc [--dry-run]`: runs the disk collector's policy now, beside a running
//! agent or without one, and prints what it removed (or, with `--dry-run`, what it would
//! remove) and the budgets. Standalone agents are named by `--config` (as `run --config`),
//! fleet agents by their state dir. Volumes and images a running job of the agent holds
//! are recorded in the shared ledger and left alone.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use drover_job::executor::{GcReport, StorageOptions};
use drover_proto::spec::RunnerConfig;

use crate::cli::status::Format;
use crate::disk::report::{bytes, render};
use crate::disk::{CacheUsage, DiskKeeper, DiskReport, KeeperOptions};
use crate::health::{ProcProbe, Thresholds};

/// Arguments of `drover-agent gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A standalone agent's gitlab-runner `config.toml`; without it, the fleet agent of
    /// `--state-dir`.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// The agent's state dir.
    #[arg(
        long,
        default_value = "/var/lib/drover-agent",
        env = "DROVER_AGENT_STATE_DIR"
    )]
    pub state_dir: PathBuf,
    /// `text` or `json`.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: Format,
}

/// The agent id, its runners and its data dir, as `run` would have them.
fn agent(args: &GcArgs) -> anyhow::Result<(String, Vec<RunnerConfig>, PathBuf)> {
    match &args.config {
        Some(config) => {
            let parsed = crate::standalone::load::load(config)?;
            let system_id = crate::standalone::load::system_id(config, &args.state_dir)?;
            let agent_id = crate::standalone::load::agent_id(&system_id, config);
            Ok((
                agent_id,
                parsed.config.runners,
                StorageOptions::in_state_dir(&args.state_dir).data_dir,
            ))
        }
        None => {
            let identity = crate::identity::StateDir::new(&args.state_dir)
                .load()
                .context("no --config given: read the fleet agent's state dir")?;
            let store = crate::fleet::desired::Store::new(&args.state_dir);
            let runners = match store.load()? {
                Some(a) => crate::fleet::desired::validate_all(a.generation, &a.runners)?
                    .runners
                    .into_iter()
                    .map(|r| r.config)
                    .collect(),
                None => Vec::new(),
            };
            let data = StorageOptions::in_state_dir(&args.state_dir).data_dir;
            Ok((identity.agent_id, runners, data))
        }
    }
}

pub async fn run(args: GcArgs) -> anyhow::Result<()> {
    let (agent_id, runners, data_dir) = agent(&args)?;
    let storage = StorageOptions::new(&data_dir);
    let keeper = DiskKeeper::new(KeeperOptions {
        agent_id,
        state_dir: args.state_dir.clone(),
        data_dir: data_dir.clone(),
        cache_max_bytes: storage.cache_max_bytes,
        probe: Arc::new(ProcProbe::default()),
        thresholds: Thresholds::default(),
        metrics: None,
        docker: None,
        runners_source: None,
        publish: false,
    });
    keeper.set_runners(&runners);
    let need = keeper.need_bytes();
    let r = keeper.collect("manual", need, args.dry_run).await?;
    match args.output {
        Format::Json => drover_proto::stdout::line(&serde_json::to_string_pretty(&r)?)?,
        Format::Text => {
            let cache = CacheUsage {
                bytes: crate::disk::dir_size(&drover_job::cache::default_cache_root(&data_dir)),
                max_bytes_per_runner: storage.cache_max_bytes,
                runners: runners.len() as u64,
            };
            drover_proto::stdout::write(&text(&r, cache))?;
        }
    }
    Ok(())
}

/// What `gc` prints: one line per removal, a total, then the budgets.
pub fn text(r: &GcReport, cache: CacheUsage) -> String {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for x in &r.removed {
        out.push_str(&format!(
            "{verb} {} {} ({}, {})\n",
            x.kind.as_str(),
            x.name,
            bytes(x.bytes),
            x.why
        ));
    }
    out.push_str(&format!(
        "{}: {} object(s), {}{}\n",
        if r.dry_run { "dry run" } else { "collected" },
        r.removed.len(),
        bytes(r.freed_bytes),
        if r.dry_run {
            " would be freed"
        } else {
            " freed"
        }
    ));
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    let mut rep = DiskReport::default();
    rep.collected(r, "manual", crate::inflight::now_rfc3339());
    rep.cache = cache;
    out.push_str(&render(&rep));
    out
}
