//! Progress events of a bootstrap: `start`, `output` (redacted talosctl lines and retry notes),
//! `done` and `error`, each tagged with its step.

use guildnet_core::seams::BootstrapProgress;
use tokio::sync::mpsc::UnboundedSender;

/// Phase of a step that just began.
pub const START: &str = "start";
/// An output line of a step (already redacted).
pub const OUTPUT: &str = "output";
/// Phase of a step that succeeded.
pub const DONE: &str = "done";
/// Phase of a step that failed (the bootstrap stops).
pub const ERROR: &str = "error";

/// Sends progress events; a gone receiver (a client that left) is not an error.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reporter {
    tx: Option<UnboundedSender<BootstrapProgress>>,
}

impl Reporter {
    pub(crate) fn new(tx: Option<UnboundedSender<BootstrapProgress>>) -> Self {
        Self { tx }
    }

    fn send(&self, step: &str, phase: &str, message: &str) {
        tracing::debug!(step, phase, message, "bootstrap progress");
        if let Some(tx) = &self.tx {
            let _ = tx.send(BootstrapProgress {
                step: step.to_owned(),
                phase: phase.to_owned(),
                message: message.to_owned(),
            });
        }
    }

    pub(crate) fn start(&self, step: &str, message: &str) {
        self.send(step, START, message);
    }

    pub(crate) fn output(&self, step: &str, message: &str) {
        self.send(step, OUTPUT, message);
    }

    pub(crate) fn done(&self, step: &str, message: &str) {
        self.send(step, DONE, message);
    }

    pub(crate) fn error(&self, step: &str, message: &str) {
        self.send(step, ERROR, message);
    }
}
