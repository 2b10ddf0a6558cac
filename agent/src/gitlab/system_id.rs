//! The runner `system_id`: a stable per-machine identifier GitLab uses to tell runner
//! managers apart (`POST /runners/verify`, `POST /jobs/request`).
//!
//! Same format and derivation as gitlab-runner, so a box that moves from gitlab-runner to
//! Drover keeps its runner manager entry: `s_` + the first 12 hex characters of
//! HMAC-SHA256(key = machine id, message = `"gitlab-runner"`), or, when the machine has no
//! machine id, `r_` + 12 random alphanumerics. Either way the value is persisted in a state
//! file and read back from there first.

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

/// Reads the system id from `state_file`; when the file is missing or does not hold a valid
/// id, derives one (machine id, else random) and writes it there (mode 0600, parent dirs
/// created).
pub fn load_or_create(state_file: &Path) -> Result<String, SystemIdError> {
    load_or_create_with(state_file, read_machine_id())
}

fn load_or_create_with(
    state_file: &Path,
    machine_id: Option<String>,
) -> Result<String, SystemIdError> {
    match std::fs::read_to_string(state_file) {
        Ok(content) => {
            let id = content.trim();
            if is_valid(id) {
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
        Some(mid) => from_machine_id(&mid),
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
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut file = opts.open(state_file).map_err(write_err)?;
    file.write_all(id.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)
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
        let first = load_or_create_with(&file, None).expect("create");
        assert!(first.starts_with("r_"));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), first);
        // A later call returns the persisted id even when a machine id appears.
        let again = load_or_create_with(&file, Some("mid".into())).expect("load");
        assert_eq!(again, first);
    }

    #[test]
    fn invalid_state_file_content_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sid");
        std::fs::write(&file, "garbage\n").expect("write");
        let id = load_or_create_with(&file, Some("mid".into())).expect("create");
        assert_eq!(id, from_machine_id("mid"));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), id);
    }

    #[test]
    fn unreadable_state_path_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: reading fails with something other than
        // NotFound.
        let err = load_or_create_with(dir.path(), None).expect_err("must fail");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
