//! `drover` subcommands, one module each. Every admin subcommand reaches the controller
//! through the data dir (`--data-dir`, `DROVER_DATA_DIR`, default `./drover-data`) or a
//! remote admin `--config FILE`; every call is authenticated with an admin certificate.

pub mod agent;
pub mod agents;
pub mod backup;
pub mod completion;
pub mod describe;
pub mod drain;
pub mod environment;
pub mod events;
pub mod image;
pub mod jobs;
pub mod man;
pub mod output;
pub mod read;
pub mod rollout;
pub mod runner;
pub mod serve;
pub mod status;
pub mod token;
pub mod upgrade;

use std::path::PathBuf;

use anyhow::Context;

use crate::client::Target;
use crate::datadir::DataDir;

/// Drover controller and admin CLI.
#[derive(Debug, clap::Parser)]
#[command(name = "drover", version = drover_runtime::version(), about, after_help = environment::help())]
pub struct Cli {
    /// The controller's data dir (state, CA, admin credentials, bound address).
    #[arg(
        long,
        global = true,
        env = "DROVER_DATA_DIR",
        default_value = "./drover-data"
    )]
    pub data_dir: PathBuf,
    /// Remote admin: TOML file with `address`, `ca`, `cert`, `key` instead of the data dir.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the controller.
    Serve(Box<serve::ServeArgs>),
    /// Manage enrollment tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Fleet summary: agents per state, the rollout, top problems.
    Status(status::StatusArgs),
    /// List agents with their state and reasons.
    Agents(agents::AgentsArgs),
    /// Everything about one object.
    #[command(subcommand)]
    Describe(describe::DescribeCommand),
    /// Fleet events: state changes, connects, runner and job events, rollout steps.
    Events(events::EventsArgs),
    /// The fleet's recent jobs: agent, runner, state, failure reason, duration, queue wait.
    Jobs(jobs::JobsArgs),
    /// Act on one agent.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Runner specs: apply, import, list, get, delete.
    #[command(subcommand)]
    Runner(runner::RunnerCommand),
    /// Rollouts of runner spec generations: status, undo.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Images for air-gapped boxes: push (only missing layers travel), ls.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Copy the running controller's SQLite database into FILE (consistent, 0600).
    Backup(backup::BackupArgs),
    /// Print the shell completion script: `source <(drover completion bash)`.
    Completion(completion::CompletionArgs),
    /// Write the man pages into a directory (packaging).
    #[command(hide = true)]
    Man(man::ManArgs),
}

impl Cli {
    /// The controller this admin command talks to.
    pub fn target(&self) -> anyhow::Result<Target> {
        match &self.config {
            Some(path) => Target::from_config_file(path)
                .with_context(|| format!("load admin config {}", path.display())),
            None => Target::from_data_dir(&DataDir::new(&self.data_dir)).with_context(|| {
                format!(
                    "find the controller through data dir {}",
                    self.data_dir.display()
                )
            }),
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => serve::run(&cli, args).await,
        Command::Token(cmd) => token::run(&cli, cmd).await,
        Command::Agents(args) => agents::run(&cli, args).await,
        Command::Status(args) => status::run(&cli, args).await,
        Command::Describe(cmd) => describe::run(&cli, cmd).await,
        Command::Events(args) => events::run(&cli, args).await,
        Command::Jobs(args) => jobs::run(&cli, args).await,
        Command::Agent(cmd) => agent::run(&cli, cmd).await,
        Command::Runner(cmd) => runner::run(&cli, cmd).await,
        Command::Rollout(cmd) => rollout::run(&cli, cmd).await,
        Command::Image(cmd) => image::run(&cli, cmd).await,
        Command::Backup(args) => backup::run(&cli, args).await,
        Command::Completion(args) => completion::run(args),
        Command::Man(args) => man::run(args),
    }
}

/// Connects to the controller as admin.
pub(crate) async fn admin_client(
    cli: &Cli,
) -> anyhow::Result<drover_proto::v1::admin_client::AdminClient<tonic::transport::Channel>> {
    let target = cli.target()?;
    let channel = target.connect().await?;
    Ok(drover_proto::v1::admin_client::AdminClient::new(channel))
}

/// An error and its causes on one line, each cause once: a cause whose text the line
/// already holds (errors that print their source inside their own message) is skipped,
/// so `connect ...: Connection refused` is not followed by `: Connection refused` again.
pub fn error_text(e: &anyhow::Error) -> String {
    drover_proto::error_chain::error_chain(e.as_ref())
}

/// How to see whether a runner spec call whose answer was lost took effect.
pub(crate) const CHECK_RUNNERS: &str =
    "`drover rollout status` (the newest generation) and `drover runner list`";

/// The error of a call that changes something (create, revoke, delete, apply, undo).
/// A status the controller sent is its answer. A status the client made from a broken
/// connection (it carries the transport error as its source) came after the request may
/// have been sent and acted on: the outcome is unknown, and `check` says how to find out.
pub(crate) fn change_error(what: &str, s: tonic::Status, check: &str) -> anyhow::Error {
    if std::error::Error::source(&s).is_none() {
        return status_error(what, s);
    }
    anyhow::anyhow!(
        "{what}: outcome unknown: the connection to the controller failed after the request \
         was sent ({}); the controller may have done it: check with {check}",
        s.message()
    )
}

/// A gRPC status as an error a person can read.
pub(crate) fn status_error(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("connect to controller at 127.0.0.1:1: {source}")]
    struct Dial {
        source: Transport,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Transport {
        source: std::io::Error,
    }

    #[test]
    fn a_broken_connection_leaves_the_outcome_unknown() {
        let answered = tonic::Status::invalid_argument("runner \"a\": bad image");
        let text = super::change_error("apply r.toml", answered, "`drover runner list`");
        assert_eq!(
            text.to_string(),
            "apply r.toml: runner \"a\": bad image (InvalidArgument)"
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let broken = tonic::Status::from_error(Box::new(io));
        let text = super::change_error("apply r.toml", broken, "`drover runner list`").to_string();
        assert!(
            text.starts_with(
                "apply r.toml: outcome unknown: the connection to the controller failed"
            ) && text.ends_with("check with `drover runner list`"),
            "{text}"
        );
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let io_text = io.to_string();
        let e = anyhow::Error::new(Dial {
            source: Transport { source: io },
        })
        .context("list agents");
        let text = super::error_text(&e);
        assert_eq!(
            text,
            format!(
                "list agents: connect to controller at 127.0.0.1:1: transport error: {io_text}"
            )
        );
        assert_eq!(text.matches(&io_text).count(), 1);
    }
}
