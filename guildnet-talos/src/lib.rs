//! Per-organization Talos cluster bootstrap for GuildNet, behind guildnet-core's ClusterBootstrap trait (issue #8).
//!
//! This crate is a placeholder in the workspace layout: it holds no code yet and exports nothing.
//! Its implementation lands with the issue named above.
