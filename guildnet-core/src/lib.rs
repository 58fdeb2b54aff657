#![warn(missing_docs)]
//! # guildnet-core
//!
//! The GuildNet SDK: everything needed to schedule AI coding-agent tasks onto per-organization
//! clusters and follow them, as a library.
//!
//! - [`names`] and [`model`]: validated names and the domain types.
//! - [`lifecycle`]: the task state machine, one pure function per transition.
//! - [`state_dir`]: the one state-directory resolver and the paths inside it.
//! - [`store`]: the durable [`store::StateStore`] seam and its SQLite implementation.
//! - [`seams`]: the traits at the other real seams: [`seams::ClusterBackend`], [`seams::AgentMesh`],
//!   [`seams::ClusterBootstrap`] (mockall automocks behind the `mocks` feature).
//! - [`local`]: the local [`seams::ClusterBackend`] that runs each task's agent as a child process.
//! - [`orchestrator`]: the orchestrator service and its axum HTTP API, served by
//!   [`http_server::serve`] (HTTP/1.1 with an idle timeout and graceful drain).
//! - [`client`]: typed HTTP clients for the admin API and the agent protocol.
//! - [`client_config`]: the client's config file (named contexts: URL and token) and the
//!   precedence of flags, environment, context and state dir.
//! - [`agent`]: the agent runtime (register, heartbeat, claim, run, stream logs, complete).
//! - [`agent_env`]: every environment variable name of the agent, declared once.
//!
//! # Features
//! - `server` (default): everything beyond the client (the orchestrator and its HTTP API, the
//!   stores, the local backend, the agent runtime, the seams, metrics, the editor proxy).
//! - `postgres` (default): the PostgreSQL store.
//! - `openapi`: OpenAPI schemas of the wire types (on with `server`).
//! - `mocks`: mockall automocks of the seams, for offline tests.
//! - `clap`: `clap::ValueEnum` on the enums a command line chooses.
//!
//! With `default-features = false` the crate is the client SDK only: [`names`], [`model`],
//! [`api`], [`client`], [`client_config`], [`context`], [`lifecycle`], [`pool`]'s types,
//! [`agent_env`], [`state_dir`] and [`token`], without axum, SQLite, hyper's server or utoipa.

#[cfg(feature = "server")]
pub mod agent;
pub mod agent_env;
#[cfg(feature = "server")]
pub mod agent_settings;
#[cfg(feature = "server")]
pub mod agent_user;
pub mod api;
pub mod client;
pub mod client_config;
pub mod context;
#[cfg(feature = "server")]
pub mod http_server;
#[cfg(feature = "server")]
pub mod httpapi;
#[cfg(feature = "server")]
pub mod jobs;
#[cfg(feature = "server")]
pub mod launch;
pub mod lifecycle;
#[cfg(feature = "server")]
pub mod local;
#[cfg(feature = "server")]
pub mod metrics;
pub mod model;
pub mod names;
#[cfg(feature = "server")]
pub mod orchestrator;
pub mod pool;
#[cfg(feature = "server")]
pub mod procfs;
pub mod progress;
#[cfg(feature = "server")]
pub mod proxy;
pub mod redact;
#[cfg(feature = "server")]
pub mod runners;
#[cfg(feature = "server")]
pub mod seams;
pub mod state_dir;
#[cfg(feature = "server")]
pub mod store;
pub mod token;
