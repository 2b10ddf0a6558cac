//! The upgrade signing key: Ed25519, derived from the controller's secrets key (HMAC-SHA256
//! of a fixed label), so it is sealed wherever that key is (the data dir's `secrets.key`,
//! or with PostgreSQL replicas the key they share in the database, sealed under the
//! key-encryption key) and every replica signs with the same key. It signs the raw SHA-256
//! of each agent binary; agents pin its public key (enrollment, or the first Welcome).

use ring::signature::{Ed25519KeyPair, KeyPair};

/// Label the seed is derived under; a new label is a new key.
const LABEL: &[u8] = b"drover upgrade signing key v1";

/// The signing key. `Debug` shows the public key only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", hex::encode(self.public_key()))
    }
}

impl SigningKey {
    /// The key derived from the secrets key `master`.
    pub fn derive(master: &[u8; 32]) -> SigningKey {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master),
            LABEL,
        );
        // An HMAC-SHA256 tag is 32 bytes, a valid seed.
        let pair = Ed25519KeyPair::from_seed_unchecked(tag.as_ref())
            .unwrap_or_else(|_| unreachable!("a 32-byte seed is always accepted"));
        SigningKey { pair }
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The signature of a binary's raw SHA-256.
    pub fn sign(&self, sha256: &[u8; 32]) -> Vec<u8> {
        self.pair.sign(sha256).as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ED25519, UnparsedPublicKey};

    /// Whether `signature` is `public_key`'s over `sha256` (as agents check it).
    fn verify(public_key: &[u8], sha256: &[u8; 32], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(sha256, signature)
            .is_ok()
    }

    #[test]
    fn one_master_key_one_signing_key_and_signatures_verify() {
        let a = SigningKey::derive(&[1; 32]);
        let again = SigningKey::derive(&[1; 32]);
        let other = SigningKey::derive(&[2; 32]);
        assert_eq!(a.public_key(), again.public_key());
        assert_ne!(a.public_key(), other.public_key());
        assert_eq!(a.public_key().len(), 32);
        let sha = [9u8; 32];
        let sig = a.sign(&sha);
        assert!(verify(&a.public_key(), &sha, &sig));
        assert!(!verify(&other.public_key(), &sha, &sig));
        assert!(!verify(&a.public_key(), &[8u8; 32], &sig));
        assert!(!format!("{a:?}").is_empty());
    }
}
