//! Typed objects of Headscale's REST API (grpc-gateway JSON: camelCase, 64-bit ids as strings).

use chrono::{DateTime, Utc};
use guildnet_core::token::Secret;
use serde::{Deserialize, Deserializer, Serialize};

/// A Headscale user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Numeric id.
    #[serde(deserialize_with = "u64_from_json")]
    pub id: u64,
    /// Unique name.
    pub name: String,
    /// When it was created.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Display name (may be empty).
    #[serde(default)]
    pub display_name: String,
    /// E-mail (may be empty).
    #[serde(default)]
    pub email: String,
}

/// A pre-auth key as the API lists it: the key itself is masked (`hskey-auth-<prefix>-***`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreAuthKey {
    /// Numeric id.
    #[serde(deserialize_with = "u64_from_json")]
    pub id: u64,
    /// The masked key: public prefix and `***`.
    #[serde(rename = "key", default)]
    pub masked_key: String,
    /// Owning user, if any (tagged keys may have none).
    #[serde(default)]
    pub user: Option<User>,
    /// Can register more than one node.
    #[serde(default)]
    pub reusable: bool,
    /// Nodes registered with it are removed when they go offline.
    #[serde(default)]
    pub ephemeral: bool,
    /// Already used.
    #[serde(default)]
    pub used: bool,
    /// When it stops working.
    #[serde(default)]
    pub expiration: Option<DateTime<Utc>>,
    /// When it was created.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// ACL tags given to nodes registered with it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub acl_tags: Vec<String>,
}

impl PreAuthKey {
    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }
}

/// A freshly created pre-auth key: its listing (masked) and the key itself.
#[derive(Debug, Clone)]
pub struct CreatedPreAuthKey {
    /// The key as listings show it (masked).
    pub info: PreAuthKey,
    /// The full key, for `tailscale up --auth-key`. Never log it.
    pub key: Secret,
}

/// What pre-auth key to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthKeyRequest {
    /// Owning user's id.
    pub user_id: u64,
    /// Can register more than one node.
    pub reusable: bool,
    /// Nodes registered with it are ephemeral.
    pub ephemeral: bool,
    /// Expiry time.
    pub expiration: DateTime<Utc>,
    /// ACL tags (`tag:name`) for nodes registered with it.
    pub acl_tags: Vec<String>,
}

/// A node (machine) registered with Headscale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Numeric id.
    #[serde(deserialize_with = "u64_from_json")]
    pub id: u64,
    /// Host name the node registered with.
    #[serde(default)]
    pub name: String,
    /// Given name (its MagicDNS label).
    #[serde(default)]
    pub given_name: String,
    /// Owning user.
    #[serde(default)]
    pub user: Option<User>,
    /// Tailnet addresses.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ip_addresses: Vec<String>,
    /// Connected to the control server now.
    #[serde(default)]
    pub online: bool,
    /// Last contact.
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    /// When its key expires (none: never).
    #[serde(default)]
    pub expiry: Option<DateTime<Utc>>,
    /// ACL tags.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
}

/// An API key as the API lists it (prefix only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// Numeric id.
    #[serde(deserialize_with = "u64_from_json")]
    pub id: u64,
    /// Public prefix (`hskey-api-<prefix>-***`).
    pub prefix: String,
    /// When it stops working.
    #[serde(default)]
    pub expiration: Option<DateTime<Utc>>,
    /// When it was created.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Last use.
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// The prefix without the `-***` mask, as `apikeys expire --prefix` and the expire route take it.
    /// Only the mask is removed: the random part is URL-safe base64, which may itself end
    /// with `-` (trimming every trailing `-` made such a key's prefix too short to expire).
    pub fn bare_prefix(&self) -> &str {
        self.prefix.strip_suffix("-***").unwrap_or(&self.prefix)
    }
}

/// The masked form of a full pre-auth key (`hskey-auth-<12 chars>-***`), or `***` for other
/// formats, so a created key's listing never holds the secret.
pub(crate) fn mask_key(key: &str) -> String {
    const PREFIX: &str = "hskey-auth-";
    match key.strip_prefix(PREFIX) {
        Some(rest) if rest.len() > 12 && rest.is_char_boundary(12) => {
            format!("{PREFIX}{}-***", &rest[..12])
        }
        _ => "***".to_owned(),
    }
}

/// grpc-gateway encodes uint64 as a JSON string; accept a number too.
fn u64_from_json<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        N(u64),
        S(String),
    }
    match Id::deserialize(d)? {
        Id::N(n) => Ok(n),
        Id::S(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom("id is not an unsigned integer")),
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_api_shapes() {
        let u: User = serde_json::from_str(
            r#"{"id":"7","name":"alice","createdAt":"2026-11-25T10:46:07.56Z","displayName":"","email":"","providerId":""}"#,
        )
        .expect("user");
        assert_eq!((u.id, u.name.as_str()), (7, "alice"));
        let k: PreAuthKey = serde_json::from_str(
            r#"{"user":null,"id":"2","key":"hskey-auth-5l7I9Pm-VPrW-***","reusable":true,"ephemeral":false,"used":false,"expiration":"2020-01-01T00:00:00Z","createdAt":null,"aclTags":null}"#,
        )
        .expect("key");
        assert!(k.is_expired(Utc::now()));
        assert!(k.acl_tags.is_empty());
        let a: ApiKey = serde_json::from_str(
            r#"{"id":"1","prefix":"hskey-api-N83cDmVo3ZC9-***","expiration":"2026-11-26T10:46:06Z","createdAt":null,"lastSeen":null}"#,
        )
        .expect("api key");
        assert_eq!(a.bare_prefix(), "hskey-api-N83cDmVo3ZC9");
        // The random part may end with '-' (URL-safe base64): only the mask goes.
        for (listed, bare) in [
            ("hskey-api-N83cDmVo3ZC-", "hskey-api-N83cDmVo3ZC-"),
            ("hskey-api-N83cDmVo3ZC--***", "hskey-api-N83cDmVo3ZC-"),
            ("hskey-api-N83cDmVo3ZC9", "hskey-api-N83cDmVo3ZC9"),
        ] {
            let k = ApiKey {
                prefix: listed.to_owned(),
                ..a.clone()
            };
            assert_eq!(k.bare_prefix(), bare, "{listed}");
        }
        assert!(serde_json::from_str::<User>(r#"{"id":"x","name":"a"}"#).is_err());
    }

    #[test]
    fn masks_keys() {
        assert_eq!(
            mask_key("hskey-auth-5l7I9Pm-VPrW-vX1wwmlZ4hfjiqQV6PPdBb2VIj2QN"),
            "hskey-auth-5l7I9Pm-VPrW-***"
        );
        assert_eq!(mask_key("0123456789abcdef"), "***");
    }
}
