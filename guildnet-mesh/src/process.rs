//! A managed server process: its own process group, output to a log file, stopped (SIGTERM,
//! then SIGKILL) when its handle is dropped unless detached.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How many bytes of a log errors quote.
const LOG_TAIL: u64 = 3000;

/// A child server process.
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
    detached: bool,
    exited: Option<String>,
}

impl ManagedProcess {
    /// Starts `program args` with extra `env`, stdout and stderr appended to `log`.
    pub(crate) fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        env: &[(&str, &OsStr)],
        log: &Path,
    ) -> std::io::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "process started");
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            detached: false,
            exited: None,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status, if it has exited.
    pub(crate) fn exit_status(&mut self) -> Option<String> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status.to_string());
            }
        }
        self.exited.clone()
    }

    /// The last few KB of the log (may contain no secrets: the servers never print keys we pass).
    pub(crate) fn log_tail(&self) -> String {
        read_tail(&self.log)
    }

    /// Leaves the process running when the handle is dropped.
    pub(crate) fn detach(&mut self) {
        self.detached = true;
    }

    /// Stops the process group: SIGTERM, then SIGKILL after `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if self.exit_status().is_some() {
            return;
        }
        let Ok(raw) = i32::try_from(self.child.id()) else {
            return;
        };
        let group = Pid::from_raw(raw);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exit_status().is_some() {
                let _ = killpg(group, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(name = %self.name, "process ignored SIGTERM; killing it");
        let _ = killpg(group, Signal::SIGKILL);
        if let Ok(status) = self.child.wait() {
            self.exited = Some(status.to_string());
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if !self.detached {
            self.stop(Duration::from_secs(5));
        }
    }
}

/// The last [`LOG_TAIL`] bytes of a file, lossily decoded.
pub(crate) fn read_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
