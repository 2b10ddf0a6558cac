//! Reading the `config.toml` and the identity standalone mode runs under.

use std::path::{Path, PathBuf};

use anyhow::Context;
use drover_proto::spec::{Parsed, parse_config};
use sha2::{Digest, Sha256};

use crate::identity::system_id;

/// Reads and validates `path`. Errors name the file (and line, from the parser).
pub fn load(path: &Path) -> anyhow::Result<Parsed> {
    // Refused before it is read whole (the parser checks the text again).
    let len = std::fs::metadata(path)
        .with_context(|| format!("read config file {}", path.display()))?
        .len();
    drover_proto::spec::limits::check_file_size(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        .context("invalid configuration")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    let parsed =
        parse_config(&text, &path.display().to_string()).context("invalid configuration")?;
    Ok(parsed)
}

/// Where the system id is kept, in order of preference: `.runner_system_id` next to the
/// config file (where gitlab-runner keeps it, so a migrated box keeps its runner manager in
/// GitLab), else `<state_dir>/system_id`.
pub fn system_id_files(config: &Path, state_dir: &Path) -> Vec<PathBuf> {
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    vec![dir.join(".runner_system_id"), state_dir.join("system_id")]
}

/// Loads or creates the system id in the first usable file of [`system_id_files`].
pub fn system_id(config: &Path, state_dir: &Path) -> anyhow::Result<String> {
    let mut errors = Vec::new();
    for f in system_id_files(config, state_dir) {
        match system_id::load_or_create(&f, system_id::Salt::ConfigFile(config)) {
            Ok(id) => return Ok(id),
            Err(e) => errors.push(e.to_string()),
        }
    }
    anyhow::bail!("no usable system id file: {}", errors.join("; "))
}

/// This agent's id in Docker labels: stable for one config file on one machine, distinct
/// for two standalone agents with different config files on the same engine (the tests run
/// several side by side): `standalone-<system_id>-<8 hex of the config's absolute path>`.
pub fn agent_id(system_id: &str, config: &Path) -> String {
    let abs = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
    format!("standalone-{system_id}-{}", &hex::encode(digest)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_is_stable_and_per_config() {
        let a = agent_id(
            "s_0123456789ab",
            Path::new("/etc/gitlab-runner/config.toml"),
        );
        let b = agent_id(
            "s_0123456789ab",
            Path::new("/etc/gitlab-runner/config.toml"),
        );
        let c = agent_id("s_0123456789ab", Path::new("/tmp/other.toml"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("standalone-s_0123456789ab-"));
    }

    #[test]
    fn load_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "concurrent = 1\n[[runners]\n").unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("config.toml:2:"), "{e}");
        let missing = dir.path().join("missing.toml");
        let e = format!("{:#}", load(&missing).unwrap_err());
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn system_id_is_kept_next_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        let id = system_id(&cfg, &dir.path().join("state")).unwrap();
        assert!(system_id::is_valid(&id), "{id}");
        let again = system_id(&cfg, &dir.path().join("state")).unwrap();
        assert_eq!(id, again);
        assert!(dir.path().join(".runner_system_id").exists());
    }
}
