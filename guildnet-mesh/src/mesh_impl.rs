//! A node on the mesh ([`TailscaleMesh`]) over a Headscale client and a tailscale node: mint a
//! pre-auth key, join, report status. A concrete type, not a guildnet-core seam: nothing in
//! the workspace needs a second implementation (guildnet-core's `Mesh` trait, which had this
//! one implementation and no caller but tests, is gone; the per-agent keys a backend needs are
//! the [`guildnet_core::seams::AgentMesh`] seam).

use crate::headscale::{HeadscaleClient, PreAuthKeyRequest};
use crate::tailscale::TailscaleCli;
use guildnet_core::seams::MeshError;
use guildnet_core::token::Secret;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A node's view of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// This node's host name on the mesh.
    pub hostname: String,
    /// This node's mesh addresses.
    pub addresses: Vec<String>,
    /// Peers and whether they are online.
    pub peers: Vec<MeshPeer>,
}

/// A peer on the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPeer {
    /// Host name.
    pub hostname: String,
    /// Addresses.
    pub addresses: Vec<String>,
    /// Online now.
    pub online: bool,
}

/// How to join a mesh.
#[derive(Debug, Clone)]
pub struct MeshJoin {
    /// Control server URL (Headscale).
    pub login_server: String,
    /// Pre-auth key.
    pub auth_key: Secret,
    /// Host name to take.
    pub hostname: String,
}

/// A node on the mesh: joins and reports through its tailscale CLI, and mints pre-auth keys
/// through the Headscale API when it has a client (an orchestrator minting agent keys).
#[derive(Debug, Clone)]
pub struct TailscaleMesh {
    node: TailscaleCli,
    headscale: Option<HeadscaleClient>,
    key_validity: Duration,
    join_timeout: Duration,
}

impl TailscaleMesh {
    /// A mesh over `node`; `headscale` is needed only for [`TailscaleMesh::create_auth_key`].
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

    /// Mints a pre-auth key for `user` (created if missing; reusable or single-use, ephemeral
    /// or not), valid for the key validity.
    pub async fn create_auth_key(
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
    pub async fn join(&self, join: MeshJoin) -> Result<MeshStatus, MeshError> {
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
    pub async fn status(&self) -> Result<MeshStatus, MeshError> {
        Ok(self.node.status().await?.into())
    }
}
