//! Editor session tokens: `ges.<org>.<agent>.<port>.<issued ms>.<nonce>.<mac>`, the value of the
//! HttpOnly cookie `POST /agents/editor/open` sets for `/editor/proxy/<port>/`.
//!
//! A token says which agent's editor it opens and under which proxy port, and carries an
//! HMAC-SHA256 over all of that with a key derived from the admin token. Every replica of the
//! orchestrator has the same admin token, so any replica can check a token and serve the editor
//! it names, even when it is not the replica that opened it (the one that did may have died):
//! nothing about the session has to be in the replica's memory or in the store. Rotating the
//! admin token ends every editor session.
//!
//! A token opens only its agent's editor, only under its port, only while that agent is the
//! current agent of its task (the proxy checks the store), and not when it was issued before
//! the editor was closed on the replica that checks it.

use crate::names::{AgentName, OrgName};
use crate::token::Secret;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const PREFIX: &str = "ges";
/// Hex length of the nonce (16 random bytes).
const NONCE_HEX: usize = 32;
/// Hex length of the MAC (32 bytes).
const MAC_HEX: usize = 64;

/// What a valid editor session token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditorClaims {
    /// The agent's org.
    pub org: OrgName,
    /// The agent whose editor the session opens.
    pub agent: AgentName,
    /// The proxy port the session is for (`/editor/proxy/<port>/`).
    pub port: u16,
    /// When it was minted (milliseconds since the Unix epoch).
    pub issued_ms: u64,
}

/// Mints and checks editor session tokens.
#[derive(Clone)]
pub struct EditorKeys {
    /// The keyed HMAC state, cloned for each token.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for EditorKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EditorKeys(<redacted>)")
    }
}

impl EditorKeys {
    /// Keys derived from the admin token (the same on every replica).
    pub fn from_admin_token(admin: &Secret) -> Self {
        let mut h = Sha256::new();
        h.update(b"guildnet editor session key v1\0");
        h.update(admin.expose().as_bytes());
        let key: [u8; 32] = h.finalize().into();
        Self {
            // HMAC takes a key of any length: this cannot fail.
            mac: Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length"),
        }
    }

    /// The keyed MAC state after the token's body (everything before the MAC).
    fn mac_of(&self, body: &str) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(body.as_bytes());
        m
    }

    /// A new session token for `agent`'s editor under proxy port `port`, issued now.
    pub fn mint(&self, org: &OrgName, agent: &AgentName, port: u16) -> Secret {
        self.mint_at(org, agent, port, now_ms())
    }

    fn mint_at(&self, org: &OrgName, agent: &AgentName, port: u16, issued_ms: u64) -> Secret {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let body = format!("{PREFIX}.{org}.{agent}.{port}.{issued_ms}.{nonce}");
        let mac = self.mac_of(&body).finalize().into_bytes();
        Secret::new(format!("{body}.{}", hex::encode(mac)))
    }

    /// What a presented token says, if it is one of ours (the MAC is checked in constant time
    /// by `hmac`'s `verify_slice`).
    pub fn verify(&self, presented: &str) -> Option<EditorClaims> {
        let (body, mac) = presented.rsplit_once('.')?;
        let mut parts = body.split('.');
        let (p, org, agent, port, issued, nonce) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if p != PREFIX || parts.next().is_some() || nonce.len() != NONCE_HEX || mac.len() != MAC_HEX
        {
            return None;
        }
        let tag = hex::decode(mac).ok()?;
        self.mac_of(body).verify_slice(&tag).ok()?;
        Some(EditorClaims {
            org: OrgName::new(org).ok()?,
            agent: AgentName::new(agent).ok()?,
            port: crate::proxy::parse_port(port)?,
            issued_ms: issued.parse().ok()?,
        })
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (OrgName, AgentName) {
        (
            OrgName::new("acme").unwrap(),
            AgentName::new("agent-a-1").unwrap(),
        )
    }

    #[test]
    fn a_token_names_its_agent_and_port_for_every_replica_with_the_admin_token() {
        let (org, agent) = names();
        let a = EditorKeys::from_admin_token(&Secret::new("admin-1"));
        let b = EditorKeys::from_admin_token(&Secret::new("admin-1"));
        let t = a.mint_at(&org, &agent, 41234, 1_700_000_000_000);
        let claims = b.verify(t.expose()).expect("the other replica accepts it");
        assert_eq!(
            claims,
            EditorClaims {
                org: org.clone(),
                agent: agent.clone(),
                port: 41234,
                issued_ms: 1_700_000_000_000
            }
        );
        assert_ne!(a.mint(&org, &agent, 41234), a.mint(&org, &agent, 41234));
        // Another admin token: refused.
        let other = EditorKeys::from_admin_token(&Secret::new("admin-2"));
        assert_eq!(other.verify(t.expose()), None);
    }

    #[test]
    fn tampered_or_malformed_tokens_are_refused() {
        let (org, agent) = names();
        let k = EditorKeys::from_admin_token(&Secret::new("admin-1"));
        let t = k.mint(&org, &agent, 41234);
        let t = t.expose();
        // Another port, agent or org with the same MAC.
        for (from, to) in [
            (".41234.", ".41235."),
            (".agent-a-1.", ".agent-b-1."),
            ("ges.acme.", "ges.other."),
        ] {
            let forged = t.replacen(from, to, 1);
            assert_ne!(forged, t);
            assert_eq!(k.verify(&forged), None, "{from} -> {to}");
        }
        let mut flipped = t.to_owned();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        for bad in [
            "",
            "ges",
            "ges.acme.agent-a-1.41234",
            flipped.as_str(),
            &t[..t.len() - 2],
            &format!("x{t}"),
            &format!("{t}.00"),
            "ges.ACME.agent-a-1.41234.1.00000000000000000000000000000000.00",
        ] {
            assert_eq!(k.verify(bad), None, "{bad}");
        }
    }
}
