//! `--database postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=..&sslrootcert=FILE]`:
//! parsed, with its TLS settings, and shown with the password redacted.

use std::path::PathBuf;
use std::str::FromStr;

use postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{self, TlsMode};

/// Why a database URL was refused (shown after the redacted URL).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a `postgres://` or `postgresql://` URL.
    #[error("expected postgres://USER@HOST:PORT/DB")]
    Scheme,
    /// An `sslmode` libpq has but this build does not, or a misspelt one.
    #[error("sslmode {0:?}: expected disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    /// `verify-ca` or `verify-full` without the CA to verify against.
    #[error("sslmode={0} needs sslrootcert=FILE (the CA that signed the server's certificate)")]
    NoRootCert(&'static str),
    /// The `sslrootcert` file.
    #[error("sslrootcert {path}: {detail}")]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The rest of the URL, as the PostgreSQL client parses it.
    #[error("{0}")]
    Invalid(String),
}

/// A parsed `--database` URL.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    redacted: String,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl DatabaseUrl {
    /// Parses `url`, reading `sslrootcert` when given. Nothing connects yet.
    pub fn parse(url: &str) -> Result<DatabaseUrl, UrlError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(UrlError::Scheme);
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = "prefer".to_string();
        let mut root_cert = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = v.to_string(),
                Some(("sslrootcert", v)) => root_cert = Some(PathBuf::from(v)),
                _ => rest.push(pair),
            }
        }
        let mode = match mode.as_str() {
            "disable" => TlsMode::Disable,
            "prefer" | "allow" => TlsMode::Prefer,
            "require" if root_cert.is_some() => TlsMode::VerifyCa,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => return Err(UrlError::SslMode(other.to_string())),
        };
        let roots = match (&root_cert, mode) {
            (Some(path), _) => Some(tls::read_roots(path)?),
            (None, TlsMode::VerifyCa) => return Err(UrlError::NoRootCert("verify-ca")),
            (None, TlsMode::VerifyFull) => return Err(UrlError::NoRootCert("verify-full")),
            (None, _) => None,
        };
        let stripped = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config = postgres::Config::from_str(&stripped)
            .map_err(|e| UrlError::Invalid(redact_text(&e.to_string(), url)))?;
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("drover");
        }
        Ok(DatabaseUrl {
            config,
            tls: tls::connector(mode, roots),
            redacted: redact(url),
        })
    }

    /// The URL with its password replaced by `***` (for logs and errors).
    pub fn redacted(&self) -> String {
        self.redacted.clone()
    }

    pub(super) fn config(&self) -> &postgres::Config {
        &self.config
    }

    pub(super) fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }
}

/// `url` with the password of its user info and any `password=` parameter as `***`.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, after)) => {
            let end = after.find('/').unwrap_or(after.len());
            let (authority, path) = after.split_at(end);
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => match user.split_once(':') {
                    Some((name, _)) => format!("{name}:***@{host}"),
                    None => authority.to_string(),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_string(),
    };
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// `text` (a parser's message) without the password of `url`, should it quote it.
fn redact_text(text: &str, url: &str) -> String {
    match password_of(url) {
        Some(p) if !p.is_empty() => text.replace(p, "***"),
        _ => text.to_string(),
    }
}

fn password_of(url: &str) -> Option<&str> {
    let after = url.split_once("://")?.1;
    let authority = &after[..after.find(['/', '?']).unwrap_or(after.len())];
    let user = authority.rsplit_once('@')?.0;
    Some(user.split_once(':')?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password() {
        assert_eq!(
            redact("postgres://drover:s3cret@db:5432/drover?sslmode=require&password=x"),
            "postgres://drover:***@db:5432/drover?sslmode=require&password=***"
        );
        assert_eq!(redact("postgres://drover@db/d"), "postgres://drover@db/d");
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(matches!(
            DatabaseUrl::parse("mysql://u@h/d"),
            Err(UrlError::Scheme)
        ));
        assert!(matches!(
            DatabaseUrl::parse("postgres://u@h/d?sslmode=verify-full"),
            Err(UrlError::NoRootCert("verify-full"))
        ));
        assert!(matches!(
            DatabaseUrl::parse("postgres://u@h/d?sslmode=sometimes"),
            Err(UrlError::SslMode(_))
        ));
        let e = DatabaseUrl::parse("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent")
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent"), "{e}");
        let e = DatabaseUrl::parse("postgres://u:hunter2@h:notaport/d").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn parses_a_plain_url() {
        let u = DatabaseUrl::parse("postgresql://u:pw@127.0.0.1:5433/drover").unwrap();
        assert_eq!(u.config().get_ports(), [5433]);
        assert_eq!(u.config().get_dbname(), Some("drover"));
        assert_eq!(u.redacted(), "postgresql://u:***@127.0.0.1:5433/drover");
    }
}
