//! Pool tokens: `gnp.<org>.<nonce>.<mac>`, an HMAC-SHA256 (the RustCrypto `hmac` and `sha2`
//! crates) over the org and a random nonce with a key derived from the admin token. The
//! orchestrator checks one without storing anything, so warm agents keep waiting across
//! orchestrator restarts; rotating the admin token revokes every pool token.
//!
//! A pool token lets its holder wait for a task of its org (and so receive that task's token
//! and secret settings), nothing else: no admin route, no other org, no task it was not handed.

use crate::names::OrgName;
use crate::token::Secret;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const PREFIX: &str = "gnp";
/// Hex length of the nonce (12 random bytes).
const NONCE_HEX: usize = 24;
/// Hex length of the MAC (32 bytes).
const MAC_HEX: usize = 64;

/// Mints and checks pool tokens.
#[derive(Clone)]
pub struct PoolKeys {
    /// The keyed HMAC state, cloned for each token (the key's pads are hashed once).
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for PoolKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolKeys(<redacted>)")
    }
}

impl PoolKeys {
    /// Keys derived from the admin token.
    pub fn from_admin_token(admin: &Secret) -> Self {
        let mut h = Sha256::new();
        h.update(b"guildnet pool token key v1\0");
        h.update(admin.expose().as_bytes());
        let key: [u8; 32] = h.finalize().into();
        Self::from_key(&key)
    }

    fn from_key(key: &[u8]) -> Self {
        Self {
            // HMAC takes a key of any length: this cannot fail.
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length"),
        }
    }

    /// The keyed MAC state after `<org>.<nonce>`.
    fn mac_of(&self, org: &str, nonce: &str) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(org.as_bytes());
        m.update(b".");
        m.update(nonce.as_bytes());
        m
    }

    /// A new pool token for `org`.
    pub fn mint(&self, org: &OrgName) -> Secret {
        let nonce = hex::encode(rand::random::<[u8; 12]>());
        let mac = self.mac_of(org.as_str(), &nonce).finalize().into_bytes();
        Secret::new(format!("{PREFIX}.{org}.{nonce}.{}", hex::encode(mac)))
    }

    /// The org a presented pool token is valid for (the MAC is checked in constant time by
    /// `hmac`'s `verify_slice`).
    pub fn verify(&self, presented: &str) -> Option<OrgName> {
        let mut parts = presented.split('.');
        let (p, org, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if p != PREFIX || parts.next().is_some() || nonce.len() != NONCE_HEX || mac.len() != MAC_HEX
        {
            return None;
        }
        let org = OrgName::new(org).ok()?;
        let tag = hex::decode(mac).ok()?;
        self.mac_of(org.as_str(), nonce)
            .verify_slice(&tag)
            .ok()
            .map(|()| org)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?" (fed to the
        // keyed state directly: a token's data is always `<org>.<nonce>`).
        let keys = PoolKeys::from_key(b"Jefe");
        let mut m = keys.mac.clone();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 4231 test case 1: a 20-byte key of 0x0b, "Hi There".
        let keys = PoolKeys::from_key(&[0x0b; 20]);
        let mut m = keys.mac.clone();
        m.update(b"Hi There");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn mac_covers_org_dot_nonce() {
        // The token's MAC is HMAC(key, "<org>.<nonce>"), checked against a one-shot HMAC.
        let keys = PoolKeys::from_key(&[7; 32]);
        let acme = OrgName::new("acme").unwrap();
        let tok = keys.mint(&acme);
        let parts: Vec<&str> = tok.expose().split('.').collect();
        assert_eq!(parts.len(), 4);
        let mut one_shot = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
        one_shot.update(format!("acme.{}", parts[2]).as_bytes());
        assert_eq!(parts[3], hex::encode(one_shot.finalize().into_bytes()));
    }

    #[test]
    fn tokens_verify_for_their_org_only() {
        let keys = PoolKeys::from_admin_token(&Secret::new("admin-1"));
        let acme = OrgName::new("acme").unwrap();
        let tok = keys.mint(&acme);
        assert!(tok.expose().starts_with("gnp.acme."));
        assert_eq!(keys.verify(tok.expose()), Some(acme.clone()));
        // Another org's name with the same nonce and MAC.
        let forged = tok.expose().replacen("gnp.acme.", "gnp.other.", 1);
        assert_eq!(keys.verify(&forged), None);
        // Another admin token: another key.
        let other = PoolKeys::from_admin_token(&Secret::new("admin-2"));
        assert_eq!(other.verify(tok.expose()), None);
        // A changed MAC, a changed nonce, non-hex MAC, a truncated token, garbage.
        let mut bad = tok.expose().to_owned();
        let last = bad.pop().unwrap();
        bad.push(if last == '0' { '1' } else { '0' });
        let parts: Vec<&str> = tok.expose().split('.').collect();
        let other_nonce = format!("gnp.acme.{}.{}", "0".repeat(NONCE_HEX), parts[3]);
        let not_hex = format!("gnp.acme.{}.{}", parts[2], "z".repeat(MAC_HEX));
        for t in [
            bad.as_str(),
            other_nonce.as_str(),
            not_hex.as_str(),
            "gnp.acme",
            "",
            "gnt.acme.x.y",
            &format!("{}.x", tok.expose()),
        ] {
            assert_eq!(keys.verify(t), None, "{t}");
        }
        assert_ne!(
            keys.mint(&acme).expose(),
            tok.expose(),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let keys = PoolKeys::from_admin_token(&Secret::new("admin-secret"));
        assert_eq!(format!("{keys:?}"), "PoolKeys(<redacted>)");
    }
}
