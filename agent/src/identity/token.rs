//! The agent's view of an enrollment token `drover1.<id>.<secret>.<ca-sha256-hex>`:
//! it needs only the CA fingerprint to pin the controller; the rest is sent as is.

/// The parts of a token the agent uses.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenPin {
    /// Public token id (for messages).
    pub id: String,
    /// SHA-256 of the controller CA certificate, lower-case hex.
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for TokenPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPin")
            .field("id", &self.id)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

/// Reads the token's id and CA fingerprint; refuses anything not shaped like a token.
pub fn parse(token: &str) -> Result<TokenPin, String> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [prefix, id, secret, fp] = parts.as_slice() else {
        return Err(
            "malformed enrollment token: expected drover1.<id>.<secret>.<ca-sha256>".into(),
        );
    };
    if *prefix != "drover1" {
        return Err(format!(
            "malformed enrollment token: unknown version {prefix:?}"
        ));
    }
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("malformed enrollment token: id is not 16 hex characters".into());
    }
    if secret.len() < 32 {
        return Err("malformed enrollment token: secret is too short".into());
    }
    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("malformed enrollment token: CA fingerprint is not 64 hex characters".into());
    }
    Ok(TokenPin {
        id: (*id).to_string(),
        ca_fingerprint: fp.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let fp = "AB".repeat(32);
        let t = format!("drover1.0011223344556677.{}.{fp}", "x".repeat(43));
        let p = parse(&t).unwrap();
        assert_eq!(p.ca_fingerprint, "ab".repeat(32));
        assert!(!format!("{p:?}").contains("xxxx"));
        assert!(parse("garbage").is_err());
        assert!(parse(&format!("drover1.0011223344556677.short.{fp}")).is_err());
        assert!(parse(&format!("drover1.0011223344556677.{}.abc", "x".repeat(43))).is_err());
    }
}
