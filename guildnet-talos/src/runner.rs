//! Runs one talosctl command: streams its output lines (redacted) as progress events, kills it
//! after a timeout, and sorts failures into transient (worth a retry) and permanent.

use crate::progress::Reporter;
use crate::redact::redact_line;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// Longest output line kept (longer ones are cut).
const MAX_LINE: usize = 2048;
/// Output lines kept for an error message.
const TAIL_LINES: usize = 6;

/// How one talosctl run ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunFailure {
    /// talosctl could not be started.
    Spawn(String),
    /// It ran longer than allowed and was killed.
    Timeout(Duration),
    /// It exited non-zero; `output` is its redacted stdout+stderr (all lines).
    Exit { code: Option<i32>, output: String },
}

impl RunFailure {
    /// The redacted output, if any.
    pub(crate) fn output(&self) -> &str {
        match self {
            RunFailure::Exit { output, .. } => output,
            _ => "",
        }
    }

    /// A one-paragraph reason for an error: the exit status and the last lines of output.
    pub(crate) fn reason(&self) -> String {
        match self {
            RunFailure::Spawn(why) => why.clone(),
            RunFailure::Timeout(t) => format!("talosctl did not finish within {t:?}"),
            RunFailure::Exit { code, output } => {
                let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
                let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ");
                let status = code.map_or("was killed".to_owned(), |c| format!("exited with {c}"));
                if tail.is_empty() {
                    format!("talosctl {status}")
                } else {
                    format!("talosctl {status}: {tail}")
                }
            }
        }
    }

    /// Whether a retry may help: the node was not reachable yet (rebooting, not up, network).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            RunFailure::Spawn(_) => false,
            RunFailure::Timeout(_) => true,
            RunFailure::Exit { output, .. } => {
                let o = output.to_ascii_lowercase();
                !PERMANENT_MARKERS.iter().any(|m| o.contains(m))
                    && TRANSIENT_MARKERS.iter().any(|m| o.contains(m))
            }
        }
    }
}

/// Output fragments of failures no retry cures, even when gRPC calls them `Unavailable` (a TLS
/// handshake refused for want of a client certificate, say).
const PERMANENT_MARKERS: [&str; 4] = [
    "certificate required",
    "bad certificate",
    "certificate signed by unknown authority",
    "permission denied",
];

/// Output fragments of failures that a retry can cure.
const TRANSIENT_MARKERS: [&str; 11] = [
    "connection refused",
    "connection reset",
    "i/o timeout",
    "timed out",
    "timeout",
    "deadline exceeded",
    "code = unavailable",
    "no route to host",
    "network is unreachable",
    "broken pipe",
    "unexpected eof",
];

/// The talosctl binary and how to run it.
#[derive(Debug, Clone)]
pub(crate) struct Talosctl {
    program: PathBuf,
    search_path: Option<OsString>,
    extra_env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl Talosctl {
    pub(crate) fn new(
        program: &Path,
        search_path: Option<OsString>,
        extra_env: Vec<(OsString, OsString)>,
        timeout: Duration,
    ) -> Self {
        Self {
            program: program.to_owned(),
            search_path,
            extra_env,
            timeout,
        }
    }

    /// The binary to run: `program` if it has a slash, else the first match in the path.
    fn resolve(&self) -> Result<PathBuf, RunFailure> {
        if self.program.components().count() > 1 || self.program.is_absolute() {
            return Ok(self.program.clone());
        }
        let path = self
            .search_path
            .clone()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(&self.program))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                RunFailure::Spawn(format!(
                    "{} not found in PATH (install talosctl or configure its path)",
                    self.program.display()
                ))
            })
    }

    /// Runs `talosctl <args>` with `TALOSCONFIG=<talosconfig>` (so a user's `~/.talos/config`
    /// is never read), reporting each output line on `reporter` under `step`.
    /// `timeout` overrides the default per-command limit. Returns the redacted output.
    pub(crate) async fn run(
        &self,
        args: &[OsString],
        talosconfig: &Path,
        reporter: &Reporter,
        step: &str,
        timeout: Option<Duration>,
    ) -> Result<String, RunFailure> {
        let program = self.resolve()?;
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .env("TALOSCONFIG", talosconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = &self.search_path {
            cmd.env("PATH", path);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let subcommand = args
            .iter()
            .map(|a| a.to_string_lossy())
            .find(|a| !a.starts_with('-') && !a.contains('/'))
            .unwrap_or_default()
            .into_owned();
        tracing::debug!(step, subcommand, "running talosctl");
        let mut child = cmd
            .spawn()
            .map_err(|e| RunFailure::Spawn(format!("cannot run {}: {e}", program.display())))?;
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (o, e),
            _ => {
                return Err(RunFailure::Spawn(
                    "talosctl output pipes missing".to_owned(),
                ))
            }
        };
        let limit = timeout.unwrap_or(self.timeout);
        let work = async {
            let (out, err) =
                tokio::join!(pump(stdout, reporter, step), pump(stderr, reporter, step));
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(limit, work).await {
            Ok(v) => v,
            Err(_) => return Err(RunFailure::Timeout(limit)),
        };
        let mut output = out;
        if !err.is_empty() {
            if !output.is_empty() && !output.ends_with('\n') {
                output.push('\n');
            }
            output.push_str(&err);
        }
        match status {
            Ok(s) if s.success() => Ok(output),
            Ok(s) => Err(RunFailure::Exit {
                code: s.code(),
                output,
            }),
            Err(e) => Err(RunFailure::Spawn(format!("waiting for talosctl: {e}"))),
        }
    }
}

/// Reads `pipe` to its end, reporting each redacted line; returns them joined.
async fn pump(pipe: impl AsyncRead + Unpin, reporter: &Reporter, step: &str) -> String {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    let mut all = String::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let mut line = text.trim_end_matches(['\r', '\n']).to_owned();
                if line.len() > MAX_LINE {
                    let mut cut = MAX_LINE;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                }
                let line = redact_line(&line);
                if !line.trim().is_empty() {
                    reporter.output(step, &line);
                }
                all.push_str(&line);
                all.push('\n');
            }
        }
    }
    all
}

/// `OsString` arguments from anything string-like.
pub(crate) fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(output: &str) -> RunFailure {
        RunFailure::Exit {
            code: Some(1),
            output: output.to_owned(),
        }
    }

    #[test]
    fn classification() {
        assert!(exit("dial tcp 10.0.0.1:50000: connect: connection refused").is_transient());
        assert!(exit("rpc error: code = Unavailable desc = x").is_transient());
        assert!(exit("read: connection reset by peer").is_transient());
        assert!(exit("context deadline exceeded").is_transient());
        assert!(RunFailure::Timeout(Duration::from_secs(1)).is_transient());
        assert!(!exit("rpc error: code = InvalidArgument desc = bad config").is_transient());
        assert!(!exit("remote error: tls: certificate required").is_transient());
        assert!(!exit(
            "rpc error: code = Unavailable desc = connection error: desc = \"transport: \
             authentication handshake failed: remote error: tls: certificate required\""
        )
        .is_transient());
        assert!(!RunFailure::Spawn("nope".into()).is_transient());
    }

    #[test]
    fn reason_keeps_the_tail() {
        let out: String = (0..10).map(|i| format!("line {i}\n")).collect();
        let r = exit(&out).reason();
        assert_eq!(
            r,
            "talosctl exited with 1: line 4 | line 5 | line 6 | line 7 | line 8 | line 9"
        );
    }
}
