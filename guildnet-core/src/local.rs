//! The local [`ClusterBackend`]: runs each task's agent as a child process on this machine, with
//! the same environment a pod would get. It needs no cluster, so `guildnet up` works anywhere.
//!
//! Agents run in their own process group, with their files under `<workspaces>/<task id>/`
//! ([`StatePaths::workspaces_root`], outside the state dir): the runner's working directory
//! `workspace/`, a private `home/` that is the agent's (and runner's) `HOME`, the agent's state
//! dir `state/`, its output in `agent.log`, its pid in `agent.pid` and, with an editor,
//! `editor.json` (port and password, 0600; outside the workspace the editor shows). Like pods,
//! they outlive an orchestrator restart and reconnect to it.

use crate::agent_env;
use crate::agent_user::AgentUser;
use crate::names::{AgentName, OrgName, TaskId};
use crate::seams::{AgentLaunch, BackendError, ClusterBackend, EditorEndpoint, WorkloadState};
use crate::state_dir::StatePaths;
use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalBackendConfig {
    /// The agent executable (`guildnet-agent`, or the `guildnet` CLI with `agent_args`).
    pub agent_bin: PathBuf,
    /// Arguments before any others (e.g. `["agent"]` for the `guildnet` CLI).
    pub agent_args: Vec<String>,
    /// State dir; workspaces go to [`LocalBackendConfig::workspaces_root`], outside it.
    pub state: StatePaths,
    /// Environment variables of the orchestrator passed on to agents (and so to runners), on
    /// top of a small base set (`PATH`, `HOME`, locale, proxies, certificates): agents start
    /// from a clean environment, so the orchestrator's own secrets never reach them.
    pub pass_env: Vec<String>,
    /// Runner command template passed to agents (`GUILDNET_RUNNER`), if any.
    pub runner: Option<String>,
    /// Extra environment for agents (e.g. `RUST_LOG`).
    pub extra_env: Vec<(String, String)>,
    /// Grace period between SIGTERM and SIGKILL on cancel.
    pub kill_grace: Duration,
    /// code-server executable: when set, every agent runs an editor on a free loopback port
    /// with a fresh password, which the orchestrator's editor proxy uses to log in.
    pub code_server: Option<PathBuf>,
    /// Run agents as this user instead of the orchestrator's own (see [`crate::agent_user`]):
    /// their directories become theirs, everything else in the agent dir stays the
    /// orchestrator's. `None`: agents run as the orchestrator's user.
    pub agent_user: Option<AgentUser>,
    /// Where the agents' directories go (default [`StatePaths::workspaces_root`]).
    pub workspaces_root: PathBuf,
    /// Other orchestrator replicas share the store (PostgreSQL): an agent with no directory
    /// here may be another replica's, so its state is unknown rather than gone. With a store of
    /// its own (SQLite, the default) every agent was started here, and one with no directory
    /// (e.g. its orchestrator was killed between dispatch and spawn) is gone.
    pub shared_store: bool,
}

impl LocalBackendConfig {
    /// Defaults: `guildnet-agent` next to the current executable if it is there, else the
    /// current executable itself with the `agent` subcommand (the `guildnet` CLI has one).
    pub fn new(state: StatePaths) -> Self {
        let exe = std::env::current_exe().ok();
        let sibling = exe
            .as_ref()
            .and_then(|p| p.parent().map(|d| d.join("guildnet-agent")))
            .filter(|p| p.is_file());
        let (agent_bin, agent_args) = match (sibling, exe) {
            (Some(bin), _) => (bin, Vec::new()),
            (None, Some(exe)) => (exe, vec!["agent".to_owned()]),
            (None, None) => (PathBuf::from("guildnet-agent"), Vec::new()),
        };
        Self {
            agent_bin,
            agent_args,
            runner: None,
            pass_env: Vec::new(),
            extra_env: Vec::new(),
            kill_grace: Duration::from_secs(10),
            code_server: None,
            agent_user: None,
            shared_store: false,
            workspaces_root: state.workspaces_root(),
            state,
        }
    }

    /// Chooses the agents' user from `spec` (see [`crate::agent_user`]) and makes the setup
    /// work for it, or says why it cannot: the agents' directories move to
    /// [`crate::agent_user::system_workspaces_root`] when the default place is out of the
    /// user's reach, the agent executable is copied where the user can run it, and
    /// code-server must be runnable by the user. Call it after setting `agent_bin` and
    /// `code_server`. Returns the user, `None` when agents run as the orchestrator's own.
    pub fn run_agents_as(
        &mut self,
        spec: &crate::agent_user::AgentUserSpec,
    ) -> Result<Option<AgentUser>, crate::agent_user::AgentUserError> {
        use crate::agent_user as au;
        let Some(user) = spec.resolve()? else {
            self.agent_user = None;
            return Ok(None);
        };
        let parent_blocked = self
            .workspaces_root
            .parent()
            .is_some_and(|p| au::reachable_by(p, &user, 0o1).is_some());
        if parent_blocked {
            self.workspaces_root = au::system_workspaces_root(self.state.root());
            // `/var/lib/guildnet` is GuildNet's own: passable, whatever the umask made it.
            if let Some(base) = self.workspaces_root.parent() {
                au::create_passable_dir(base)?;
            }
        }
        au::create_passable_dir(&self.workspaces_root)?;
        au::check_reachable(
            "the agents' directory",
            &self.workspaces_root,
            &user,
            0o1,
            "choose a state dir whose parent directories others may search (mode o+x)",
        )?;
        if self.agent_bin.components().count() > 1 {
            self.agent_bin =
                au::reachable_agent_bin(&self.agent_bin, &self.workspaces_root, &user)?;
        }
        if let Some(cs) = &self.code_server {
            au::check_reachable(
                "code-server",
                cs,
                &user,
                0o5,
                "install code-server where every user can run it (e.g. npm install -g), or pass \
                 --agent-user",
            )?;
        }
        tracing::info!(
            user = %user.name,
            uid = user.uid,
            workspaces = %self.workspaces_root.display(),
            "local agents run as an unprivileged user"
        );
        self.agent_user = Some(user.clone());
        Ok(Some(user))
    }
}

#[derive(Debug, Clone, Copy)]
enum ChildState {
    Running(u32),
    Exited(Option<i32>),
}

/// Runs agents as local child processes.
#[derive(Clone)]
pub struct LocalBackend {
    cfg: Arc<LocalBackendConfig>,
    children: Arc<Mutex<HashMap<AgentName, ChildState>>>,
    editors: Arc<Mutex<HashMap<AgentName, EditorEndpoint>>>,
}

/// The editor record in an agent's workspace (`editor.json`, 0600).
#[derive(serde::Serialize, serde::Deserialize)]
struct EditorRecord {
    agent: String,
    host: String,
    port: u16,
    password: String,
}

const EDITOR_FILE: &str = "editor.json";

impl LocalBackend {
    /// A backend with `cfg`.
    pub fn new(cfg: LocalBackendConfig) -> Self {
        Self {
            cfg: Arc::new(cfg),
            children: Arc::new(Mutex::new(HashMap::new())),
            editors: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Picks a free loopback port and a password for a new agent's editor, and records them in
    /// the workspace.
    fn new_editor(&self, ws: &Path, agent: &AgentName) -> Result<EditorEndpoint, String> {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for the editor: {e}"))?
            .port();
        let ep = EditorEndpoint {
            host: "127.0.0.1".into(),
            port,
            password: Some(crate::token::generate("cs")),
            via_tailnet: false,
            held_by: None,
        };
        self.save_editor(ws, agent, &ep)?;
        Ok(ep)
    }

    fn save_editor(&self, ws: &Path, agent: &AgentName, ep: &EditorEndpoint) -> Result<(), String> {
        let rec = EditorRecord {
            agent: agent.to_string(),
            host: ep.host.clone(),
            port: ep.port,
            password: ep
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
        crate::state_dir::write_private_file(&ws.join(EDITOR_FILE), &bytes)
            .map_err(|e| e.to_string())
    }

    /// The editor record of `agent` in its workspace, with the agent's pid if it still runs.
    fn editor_from_disk(&self, agent: &AgentName) -> Option<EditorEndpoint> {
        let dir = &self.cfg.workspaces_root;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let Ok(bytes) = std::fs::read(entry.path().join(EDITOR_FILE)) else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<EditorRecord>(&bytes) else {
                continue;
            };
            if rec.agent == agent.as_str() {
                return Some(EditorEndpoint {
                    host: rec.host,
                    port: rec.port,
                    password: (!rec.password.is_empty())
                        .then(|| crate::token::Secret::new(rec.password)),
                    via_tailnet: false,
                    held_by: read_agent_pid(&entry.path(), agent),
                });
            }
        }
        None
    }

    fn workspace(&self, task: &TaskId) -> PathBuf {
        self.cfg.workspaces_root.join(task.as_str())
    }

    fn set_child(&self, agent: &AgentName, st: ChildState) {
        if let Ok(mut m) = self.children.lock() {
            m.insert(agent.clone(), st);
        }
    }

    fn child(&self, agent: &AgentName) -> Option<ChildState> {
        self.children
            .lock()
            .ok()
            .and_then(|m| m.get(agent).copied())
    }

    /// The pid of a task's agent: from this process's own children, else from the pid file a
    /// previous orchestrator run left, if that process is still an agent.
    fn live_pid(&self, task: &TaskId, agent: &AgentName) -> Option<u32> {
        match self.child(agent) {
            Some(ChildState::Running(pid)) => Some(pid),
            Some(ChildState::Exited(_)) => None,
            None => read_agent_pid(&self.workspace(task), agent),
        }
    }
}

/// Variables every local agent gets from the orchestrator's environment (see
/// [`LocalBackendConfig::pass_env`] for more).
const BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TERM",
    "TZ",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

impl LocalBackend {
    /// Paths the agent keeps its runner and editor out of (`GUILDNET_DENY_PATHS`): the
    /// orchestrator's state dir (admin token, kubeconfigs, database), the other agents'
    /// directories (the agent allows its own), and the user's kubeconfigs.
    fn deny_paths(&self) -> std::ffi::OsString {
        let mut paths = vec![
            self.cfg.state.root().to_owned(),
            self.cfg.workspaces_root.clone(),
        ];
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            paths.push(PathBuf::from(home).join(".kube"));
        }
        if let Some(kc) = std::env::var_os("KUBECONFIG").filter(|h| !h.is_empty()) {
            paths.extend(std::env::split_paths(&kc));
        }
        std::env::join_paths(paths).unwrap_or_default()
    }
}

fn pid_file(workspace: &Path) -> PathBuf {
    workspace.join("agent.pid")
}

/// Reads `agent.pid` (`<pid> <agent name> <start time>`) and checks the process still runs
/// that agent: the pid's start time (from `/proc/<pid>/stat`, readable even for the agent,
/// which makes itself non-dumpable) must be the recorded one, so a reused pid is not taken
/// for the agent.
fn read_agent_pid(workspace: &Path, agent: &AgentName) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file(workspace)).ok()?;
    let mut parts = text.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    if parts.next()? != agent.as_str() {
        return None;
    }
    let started: u64 = parts.next()?.parse().ok()?;
    (process_start_time(pid)? == started).then_some(pid)
}

/// A process's start time in clock ticks since boot.
fn process_start_time(pid: u32) -> Option<u64> {
    crate::procfs::stat(pid).map(|s| s.start_time)
}

fn workload_err(
    action: &'static str,
    launch_task: &TaskId,
    agent: &AgentName,
    reason: String,
) -> BackendError {
    BackendError::Workload {
        action,
        task: launch_task.clone(),
        agent: agent.clone(),
        reason,
    }
}

#[async_trait]
impl ClusterBackend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn submit(&self, launch: AgentLaunch) -> Result<(), BackendError> {
        if launch.pool.is_some() {
            // A warm agent (started by whoever runs the pool) already took the task.
            return Ok(());
        }
        if self.live_pid(&launch.task_id, &launch.agent).is_some() {
            return Ok(());
        }
        let ws = self.workspace(&launch.task_id);
        let err = |reason: String| workload_err("submit", &launch.task_id, &launch.agent, reason);
        crate::state_dir::create_private_dir(&ws.join("workspace"))
            .map_err(|e| err(e.to_string()))?;
        // A home of its own, like a pod's: tools that keep caches and settings under $HOME work,
        // and nothing a runner writes there lands in the user's real home.
        let home = ws.join("home");
        crate::state_dir::create_private_dir(&home).map_err(|e| err(e.to_string()))?;
        let agent_state = ws.join("state");
        crate::state_dir::create_private_dir(&agent_state).map_err(|e| err(e.to_string()))?;
        if let Some(user) = &self.cfg.agent_user {
            // The agent user passes through the agent dir (0711: its log, pid and editor
            // record stay the orchestrator's, unreadable) into the three directories it owns.
            crate::agent_user::create_passable_dir(&ws).map_err(|e| err(e.to_string()))?;
            for dir in [ws.join("workspace"), home.clone(), agent_state.clone()] {
                crate::agent_user::give_to(&dir, user).map_err(|e| err(e.to_string()))?;
            }
        }
        let log_path = ws.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| err(format!("open {}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| err(format!("dup {}: {e}", log_path.display())))?;
        let mut cmd = tokio::process::Command::new(&self.cfg.agent_bin);
        // A clean environment: the orchestrator's own credentials (and whatever else its
        // environment holds) never reach agents or their runners.
        cmd.env_clear();
        for (k, v) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if BASE_ENV.contains(&name.as_ref())
                || name.starts_with("LC_")
                || self.cfg.pass_env.iter().any(|p| *p == name)
            {
                cmd.env(&k, &v);
            }
        }
        cmd.args(&self.cfg.agent_args)
            .current_dir(&ws)
            .env(agent_env::WORKSPACE, ws.join("workspace"))
            .env(agent_env::STATE_DIR, &agent_state)
            .env(agent_env::DENY_PATHS, self.deny_paths())
            .env("HOME", &home)
            .env(agent_env::SANDBOX_WRITE_PATHS, &home)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        for (k, v) in launch.env() {
            cmd.env(k, v);
        }
        if let Some(r) = &self.cfg.runner {
            cmd.env(agent_env::RUNNER, r);
        }
        // The orchestrator's settings (runner, forge, keys). A local agent's environment is
        // readable only by its own user, like the backend's own, so the secret half goes there.
        for (k, v) in &launch.settings.env {
            cmd.env(k, v);
        }
        for (k, v) in &launch.settings.secret_env {
            cmd.env(k, v.expose());
        }
        for (k, v) in &self.cfg.extra_env {
            cmd.env(k, v);
        }
        if let Some(cs) = &self.cfg.code_server {
            let ep = self.new_editor(&ws, &launch.agent).map_err(err)?;
            let addr = format!("{}:{}", ep.host, ep.port);
            cmd.env(agent_env::CODE_SERVER, cs)
                .env(agent_env::EDITOR_ADDR, &addr)
                .env(agent_env::EDITOR_ADVERTISE, &addr);
            if let Some(pw) = &ep.password {
                cmd.env(agent_env::CODE_SERVER_PASSWORD, pw.expose());
            }
            if let Ok(mut m) = self.editors.lock() {
                m.insert(launch.agent.clone(), ep);
            }
        }
        if let Some(user) = &self.cfg.agent_user {
            // std drops supplementary groups when it switches the uid.
            cmd.uid(user.uid).gid(user.gid).env("USER", &user.name);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| err(format!("spawn {}: {e}", self.cfg.agent_bin.display())))?;
        let pid = child.id().unwrap_or(0);
        let started = process_start_time(pid).unwrap_or(0);
        crate::state_dir::write_private_file(
            &pid_file(&ws),
            format!("{pid} {} {started}\n", launch.agent).as_bytes(),
        )
        .map_err(|e| err(e.to_string()))?;
        self.set_child(&launch.agent, ChildState::Running(pid));
        tracing::info!(task = %launch.task_id, agent = %launch.agent, pid, "local agent started");
        let me = self.clone();
        let agent = launch.agent.clone();
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            tracing::info!(agent = %agent, ?code, "local agent exited");
            me.set_child(&agent, ChildState::Exited(code));
        });
        Ok(())
    }

    async fn cancel(
        &self,
        _org: &OrgName,
        task: &TaskId,
        agent: &AgentName,
    ) -> Result<(), BackendError> {
        let Some(pid) = self.live_pid(task, agent) else {
            return Ok(());
        };
        let pgid = Pid::from_raw(pid as i32);
        if let Err(e) = killpg(pgid, Signal::SIGTERM) {
            if e == nix::errno::Errno::ESRCH {
                return Ok(());
            }
            return Err(workload_err("cancel", task, agent, e.to_string()));
        }
        let grace = self.cfg.kill_grace;
        let me = self.clone();
        let (task, agent) = (task.clone(), agent.clone());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if me.live_pid(&task, &agent) == Some(pid) {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        });
        Ok(())
    }

    async fn status(
        &self,
        _org: &OrgName,
        task: &TaskId,
        agent: &AgentName,
    ) -> Result<WorkloadState, BackendError> {
        Ok(match self.child(agent) {
            Some(ChildState::Running(_)) => WorkloadState::Running,
            Some(ChildState::Exited(code)) => WorkloadState::Exited(code),
            None => match read_agent_pid(&self.workspace(task), agent) {
                Some(_) => WorkloadState::Running,
                // Started here (its workspace is in this state dir) and gone, or, with a store
                // of its own, never started (the orchestrator died before the spawn).
                None if !self.cfg.shared_store || self.workspace(task).exists() => {
                    WorkloadState::Absent
                }
                // Never started here: another replica's agent, which this process cannot see.
                None => WorkloadState::Unknown,
            },
        })
    }

    /// Where the agent's code-server listens (the backend chose the port and password at
    /// submit), with the agent's pid: code-server runs under the agent, so the editor proxy
    /// sends nothing to the port while another process holds it
    /// ([`EditorEndpoint::held_by`]). `None` without `code_server` (the orchestrator falls
    /// back to the address the agent advertised) and once the agent no longer runs (its
    /// code-server ended with it, and its port is anyone's).
    async fn editor_endpoint(
        &self,
        _org: &OrgName,
        agent: &AgentName,
    ) -> Result<Option<EditorEndpoint>, BackendError> {
        let known = self.editors.lock().ok().and_then(|m| m.get(agent).cloned());
        let ep = match (known, self.child(agent)) {
            (Some(ep), Some(ChildState::Running(pid))) => Some(EditorEndpoint {
                held_by: Some(pid),
                ..ep
            }),
            (Some(_), Some(ChildState::Exited(_))) => None,
            // After an orchestrator restart, or another replica's agent on this host: the
            // agent's workspace has its editor record and its pid file.
            _ => self.editor_from_disk(agent),
        };
        Ok(ep.filter(|ep| ep.held_by.is_some()))
    }

    async fn describe(
        &self,
        _org: &OrgName,
        _task: &TaskId,
        _agent: Option<AgentName>,
    ) -> Result<Option<crate::seams::WorkloadInfo>, BackendError> {
        // A local agent's state is in the task itself (and its log).
        Ok(None)
    }

    async fn close_editor(&self, _org: &OrgName, _agent: &AgentName) -> Result<bool, BackendError> {
        Ok(false)
    }

    async fn task_finished(&self, _task: &crate::model::Task) -> Result<(), BackendError> {
        // The agent process exits by itself once it has reported completion.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent another replica started (no workspace in this state dir) is Unknown, not
    /// Absent: the reaper must not requeue its task as if its agent had died.
    #[tokio::test]
    async fn a_workload_started_elsewhere_is_unknown_and_one_started_here_and_gone_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = LocalBackendConfig::new(StatePaths::new(dir.path()));
        let org = OrgName::new("acme").unwrap();
        let agent = AgentName::new("agent-1").unwrap();
        let task = TaskId::generate();
        // Alone on its store (SQLite): no directory means never started, i.e. gone.
        let alone = LocalBackend::new(cfg.clone());
        assert_eq!(
            alone.status(&org, &task, &agent).await.unwrap(),
            WorkloadState::Absent
        );
        cfg.shared_store = true;
        let b = LocalBackend::new(cfg);
        assert_eq!(
            b.status(&org, &task, &agent).await.unwrap(),
            WorkloadState::Unknown
        );
        std::fs::create_dir_all(b.workspace(&task)).unwrap();
        assert_eq!(
            b.status(&org, &task, &agent).await.unwrap(),
            WorkloadState::Absent
        );
    }
}
