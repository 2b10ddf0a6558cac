//! Who may read the status page and `/metrics`: anyone on loopback; beyond loopback only
//! a caller with the token (`Authorization: Bearer TOKEN` or `?token=TOKEN`) or the basic
//! auth credentials configured at start.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

/// How HTTP callers are checked.
#[derive(Clone, Default)]
pub enum HttpAuth {
    /// Everyone may read (only allowed on a loopback address).
    #[default]
    Open,
    /// `Authorization: Bearer TOKEN` or `?token=TOKEN`.
    Token(SecretString),
    /// `Authorization: Basic` with this user and password.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: SecretString,
    },
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::Open => f.write_str("Open"),
            HttpAuth::Token(_) => f.write_str("Token(<redacted>)"),
            HttpAuth::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
        }
    }
}

/// Why the HTTP listener may not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpAuthError {
    /// Beyond loopback without protection.
    #[error(
        "--http-listen {0} is not a loopback address: set --http-token (or DROVER_HTTP_TOKEN) or --http-basic-auth USER:PASSWORD so the status page and /metrics are not open to the network"
    )]
    Unprotected(SocketAddr),
    /// A malformed `user:password`.
    #[error("--http-basic-auth: expected USER:PASSWORD with a non-empty user and password")]
    BadBasic,
}

impl HttpAuth {
    /// `USER:PASSWORD` as basic auth.
    pub fn basic(spec: &str) -> Result<HttpAuth, HttpAuthError> {
        match spec.trim_end_matches(['\n', '\r']).split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(HttpAuth::Basic {
                user: u.to_string(),
                password: SecretString::from(p.to_string()),
            }),
            _ => Err(HttpAuthError::BadBasic),
        }
    }

    /// Refuses an open listener beyond loopback.
    pub fn check_listener(&self, addr: SocketAddr) -> Result<(), HttpAuthError> {
        match self {
            HttpAuth::Open if !addr.ip().is_loopback() => Err(HttpAuthError::Unprotected(addr)),
            _ => Ok(()),
        }
    }

    /// Whether a request with `headers` and the `?token=` value `query_token` may read.
    pub fn allows(&self, headers: &HeaderMap, query_token: Option<&str>) -> bool {
        let auth = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match self {
            HttpAuth::Open => true,
            HttpAuth::Token(t) => {
                let want = t.expose_secret().as_bytes();
                auth.strip_prefix("Bearer ")
                    .is_some_and(|got| ct_eq(got.trim().as_bytes(), want))
                    || query_token.is_some_and(|got| ct_eq(got.as_bytes(), want))
            }
            HttpAuth::Basic { user, password } => {
                let Some(b64) = auth.strip_prefix("Basic ") else {
                    return false;
                };
                let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
                    return false;
                };
                let want = format!("{user}:{}", password.expose_secret());
                ct_eq(&raw, want.as_bytes())
            }
        }
    }

    /// The `WWW-Authenticate` challenge for a refused request.
    pub fn challenge(&self) -> &'static str {
        match self {
            HttpAuth::Basic { .. } => "Basic realm=\"drover\", charset=\"UTF-8\"",
            _ => "Bearer realm=\"drover\"",
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn open_only_on_loopback() {
        let open = HttpAuth::Open;
        assert!(
            open.check_listener("127.0.0.1:7080".parse().unwrap())
                .is_ok()
        );
        assert!(open.check_listener("[::1]:7080".parse().unwrap()).is_ok());
        let err = open
            .check_listener("0.0.0.0:7080".parse().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("--http-token"), "{err}");
        let token = HttpAuth::Token(SecretString::from("s3cret".to_string()));
        assert!(
            token
                .check_listener("0.0.0.0:7080".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn token_in_header_or_query() {
        let a = HttpAuth::Token(SecretString::from("s3cret".to_string()));
        assert!(a.allows(&headers("Bearer s3cret"), None));
        assert!(a.allows(&HeaderMap::new(), Some("s3cret")));
        assert!(!a.allows(&headers("Bearer s3cre"), None));
        assert!(!a.allows(&headers("Bearer s3cret2"), None));
        assert!(!a.allows(&HeaderMap::new(), None));
        assert!(!a.allows(&HeaderMap::new(), Some("")));
        assert!(!a.allows(&headers("Basic czNjcmV0"), None));
    }

    #[test]
    fn basic_auth() {
        let a = HttpAuth::basic("ops:pa:ss\n").unwrap();
        let good = base64::engine::general_purpose::STANDARD.encode("ops:pa:ss");
        let bad = base64::engine::general_purpose::STANDARD.encode("ops:nope");
        assert!(a.allows(&headers(&format!("Basic {good}")), None));
        assert!(!a.allows(&headers(&format!("Basic {bad}")), None));
        assert!(!a.allows(&headers("Basic !!!"), None));
        assert!(!a.allows(&HeaderMap::new(), Some("ops:pa:ss")));
        assert_eq!(
            HttpAuth::basic("nopass").unwrap_err(),
            HttpAuthError::BadBasic
        );
        assert_eq!(HttpAuth::basic(":x").unwrap_err(), HttpAuthError::BadBasic);
        assert!(!format!("{a:?}").contains("pa:ss"));
    }
}
