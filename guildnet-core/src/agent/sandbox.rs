//! Confinement of the processes the agent starts on behalf of untrusted input: the runner,
//! code-server and git (which runs hooks, filters and helpers a repository or runner can plant).
//! This module owns the Landlock ruleset, the capability drop and the other per-child process
//! attributes; it does not decide *what* a child may touch (the callers build a
//! [`SandboxPolicy`] from [`SandboxConfig`]) and it never touches the agent process itself (see
//! [`super::process`]).
//!
//! # What a sandboxed child gets
//!
//! - Landlock (Linux 5.13+; the rules below need ABI 1, signal and abstract-socket scoping need
//!   ABI 6): read and execute everywhere (`/`), read/write on its own paths (workspace, private
//!   temp dir, `/tmp`, `/var/tmp`, `/dev`, and for code-server its data dir), and nothing at all
//!   under the *deny* paths (the orchestrator's state dir from `GUILDNET_DENY_PATHS`, the agent's
//!   own state dir, `~/.kube`, `~/.guildnet`, `~/.guildnetdev`, the files named in `KUBECONFIG`).
//!   A sandboxed process can neither ptrace nor read `/proc/<pid>/environ`/`mem` of processes
//!   outside its domain (the agent, the orchestrator), nor signal them, nor connect to abstract
//!   UNIX sockets created outside it.
//! - `no_new_privs` (set-uid binaries do not raise privileges; required by Landlock).
//! - When the agent runs as uid 0: every capability dropped (bounding, ambient, permitted,
//!   effective and inheritable sets), so a root runner cannot override file permissions or
//!   ptrace the (non-dumpable) agent.
//! - `PR_SET_PDEATHSIG(SIGKILL)`: the child dies with the agent; code-server is also made a
//!   child subreaper, so its own orphans stay in its tree and the agent's orphan sweep
//!   ([`super::process::kill_orphans`]) never reaches them.
//!
//! # Denying a subtree of an allowed tree
//!
//! Landlock is an allow-list: a rule on a directory grants access to everything beneath it, and
//! there is no "deny" rule. To allow `/` but deny `/root/.guildnet/state`, the rule on `/` is
//! replaced by rules on each sibling of each path component on the way down: every entry of
//! `/` except `root`, every entry of `/root` except `.guildnet`, every entry of
//! `/root/.guildnet` except `state`. [`plan`] does this for every allowed path that contains a
//! deny path. Paths explicitly allowed *beneath* a deny path (the workspace inside the
//! orchestrator's state dir with the local backend, code-server's data dir inside the agent's
//! state dir) keep their own rule.
//!
//! Limits of that expansion (documented in docs/AGENT.md):
//! - It is a snapshot: an entry created later directly inside an expanded directory (e.g. a new
//!   file in `/tmp` when the state dir lies under `/tmp`, as in tests) is not covered, so the
//!   child cannot use it. Children get a private `TMPDIR` for that reason.
//! - Symbolic links among the siblings are skipped (a rule on a link would apply to its target,
//!   which could be a denied directory); the paths they point to stay reachable through their
//!   real location when that is allowed.
//! - Landlock rules bind to inodes: a denied directory reachable through another mount (a bind
//!   mount) or a hard link to a denied file elsewhere is not covered.
//! - Metadata is not confined: a child can still `stat` names under a denied path.
//!
//! # How it is applied
//!
//! The ruleset is built in the parent (opening the paths, [`SandboxPolicy::prepare`]); the
//! child, between `fork` and `exec` ([`Prepared::install`]), only makes raw system calls
//! (`prctl`, `capset`, `landlock_restrict_self`), which are async-signal-safe and allocate
//! nothing. When Landlock is not available (old kernel, disabled LSM), the agent logs a warning
//! once, reports it in its heartbeat state (`sandbox`), and still applies the rest.

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// The Landlock ABI this module was written and tested against (Linux 6.12+). Newer kernels
/// are used at this level; older ones get what they support (best effort).
const TESTED_ABI: ABI = ABI::V6;

/// Why a sandbox could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The Landlock ruleset could not be created or filled.
    #[error("cannot build the Landlock ruleset: {0}")]
    Landlock(String),
    /// A path of the policy could not be opened.
    #[error("cannot open {path} for the sandbox: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What the kernel offers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "landlock")]
pub enum LandlockSupport {
    /// Landlock is available with this ABI version.
    Available {
        /// The kernel's Landlock ABI version.
        abi: i32,
    },
    /// Landlock is not available: children run without filesystem confinement.
    Unavailable {
        /// Why (not built into the kernel, disabled at boot).
        reason: String,
    },
}

/// Asks the kernel once (and logs a warning once when Landlock is missing).
pub fn landlock_support() -> &'static LandlockSupport {
    static SUPPORT: OnceLock<LandlockSupport> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
        // the ABI version; it reads no memory.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0 as libc::c_long,
                1 as libc::c_long,
            )
        };
        let support = if v > 0 {
            LandlockSupport::Available { abi: v as i32 }
        } else {
            let err = std::io::Error::last_os_error();
            let reason = match err.raw_os_error() {
                Some(libc::ENOSYS) => "not built into this kernel".to_owned(),
                Some(libc::EOPNOTSUPP) => "disabled on this kernel (boot option lsm=)".to_owned(),
                _ => err.to_string(),
            };
            LandlockSupport::Unavailable { reason }
        };
        if let LandlockSupport::Unavailable { reason } = &support {
            tracing::warn!(
                %reason,
                "Landlock is not available: the runner, git and code-server run without \
                 filesystem confinement (capabilities are still dropped and no_new_privs set)"
            );
        }
        support
    })
}

/// Environment the sandboxes are built from (see [`crate::agent_env`]).
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Paths no child may read or write (`GUILDNET_DENY_PATHS` plus the defaults).
    pub deny: Vec<PathBuf>,
    /// Extra paths every child may write (`GUILDNET_SANDBOX_WRITE_PATHS`).
    pub extra_write: Vec<PathBuf>,
}

impl SandboxConfig {
    /// The deny list: `listed` (colon-separated, like `PATH`) plus `~/.kube`, `~/.guildnet`,
    /// `~/.guildnetdev` and every file named in `kubeconfig` (colon-separated).
    pub fn new(
        listed: Option<&str>,
        extra_write: Option<&str>,
        home: Option<&Path>,
        kubeconfig: Option<&str>,
    ) -> Self {
        let split = |s: Option<&str>| -> Vec<PathBuf> {
            s.unwrap_or("")
                .split(':')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .collect()
        };
        let mut deny = split(listed);
        if let Some(h) = home.filter(|h| h.is_absolute() && *h != Path::new("/")) {
            for d in [".kube", ".guildnet", ".guildnetdev"] {
                deny.push(h.join(d));
            }
        }
        deny.extend(split(kubeconfig));
        Self {
            deny,
            extra_write: split(extra_write),
        }
    }

    fn base(&self, agent_state: &Path) -> SandboxPolicy {
        let mut deny = self.deny.clone();
        deny.push(agent_state.to_path_buf());
        let mut write: Vec<PathBuf> = ["/tmp", "/var/tmp", "/dev"]
            .iter()
            .map(PathBuf::from)
            .collect();
        write.extend(self.extra_write.iter().cloned());
        SandboxPolicy {
            read: vec![PathBuf::from("/")],
            write,
            deny,
        }
    }

    /// The runner: its working tree and temp dir writable, the agent's state dir denied.
    pub fn runner(&self, agent_state: &Path, workspace: &Path, tmp: &Path) -> SandboxPolicy {
        let mut p = self.base(agent_state);
        p.write.push(workspace.to_path_buf());
        p.write.push(tmp.to_path_buf());
        p
    }

    /// code-server: the workspace, its data dir (inside the agent's state dir) and temp dir.
    pub fn editor(
        &self,
        agent_state: &Path,
        workspace: &Path,
        data_dir: &Path,
        tmp: &Path,
    ) -> SandboxPolicy {
        let mut p = self.runner(agent_state, workspace, tmp);
        p.write.push(data_dir.to_path_buf());
        p
    }

    /// git in the workspace (clone, commit, push): the workspace writable, nothing of the
    /// agent's state.
    pub fn git(&self, agent_state: &Path, workspace: &Path) -> SandboxPolicy {
        let mut p = self.base(agent_state);
        p.write.push(workspace.to_path_buf());
        p
    }
}

/// What one child may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxPolicy {
    /// Readable and executable trees.
    pub read: Vec<PathBuf>,
    /// Readable, writable and executable trees.
    pub write: Vec<PathBuf>,
    /// Trees nothing above may reach, except paths of `read`/`write` lying beneath them.
    pub deny: Vec<PathBuf>,
}

/// One Landlock rule of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRule {
    /// The path the rule is on (a directory tree or a file).
    pub path: PathBuf,
    /// Read-write (else read and execute).
    pub write: bool,
}

/// Makes `p` absolute and free of symlinks where it exists (the deepest existing ancestor is
/// resolved, the missing rest appended), so deny and allow paths compare by real location.
fn real_path(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(r) = std::fs::canonicalize(&existing) {
            let mut out = r;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

fn normalize(p: &Path) -> PathBuf {
    // `..` components would make the prefix comparisons lie; they were resolved by
    // canonicalize for existing parts, and are dropped conservatively for missing parts.
    p.components()
        .filter(|c| !matches!(c, Component::ParentDir | Component::CurDir))
        .collect()
}

/// Turns a policy into Landlock rules: allowed trees that contain a deny path are replaced by
/// their entries, recursively, minus the denied ones (see the module doc). Pure apart from
/// reading directories; symbolic links among expanded entries are skipped.
pub fn plan(policy: &SandboxPolicy) -> Vec<PlannedRule> {
    let deny: Vec<PathBuf> = policy
        .deny
        .iter()
        .map(|d| normalize(&real_path(d)))
        .collect();
    let mut rules = Vec::new();
    let allowed = policy
        .write
        .iter()
        .map(|p| (p, true))
        .chain(policy.read.iter().map(|p| (p, false)));
    for (p, write) in allowed {
        let p = normalize(&real_path(p));
        if !p.exists() {
            continue;
        }
        // A path equal to a deny path stays denied; one strictly beneath a deny path is an
        // explicit exception and keeps its rule.
        if deny.contains(&p) {
            continue;
        }
        expand(&p, write, &deny, &mut rules, 0);
    }
    rules
}

fn expand(dir: &Path, write: bool, deny: &[PathBuf], out: &mut Vec<PlannedRule>, depth: usize) {
    let inside = deny.iter().any(|d| d != dir && d.starts_with(dir));
    if !inside || depth > 64 {
        out.push(PlannedRule {
            path: dir.to_path_buf(),
            write,
        });
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        // Unreadable: no rule at all, which is the safe side.
        return;
    };
    for e in entries.flatten() {
        let child = dir.join(e.file_name());
        let Ok(meta) = std::fs::symlink_metadata(&child) else {
            continue;
        };
        if meta.file_type().is_symlink() || deny.contains(&child) {
            continue;
        }
        if meta.is_dir() {
            expand(&child, write, deny, out, depth + 1);
        } else {
            out.push(PlannedRule { path: child, write });
        }
    }
}

/// Options of the child besides the filesystem rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildOptions {
    /// Make the child a child subreaper (code-server: its orphans stay in its tree).
    pub subreaper: bool,
}

/// A sandbox ready to be installed on a command: the ruleset is built, only the child's
/// system calls remain.
#[derive(Debug)]
pub struct Prepared {
    ruleset: Option<OwnedFd>,
    drop_caps: bool,
    last_cap: i32,
    rules: usize,
}

impl Prepared {
    /// Number of Landlock rules (0 without Landlock).
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// Whether Landlock will be enforced.
    pub fn landlocked(&self) -> bool {
        self.ruleset.is_some()
    }

    /// Installs the sandbox on `cmd`: applied in the child after `fork`, before `exec`.
    pub fn install(self, cmd: &mut tokio::process::Command, opts: ChildOptions) {
        let Prepared {
            ruleset,
            drop_caps,
            last_cap,
            ..
        } = self;
        let ruleset_fd = ruleset.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        // SAFETY: the closure runs in the forked child; it only makes raw system calls
        // (prctl, capset, landlock_restrict_self), which are async-signal-safe, and does not
        // allocate (io::Error::last_os_error holds an errno). `ruleset` is moved into the
        // closure, so the descriptor stays open until the command is dropped after spawning.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &ruleset;
                confine_child(ruleset_fd, drop_caps, last_cap, opts)
            });
        }
    }
}

/// Header and data of capset(2), version 3 (64-bit capability sets in two words).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn os_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// prctl(2) with every argument as the `unsigned long` the kernel reads (prctl is variadic: a
/// plain integer literal would leave the upper half of the register undefined).
///
/// # Safety
/// Only for options whose arguments are plain integers.
pub(crate) unsafe fn prctl(op: libc::c_int, a2: u64, a3: u64) -> libc::c_int {
    libc::prctl(
        op,
        a2 as libc::c_ulong,
        a3 as libc::c_ulong,
        0 as libc::c_ulong,
        0 as libc::c_ulong,
    )
}

/// Runs in the child between fork and exec: raw system calls only.
fn confine_child(
    ruleset_fd: i32,
    drop_caps: bool,
    last_cap: i32,
    opts: ChildOptions,
) -> std::io::Result<()> {
    // SAFETY (whole function): plain system calls on integers and on stack memory owned here.
    unsafe {
        if prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0) != 0 {
            return Err(os_err());
        }
        if opts.subreaper && prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0) != 0 {
            return Err(os_err());
        }
        if drop_caps {
            for cap in 0..=last_cap {
                if prctl(libc::PR_CAPBSET_READ, cap as u64, 0) == 1
                    && prctl(libc::PR_CAPBSET_DROP, cap as u64, 0) != 0
                {
                    return Err(os_err());
                }
            }
            // Ambient capabilities exist since Linux 4.3; EINVAL before that means none.
            if prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
                0,
            ) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(os_err());
            }
            let mut header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            if libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            ) != 0
            {
                return Err(os_err());
            }
        }
        if prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0) != 0 {
            return Err(os_err());
        }
        if ruleset_fd >= 0
            && libc::syscall(
                libc::SYS_landlock_restrict_self,
                ruleset_fd as libc::c_long,
                0 as libc::c_long,
            ) != 0
        {
            return Err(os_err());
        }
    }
    Ok(())
}

fn last_cap() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

impl SandboxPolicy {
    /// Builds the ruleset in the calling (parent) process.
    pub fn prepare(&self) -> Result<Prepared, SandboxError> {
        // SAFETY: geteuid cannot fail and touches no memory.
        let drop_caps = unsafe { libc::geteuid() } == 0;
        let ruleset = match landlock_support() {
            LandlockSupport::Unavailable { .. } => None,
            LandlockSupport::Available { .. } => Some(self.build_ruleset()?),
        };
        let rules = ruleset.as_ref().map(|(_, n)| *n).unwrap_or(0);
        Ok(Prepared {
            ruleset: ruleset.map(|(fd, _)| fd),
            drop_caps,
            last_cap: last_cap(),
            rules,
        })
    }

    fn build_ruleset(&self) -> Result<(OwnedFd, usize), SandboxError> {
        let ll = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
        let all = AccessFs::from_all(TESTED_ABI);
        let read = AccessFs::from_read(TESTED_ABI);
        let file_rights = AccessFs::from_file(TESTED_ABI);
        let mut created = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)
            .map_err(ll)?
            .scope(Scope::from_all(TESTED_ABI))
            .map_err(ll)?
            .create()
            .map_err(ll)?;
        let mut n = 0;
        for rule in plan(self) {
            let file = match open_path_nofollow(&rule.path) {
                Ok(f) => f,
                // Vanished since it was listed: nothing to allow.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SandboxError::Path {
                        path: rule.path,
                        source,
                    })
                }
            };
            let meta = file.metadata().map_err(|source| SandboxError::Path {
                path: rule.path.clone(),
                source,
            })?;
            if meta.file_type().is_symlink() {
                continue;
            }
            let mut access: BitFlags<AccessFs> = if rule.write { all } else { read };
            if !meta.is_dir() {
                access &= file_rights;
            }
            created = created
                .add_rule(PathBeneath::new(&file, access))
                .map_err(ll)?;
            n += 1;
        }
        let fd: Option<OwnedFd> = created.into();
        let fd = fd.ok_or_else(|| {
            SandboxError::Landlock("the kernel refused to create a ruleset".into())
        })?;
        Ok((fd, n))
    }
}

/// Opens `path` as an `O_PATH` descriptor without following a final symlink.
fn open_path_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rules_of(p: &SandboxPolicy) -> Vec<(PathBuf, bool)> {
        let mut v: Vec<_> = plan(p).into_iter().map(|r| (r.path, r.write)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_denied_subtree_is_carved_out_by_allowing_its_siblings() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        for p in ["a/b/state/agents/t1/workspace", "a/b/other", "a/c", "x"] {
            std::fs::create_dir_all(root.join(p)).unwrap();
        }
        std::fs::write(root.join("a/file"), "f").unwrap();
        // A symlink next to the path down must not be followed (it points into the denied tree).
        symlink(root.join("a/b/state"), root.join("a/b/link")).unwrap();
        let policy = SandboxPolicy {
            read: vec![root.clone()],
            write: vec![root.join("a/b/state/agents/t1/workspace")],
            deny: vec![root.join("a/b/state")],
        };
        assert_eq!(
            rules_of(&policy),
            vec![
                (root.join("a/b/other"), false),
                (root.join("a/b/state/agents/t1/workspace"), true),
                (root.join("a/c"), false),
                (root.join("a/file"), false),
                (root.join("x"), false),
            ]
        );
    }

    #[test]
    fn deny_paths_compare_by_real_location_and_missing_ones_still_cut() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("home/u/.cache")).unwrap();
        std::fs::create_dir_all(root.join("real/state")).unwrap();
        symlink(root.join("real"), root.join("alias")).unwrap();
        let policy = SandboxPolicy {
            read: vec![root.clone()],
            write: vec![],
            // Named through a symlink; and a deny path that does not exist yet.
            deny: vec![root.join("alias/state"), root.join("home/u/.kube")],
        };
        let rules = rules_of(&policy);
        assert!(!rules
            .iter()
            .any(|(p, _)| p.starts_with(root.join("real/state"))));
        assert!(!rules
            .iter()
            .any(|(p, _)| *p == root || *p == root.join("home/u")));
        assert!(rules.contains(&(root.join("home/u/.cache"), false)));
        // The allow path equal to a deny path is dropped.
        let same = SandboxPolicy {
            read: vec![],
            write: vec![root.join("real/state")],
            deny: vec![root.join("real/state")],
        };
        assert!(plan(&same).is_empty());
    }

    #[test]
    fn config_reads_the_deny_list_and_adds_the_defaults() {
        let c = SandboxConfig::new(
            Some("/srv/state: relative/ignored ::/etc/k"),
            Some("/home/coder"),
            Some(Path::new("/home/u")),
            Some("/home/u/k1.yaml:/k2"),
        );
        assert_eq!(
            c.deny,
            [
                "/srv/state",
                "/etc/k",
                "/home/u/.kube",
                "/home/u/.guildnet",
                "/home/u/.guildnetdev",
                "/home/u/k1.yaml",
                "/k2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(c.extra_write, vec![PathBuf::from("/home/coder")]);
        let r = c.runner(Path::new("/st"), Path::new("/ws"), Path::new("/tmp/gn-x"));
        assert!(r.deny.contains(&PathBuf::from("/st")));
        assert!(r.write.contains(&PathBuf::from("/ws")));
        assert_eq!(r.read, vec![PathBuf::from("/")]);
    }

    /// The same ruleset the runner gets, applied to a plain child: it cannot read the denied
    /// file (EACCES) but can read the system and write its workspace.
    #[tokio::test]
    async fn a_sandboxed_child_cannot_read_a_denied_dir_but_works_in_its_workspace() {
        if matches!(landlock_support(), LandlockSupport::Unavailable { .. }) {
            panic!(
                "Landlock is required for this test: {:?}",
                landlock_support()
            );
        }
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let ws = state.join("agents/t1/workspace");
        let agent_state = state.join("agents/t1/state");
        let tmp = d.path().join("tmp");
        for p in [&ws, &agent_state, &tmp] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(state.join("orchestrator.token"), "secret-admin-token").unwrap();
        std::fs::write(agent_state.join("code-server.yaml"), "password: x").unwrap();
        let cfg = SandboxConfig::new(Some(state.to_str().unwrap()), None, None, None);
        let policy = cfg.runner(&agent_state, &ws, &tmp);
        let prepared = policy.prepare().unwrap();
        assert!(prepared.landlocked() && prepared.rules() > 0);
        let script = format!(
            "cat {tok} ; echo \"token=$?\"; cat {cs}; echo \"cs=$?\"; \
             ls /usr/bin >/dev/null; echo \"usr=$?\"; \
             echo hi > {ws}/out.txt; echo \"ws=$?\"; echo t > {tmp}/t; echo \"tmp=$?\"; \
             kill -0 $PPID; echo \"signal=$?\"",
            tok = state.join("orchestrator.token").display(),
            cs = agent_state.join("code-server.yaml").display(),
            ws = ws.display(),
            tmp = tmp.display(),
        );
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(&script);
        prepared.install(&mut cmd, ChildOptions::default());
        let out = cmd.output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stdout.contains("token=1"), "{stdout}\n{stderr}");
        assert!(stderr.contains("Permission denied"), "{stderr}");
        assert!(!stdout.contains("secret-admin-token"), "{stdout}");
        assert!(stdout.contains("cs=1"), "{stdout}");
        assert!(stdout.contains("usr=0"), "{stdout}\n{stderr}");
        assert!(stdout.contains("ws=0"), "{stdout}\n{stderr}");
        assert!(stdout.contains("tmp=0"), "{stdout}\n{stderr}");
        // Signal scoping (ABI 6): the child cannot signal its parent outside the sandbox.
        if matches!(landlock_support(), LandlockSupport::Available { abi } if *abi >= 6) {
            assert!(stdout.contains("signal=1"), "{stdout}\n{stderr}");
        }
        assert_eq!(std::fs::read_to_string(ws.join("out.txt")).unwrap(), "hi\n");
    }

    #[tokio::test]
    async fn as_root_the_child_has_no_capabilities_and_no_new_privs() {
        let policy = SandboxPolicy {
            read: vec![PathBuf::from("/")],
            write: vec![PathBuf::from("/dev")],
            deny: vec![],
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg("grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status");
        policy
            .prepare()
            .unwrap()
            .install(&mut cmd, ChildOptions::default());
        let out = cmd.output().await.unwrap();
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        if unsafe { libc::geteuid() } == 0 {
            for k in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
                assert!(
                    status.contains(&format!("{k}:\t0000000000000000")),
                    "{k} not empty: {status}"
                );
            }
        }
    }
}
