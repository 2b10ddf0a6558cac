//! `drover runner apply|import|list|get|delete`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use drover_proto::names::Named;
use drover_proto::v1;

use super::output::{self, Format};
use crate::timefmt;
use crate::tokens::{parse_duration, parse_label};

/// `drover runner ...`
#[derive(Debug, clap::Subcommand)]
pub enum RunnerCommand {
    /// Validate a runner spec file and roll it out as a new generation (the file is the
    /// whole set of runners: runners it does not name are removed).
    Apply(ApplyArgs),
    /// Turn an existing gitlab-runner `config.toml` into runner specs (added to, or
    /// replacing by name, the current runners).
    Import(ImportArgs),
    /// List the runners of the newest generation.
    List(ListArgs),
    /// Show one runner (secrets redacted) and the agents it runs on.
    Get(GetArgs),
    /// Remove a runner: a new generation without it; its GitLab runners are unregistered.
    Delete(DeleteArgs),
}

/// How a new generation reaches the agents.
#[derive(Debug, Clone, clap::Args)]
pub struct StrategyArgs {
    /// `rolling` (default: a quarter of the agents at a time, at least one; a refusal
    /// halts) or `all` (every agent at once).
    #[arg(long, value_parser = ["rolling", "all"])]
    pub strategy: Option<String>,
    /// Rolling: how many agents may be updating at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unavailable: Option<u32>,
    /// Gate the rollout on health, first pushing to this many agents only; each batch is
    /// watched for --gate-window before the next (any gate flag gates the rollout).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub canary: Option<u32>,
    /// Gated rollout: how long each batch is watched after it applied (default 2m).
    #[arg(long, value_parser = parse_duration)]
    pub gate_window: Option<time::Duration>,
    /// Gated rollout: highest share (0 to 1) of the watched agents' finished jobs that may
    /// end with a system failure (runner_system_failure, image_pull_failure, api_failure,
    /// unknown_failure); default 0: any halts. A unit in backoff or a lost agent halts too.
    #[arg(long, value_parser = parse_ratio)]
    pub max_failure_ratio: Option<f64>,
    /// Gated rollout: when the gate halts it, undo it (as `rollout undo`).
    #[arg(long)]
    pub auto_rollback: bool,
}

/// A ratio from 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?}: expected a number from 0 to 1, like 0.1")),
    }
}

impl StrategyArgs {
    /// Whether any gate flag was given.
    fn gated(&self) -> bool {
        self.canary.is_some()
            || self.gate_window.is_some()
            || self.max_failure_ratio.is_some()
            || self.auto_rollback
    }

    /// The wire form; `None` lets the controller choose.
    pub fn to_proto(&self) -> Option<v1::RolloutStrategy> {
        if self.strategy.is_none() && self.max_unavailable.is_none() && !self.gated() {
            return None;
        }
        let kind = self.strategy.as_deref().unwrap_or("rolling");
        Some(v1::RolloutStrategy {
            kind: kind.to_string(),
            // `--strategy` takes only the names of this enum.
            strategy_kind: v1::RolloutStrategyKind::from_name(kind).map_or(0, Into::into),
            max_unavailable: self.max_unavailable.unwrap_or(0),
            gated: self.gated(),
            canary: self.canary.unwrap_or(0),
            gate_window_seconds: self
                .gate_window
                .map_or(0, |d| u64::try_from(d.whole_seconds()).unwrap_or(0).max(1)),
            max_failure_ratio: self.max_failure_ratio.unwrap_or(0.0),
            auto_rollback: self.auto_rollback,
        })
    }
}

/// Arguments of `drover runner apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The spec file (TOML).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Validate and print the changes only.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub strategy: StrategyArgs,
}

/// Arguments of `drover runner import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A gitlab-runner `config.toml` (not named `config`: that id is the global
    /// `--config` flag's).
    #[arg(value_name = "CONFIG_TOML")]
    pub config_toml: PathBuf,
    /// Selector for runners that have none, `key=value`; repeatable.
    #[arg(long = "selector", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    /// Validate and print the changes only.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub strategy: StrategyArgs,
}

/// Arguments of `drover runner list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Arguments of `drover runner get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Runner name.
    pub name: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Arguments of `drover runner delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Runner name.
    pub name: String,
    #[command(flatten)]
    pub strategy: StrategyArgs,
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref()
        .and_then(timefmt::from_proto)
        .map(timefmt::rfc3339)
}

/// A runner as `-o json` prints it.
pub fn runner_json(r: &v1::RunnerInfo) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "url": r.url,
        "selector": r.selector.iter().collect::<BTreeMap<_, _>>(),
        "tag_list": r.tag_list,
        "token_source": r.token_source,
        "generation": r.generation,
        "spec": serde_json::from_str::<serde_json::Value>(&r.spec_json).unwrap_or_default(),
        "agents": r.placements.iter().map(|p| serde_json::json!({
            "agent_id": p.agent_id,
            "gitlab_runner_id": p.gitlab_runner_id,
            "token_expires_at": ts(&p.token_expires_at),
            "state": p.state,
        })).collect::<Vec<_>>(),
    })
}

/// Prints an apply's outcome: warnings on stderr, the diff on stdout.
pub fn print_outcome(resp: &v1::ApplyRunnersResponse, dry_run: bool) -> std::io::Result<()> {
    for w in &resp.warnings {
        eprintln!("warning: {}", output::clean(w));
    }
    let mut changed = false;
    for c in &resp.changes {
        let mark = match c.change.as_str() {
            "added" => "+",
            "removed" => "-",
            "changed" => "~",
            _ => continue,
        };
        changed = true;
        let mut text = format!("{mark} {} ({})\n", output::clean(&c.name), c.change);
        for d in &c.details {
            text.push_str(&format!("    {}\n", output::clean(d)));
        }
        output::print(&text, false)?;
    }
    if dry_run {
        eprintln!("dry run: nothing stored");
    } else if resp.generation == 0 {
        eprintln!("no changes");
    } else {
        if !changed {
            drover_proto::stdout::line("= same runners as before, new generation")?;
        }
        eprintln!(
            "generation {} stored; rollout started (`drover rollout status --wait`)",
            resp.generation
        );
    }
    Ok(())
}

async fn apply(
    cli: &super::Cli,
    file: &PathBuf,
    selector: &[(String, String)],
    merge: bool,
    dry_run: bool,
    strategy: &StrategyArgs,
) -> anyhow::Result<()> {
    let text = read_spec_file(file)?;
    let mut client = super::admin_client(cli).await?;
    let resp = client
        .apply_runners(v1::ApplyRunnersRequest {
            file_name: file.display().to_string(),
            text,
            dry_run,
            selector: selector.iter().cloned().collect::<HashMap<_, _>>(),
            strategy: strategy.to_proto(),
            merge,
        })
        .await
        .map_err(|s| {
            super::change_error(
                &format!("apply {}", file.display()),
                s,
                super::CHECK_RUNNERS,
            )
        })?
        .into_inner();
    print_outcome(&resp, dry_run)?;
    Ok(())
}

/// Every page of `ListRunners` (each fits one message), joined.
async fn list_all(
    client: &mut v1::admin_client::AdminClient<tonic::transport::Channel>,
) -> anyhow::Result<v1::ListRunnersResponse> {
    let mut all = v1::ListRunnersResponse::default();
    loop {
        let page = client
            .list_runners(v1::ListRunnersRequest {
                page_token: all.next_page_token.clone(),
            })
            .await
            .map_err(|s| super::status_error("list runners", s))?
            .into_inner();
        all.generation = page.generation;
        all.runners
            .extend(page.runners.into_iter().map(super::read::runner));
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            return Ok(all);
        }
    }
}

/// Reads a spec or `config.toml` for `apply`/`import`, refusing one over the size bound
/// before reading it whole or sending it (the controller checks again).
fn read_spec_file(file: &PathBuf) -> anyhow::Result<String> {
    let len = std::fs::metadata(file)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))?
        .len();
    drover_proto::spec::limits::check_file_size(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))
}

/// Runs a runner subcommand.
pub async fn run(cli: &super::Cli, cmd: &RunnerCommand) -> anyhow::Result<()> {
    match cmd {
        RunnerCommand::Apply(a) => apply(cli, &a.file, &[], false, a.dry_run, &a.strategy).await,
        RunnerCommand::Import(a) => {
            apply(
                cli,
                &a.config_toml,
                &a.selector,
                true,
                a.dry_run,
                &a.strategy,
            )
            .await
        }
        RunnerCommand::List(a) => {
            let mut client = super::admin_client(cli).await?;
            let resp = list_all(&mut client).await?;
            match a.output {
                Format::Json => {
                    let arr: Vec<_> = resp.runners.iter().map(runner_json).collect();
                    drover_proto::stdout::line(&serde_json::to_string_pretty(&arr)?)?;
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = resp
                        .runners
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                r.url.clone(),
                                output::labels(&r.selector),
                                r.tag_list.join(","),
                                r.token_source.clone(),
                                r.placements.len().to_string(),
                            ]
                        })
                        .collect();
                    output::print(
                        &output::table(
                            &["NAME", "URL", "SELECTOR", "TAGS", "TOKEN", "AGENTS"],
                            &rows,
                        ),
                        false,
                    )?;
                    eprintln!("generation {}", resp.generation);
                }
            }
            Ok(())
        }
        RunnerCommand::Get(a) => {
            let mut client = super::admin_client(cli).await?;
            let r = client
                .get_runner(v1::GetRunnerRequest {
                    name: a.name.clone(),
                })
                .await
                .map_err(|s| super::status_error(&format!("get runner {}", a.name), s))?
                .into_inner();
            let r = super::read::runner(r);
            match a.output {
                Format::Json => {
                    drover_proto::stdout::line(&serde_json::to_string_pretty(&runner_json(&r))?)?
                }
                Format::Table => {
                    let spec: serde_json::Value =
                        serde_json::from_str(&r.spec_json).unwrap_or_default();
                    drover_proto::stdout::line(&serde_json::to_string_pretty(&spec)?)?;
                    let rows: Vec<Vec<String>> = r
                        .placements
                        .iter()
                        .map(|p| {
                            vec![
                                p.agent_id.clone(),
                                p.gitlab_runner_id.to_string(),
                                p.state.clone(),
                                ts(&p.token_expires_at).unwrap_or_else(|| "never".into()),
                            ]
                        })
                        .collect();
                    output::print(
                        &output::table(
                            &["AGENT", "GITLAB RUNNER", "STATE", "TOKEN EXPIRES"],
                            &rows,
                        ),
                        false,
                    )?;
                }
            }
            Ok(())
        }
        RunnerCommand::Delete(a) => {
            let mut client = super::admin_client(cli).await?;
            let resp = client
                .delete_runner(v1::DeleteRunnerRequest {
                    name: a.name.clone(),
                    strategy: a.strategy.to_proto(),
                })
                .await
                .map_err(|s| {
                    super::change_error(
                        &format!("delete runner {}", a.name),
                        s,
                        super::CHECK_RUNNERS,
                    )
                })?
                .into_inner();
            print_outcome(&resp, false)?;
            Ok(())
        }
    }
}
