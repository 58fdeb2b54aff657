//! The one tokio runtime of the extension, and how Python threads block on it.

use crate::errors::Error;
use pyo3::prelude::*;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

/// How often a blocked call wakes up to let Python handle signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// The shared runtime, built on first use (two worker threads: the work is network I/O).
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, Error> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("guildnet-io")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Runtime(format!("cannot start the I/O runtime: {e}")))
}

/// Runs `fut` to completion on the shared runtime with the GIL released. Every
/// [`SIGNAL_CHECK`] it re-attaches briefly to run Python's signal handlers, so Ctrl-C interrupts
/// a long wait (the future is dropped, which closes its connections).
pub(crate) fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T, Error>> + Send,
    T: Send,
{
    let rt = runtime().map_err(|e| e.into_py_err(py))?;
    let mut fut = Box::pin(fut);
    loop {
        // The timer is created inside the runtime (it needs the runtime's clock).
        let step =
            py.detach(|| rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut fut).await }));
        match step {
            Ok(result) => return result.map_err(|e| e.into_py_err(py)),
            Err(_still_running) => py.check_signals()?,
        }
    }
}
