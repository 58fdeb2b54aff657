//! Secrets: random tokens, their stored hashes, constant-time checks, and a redacting wrapper.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A fresh random token: `prefix` + 64 hex digits (256 bits from the thread's CSPRNG: ChaCha
/// seeded and periodically reseeded from the OS, without a system call per token).
pub fn generate(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    Secret(format!("{prefix}{}", hex::encode(bytes)))
}

/// The stored form of a token: hex SHA-256.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks `presented` against a stored hash in constant time (over the hash).
pub fn verify_hash(presented: &str, stored_hash: &str) -> bool {
    let h = hash(presented);
    h.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Compares two secrets in constant time (over their hashes, so lengths do not leak).
pub fn equals(presented: &str, expected: &str) -> bool {
    verify_hash(presented, &hash(expected))
}

/// A secret's SHA-256, computed once, to check presented tokens against without hashing the
/// expected one again on every request ([`TokenDigest::matches`]).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `secret`.
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `presented` is the secret: compares the SHA-256 of `presented` with the stored
    /// digest in constant time (neither the secret's length nor a matching prefix leaks).
    pub fn matches(&self, presented: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        h.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_verify() {
        let a = generate("gna_");
        let b = generate("gna_");
        assert_ne!(a, b);
        assert!(a.expose().starts_with("gna_"));
        assert_eq!(a.expose().len(), 4 + 64);
        let h = hash(a.expose());
        assert!(verify_hash(a.expose(), &h));
        assert!(!verify_hash(b.expose(), &h));
        assert!(!verify_hash("", &h));
        assert!(equals("x", "x"));
        assert!(!equals("x", "y"));
        let d = TokenDigest::of(a.expose());
        assert!(d.matches(a.expose()));
        assert!(!d.matches(b.expose()));
        assert!(!d.matches(""));
        assert!(!d.matches(&a.expose()[..10]));
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
    }
}
