//! Protections of the agent process itself and bookkeeping of its children: secrets out of its
//! environment, not dumpable, child subreaper, and the sweep that kills the orphans a runner
//! leaves behind. The children's own confinement is [`super::sandbox`].
//!
//! - [`harden_self`] removes the secret variables from the agent's environment (so no child
//!   inherits them) and makes the process non-dumpable: `/proc/<agent>/environ` still shows
//!   the initial environment block, but reading it (or `mem`, or attaching with ptrace) now
//!   needs `CAP_SYS_PTRACE`, which a runner never has (it runs without capabilities and, with
//!   Landlock, in another domain). It also makes the agent a child subreaper: a runner's
//!   descendants that detach (`setsid cmd &`, double forks) are re-parented to the agent
//!   instead of init.
//! - Every child the agent starts is spawned through [`spawn_tracked`], which records its pid
//!   while it lives. [`kill_orphans`] kills and reaps every other child of the agent (the
//!   re-parented orphans). code-server is a subreaper itself, so its tree never shows up here.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// What [`harden_self`] achieved (each step can fail on exotic kernels; the agent goes on).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hardening {
    /// Secret variables removed from the environment.
    pub removed: Vec<String>,
    /// `PR_SET_DUMPABLE 0` took effect.
    pub non_dumpable: bool,
    /// `PR_SET_CHILD_SUBREAPER` took effect.
    pub subreaper: bool,
}

/// Removes [`crate::agent_env::SECRETS`] and `extra` from the environment, makes the process non-dumpable
/// and a child subreaper. Call it after the configuration was read and before any other thread
/// is started (changing the environment races with threads reading it).
pub fn harden_self(extra: &[&str]) -> Hardening {
    let mut removed = Vec::new();
    for k in crate::agent_env::SECRETS.iter().chain(extra) {
        if std::env::var_os(k).is_some() {
            std::env::remove_var(k);
            removed.push((*k).to_owned());
        }
    }
    // SAFETY: prctl with integer arguments only.
    let non_dumpable = unsafe { super::sandbox::prctl(libc::PR_SET_DUMPABLE, 0, 0) } == 0;
    // SAFETY: as above.
    let subreaper = unsafe { super::sandbox::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0) } == 0;
    OWNS_PROCESS.store(subreaper, std::sync::atomic::Ordering::SeqCst);
    if !non_dumpable || !subreaper {
        tracing::warn!(
            non_dumpable,
            subreaper,
            "cannot fully harden the agent process"
        );
    }
    Hardening {
        removed,
        non_dumpable,
        subreaper,
    }
}

/// Whether the agent owns this process ([`harden_self`] made it a subreaper): only then are
/// untracked children orphans of the runner. An agent embedded in another program (a custom
/// orchestrator, a test) must never touch that program's own children.
static OWNS_PROCESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Pids of the children the agent started itself and still waits for.
static TRACKED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// A tracked child's pid; untracked when dropped (after the child was waited for).
#[derive(Debug)]
pub struct Tracked(Option<u32>);

impl Tracked {
    /// The pid.
    pub fn pid(&self) -> Option<u32> {
        self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let (Some(pid), Ok(mut set)) = (self.0, TRACKED.lock()) {
            set.remove(&pid);
        }
    }
}

/// Spawns `cmd` and records its pid, so [`kill_orphans`] leaves it alone. Keep the returned
/// guard until the child was waited for.
pub fn spawn_tracked(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, Tracked)> {
    // The lock is held across the spawn: a sweep never sees the new child untracked.
    let mut set = TRACKED.lock().unwrap_or_else(|p| p.into_inner());
    let child = cmd.spawn()?;
    let pid = child.id();
    if let Some(p) = pid {
        set.insert(p);
    }
    Ok((child, Tracked(pid)))
}

/// Runs `cmd` to the end (like `Command::output`) as a tracked child.
pub async fn output_tracked(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<std::process::Output> {
    let (child, _tracked) = spawn_tracked(cmd)?;
    child.wait_with_output().await
}

/// Children of this process that it did not start through [`spawn_tracked`]: orphans
/// re-parented to the agent (a subreaper). `(pid, pgid, zombie)`.
fn orphans() -> Vec<(i32, i32, bool)> {
    if !OWNS_PROCESS.load(std::sync::atomic::Ordering::SeqCst) {
        return Vec::new();
    }
    let me = std::process::id();
    let tracked = TRACKED.lock().map(|s| s.clone()).unwrap_or_default();
    crate::procfs::all()
        .into_iter()
        .filter(|(pid, s)| s.ppid == me && !tracked.contains(pid))
        .map(|(pid, s)| (pid as i32, s.pgid as i32, s.state == 'Z'))
        .collect()
}

/// Kills (SIGKILL) and reaps every orphan re-parented to the agent, repeating while killing
/// one re-parents its own children, for at most `limit`. Returns how many were killed. Does
/// nothing unless the agent owns its process ([`harden_self`] ran): an embedded agent leaves
/// its host's children alone.
pub async fn kill_orphans(limit: Duration) -> usize {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    let deadline = tokio::time::Instant::now() + limit;
    let mut killed = 0;
    loop {
        let found = orphans();
        if found.is_empty() || tokio::time::Instant::now() > deadline {
            return killed;
        }
        for (pid, pgid, zombie) in &found {
            if !zombie {
                // A group led by the orphan goes at once (its members are in its session or
                // group, not ours). An orphan's pid cannot be reused before it is reaped here.
                if pgid == pid {
                    let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                killed += 1;
            }
        }
        // Reap them (only these pids: the tracked children belong to tokio's waiters).
        for (pid, _, _) in &found {
            let p = Pid::from_raw(*pid);
            while tokio::time::Instant::now() < deadline {
                match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_names_with_spaces_and_parens() {
        let s = crate::procfs::stat(std::process::id()).unwrap();
        assert!(s.state == 'R' || s.state == 'S');
        assert_eq!(s.ppid as i32, nix::unistd::getppid().as_raw());
    }

    #[test]
    fn hardening_removes_secrets_and_makes_the_process_non_dumpable() {
        std::env::set_var("GUILDNET_TEST_ONLY_SECRET", "s3cret");
        let h = harden_self(&["GUILDNET_TEST_ONLY_SECRET"]);
        assert!(h.removed.contains(&"GUILDNET_TEST_ONLY_SECRET".to_owned()));
        assert!(std::env::var_os("GUILDNET_TEST_ONLY_SECRET").is_none());
        assert!(h.non_dumpable && h.subreaper);
        // SAFETY: PR_GET_DUMPABLE takes no arguments.
        assert_eq!(
            unsafe { super::super::sandbox::prctl(libc::PR_GET_DUMPABLE, 0, 0) },
            0
        );
        // A child inherits none of it.
        let out = std::process::Command::new("env").output().unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
    }
}
