//! `drover man DIR` (hidden): writes `drover.1` and one page per subcommand into DIR,
//! made from the CLI definition; `deploy/package.sh` installs them.

use anyhow::Context;
use clap::CommandFactory;

/// Arguments of `drover man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created when missing).
    pub dir: std::path::PathBuf,
}

/// Pages not written: `drover-agent.1` is the agent binary's page (its package owns that
/// file); `drover agent`'s own page would only list its subcommands, which `drover.1`
/// names and each of which has its page (`drover-agent-delete.1`, ...).
pub const SKIPPED_PAGES: [&str; 1] = ["drover-agent.1"];

/// Writes the pages and names each on stderr.
pub fn run(args: &ManArgs) -> anyhow::Result<()> {
    let written = drover_runtime::man_pages::write_all(
        super::Cli::command(),
        &super::environment::VARS,
        &args.dir,
        &SKIPPED_PAGES,
    )
    .context("drover man")?;
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

    /// Every visible subcommand at any depth, as its page's file name.
    fn page_names(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        let name = format!("{prefix}{}", cmd.get_name());
        if !SKIPPED_PAGES.contains(&format!("{name}.1").as_str()) {
            out.push(format!("{name}.1"));
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() != "help" {
                page_names(sub, &format!("{name}-"), out);
            }
        }
    }

    #[test]
    fn a_page_for_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        run(&ManArgs {
            dir: dir.path().join("man1"),
        })
        .unwrap();
        let mut expected = Vec::new();
        page_names(&crate::cli::Cli::command(), "", &mut expected);
        for must in [
            "drover-serve.1",
            "drover-token-create.1",
            "drover-completion.1",
            "drover-image-push.1",
            "drover-image-ls.1",
        ] {
            assert!(expected.contains(&must.to_string()), "{expected:?}");
        }
        assert!(
            !expected.contains(&"drover-man.1".to_string()),
            "the man command is hidden"
        );
        let mut found: Vec<String> = std::fs::read_dir(dir.path().join("man1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        expected.sort();
        assert_eq!(found, expected);
        let top = std::fs::read_to_string(dir.path().join("man1/drover.1")).unwrap();
        assert!(top.contains("DROVER_DATABASE_URL"), "{top}");
        let serve = std::fs::read_to_string(dir.path().join("man1/drover-serve.1")).unwrap();
        assert!(serve.contains("\\-\\-listen"), "{serve}");
    }
}
