#![warn(missing_docs)]
//! # guildnet-mesh
//!
//! How people reach agents without opening ports: a [Headscale](https://headscale.net) control
//! server plus `tailscaled` nodes. This crate has these parts:
//!
//! - [`headscale`]: a typed REST client for Headscale's `/api/v1` ([`headscale::HeadscaleClient`]),
//!   the generated server config ([`headscale::HeadscaleSettings`]) and a managed local
//!   `headscale serve` process ([`headscale::HeadscaleProcess`]).
//! - [`setup`]: the two ways to get a mesh, both idempotent and reporting progress as
//!   [`setup::Progress`] events (SSE-ready JSON): [`setup::create`] runs a local Headscale and mints an
//!   API key, a user and a pre-auth key; [`setup::connect`] validates `HEADSCALE_URL`,
//!   `TS_AUTHKEY` and `TS_HOSTNAME`, probes the server and optionally joins a node.
//! - [`tailscale`]: a managed userspace `tailscaled` ([`tailscale::Tailscaled`]) with SOCKS5 and
//!   HTTP proxies on loopback, its CLI ([`tailscale::TailscaleCli`]: up / status / down / logout)
//!   and [`tailscale::TailnetDialer`], which opens a [`tokio::net::TcpStream`] to a tailnet
//!   `host:port` through a node's SOCKS5 proxy.
//! - [`TailscaleMesh`]: a node on the mesh over those pieces (mint a key, join, status).
//! - [`AgentMeshKeys`]: guildnet-core's [`guildnet_core::seams::AgentMesh`]: a single-use,
//!   ephemeral pre-auth key per agent and removing its node when the task ends (issue 22).
//! - [`runtime::RuntimeMesh`]: guildnet-core's [`guildnet_core::seams::MeshControl`]: the mesh
//!   of a running orchestrator (`PUT /mesh`), its own node joined, kept across restarts.
//!
//! Secrets (API keys, pre-auth keys) are [`guildnet_core::token::Secret`]s: they never appear in
//! `Debug` output, logs, URLs, command lines or error messages. Files holding them are 0600.

pub mod agent_keys;
pub mod binary;
pub mod headscale;
mod mesh_impl;
mod process;
mod redact;
pub mod runtime;
pub mod setup;
pub mod tailscale;

pub use agent_keys::AgentMeshKeys;
pub use mesh_impl::{MeshJoin, MeshPeer, MeshStatus, TailscaleMesh};
pub use redact::display_url;
