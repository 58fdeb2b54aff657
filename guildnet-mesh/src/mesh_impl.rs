//! guildnet-core's [`Mesh`] over a Headscale client and a tailscale node.

use crate::headscale::{HeadscaleClient, PreAuthKeyRequest};
use crate::tailscale::TailscaleCli;
use async_trait::async_trait;
use guildnet_core::seams::{Mesh, MeshError, MeshJoin, MeshStatus};
use guildnet_core::token::Secret;
use std::time::Duration;

/// The [`Mesh`] of a node: joins and reports through its tailscale CLI, and mints pre-auth
/// keys through the Headscale API when it has a client (an orchestrator minting agent keys).
#[derive(Debug, Clone)]
pub struct TailscaleMesh {
    node: TailscaleCli,
    headscale: Option<HeadscaleClient>,
    key_validity: Duration,
    join_timeout: Duration,
}

impl TailscaleMesh {
    /// A mesh over `node`; `headscale` is needed only for [`Mesh::create_auth_key`].
    pub fn new(node: TailscaleCli, headscale: Option<HeadscaleClient>) -> Self {
        Self {
            node,
            headscale,
            key_validity: Duration::from_secs(3600),
            join_timeout: Duration::from_secs(60),
        }
    }

    /// How long minted pre-auth keys stay valid (default 1 h).
    pub fn with_key_validity(mut self, validity: Duration) -> Self {
        self.key_validity = validity;
        self
    }

    /// How long a join may take (default 60 s).
    pub fn with_join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// The node's CLI.
    pub fn node(&self) -> &TailscaleCli {
        &self.node
    }
}

#[async_trait]
impl Mesh for TailscaleMesh {
    /// Mints a pre-auth key for `user` (created if missing), valid for the key validity.
    async fn create_auth_key(
        &self,
        user: &str,
        reusable: bool,
        ephemeral: bool,
    ) -> Result<Secret, MeshError> {
        let hs = self.headscale.as_ref().ok_or_else(|| MeshError::Failed {
            op: "create_auth_key",
            reason: "this mesh has no Headscale API client (connect mode)".into(),
        })?;
        let (u, _) = hs.ensure_user(user).await?;
        let expiration = chrono::Utc::now()
            + chrono::Duration::from_std(self.key_validity).unwrap_or(chrono::Duration::hours(1));
        let k = hs
            .create_preauth_key(&PreAuthKeyRequest {
                user_id: u.id,
                reusable,
                ephemeral,
                expiration,
                acl_tags: Vec::new(),
            })
            .await?;
        Ok(k.key)
    }

    /// `tailscale up` with the key (skipped when already joined there under that name), then
    /// the node's status.
    async fn join(&self, join: MeshJoin) -> Result<MeshStatus, MeshError> {
        self.node
            .join(
                &join.login_server,
                &join.auth_key,
                &join.hostname,
                self.join_timeout,
            )
            .await?;
        Ok(self.node.status().await?.into())
    }

    /// The node's status.
    async fn status(&self) -> Result<MeshStatus, MeshError> {
        Ok(self.node.status().await?.into())
    }
}
