//! Tailscale: a managed userspace `tailscaled`, its CLI, status parsing and tailnet dialing.

mod cli;
mod daemon;
mod dial;
mod error;
mod status;

pub use cli::{Joined, NodePrefs, TailscaleCli};
pub use daemon::{Tailscaled, TailscaledConfig};
pub use dial::TailnetDialer;
pub use error::TailscaleError;
pub use status::{NodeStatus, PeerInfo};
