//! Mesh connectivity for GuildNet: Headscale API client and process bootstrap, Tailscale join and status (issue #7).
//!
//! This crate is a placeholder in the workspace layout: it holds no code yet and exports nothing.
//! Its implementation lands with the issue named above.
