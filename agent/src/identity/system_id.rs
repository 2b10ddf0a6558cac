//! The runner `system_id`: a stable per-machine identifier GitLab uses to tell runner
//! managers apart (`POST /runners/verify`, `POST /jobs/request`).
//!
//! Same format and derivation as gitlab-runner, so a box that moves from gitlab-runner to
//! Drover keeps its runner manager entry: `s_` + the first 12 hex characters of
//! HMAC-SHA256(key = machine id, message = `"gitlab-runner"`), or, when the machine has no
//! machine id, `r_` + 12 random alphanumerics. Either way the value is persisted in a state
//! file and read back from there first.
//!
//! Several agents may run on one machine (each with its own state dir or config file); each
//! must be its own runner manager in GitLab, so a derived id is salted with what tells the
//! agents apart ([`Salt`]): HMAC over `"gitlab-runner"` + NUL + the salt. An id that
//! gitlab-runner itself persisted is kept as is.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

/// Length of the part after `s_`/`r_`.
const ID_LEN: usize = 12;

/// Where the machine id is looked up, in order (as gitlab-runner's machineid package does).
const MACHINE_ID_FILES: &[&str] = &["/var/lib/dbus/machine-id", "/etc/machine-id"];

/// Errors loading or persisting the system id.
#[derive(Debug, thiserror::Error)]
pub enum SystemIdError {
    #[error("read system id state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write system id state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `true` when `id` is `s_`/`r_` followed by 12 ASCII alphanumerics (the format GitLab and
/// gitlab-runner accept: `^[sr]_[0-9a-zA-Z]{12}$`).
pub fn is_valid(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("s_").or_else(|| id.strip_prefix("r_")) else {
        return false;
    };
    rest.len() == ID_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// What makes one agent's derived id distinct from another agent's on the same machine.
#[derive(Debug, Clone, Copy)]
pub enum Salt<'a> {
    /// Fleet mode: the agent's state dir (absolute). A persisted id equal to the unsalted
    /// machine derivation (written by an earlier version, shared by every agent of the
    /// machine) is replaced.
    StateDir(&'a Path),
    /// Standalone mode: the config file (absolute). A persisted id is always kept: it may be
    /// gitlab-runner's own `.runner_system_id`.
    ConfigFile(&'a Path),
}

impl Salt<'_> {
    fn bytes(&self) -> Vec<u8> {
        let p = match self {
            Salt::StateDir(p) | Salt::ConfigFile(p) => p,
        };
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        abs.as_os_str().as_encoded_bytes().to_vec()
    }
}

/// Reads the system id from `state_file`; when the file is missing or does not hold a valid
/// id, derives one (machine id salted with `salt`, else random) and writes it there (mode
/// 0600, parent dirs created).
pub fn load_or_create(state_file: &Path, salt: Salt<'_>) -> Result<String, SystemIdError> {
    load_or_create_with(state_file, read_machine_id(), salt)
}

fn load_or_create_with(
    state_file: &Path,
    machine_id: Option<String>,
    salt: Salt<'_>,
) -> Result<String, SystemIdError> {
    match std::fs::read_to_string(state_file) {
        Ok(content) => {
            let id = content.trim();
            let shared = matches!(salt, Salt::StateDir(_))
                && machine_id
                    .as_deref()
                    .is_some_and(|m| from_machine_id(m) == id);
            if is_valid(id) && !shared {
                return Ok(id.to_owned());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SystemIdError::Read {
                path: state_file.to_owned(),
                source,
            });
        }
    }
    let id = match machine_id {
        Some(mid) => salted(&mid, &salt.bytes()),
        None => random_id(),
    };
    persist(state_file, &id)?;
    Ok(id)
}

/// `s_` + 12 hex of HMAC-SHA256(key = machine id, "gitlab-runner").
pub fn from_machine_id(machine_id: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(machine_id.as_bytes()) else {
        // HMAC accepts keys of any length; this branch cannot be taken.
        return random_id();
    };
    mac.update(b"gitlab-runner");
    let digest = hex::encode(mac.finalize().into_bytes());
    format!("s_{}", &digest[..ID_LEN])
}

/// `s_` + 12 hex of HMAC-SHA256(key = machine id, "gitlab-runner" NUL `salt`).
pub fn salted(machine_id: &str, salt: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(machine_id.as_bytes()) else {
        return random_id();
    };
    mac.update(b"gitlab-runner\0");
    mac.update(salt);
    let digest = hex::encode(mac.finalize().into_bytes());
    format!("s_{}", &digest[..ID_LEN])
}

/// `r_` + 12 random ASCII alphanumerics.
pub fn random_id() -> String {
    const CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let rest: String = (0..ID_LEN)
        .map(|_| CHARSET[rng.random_range(0..CHARSET.len())] as char)
        .collect();
    format!("r_{rest}")
}

fn read_machine_id() -> Option<String> {
    MACHINE_ID_FILES.iter().find_map(|path| {
        let id = std::fs::read_to_string(path).ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_owned())
    })
}

fn persist(state_file: &Path, id: &str) -> Result<(), SystemIdError> {
    let write_err = |source| SystemIdError::Write {
        path: state_file.to_owned(),
        source,
    };
    if let Some(dir) = state_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    drover_runtime::atomic_file::write(state_file, id.as_bytes(), 0o600).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_check() {
        assert!(is_valid("s_0123456789ab"));
        assert!(is_valid("r_AbCdEf012345"));
        assert!(!is_valid("s_0123456789a"));
        assert!(!is_valid("s_0123456789abc"));
        assert!(!is_valid("x_0123456789ab"));
        assert!(!is_valid("s_01234567-9ab"));
        assert!(!is_valid("s-0123456789ab"));
        assert!(!is_valid(""));
    }

    #[test]
    fn machine_id_derivation_is_stable_hex() {
        let a = from_machine_id("4c4c4544004e3510804bb4c04f4d3332");
        assert_eq!(a, from_machine_id("4c4c4544004e3510804bb4c04f4d3332"));
        assert_ne!(a, from_machine_id("other"));
        assert!(is_valid(&a));
        assert!(
            a[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // HMAC-SHA256(key="machine", msg="gitlab-runner"), first 12 hex, computed independently.
        assert_eq!(
            from_machine_id("machine"),
            format!("s_{}", &hmac_hex("machine")[..12])
        );
    }

    fn hmac_hex(key: &str) -> String {
        // Plain RFC 2104 over sha2, to check the hmac crate use above.
        use sha2::Digest;
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key.as_bytes());
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(b"gitlab-runner")
            .finalize();
        hex::encode(
            Sha256::new()
                .chain_update(&opad)
                .chain_update(inner)
                .finalize(),
        )
    }

    #[test]
    fn random_ids_are_valid_and_differ() {
        let a = random_id();
        assert!(is_valid(&a) && a.starts_with("r_"), "{a}");
        assert_ne!(a, random_id());
    }

    #[test]
    fn load_or_create_persists_and_reuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state/.runner_system_id");
        let first = load_or_create_with(&file, None, Salt::StateDir(dir.path())).expect("create");
        assert!(first.starts_with("r_"));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), first);
        // A later call returns the persisted id even when a machine id appears.
        let again = load_or_create_with(&file, Some("mid".into()), Salt::StateDir(dir.path()))
            .expect("load");
        assert_eq!(again, first);
    }

    #[test]
    fn invalid_state_file_content_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sid");
        std::fs::write(&file, "garbage\n").expect("write");
        let salt = Salt::ConfigFile(Path::new("/etc/gitlab-runner/config.toml"));
        let id = load_or_create_with(&file, Some("mid".into()), salt).expect("create");
        assert_eq!(id, salted("mid", b"/etc/gitlab-runner/config.toml"));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), id);
    }

    #[test]
    fn unreadable_state_path_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: reading fails with something other than
        // NotFound.
        let err = load_or_create_with(dir.path(), None, Salt::StateDir(dir.path()))
            .expect_err("must fail");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn agents_on_one_machine_get_distinct_stable_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("agent-a"), dir.path().join("agent-b"));
        let id_a =
            load_or_create_with(&a.join("system_id"), Some("mid".into()), Salt::StateDir(&a))
                .expect("a");
        let id_b =
            load_or_create_with(&b.join("system_id"), Some("mid".into()), Salt::StateDir(&b))
                .expect("b");
        assert_ne!(id_a, id_b);
        assert!(is_valid(&id_a) && id_a.starts_with("s_"), "{id_a}");
        // Stable: a fresh derivation (file lost) gives the same id again.
        std::fs::remove_file(a.join("system_id")).expect("remove");
        let again =
            load_or_create_with(&a.join("system_id"), Some("mid".into()), Salt::StateDir(&a))
                .expect("again");
        assert_eq!(again, id_a);
        // Standalone: per config file.
        let c1 = salted("mid", b"/etc/a/config.toml");
        assert_ne!(c1, salted("mid", b"/etc/b/config.toml"));
        assert_ne!(c1, from_machine_id("mid"));
    }

    #[test]
    fn fleet_replaces_the_shared_unsalted_id_but_standalone_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("system_id");
        std::fs::write(&file, from_machine_id("mid")).expect("write");
        let fleet = load_or_create_with(&file, Some("mid".into()), Salt::StateDir(dir.path()))
            .expect("fleet");
        assert_ne!(fleet, from_machine_id("mid"));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), fleet);
        // gitlab-runner's own `.runner_system_id` (unsalted) is kept in standalone mode.
        std::fs::write(&file, from_machine_id("mid")).expect("write");
        let cfg = dir.path().join("config.toml");
        let kept = load_or_create_with(&file, Some("mid".into()), Salt::ConfigFile(&cfg))
            .expect("standalone");
        assert_eq!(kept, from_machine_id("mid"));
    }
}
