//! Headscale: the REST client, the generated server config and a managed local server.

mod cli;
mod client;
mod config;
mod error;
mod server;
mod types;

pub use cli::create_api_key_via_cli;
pub use client::HeadscaleClient;
pub(crate) use client::{parse_base_url, probe_health as probe};
pub use config::{render_config, HeadscaleSettings, SettingsError};
pub use error::HeadscaleError;
pub(crate) use server::server_probe_url;
pub use server::{HeadscaleProcess, ServerFiles};
pub use types::{ApiKey, CreatedPreAuthKey, Node, PreAuthKey, PreAuthKeyRequest, User};
