//! Getting a mesh: [`create`] a local Headscale, or [`connect`] to an existing one. Both are
//! idempotent and report progress as [`Progress`] events on a tokio mpsc channel.

mod connect;
mod create;
mod error;
mod events;

pub use connect::{connect, ConnectOutcome, ConnectRequest, ValidConnect};
pub use create::{create, CreateOptions, CreateOutcome, PreAuthKeyOptions};
pub use error::SetupError;
pub use guildnet_core::progress::Progress;
