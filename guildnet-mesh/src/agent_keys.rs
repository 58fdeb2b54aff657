//! Agents on the tailnet: guildnet-core's [`AgentMesh`] over the Headscale API.
//!
//! For each task attempt the orchestrator's cluster backend asks for a pre-auth key for the
//! agent's node (its host name is the agent's name, unique per attempt). The key is:
//! - **single-use** (not reusable): once the agent's sidecar registered with it, it is spent, so
//!   a copy that leaks from the pod cannot register a second node;
//! - **ephemeral**: the node is removed by Headscale on its own after it goes offline, as a
//!   backstop to the explicit removal below;
//! - **short-lived** ([`AgentMeshKeys::with_key_validity`], default 15 min): a key whose pod
//!   never started stops working; a node that registered keeps its own node key (the pre-auth
//!   key only gates registration);
//! - owned by one Headscale user (default `guildnet-agents`, created on first use) and optionally
//!   tagged (`tag:...`, [`AgentMeshKeys::with_tags`]), so ACLs can say what agents may reach.
//!
//! When the task ends, [`AgentMesh::remove_node`] deletes the node(s) registered under that host
//! name (name or given name) through the API, so the node leaves the tailnet at once instead of
//! after Headscale's inactivity timeout.

use crate::headscale::{HeadscaleClient, HeadscaleError, Node, PreAuthKeyRequest};
use async_trait::async_trait;
use guildnet_core::seams::{AgentMesh, MeshError};
use guildnet_core::token::Secret;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Default Headscale user owning agent nodes.
pub const DEFAULT_AGENT_USER: &str = "guildnet-agents";
/// Default validity of an agent's pre-auth key.
pub const DEFAULT_KEY_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// Mints per-agent keys and removes agent nodes through the Headscale API.
#[derive(Debug)]
pub struct AgentMeshKeys {
    client: HeadscaleClient,
    login_server: String,
    user: String,
    tags: Vec<String>,
    key_validity: Duration,
    user_id: OnceCell<u64>,
}

impl AgentMeshKeys {
    /// Keys from the Headscale at `client`; agents log in at `login_server` (usually the same
    /// URL as the API's, as the agents see it).
    pub fn new(client: HeadscaleClient, login_server: impl Into<String>) -> Self {
        AgentMeshKeys {
            client,
            login_server: login_server.into(),
            user: DEFAULT_AGENT_USER.into(),
            tags: Vec::new(),
            key_validity: DEFAULT_KEY_VALIDITY,
            user_id: OnceCell::new(),
        }
    }

    /// The Headscale user owning agent nodes (created if missing).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// ACL tags (`tag:name`) given to agent nodes.
    pub fn with_tags(mut self, tags: Vec<String>) -> Result<Self, HeadscaleError> {
        for t in &tags {
            let ok = t.strip_prefix("tag:").is_some_and(|n| {
                !n.is_empty()
                    && n.len() <= 63
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
            if !ok {
                return Err(HeadscaleError::Invalid {
                    field: "tags",
                    reason: format!("{t:?} is not a tag (tag:<letters, digits, '-', '_'>)"),
                });
            }
        }
        self.tags = tags;
        Ok(self)
    }

    /// How long a minted key stays usable (at least 1 min).
    pub fn with_key_validity(mut self, validity: Duration) -> Self {
        self.key_validity = validity.max(Duration::from_secs(60));
        self
    }

    /// The Headscale client.
    pub fn client(&self) -> &HeadscaleClient {
        &self.client
    }

    async fn user_id(&self) -> Result<u64, HeadscaleError> {
        self.user_id
            .get_or_try_init(|| async {
                let (u, _) = self.client.ensure_user(&self.user).await?;
                Ok(u.id)
            })
            .await
            .copied()
    }

    /// The nodes registered as `hostname` (host name or given name).
    pub async fn nodes_named(&self, hostname: &str) -> Result<Vec<Node>, HeadscaleError> {
        Ok(self
            .client
            .list_nodes(None)
            .await?
            .into_iter()
            .filter(|n| n.name == hostname || n.given_name == hostname)
            .collect())
    }
}

fn check_hostname(hostname: &str) -> Result<(), MeshError> {
    guildnet_core::names::validate_dns_label("hostname", hostname).map_err(|e| MeshError::Failed {
        op: "agent node",
        reason: format!("{}: {}", e.field, e.reason),
    })
}

#[async_trait]
impl AgentMesh for AgentMeshKeys {
    fn login_server(&self) -> String {
        self.login_server.clone()
    }

    async fn agent_key(&self, hostname: &str) -> Result<Secret, MeshError> {
        check_hostname(hostname)?;
        let user_id = self.user_id().await?;
        let expiration = chrono::Utc::now()
            + chrono::Duration::from_std(self.key_validity)
                .unwrap_or_else(|_| chrono::Duration::minutes(15));
        let created = self
            .client
            .create_preauth_key(&PreAuthKeyRequest {
                user_id,
                reusable: false,
                ephemeral: true,
                expiration,
                acl_tags: self.tags.clone(),
            })
            .await?;
        tracing::info!(
            node = %hostname,
            key = %created.info.masked_key,
            expires = %expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "minted an agent's single-use ephemeral pre-auth key"
        );
        Ok(created.key)
    }

    async fn node_address(&self, hostname: &str) -> Result<Option<String>, MeshError> {
        check_hostname(hostname)?;
        let nodes = self.nodes_named(hostname).await?;
        // The newest registration wins (a re-registered pod).
        let Some(n) = nodes.into_iter().max_by_key(|n| n.id) else {
            return Ok(None);
        };
        let v4 = n.ip_addresses.iter().find(|a| !a.contains(':'));
        Ok(v4.or(n.ip_addresses.first()).cloned())
    }

    async fn remove_node(&self, hostname: &str) -> Result<usize, MeshError> {
        check_hostname(hostname)?;
        let nodes = self.nodes_named(hostname).await?;
        let mut removed = 0;
        for n in &nodes {
            match self.client.delete_node(n.id).await {
                Ok(()) => removed += 1,
                // Headscale removed it in between (ephemeral, inactive).
                Err(HeadscaleError::Api { status: 404, .. }) => {}
                Err(HeadscaleError::Api { message, .. }) if message.contains("not found") => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(node = %hostname, id = n.id, "agent node removed from headscale");
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> AgentMeshKeys {
        let c = HeadscaleClient::new("http://127.0.0.1:1", Secret::new("k")).expect("client");
        AgentMeshKeys::new(c, "http://127.0.0.1:1")
    }

    #[test]
    fn tags_are_checked() {
        assert!(keys().with_tags(vec!["tag:guildnet-agent".into()]).is_ok());
        for bad in ["agent", "tag:", "tag:a b", "tag:x;y"] {
            let e = keys().with_tags(vec![bad.into()]).expect_err(bad);
            assert!(e.to_string().contains("tags"), "{e}");
        }
    }

    #[test]
    fn validity_has_a_floor() {
        assert_eq!(
            keys().with_key_validity(Duration::ZERO).key_validity,
            Duration::from_secs(60)
        );
    }

    #[tokio::test]
    async fn bad_host_names_are_refused_before_any_request() {
        let e = keys().agent_key("Not A Label").await.expect_err("bad");
        assert!(e.to_string().contains("hostname"), "{e}");
        let e = keys().remove_node("").await.expect_err("empty");
        assert!(e.to_string().contains("hostname"), "{e}");
    }
}
