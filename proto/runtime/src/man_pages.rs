//! Man pages made from a binary's clap definition: one page per visible command
//! (`drover.1`, `drover-token-create.1`, ...), the top page with an ENVIRONMENT section
//! from the binary's [`EnvVar`] table. `drover man DIR` / `drover-agent man DIR` write
//! them; `deploy/package.sh` installs them gzipped under `/usr/share/man/man1`.

use std::path::{Path, PathBuf};

use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::environment::EnvVar;

/// A man page that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ManPageError {
    /// The output directory could not be made.
    #[error("create man page directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// A page could not be rendered or written.
    #[error("write man page {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the page of `cmd` and of every visible subcommand, at any depth, into `dir`
/// (created when missing), each file 0644, except the pages named in `skip` (a file name
/// another binary's package owns). Returns the files written, top page first.
pub fn write_all(
    cmd: clap::Command,
    env: &[EnvVar],
    dir: &Path,
    skip: &[&str],
) -> Result<Vec<PathBuf>, ManPageError> {
    std::fs::create_dir_all(dir).map_err(|source| ManPageError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    // Building sets each subcommand's display name (`drover-token-create`), which names
    // its page and its title.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_tree(&cmd, Some(env), dir, skip, &mut written)?;
    Ok(written)
}

fn write_tree(
    cmd: &clap::Command,
    env: Option<&[EnvVar]>,
    dir: &Path,
    skip: &[&str],
    written: &mut Vec<PathBuf>,
) -> Result<(), ManPageError> {
    let man = Man::new(cmd.clone());
    if !skip.contains(&man.get_filename().as_str()) {
        write_page(&man, cmd, env, dir, written)?;
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, None, dir, skip, written)?;
    }
    Ok(())
}

fn write_page(
    man: &Man,
    cmd: &clap::Command,
    env: Option<&[EnvVar]>,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), ManPageError> {
    let path = dir.join(man.get_filename());
    let page = render(man, cmd, env).map_err(|source| ManPageError::Write {
        path: path.clone(),
        source,
    })?;
    crate::atomic_file::write(&path, &page, 0o644).map_err(|source| ManPageError::Write {
        path: path.clone(),
        source,
    })?;
    written.push(path);
    Ok(())
}

/// One page: clap_mangen's sections, then ENVIRONMENT when given, then the version.
fn render(man: &Man, cmd: &clap::Command, env: Option<&[EnvVar]>) -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut page)?;
    }
    if let Some(vars) = env.filter(|v| !v.is_empty()) {
        let mut roff = Roff::default();
        roff.control("SH", ["ENVIRONMENT"]);
        for v in vars {
            roff.control("TP", []);
            roff.text([bold(v.name)]);
            roff.text([roman(v.meaning)]);
        }
        roff.to_writer(&mut page)?;
    }
    if cmd.get_version().or(cmd.get_long_version()).is_some() {
        man.render_version_section(&mut page)?;
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("tool")
            .version("1.2.3")
            .about("A tool.")
            .subcommand(
                clap::Command::new("token")
                    .about("Tokens.")
                    .subcommand(clap::Command::new("create").about("Make one.")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_command_with_the_environment_on_top() {
        let dir = tempfile::tempdir().unwrap();
        let env = [EnvVar {
            name: "TOOL_DIR",
            meaning: "where it keeps things",
        }];
        let written = write_all(cmd(), &env, &dir.path().join("man1"), &[]).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tool.1", "tool-token.1", "tool-token-create.1"]);
        let top = std::fs::read_to_string(&written[0]).unwrap();
        assert!(top.contains(".SH ENVIRONMENT"), "{top}");
        assert!(top.contains("TOOL_DIR"), "{top}");
        assert!(top.contains("1.2.3"), "{top}");
        let create = std::fs::read_to_string(&written[2]).unwrap();
        assert!(create.starts_with(".ie"), "{create}");
        assert!(create.contains(".TH tool-token-create 1"), "{create}");
        assert!(create.contains("Make one."), "{create}");
        assert!(!create.contains("ENVIRONMENT"), "{create}");
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = write_all(cmd(), &[], &file.join("man1"), &[]).unwrap_err();
        assert!(err.to_string().contains("file/man1"), "{err}");
    }
}
