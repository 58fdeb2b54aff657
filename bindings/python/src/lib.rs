//! `guildnet._native`: the Rust half of the `guildnet` Python package.
//!
//! It wraps [`guildnet_core::client::OrchestratorClient`] for Python: every network call runs on
//! one shared tokio runtime with the GIL released, so other Python threads keep running while a
//! call waits. Errors become the exception classes defined in `guildnet/errors.py`.

mod client;
mod errors;
mod events;
mod helpers;
mod logs;
mod pages;
mod runtime;
mod types;

use pyo3::prelude::*;

/// The extension module, imported as `guildnet._native` and re-exported by `guildnet`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<client::OrchestratorClient>()?;
    m.add_class::<logs::LogStream>()?;
    m.add_class::<events::EventStream>()?;
    m.add_class::<types::Event>()?;
    m.add_class::<types::Task>()?;
    m.add_class::<types::Agent>()?;
    m.add_class::<types::LogLine>()?;
    m.add_class::<types::Org>()?;
    m.add_class::<pages::TaskPages>()?;
    m.add_class::<types::Artifact>()?;
    helpers::register(m)?;
    Ok(())
}
