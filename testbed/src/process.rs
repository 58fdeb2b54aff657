//! Long-running server processes that die with their handle, and one-shot commands whose
//! failures quote their output.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A testbed binary is not installed.
    #[error("{name} is not installed at {}: run `scripts/testbed/install.sh {item}`", path.display())]
    MissingBinary {
        /// Binary name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
        /// The install.sh item that provides it.
        item: String,
    },
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server exited while it should be running.
    #[error("{name} exited with {status}; last output:\n{log}")]
    Exited {
        /// Server name.
        name: String,
        /// Its exit status.
        status: String,
        /// The tail of its log.
        log: String,
    },
    /// A readiness condition was not met in time.
    #[error("timed out after {after:?} waiting for {what}; last output:\n{log}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long was waited.
        after: Duration,
        /// The tail of the server's log, if any.
        log: String,
    },
    /// A one-shot command failed.
    #[error("`{command}` failed with {status}:\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// A server answered, but not as expected.
    #[error("{0}")]
    Unexpected(String),
    /// The Kubernetes client failed.
    #[error("kubernetes client: {0}")]
    Kube(#[from] ::kube::Error),
    /// An HTTP request failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
}

impl TestbedError {
    /// Adapter for `map_err` on I/O results.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
        let what = what.into();
        move |source| TestbedError::Io { what, source }
    }
}

/// How many bytes of a log an error quotes.
const LOG_TAIL_BYTES: u64 = 4000;

/// A server process in its own process group, its stdout and stderr going to a log file.
/// Dropping it sends SIGTERM to the group, waits up to the stop timeout, then sends SIGKILL;
/// a drop while the test panics also prints the log's tail.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    stop_timeout: Duration,
    exited: Option<String>,
    /// Loopback ports the server must hold a listening socket on before [`crate::wait_for`]
    /// believes an answer there (see [`Proc::listening_on`]).
    ports: Vec<u16>,
}

impl Proc {
    /// Starts `program` with `args` and extra `env`; output goes to `log`.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        env: &[(&str, &OsStr)],
        log: &Path,
    ) -> crate::Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out =
            File::create(log).map_err(TestbedError::io(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(TestbedError::io("clone log handle"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(TestbedError::io(format!("start {}", program.display())))?;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "testbed process started");
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            stop_timeout: Duration::from_secs(10),
            exited: None,
            ports: Vec::new(),
        })
    }

    /// Declares that the server listens on `port`: [`crate::wait_for`] then takes an answer
    /// as ready only while a process of this server's group holds the listening socket.
    /// Ports come from [`crate::free_port`], free a moment before the server binds them; when
    /// something else took one in between, the server fails to bind and the stranger would
    /// answer the readiness probe, so a test would run against it. With the port declared,
    /// the wait ends with the server's own error (it exits) or a timeout naming the port.
    pub fn listening_on(mut self, port: u16) -> Self {
        self.ports.push(port);
        self
    }

    /// The declared ports that no process of this server's group listens on.
    pub fn ports_not_held(&self) -> Vec<u16> {
        if self.ports.is_empty() {
            return Vec::new();
        }
        // The group, and descendants that made groups of their own (one scan of /proc).
        let pid = self.child.id();
        let procs = guildnet_core::procfs::all();
        let mut pids = guildnet_core::procfs::tree_in(&procs, pid);
        pids.extend(procs.iter().filter(|(_, s)| s.pgid == pid).map(|(p, _)| *p));
        self.ports
            .iter()
            .copied()
            .filter(|&port| !listens_on(&pids, port))
            .collect()
    }

    /// Sets how long a stop waits after SIGTERM before SIGKILL (default 10 s).
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last few KB of the log.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log)
    }

    /// An error if the process has exited.
    pub fn ensure_running(&mut self) -> crate::Result<()> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status.to_string());
            }
        }
        match &self.exited {
            None => Ok(()),
            Some(status) => Err(TestbedError::Exited {
                name: self.name.clone(),
                status: status.clone(),
                log: self.log_tail(),
            }),
        }
    }

    /// Stops the process group: SIGTERM, then SIGKILL after the stop timeout.
    pub fn stop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + self.stop_timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status.to_string());
                // Children that ignored SIGTERM still go.
                let _ = killpg(group, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        tracing::warn!(name = %self.name, "testbed process ignored SIGTERM; killing it");
        let _ = killpg(group, Signal::SIGKILL);
        if let Ok(status) = self.child.wait() {
            self.exited = Some(status.to_string());
        }
    }
}

impl Drop for Proc {
    /// Stops the process; when the test is failing (the thread panics), its log's tail goes to
    /// stderr, so a failure in CI shows what each server said without a rerun.
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- last {LOG_TAIL_BYTES} bytes of {} ({}) ----\n{}\n---- end of {} ----",
                self.name,
                self.log.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

/// The last few KB of the file at `path` (empty when it cannot be read): what a test prints of
/// a server's log when it fails.
pub fn read_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs a one-shot command to completion; returns its stdout, or an error quoting its output.
pub async fn run<I, S>(program: &Path, args: I, env: &[(&str, &OsStr)]) -> crate::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let command = std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .output()
        .await
        .map_err(TestbedError::io(format!("run {command}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(TestbedError::Command {
            command,
            status: out.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// The processes of session `sid` (every process whose session id, field 6 of
/// `/proc/<pid>/stat`, is `sid`), the session leader included.
pub fn session_members(sid: u32) -> Vec<u32> {
    guildnet_core::procfs::all()
        .into_iter()
        .filter(|(_, s)| s.session == sid)
        .map(|(p, _)| p)
        .collect()
}

/// The processes of process group `pgid` (field 5 of `/proc/<pid>/stat`), its leader
/// included.
pub fn group_members(pgid: u32) -> Vec<u32> {
    guildnet_core::procfs::all()
        .into_iter()
        .filter(|(_, s)| s.pgid == pgid)
        .map(|(p, _)| p)
        .collect()
}

/// Whether one of `pids` holds a listening TCP socket (IPv4 or IPv6) on `port`
/// ([`guildnet_core::procfs::listens_on`]; the testbed runs as root, so "cannot tell" does not
/// happen here and counts as no).
pub fn listens_on(pids: &[u32], port: u16) -> bool {
    guildnet_core::procfs::listens_on(pids, port) == Some(true)
}

/// Kills every process of session `sid` with SIGKILL, repeating until none is left (or 5 s
/// passed): a test or bench that starts a program in a session of its own
/// ([`std::os::unix::process::CommandExt::process_group`] is not enough: the orchestrator's
/// agents and their editors make process groups of their own) stops everything it started,
/// whatever the program left behind.
pub fn kill_session(sid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let members = session_members(sid);
        if members.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for pid in members {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes a command start a new session (`setsid` in the child), so [`kill_session`] with its
/// pid stops it and everything it starts.
pub fn in_new_session(cmd: &mut std::process::Command) -> &mut std::process::Command {
    // SAFETY: setsid(2) is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A process that listens on `port` (Python's socket module, as a server would).
    fn listener(dir: &Path, port: u16) -> Proc {
        let script = format!(
            "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\n\
             s.listen()\ntime.sleep(60)\n"
        );
        Proc::spawn(
            "listener",
            Path::new("python3"),
            ["-c", script.as_str()],
            &[],
            &dir.join("listener.log"),
        )
        .expect("python3")
        .listening_on(port)
    }

    #[tokio::test]
    async fn an_answer_counts_only_from_the_server_that_holds_the_port() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A stranger (this test) holds the port; the server never binds it, yet the probe
        // answers: the wait must not end with success.
        let stranger = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = stranger.local_addr().expect("addr").port();
        let mut idle = Proc::spawn(
            "idle",
            Path::new("sleep"),
            ["60"],
            &[],
            &dir.path().join("idle.log"),
        )
        .expect("sleep")
        .listening_on(port);
        assert_eq!(idle.ports_not_held(), vec![port]);
        let err = crate::wait_for(
            "the probe",
            Duration::from_millis(400),
            Some(&mut idle),
            || async { Some(()) },
        )
        .await
        .expect_err("a stranger's answer was taken for the server's");
        let msg = err.to_string();
        assert!(msg.contains("not from this server"), "{msg}");
        assert!(msg.contains(&port.to_string()), "{msg}");
        drop(stranger);

        // The server that binds its port is ready as soon as it holds it.
        let port = crate::free_port().expect("port");
        let mut own = listener(dir.path(), port);
        crate::wait_for(
            "the listener",
            Duration::from_secs(20),
            Some(&mut own),
            || async { Some(()) },
        )
        .await
        .expect("the server holding its port is ready");
        assert!(listens_on(&group_members(own.pid()), port));
        assert!(!listens_on(&[std::process::id()], port));
    }
}
