//! `<state dir>/controller.json`: which controller the running agent is connected to, for
//! `drover-agent status`. The control loop rewrites it (atomically, 0644: no secret) when
//! a session is established and when the agent is disconnected.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The agent's link to the controller as of `since`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Connection {
    /// The agent process that wrote it (to tell a stale file).
    pub pid: u32,
    /// The controller address connected to (`https://HOST:PORT` from agent.json); `None`
    /// while disconnected.
    pub controller: Option<String>,
    /// The resolved address of that session.
    pub address: Option<String>,
    /// Whether it is the preferred (first) controller address.
    pub preferred: bool,
    /// Since when this holds (RFC 3339).
    pub since: String,
    /// Why the last attempt or session failed (while disconnected).
    pub last_error: Option<String>,
}

/// `<state dir>/controller.json`.
pub fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("controller.json")
}

/// Writes `c` into `state_dir`.
pub fn write(state_dir: &Path, c: &Connection) -> anyhow::Result<()> {
    let path = file(state_dir);
    let bytes = serde_json::to_vec_pretty(c)?;
    drover_runtime::atomic_file::write(&path, &bytes, 0o644)
        .with_context(|| format!("write {}", path.display()))
}

/// Reads the file in `state_dir`; `None` when there is none (an agent of an older version,
/// or one that never tried to connect).
pub fn read(state_dir: &Path) -> anyhow::Result<Option<Connection>> {
    let path = file(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("parse {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let c = Connection {
            pid: 42,
            controller: Some("https://c2:7443".into()),
            address: Some("10.0.0.2:7443".into()),
            preferred: false,
            since: "2026-12-05T10:00:00Z".into(),
            last_error: None,
        };
        write(dir.path(), &c).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(c));
        std::fs::write(file(dir.path()), "{").unwrap();
        let e = format!("{:#}", read(dir.path()).unwrap_err());
        assert!(e.contains("controller.json"), "{e}");
    }
}
