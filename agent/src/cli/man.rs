//! `drover-agent man DIR` (hidden): writes `drover-agent.1` and one page per subcommand
//! into DIR, made from the CLI definition; `deploy/package.sh` installs them.

use anyhow::Context;
use clap::CommandFactory;

/// Arguments of `drover-agent man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created when missing).
    pub dir: std::path::PathBuf,
}

/// Writes the pages and names each on stderr.
pub fn run(args: &ManArgs) -> anyhow::Result<()> {
    let written = drover_runtime::man_pages::write_all(
        super::Cli::command(),
        &super::environment::VARS,
        &args.dir,
        &[],
    )
    .context("drover-agent man")?;
    eprintln!(
        "wrote {} man pages into {}",
        written.len(),
        args.dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        run(&ManArgs {
            dir: dir.path().to_path_buf(),
        })
        .unwrap();
        let mut found: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                "drover-agent-check.1",
                "drover-agent-completion.1",
                "drover-agent-enroll.1",
                "drover-agent-gc.1",
                "drover-agent-run.1",
                "drover-agent-status.1",
                "drover-agent.1",
            ]
        );
        let top = std::fs::read_to_string(dir.path().join("drover-agent.1")).unwrap();
        assert!(top.contains("DOCKER_HOST"), "{top}");
        let run = std::fs::read_to_string(dir.path().join("drover-agent-run.1")).unwrap();
        assert!(run.contains("DROVER_AGENT_STATE_DIR"), "{run}");
    }
}
