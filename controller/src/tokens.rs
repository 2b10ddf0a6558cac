//! Enrollment tokens.
//!
//! Format: `drover1.<id>.<secret>.<ca-sha256-hex>` where `id` is 16 hex characters (public,
//! shown by `drover token list`), `secret` is 32 random bytes in unpadded base64url, and the
//! last part is the SHA-256 of the controller CA certificate (DER), so an agent can pin the
//! CA with nothing but the token. The controller stores only SHA-256(secret).

use std::collections::BTreeMap;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// First part of every token; bumps when the format changes.
pub const PREFIX: &str = "drover1";
/// Default token lifetime.
pub const DEFAULT_TTL: Duration = Duration::hours(1);
/// Default number of enrollments a token allows.
pub const DEFAULT_USES: u32 = 1;

/// Why a string is not a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenFormatError {
    /// Wrong number of parts or wrong prefix.
    #[error("malformed enrollment token: expected drover1.<id>.<secret>.<ca-sha256>")]
    Shape,
    /// The id is not 16 lower-case hex characters.
    #[error("malformed enrollment token: id is not 16 hex characters")]
    Id,
    /// The secret is not 32 bytes of base64url.
    #[error("malformed enrollment token: secret is not 32 bytes of base64url")]
    Secret,
    /// The fingerprint is not 64 hex characters.
    #[error("malformed enrollment token: CA fingerprint is not 64 hex characters")]
    Fingerprint,
}

/// A parsed token. The secret stays a [`SecretString`].
#[derive(Debug)]
pub struct Token {
    /// Public id.
    pub id: String,
    /// The secret part; only its hash is ever stored.
    pub secret: SecretString,
    /// The CA fingerprint the token pins.
    pub ca_fingerprint: String,
}

impl Token {
    /// Parses `drover1.<id>.<secret>.<ca-sha256>`.
    pub fn parse(s: &str) -> Result<Token, TokenFormatError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [prefix, id, secret, fp] = parts.as_slice() else {
            return Err(TokenFormatError::Shape);
        };
        if *prefix != PREFIX {
            return Err(TokenFormatError::Shape);
        }
        if id.len() != 16
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TokenFormatError::Id);
        }
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret) {
            Ok(bytes) if bytes.len() == 32 => {}
            _ => return Err(TokenFormatError::Secret),
        }
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenFormatError::Fingerprint);
        }
        Ok(Token {
            id: (*id).to_string(),
            secret: SecretString::from((*secret).to_string()),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }

    /// SHA-256 of the secret: the only form the controller keeps.
    pub fn secret_hash(&self) -> [u8; 32] {
        hash_secret(self.secret.expose_secret())
    }
}

/// SHA-256 of a token secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new token for the CA with fingerprint `ca_fingerprint`: the full token text and its id.
pub fn generate(ca_fingerprint: &str) -> (SecretString, Token) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let text = format!("{PREFIX}.{id}.{secret}.{ca_fingerprint}");
    let token = Token {
        id,
        secret: SecretString::from(secret),
        ca_fingerprint: ca_fingerprint.to_string(),
    };
    (SecretString::from(text), token)
}

/// A token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Labels given to every agent enrolled with this token.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// After this instant it is refused.
    pub expires_at: OffsetDateTime,
    /// Enrollments still allowed.
    pub uses_left: u32,
    /// Revoked by `drover token revoke`.
    pub revoked: bool,
}

/// Why a well-formed token is refused at enrollment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No token with that id, or the secret does not match.
    #[error("enrollment token {0} is not known to this controller")]
    Unknown(String),
    /// Revoked by an admin.
    #[error("enrollment token {0} was revoked")]
    Revoked(String),
    /// Past its expiry.
    #[error("enrollment token {id} expired at {at}")]
    Expired {
        /// Token id.
        id: String,
        /// Expiry, RFC 3339.
        at: String,
    },
    /// No uses left.
    #[error("enrollment token {0} was already used")]
    UsedUp(String),
}

/// Decides whether `record` admits an enrollment presenting `secret_hash` at `now`.
pub fn check(
    record: &TokenRecord,
    secret_hash: &[u8; 32],
    now: OffsetDateTime,
) -> Result<(), TokenRefusal> {
    // Constant-time comparison: no early exit on the first differing byte.
    let diff = record
        .secret_hash
        .iter()
        .zip(secret_hash.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(TokenRefusal::Unknown(record.id.clone()));
    }
    if record.revoked {
        return Err(TokenRefusal::Revoked(record.id.clone()));
    }
    if now >= record.expires_at {
        return Err(TokenRefusal::Expired {
            id: record.id.clone(),
            at: crate::timefmt::rfc3339(record.expires_at),
        });
    }
    if record.uses_left == 0 {
        return Err(TokenRefusal::UsedUp(record.id.clone()));
    }
    Ok(())
}

/// The longest duration any flag or field accepts: 100 years (36500d). Every duration a
/// user gives is added to or subtracted from "now" somewhere; within this bound that never
/// leaves the range of a date, an `Instant` or a protobuf timestamp.
pub const MAX_DURATION: Duration = Duration::days(36_500);

/// Parses a duration like `90s`, `30m`, `1h`, `7d` or a plain number of seconds, at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must be a number followed by s, m, h or d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?} (use s, m, h or d)"
            ));
        }
    };
    if n <= 0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    match n.checked_mul(secs).map(Duration::seconds) {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("duration {s:?} is too long (at most 36500d)")),
    }
}

/// Parses a `key=value` label.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} must be key=value"))?;
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Checks a label key and value: the one rule, shared with `[runners.selector]` in specs.
pub use drover_proto::spec::validate_label;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hash: [u8; 32]) -> TokenRecord {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        TokenRecord {
            id: "0011223344556677".into(),
            secret_hash: hash,
            labels: BTreeMap::new(),
            created_at: now,
            expires_at: now + Duration::hours(1),
            uses_left: 1,
            revoked: false,
        }
    }

    #[test]
    fn generate_then_parse() {
        let (text, tok) = generate(&"ab".repeat(32));
        let parsed = Token::parse(text.expose_secret()).unwrap();
        assert_eq!(parsed.id, tok.id);
        assert_eq!(parsed.secret_hash(), tok.secret_hash());
        assert_eq!(parsed.ca_fingerprint, "ab".repeat(32));
        assert!(!format!("{parsed:?}").contains(tok.secret.expose_secret()));
    }

    #[test]
    fn malformed_tokens() {
        let fp = "ab".repeat(32);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        let cases = [
            ("", TokenFormatError::Shape),
            ("garbage", TokenFormatError::Shape),
            (
                &format!("drover2.0011223344556677.{secret}.{fp}"),
                TokenFormatError::Shape,
            ),
            (&format!("drover1.xyz.{secret}.{fp}"), TokenFormatError::Id),
            (
                &format!("drover1.0011223344556677.short.{fp}"),
                TokenFormatError::Secret,
            ),
            (
                &format!("drover1.0011223344556677.{secret}.abc"),
                TokenFormatError::Fingerprint,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Token::parse(input).unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn check_refusals() {
        let good = hash_secret("s");
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert!(check(&record(good), &good, now).is_ok());
        assert!(matches!(
            check(&record(good), &hash_secret("x"), now),
            Err(TokenRefusal::Unknown(_))
        ));
        let mut r = record(good);
        r.revoked = true;
        assert!(matches!(
            check(&r, &good, now),
            Err(TokenRefusal::Revoked(_))
        ));
        let r = record(good);
        assert!(matches!(
            check(&r, &good, now + Duration::hours(1)),
            Err(TokenRefusal::Expired { .. })
        ));
        let mut r = record(good);
        r.uses_left = 0;
        assert!(matches!(
            check(&r, &good, now),
            Err(TokenRefusal::UsedUp(_))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::seconds(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::hours(1));
        assert_eq!(parse_duration("2d").unwrap(), Duration::days(2));
        assert_eq!(parse_duration("15").unwrap(), Duration::seconds(15));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        for huge in [
            "36501d",
            "3000000d",
            "100000000d",
            "9223372036854775807",
            "99999999999999999999d",
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains(huge), "{e}");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(
            parse_label("site=lab").unwrap(),
            ("site".into(), "lab".into())
        );
        assert!(parse_label("nolabel").is_err());
        assert!(parse_label("=x").is_err());
        assert!(parse_label("a b=x").is_err());
    }
}
