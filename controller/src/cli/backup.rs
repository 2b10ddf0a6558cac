//! `drover backup FILE [--force]`: a consistent copy of the running controller's SQLite
//! database (`DATA_DIR/drover.db`), taken with SQLite's online backup API while it serves.
//! The copy holds sealed runner tokens: they open only with `DATA_DIR/secrets.key`, which
//! must be kept too (with `ca.crt`/`ca.key`, see deploy/README.md "Backups"). A controller
//! on PostgreSQL is backed up with `pg_dump` instead; this refuses it.

use std::path::PathBuf;

use anyhow::bail;

use super::Cli;
use crate::datadir::DataDir;
use crate::store::sqlite::backup::backup;

/// Arguments of `drover backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to write the copy (0600; written whole or not at all).
    pub file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// The controller's PostgreSQL URL when it runs on one (refused: use pg_dump).
    #[arg(long, env = "DROVER_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
}

/// Runs the subcommand.
pub async fn run(cli: &Cli, args: &BackupArgs) -> anyhow::Result<()> {
    if args
        .database
        .as_deref()
        .is_some_and(|d| !d.trim().is_empty())
    {
        bail!(
            "drover backup copies the SQLite database of the data dir; this controller runs on \
             PostgreSQL (--database / DROVER_DATABASE_URL): back it up with pg_dump \
             (deploy/README.md, \"Backups\")"
        );
    }
    let data = DataDir::new(&cli.data_dir);
    let (db, file, force) = (data.db(), args.file.clone(), args.force);
    let info = tokio::task::spawn_blocking(move || backup(&db, &file, force)).await??;
    eprintln!(
        "backed up {} into {} ({} pages, {} bytes); keep {} and {} with it: the backup's runner \
         tokens open only with that secrets key",
        data.db().display(),
        args.file.display(),
        info.pages,
        info.bytes,
        data.secrets_key().display(),
        data.ca_key().display(),
    );
    Ok(())
}
