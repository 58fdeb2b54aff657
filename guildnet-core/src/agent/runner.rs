//! Running the task's command: template expansion (no shell), its own process group and
//! sandbox ([`super::sandbox`]), output lines to the log shipper (split on bytes, bounded per
//! line: [`super::lines`]), cancellation, and the sweep of whatever it left behind (its
//! process group, then every orphan re-parented to the agent).

use super::{AgentConfig, LogShipper};
use crate::model::{LogStream, Task};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// How a runner ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signalled(i32),
    /// Could not be started.
    NotStarted(String),
    /// Stopped because the task was cancelled.
    Cancelled,
}

/// A parsed runner command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSpec {
    /// Program and arguments, placeholders replaced.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// What the runner may touch; `None` runs it unconfined (tests only).
    pub sandbox: Option<super::sandbox::SandboxPolicy>,
}

impl RunnerSpec {
    /// Splits `template` into words (shell-like quoting, no shell) and fills placeholders.
    pub fn parse(template: &str, task: &Task, cfg: &AgentConfig) -> Result<Self, String> {
        let words = shell_words::split(template).map_err(|e| e.to_string())?;
        if words.is_empty() {
            return Err("empty command".into());
        }
        let ws = cfg.workspace.display().to_string();
        let fill = |w: &str| {
            w.replace("{task_id}", task.id.as_str())
                .replace("{org}", task.org.as_str())
                .replace("{agent}", cfg.agent.as_str())
                .replace("{workspace}", &ws)
        };
        Ok(Self {
            argv: words.iter().map(|w| fill(w)).collect(),
            cwd: cfg.workspace.clone(),
            env: vec![
                (crate::agent_env::TASK_TEXT.into(), task.task.clone()),
                (crate::agent_env::TASK_ID.into(), task.id.to_string()),
                (crate::agent_env::ORG_NAME.into(), task.org.to_string()),
            ],
            sandbox: None,
        })
    }

    /// Runs the command to the end, or until `cancel` turns true (-> `Some(Cancelled)`) or
    /// `stop` resolves (-> `None`). Output lines go to `shipper`.
    pub async fn run(
        &self,
        task_text: &str,
        shipper: &LogShipper,
        mut cancel: watch::Receiver<bool>,
        stop: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> Option<RunOutcome> {
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // The agent removed its secrets from its own environment at start
        // (process::harden_self); these stay as a second line for embedders that did not.
        for k in crate::agent_env::SECRETS {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        match &self.sandbox {
            Some(policy) => match policy.prepare() {
                Ok(p) => p.install(&mut cmd, super::sandbox::ChildOptions::default()),
                Err(e) => {
                    let msg = format!("cannot sandbox the runner: {e}");
                    shipper.push(LogStream::System, msg.clone());
                    return Some(RunOutcome::NotStarted(msg));
                }
            },
            None => {
                // If the agent dies (even by SIGKILL), the kernel kills the runner too.
                // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                            .map_err(std::io::Error::from)
                    });
                }
            }
        }
        let (mut child, _tracked) = match super::process::spawn_tracked(&mut cmd) {
            Ok(c) => c,
            Err(e) => {
                let mut msg = format!("cannot start runner {:?}: {e}", self.argv[0]);
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) {
                    // Under a root orchestrator the agent runs as `nobody`: a CLI installed
                    // under /root is out of its reach. Say whose reach it has to be in.
                    msg.push_str(&format!(
                        " (the agent runs as uid {}; the runner must be on a PATH that user can                          read: install coding CLIs system-wide, see docs/SECURITY.md)",
                        nix::unistd::geteuid()
                    ));
                }
                shipper.push(LogStream::System, msg.clone());
                return Some(RunOutcome::NotStarted(msg));
            }
        };
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        shipper.push(
            LogStream::System,
            format!("runner started: {}", self.argv[0]),
        );
        if let Some(mut stdin) = child.stdin.take() {
            let text = task_text.to_owned();
            tokio::spawn(async move {
                let _ = stdin.write_all(text.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(out, LogStream::Stdout, shipper.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(err, LogStream::Stderr, shipper.clone())));
        }
        tokio::pin!(stop);
        let outcome = tokio::select! {
            st = child.wait() => match st {
                Ok(s) => Some(match (s.code(), s.signal()) {
                    (Some(c), _) => RunOutcome::Exited(c),
                    (None, Some(sig)) => RunOutcome::Signalled(sig),
                    _ => RunOutcome::Exited(-1),
                }),
                Err(e) => Some(RunOutcome::NotStarted(format!("waiting for runner: {e}"))),
            },
            _ = wait_true(&mut cancel) => {
                shipper.push(LogStream::System, "task cancelled: stopping the runner".into());
                terminate(&mut child, pgid, grace).await;
                Some(RunOutcome::Cancelled)
            }
            _ = &mut stop => {
                shipper.push(LogStream::System, "agent stopping: stopping the runner".into());
                terminate(&mut child, pgid, grace).await;
                None
            }
        };
        // Stop any children the runner left behind: its process group, then every orphan
        // re-parented to the agent (`setsid`, double forks), which may hold its pipes open.
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        let swept = super::process::kill_orphans(Duration::from_secs(2)).await;
        if swept > 0 {
            shipper.push(
                LogStream::System,
                format!("stopped {swept} process(es) the runner left behind"),
            );
        }
        // Drain its output; a descendant that escaped even the sweep cannot hold us here.
        for mut r in readers {
            if tokio::time::timeout(Duration::from_secs(2), &mut r)
                .await
                .is_err()
            {
                r.abort();
            }
        }
        if let Some(RunOutcome::Exited(c)) = &outcome {
            shipper.push(LogStream::System, format!("runner exited with code {c}"));
        }
        outcome
    }
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn terminate(child: &mut tokio::process::Child, pgid: Option<Pid>, grace: Duration) {
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
}

/// Reads a runner stream to its end: any bytes, split on newlines, each line bounded.
async fn pump<R: tokio::io::AsyncRead + Unpin>(mut r: R, stream: LogStream, shipper: LogShipper) {
    let mut split = super::lines::LineSplitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                for line in split.feed(&buf[..n]) {
                    shipper.push(stream, line);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                shipper.push(
                    LogStream::System,
                    format!("cannot read runner {}: {e}", stream.as_str()),
                );
                break;
            }
        }
    }
    if let Some(last) = split.finish() {
        shipper.push(stream, last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentConfig;
    use crate::model::TaskStatus;
    use crate::names::{AgentName, OrgName, TaskId};
    use chrono::Utc;

    fn task(text: &str) -> Task {
        Task {
            id: TaskId::new("t1").unwrap(),
            org: OrgName::new("acme").unwrap(),
            task: text.into(),
            agent_hint: None,
            status: TaskStatus::Running,
            agent: Some(AgentName::new("agent-1").unwrap()),
            attempt: 1,
            fencing: 1,
            claims: 1,
            lease_expires_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            artifacts: vec![],
            pr_url: None,
            context: Default::default(),
            log_sealed: false,
            claim_process: None,
        }
    }

    fn cfg() -> AgentConfig {
        AgentConfig::from_lookup(|k| {
            Some(
                match k {
                    "ORCHESTRATOR_URL" => "http://127.0.0.1:1",
                    "GUILDNET_AGENT_TOKEN" => "gnt.t1.x",
                    "TASK_ID" => "t1",
                    "ORG_NAME" => "acme",
                    "AGENT_NAME" => "agent-1",
                    "GUILDNET_WORKSPACE" => "/ws",
                    "GUILDNET_STATE_DIR" => "/st",
                    _ => return None,
                }
                .to_owned(),
            )
        })
        .unwrap()
    }

    #[test]
    fn template_splits_like_a_shell_and_fills_placeholders() {
        let spec = RunnerSpec::parse(
            "ai-cli --task '{task_id} in {org}' --dir={workspace} --as {agent}",
            &task("do it; rm -rf /"),
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            spec.argv,
            [
                "ai-cli",
                "--task",
                "t1 in acme",
                "--dir=/ws",
                "--as",
                "agent-1"
            ]
        );
        // The task text never becomes part of the command line, only env (and stdin).
        assert!(!spec.argv.iter().any(|a| a.contains("rm -rf")));
        assert!(spec.env.contains(&(
            crate::agent_env::TASK_TEXT.to_owned(),
            "do it; rm -rf /".to_owned()
        )));
        assert_eq!(spec.cwd, std::path::PathBuf::from("/ws"));
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert!(RunnerSpec::parse("", &task("x"), &cfg()).is_err());
        assert!(RunnerSpec::parse("cli 'unterminated", &task("x"), &cfg()).is_err());
    }

    #[test]
    fn config_reports_missing_and_invalid_env() {
        let err = AgentConfig::from_lookup(|_| None).unwrap_err();
        assert!(
            err.to_string().contains("ORCHESTRATOR_URL is not set"),
            "{err}"
        );
        let err = AgentConfig::from_lookup(|k| match k {
            "ORG_NAME" => Some("../etc".into()),
            k if k.starts_with("GUILDNET_") && k != "GUILDNET_AGENT_TOKEN" => None,
            _ => Some("t1".into()),
        })
        .unwrap_err();
        assert!(err.to_string().contains("ORG_NAME"), "{err}");
    }
}
