//! # guildnet-examples
//!
//! Programs that compose the GuildNet SDK (`guildnet-core`) into custom orchestrators.
//!
//! - [`placement`]: a [`guildnet_core::seams::ClusterBackend`] that places each task in one of
//!   several pools (each its own backend: a cluster, a machine) by the org's labels, and refuses
//!   tasks beyond a pool's capacity so the orchestrator keeps them queued (`Scheduled`) until a
//!   slot frees. The `placement-orchestrator` binary serves it with the standard HTTP API.
//! - [`labels`]: `key=value` label sets and the `--pool` / `--org` flag syntax.
//!
//! The binaries: `placement-orchestrator`, `offline-mocks` (the SDK on the exported mocks, no
//! cluster and no agent process) and `example-agent` (guildnet-core's agent runtime).

pub mod labels;
pub mod placement;
