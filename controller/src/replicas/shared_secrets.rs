//! The secrets every replica needs, kept in the database: the CA (certificate and key),
//! the secrets key sealing runner tokens and specs, and a check value, each sealed under
//! the key-encryption key (KEK) in `--secrets-key-file` (default `DATA_DIR/kek.key`).
//!
//! The first replica on a database creates the KEK file (0600, only when the database holds
//! no shared secrets yet) and stores the secrets: those of its data dir when it has them
//! (a controller of the one-per-database build becoming the first replica keeps its CA, so
//! enrolled agents keep trusting it, and its secrets key, so stored tokens still open),
//! else new ones. Every later replica opens them with its KEK; a different KEK, or a
//! missing KEK file, is refused before anything is written, naming the file.
//!
//! The CA key lives in the replicas' memory and, sealed, in the database: never in a data
//! dir, a log or a message. A replica's data dir holds only `ca.crt`, its admin
//! certificate (issued from the shared CA) and its addresses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;

use crate::pki::PkiError;
use crate::pki::ca::Ca;
use crate::secrets::{Sealer, SecretsError};
use crate::store::StoreError;

/// The rows of `drover_secrets`: (name, sealing purpose).
const CHECK: (&str, &str) = ("kek-check", "drover key-encryption key check");
const CA_CERT: (&str, &str) = ("ca.crt", "drover shared ca certificate");
const CA_KEY: (&str, &str) = ("ca.key", "drover shared ca key");
const SECRETS_KEY: (&str, &str) = ("secrets.key", "drover shared secrets key");
/// What [`CHECK`] seals.
const CHECK_TEXT: &[u8] = b"drover key-encryption key v1";

/// The shared-secrets seam (PostgreSQL: `store/postgres/replicas.rs`).
pub trait Vault: Send + Sync {
    /// Every stored row (sealed values).
    fn read_secrets(&self) -> Result<BTreeMap<String, Vec<u8>>, StoreError>;
    /// Stores `rows` when no row exists yet (one transaction, serialised between
    /// replicas); returns the rows stored afterwards, this call's or an earlier one's.
    fn insert_missing(
        &self,
        rows: &BTreeMap<String, Vec<u8>>,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError>;
}

/// Why the shared secrets could not be opened. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum SharedSecretsError {
    /// The database holds secrets but this replica has no KEK file.
    #[error(
        "secrets key file {} does not exist, and database {database} already holds secrets sealed by another replica: copy that replica's --secrets-key-file here (every replica is given the same file); nothing was changed",
        path.display()
    )]
    KekMissing {
        /// The KEK file.
        path: PathBuf,
        /// The database (password redacted).
        database: String,
    },
    /// The KEK does not open the database's secrets.
    #[error(
        "secrets key file {} does not open the secrets in database {database}: it is not the key the other replicas were given (every replica needs the same --secrets-key-file); nothing was changed",
        path.display()
    )]
    WrongKek {
        /// The KEK file.
        path: PathBuf,
        /// The database (password redacted).
        database: String,
    },
    /// The KEK file could not be read or created.
    #[error(transparent)]
    Kek(#[from] SecretsError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA in the database or the data dir did not load.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A row is missing or does not decode under a KEK that passed the check.
    #[error("shared secret {0} in the database is missing or corrupt")]
    Corrupt(&'static str),
    /// A data dir file could not be read.
    #[error("read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the replicas share, opened.
#[derive(Debug)]
pub struct Shared {
    /// The CA.
    pub ca: Ca,
    /// The secrets key.
    pub sealer: Sealer,
    /// Whether this call stored them (the first replica).
    pub created: bool,
}

/// Opens the shared secrets of `vault` with the KEK at `kek_path`, storing them first
/// when the database has none (from `data_dir` when it holds a CA and a secrets key).
/// `database` names the database in errors.
pub fn open(
    vault: &dyn Vault,
    kek_path: &Path,
    data_dir: &Path,
    database: &str,
) -> Result<Shared, SharedSecretsError> {
    let found = vault.read_secrets()?;
    if !found.is_empty() {
        if !kek_path.exists() {
            return Err(SharedSecretsError::KekMissing {
                path: kek_path.to_path_buf(),
                database: database.to_string(),
            });
        }
        let kek = Sealer::load(kek_path)?;
        return unseal(&found, &kek, kek_path, database, false);
    }
    let kek = Sealer::load_or_create(kek_path)?;
    let (ca, key) = initial(data_dir)?;
    let mut rows = BTreeMap::new();
    rows.insert(CHECK.0.to_string(), kek.seal(CHECK.1, CHECK_TEXT));
    rows.insert(
        CA_CERT.0.to_string(),
        kek.seal(CA_CERT.1, ca.cert_pem().as_bytes()),
    );
    rows.insert(
        CA_KEY.0.to_string(),
        kek.seal(CA_KEY.1, ca.key_pem().expose_secret().as_bytes()),
    );
    rows.insert(SECRETS_KEY.0.to_string(), kek.seal(SECRETS_KEY.1, &key));
    let stored = vault.insert_missing(&rows)?;
    // Another replica may have stored its own first: what is stored wins.
    let created = stored == rows;
    unseal(&stored, &kek, kek_path, database, created)
}

fn unseal(
    rows: &BTreeMap<String, Vec<u8>>,
    kek: &Sealer,
    kek_path: &Path,
    database: &str,
    created: bool,
) -> Result<Shared, SharedSecretsError> {
    let get = |(name, purpose): (&'static str, &'static str)| {
        let sealed = rows.get(name).ok_or(SharedSecretsError::Corrupt(name))?;
        kek.open(purpose, sealed)
            .map_err(|_| SharedSecretsError::Corrupt(name))
    };
    let check = rows
        .get(CHECK.0)
        .ok_or(SharedSecretsError::Corrupt(CHECK.0))?;
    if kek.open(CHECK.1, check).ok().as_deref() != Some(CHECK_TEXT) {
        return Err(SharedSecretsError::WrongKek {
            path: kek_path.to_path_buf(),
            database: database.to_string(),
        });
    }
    let text =
        |b: Vec<u8>, name| String::from_utf8(b).map_err(|_| SharedSecretsError::Corrupt(name));
    let cert = text(get(CA_CERT)?, CA_CERT.0)?;
    let key = secrecy::SecretString::from(text(get(CA_KEY)?, CA_KEY.0)?);
    let ca = Ca::from_pem(&cert, key.expose_secret())?;
    let secrets: [u8; 32] = get(SECRETS_KEY)?
        .as_slice()
        .try_into()
        .map_err(|_| SharedSecretsError::Corrupt(SECRETS_KEY.0))?;
    Ok(Shared {
        ca,
        sealer: Sealer::from_key(secrets),
        created,
    })
}

/// The first replica's CA and secrets key: its data dir's when it holds them (a
/// controller of the earlier build), else new ones.
fn initial(data_dir: &Path) -> Result<(Ca, [u8; 32]), SharedSecretsError> {
    use crate::pki::ca::{CA_CERT_FILE, CA_KEY_FILE};
    let (cert_path, key_path) = (data_dir.join(CA_CERT_FILE), data_dir.join(CA_KEY_FILE));
    let ca = if cert_path.exists() && key_path.exists() {
        tracing::info!(data_dir = %data_dir.display(), "storing this data dir's CA as the replicas' shared CA");
        Ca::load_or_create(data_dir)?
    } else {
        Ca::generate()?
    };
    let secrets_path = data_dir.join("secrets.key");
    let key = match std::fs::read(&secrets_path) {
        Ok(bytes) => {
            tracing::info!(file = %secrets_path.display(), "storing this data dir's secrets key as the replicas' shared one");
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretsError::BadKey {
                    path: secrets_path.clone(),
                    len: bytes.len(),
                })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => rand::random::<[u8; 32]>(),
        Err(source) => {
            return Err(SharedSecretsError::Io {
                path: secrets_path,
                source,
            });
        }
    };
    Ok((ca, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeVault(Mutex<BTreeMap<String, Vec<u8>>>);

    impl Vault for FakeVault {
        fn read_secrets(&self) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn insert_missing(
            &self,
            rows: &BTreeMap<String, Vec<u8>>,
        ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
            let mut g = self.0.lock().unwrap();
            if g.is_empty() {
                *g = rows.clone();
            }
            Ok(g.clone())
        }
    }

    #[test]
    fn the_first_replica_stores_and_the_next_opens_with_the_same_key() {
        use std::os::unix::fs::PermissionsExt;
        let vault = FakeVault::default();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let kek = a.path().join("kek.key");
        let first = open(&vault, &kek, a.path(), "db").unwrap();
        assert!(first.created);
        let mode = std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            vault
                .0
                .lock()
                .unwrap()
                .values()
                .all(|v| !v.windows(10).any(|w| w == b"BEGIN PRIV")),
            "the CA key is stored sealed"
        );
        // Another replica with a copy of the KEK: the same CA and secrets key.
        let copy = b.path().join("kek.key");
        std::fs::copy(&kek, &copy).unwrap();
        let second = open(&vault, &copy, b.path(), "db").unwrap();
        assert!(!second.created);
        assert_eq!(first.ca.fingerprint(), second.ca.fingerprint());
        let sealed = first.sealer.seal("x", b"token");
        assert_eq!(second.sealer.open("x", &sealed).unwrap(), b"token");
        assert!(!b.path().join("ca.key").exists(), "no CA key in a data dir");
    }

    #[test]
    fn a_different_or_missing_key_is_refused_and_nothing_is_written() {
        let vault = FakeVault::default();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        open(&vault, &a.path().join("kek.key"), a.path(), "db").unwrap();
        let before = vault.0.lock().unwrap().clone();
        let missing = b.path().join("kek.key");
        let err = open(&vault, &missing, b.path(), "postgres://x@db/d").unwrap_err();
        assert!(
            matches!(err, SharedSecretsError::KekMissing { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(
            !missing.exists(),
            "no key file is made for a database that has secrets"
        );
        std::fs::write(&missing, [9u8; 32]).unwrap();
        let err = open(&vault, &missing, b.path(), "postgres://x@db/d").unwrap_err();
        assert!(
            err.to_string()
                .contains("does not open the secrets in database postgres://x@db/d"),
            "{err}"
        );
        assert_eq!(*vault.0.lock().unwrap(), before);
        assert_eq!(std::fs::read_dir(b.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_controller_of_the_earlier_build_keeps_its_ca_and_secrets_key() {
        let vault = FakeVault::default();
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let old = Sealer::load_or_create(&dir.path().join("secrets.key")).unwrap();
        let sealed = old.seal("t", b"glrt-old");
        let shared = open(&vault, &dir.path().join("kek.key"), dir.path(), "db").unwrap();
        assert_eq!(shared.ca.fingerprint(), ca.fingerprint());
        assert_eq!(shared.sealer.open("t", &sealed).unwrap(), b"glrt-old");
    }
}
