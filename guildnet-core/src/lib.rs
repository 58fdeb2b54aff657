//! # guildnet-core
//!
//! The GuildNet SDK: everything needed to schedule AI coding-agent tasks onto per-organization
//! clusters and follow them, as a library.
//!
//! - [`names`] and [`model`]: validated names and the domain types.
//! - [`lifecycle`]: the task state machine, one pure function per transition.
//! - [`state_dir`]: the one state-directory resolver and the paths inside it.
//! - [`store`]: the durable [`store::StateStore`] seam and its SQLite implementation.
//! - [`seams`]: the traits at the other real seams: [`seams::ClusterBackend`], [`seams::Mesh`],
//!   [`seams::ClusterBootstrap`] (mockall automocks behind the `mocks` feature).
//! - [`local`]: the local [`seams::ClusterBackend`] that runs each task's agent as a child process.
//! - [`orchestrator`]: the orchestrator service and its axum HTTP API, served by
//!   [`http_server::serve`] (HTTP/1.1 with an idle timeout and graceful drain).
//! - [`client`]: typed HTTP clients for the admin API and the agent protocol.
//! - [`client_config`]: the client's config file (named contexts: URL and token) and the
//!   precedence of flags, environment, context and state dir.
//! - [`agent`]: the agent runtime (register, heartbeat, claim, run, stream logs, complete).

pub mod agent;
pub mod agent_env;
pub mod agent_settings;
pub mod agent_user;
pub mod api;
pub mod client;
pub mod client_config;
pub mod context;
pub mod http_server;
pub mod httpapi;
pub mod jobs;
pub mod launch;
pub mod lifecycle;
pub mod local;
pub mod metrics;
pub mod model;
pub mod names;
pub mod orchestrator;
pub mod pool;
pub mod proxy;
pub mod redact;
pub mod runners;
pub mod seams;
pub mod state_dir;
pub mod store;
pub mod token;
