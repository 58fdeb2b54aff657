//! Pool tokens: `gnp.<org>.<nonce>.<mac>`, an HMAC-SHA256 over the org and a random nonce with a
//! key derived from the admin token. The orchestrator checks one without storing anything, so
//! warm agents keep waiting across orchestrator restarts; rotating the admin token revokes
//! every pool token.
//!
//! A pool token lets its holder wait for a task of its org (and so receive that task's token
//! and secret settings), nothing else: no admin route, no other org, no task it was not handed.

use crate::names::OrgName;
use crate::token::Secret;
use sha2::{Digest, Sha256};

const PREFIX: &str = "gnp";
const BLOCK: usize = 64;

/// Mints and checks pool tokens.
#[derive(Clone)]
pub struct PoolKeys {
    key: [u8; 32],
}

impl std::fmt::Debug for PoolKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolKeys(<redacted>)")
    }
}

fn hmac_sha256(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    k[..32].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

impl PoolKeys {
    /// Keys derived from the admin token.
    pub fn from_admin_token(admin: &Secret) -> Self {
        let mut h = Sha256::new();
        h.update(b"guildnet pool token key v1\0");
        h.update(admin.expose().as_bytes());
        Self {
            key: h.finalize().into(),
        }
    }

    fn mac(&self, org: &str, nonce: &str) -> String {
        hex::encode(hmac_sha256(&self.key, format!("{org}.{nonce}").as_bytes()))
    }

    /// A new pool token for `org`.
    pub fn mint(&self, org: &OrgName) -> Secret {
        let nonce = hex::encode(rand::random::<[u8; 12]>());
        Secret::new(format!(
            "{PREFIX}.{org}.{nonce}.{}",
            self.mac(org.as_str(), &nonce)
        ))
    }

    /// The org a presented pool token is valid for (constant-time comparison of the MAC).
    pub fn verify(&self, presented: &str) -> Option<OrgName> {
        let mut parts = presented.split('.');
        let (p, org, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if p != PREFIX || parts.next().is_some() || nonce.len() != 24 || mac.len() != 64 {
            return None;
        }
        let org = OrgName::new(org).ok()?;
        let want = self.mac(org.as_str(), nonce);
        use subtle::ConstantTimeEq;
        bool::from(want.as_bytes().ct_eq(mac.as_bytes())).then_some(org)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_shape() {
        // RFC 4231 test case 2 uses a 4-byte key; ours are 32 bytes, zero-padded like HMAC does.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
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
        // A changed MAC, a truncated token, garbage.
        let mut bad = tok.expose().to_owned();
        let last = bad.pop().unwrap();
        bad.push(if last == '0' { '1' } else { '0' });
        for t in [
            bad.as_str(),
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
}
