//! The user local agents run as.
//!
//! An orchestrator run as root must not hand root to the runners it starts: by default
//! ([`AgentUserSpec::Auto`]) a root orchestrator runs its local agents as `nobody`, so a runner
//! cannot read the state dir (admin token, kubeconfigs, database) even where Landlock is missing,
//! and cannot signal or trace the orchestrator. An unprivileged orchestrator runs agents as
//! itself (it cannot switch users); Landlock then confines them.
//!
//! A switched user must be able to reach what it runs: the agent executable, code-server and the
//! agents' directories. [`reachable_by`] checks the search (`x`) permission of every ancestor
//! the way the kernel does for a user with no supplementary groups, so a setup that cannot work
//! (a binary under `/root`, mode 0700) fails at start with the path and the fix, not later in
//! every task.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Environment variable of `--agent-user`.
pub const AGENT_USER_ENV: &str = "GUILDNET_AGENT_USER";

/// The user that runs local agents, as configured (`--agent-user`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AgentUserSpec {
    /// `auto` (default): `nobody` when the orchestrator runs as root, else the orchestrator's
    /// own user.
    #[default]
    Auto,
    /// `current`: the orchestrator's own user, even when that is root (not recommended).
    Current,
    /// A user name from the password database (its primary group is used).
    Name(String),
    /// `UID[:GID]`: numeric ids (GID defaults to UID).
    Ids {
        /// The user id.
        uid: u32,
        /// The group id.
        gid: u32,
    },
}

/// Errors while choosing or preparing the agent user.
#[derive(Debug, thiserror::Error)]
pub enum AgentUserError {
    /// The `--agent-user` value is malformed.
    #[error("--agent-user {value:?}: {reason}")]
    Invalid {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The named user does not exist.
    #[error("--agent-user {0:?}: no such user on this machine (see /etc/passwd), or use UID:GID")]
    NoSuchUser(String),
    /// Switching users needs root.
    #[error(
        "--agent-user {wanted}: running agents as another user needs root, and this \
         orchestrator runs as uid {current}; run it as root or drop --agent-user"
    )]
    NeedsRoot {
        /// The user asked for.
        wanted: String,
        /// The orchestrator's uid.
        current: u32,
    },
    /// Agents would run as root without being asked to.
    #[error(
        "--agent-user {0}: that is root; agents would get the orchestrator's full power. Use \
         `--agent-user current` to run them as root on purpose"
    )]
    IsRoot(String),
    /// Something the agent must reach is out of its user's reach.
    #[error(
        "{what} {path} is not reachable by the agent user {user} (uid {uid}): {blocker} is \
         mode {mode:o} owned by uid {owner}; {fix}"
    )]
    Unreachable {
        /// What the path is (e.g. "code-server").
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The agent user's name.
        user: String,
        /// Its uid.
        uid: u32,
        /// The first directory (or the file) that denies access.
        blocker: PathBuf,
        /// That path's mode bits.
        mode: u32,
        /// That path's owner.
        owner: u32,
        /// What to do about it.
        fix: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl std::str::FromStr for AgentUserSpec {
    type Err = AgentUserError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| AgentUserError::Invalid {
            value: s.to_owned(),
            reason,
        };
        match s.trim() {
            "" => Err(invalid(
                "empty; use auto, current, a user name or UID[:GID]",
            )),
            "auto" => Ok(Self::Auto),
            "current" => Ok(Self::Current),
            v if v.starts_with(|c: char| c.is_ascii_digit()) => {
                let (u, g) = v.split_once(':').unwrap_or((v, v));
                let uid = u.parse().map_err(|_| invalid("UID is not a number"))?;
                let gid = g.parse().map_err(|_| invalid("GID is not a number"))?;
                Ok(Self::Ids { uid, gid })
            }
            v if v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                Ok(Self::Name(v.to_owned()))
            }
            _ => Err(invalid(
                "not a user name; use auto, current, a user name or UID[:GID]",
            )),
        }
    }
}

/// A resolved user other than the orchestrator's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUser {
    /// Its name (or the uid as text when it has none).
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

impl AgentUserSpec {
    /// The user to switch agents to, for an orchestrator running as `euid`: `None` means run
    /// agents as the orchestrator's own user.
    pub fn resolve(&self) -> Result<Option<AgentUser>, AgentUserError> {
        self.resolve_for(nix::unistd::geteuid().as_raw(), lookup_user)
    }

    /// [`AgentUserSpec::resolve`] with the euid and the user lookup given (testable).
    pub fn resolve_for(
        &self,
        euid: u32,
        lookup: impl Fn(&str) -> Option<(u32, u32)>,
    ) -> Result<Option<AgentUser>, AgentUserError> {
        let user = match self {
            Self::Current => return Ok(None),
            Self::Auto if euid != 0 => return Ok(None),
            Self::Auto => {
                let (uid, gid) =
                    lookup("nobody").ok_or_else(|| AgentUserError::NoSuchUser("nobody".into()))?;
                AgentUser {
                    name: "nobody".into(),
                    uid,
                    gid,
                }
            }
            Self::Name(name) => {
                let (uid, gid) =
                    lookup(name).ok_or_else(|| AgentUserError::NoSuchUser(name.clone()))?;
                AgentUser {
                    name: name.clone(),
                    uid,
                    gid,
                }
            }
            Self::Ids { uid, gid } => AgentUser {
                name: uid.to_string(),
                uid: *uid,
                gid: *gid,
            },
        };
        if user.uid == euid {
            return Ok(None);
        }
        if user.uid == 0 {
            return Err(AgentUserError::IsRoot(user.name));
        }
        if euid != 0 {
            return Err(AgentUserError::NeedsRoot {
                wanted: user.name,
                current: euid,
            });
        }
        Ok(Some(user))
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let user = nix::unistd::User::from_name(name).ok()??;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// Why `user` cannot reach `path` (search permission on every ancestor, and `need` bits on the
/// path itself), or `None` when it can. `need` is an `rwx` triple such as `0o5` (read and
/// execute) or `0o1` (search only).
pub fn reachable_by(path: &Path, user: &AgentUser, need: u32) -> Option<(PathBuf, u32, u32)> {
    let allows = |meta: &std::fs::Metadata, bits: u32| {
        let mode = meta.mode();
        let granted = if meta.uid() == user.uid {
            (mode >> 6) & 0o7
        } else if meta.gid() == user.gid {
            (mode >> 3) & 0o7
        } else {
            mode & 0o7
        };
        granted & bits == bits
    };
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors.into_iter().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(meta) if allows(&meta, 0o1) => {}
            Ok(meta) => return Some((dir.to_owned(), meta.mode() & 0o7777, meta.uid())),
            Err(_) => return Some((dir.to_owned(), 0, 0)),
        }
    }
    match std::fs::metadata(path) {
        Ok(meta) if allows(&meta, need) => None,
        Ok(meta) => Some((path.to_owned(), meta.mode() & 0o7777, meta.uid())),
        Err(_) => Some((path.to_owned(), 0, 0)),
    }
}

/// `Err` naming the blocking path when `user` cannot use `path` with `need` permissions.
pub fn check_reachable(
    what: &'static str,
    path: &Path,
    user: &AgentUser,
    need: u32,
    fix: &'static str,
) -> Result<(), AgentUserError> {
    match reachable_by(path, user, need) {
        None => Ok(()),
        Some((blocker, mode, owner)) => Err(AgentUserError::Unreachable {
            what,
            path: path.to_owned(),
            user: user.name.clone(),
            uid: user.uid,
            blocker,
            mode,
            owner,
            fix,
        }),
    }
}

/// Where root-run orchestrators keep agent directories when the default place (next to the
/// state dir, e.g. under `/root`) is out of the agent user's reach:
/// `/var/lib/guildnet/workspaces-<hash of the state dir>`, one per state dir.
pub fn system_workspaces_root(state_root: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_root.as_os_str().as_encoded_bytes());
    PathBuf::from("/var/lib/guildnet").join(format!("workspaces-{}", hex::encode(&digest[..4])))
}

/// Creates `dir` (and parents) for agents run as another user: owned by the orchestrator, mode
/// 0711, so the agent user can pass through to its own directory but list nothing.
pub fn create_passable_dir(dir: &Path) -> Result<(), AgentUserError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |op, source| AgentUserError::Io {
        op,
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create directory", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| io("chmod 0711", e))
}

/// Makes `dir` (created 0700) the agent user's own.
pub fn give_to(dir: &Path, user: &AgentUser) -> Result<(), AgentUserError> {
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(|source| {
        AgentUserError::Io {
            op: "chown",
            path: dir.to_owned(),
            source,
        }
    })
}

/// A copy of the agent executable the agent user can run: `agent_bin` itself when reachable,
/// else a copy (mode 0755, owned by the orchestrator) in `<workspaces>/.bin/`, refreshed when
/// the source changes.
pub fn reachable_agent_bin(
    agent_bin: &Path,
    workspaces: &Path,
    user: &AgentUser,
) -> Result<PathBuf, AgentUserError> {
    use std::os::unix::fs::PermissionsExt;
    if reachable_by(agent_bin, user, 0o5).is_none() {
        return Ok(agent_bin.to_owned());
    }
    if !agent_bin.is_file() {
        // Missing: the backend reports it on every submit (and holds the org back), exactly
        // as when agents run as the orchestrator's own user.
        tracing::warn!(agent = %agent_bin.display(), "the agent executable does not exist");
        return Ok(agent_bin.to_owned());
    }
    let io = |op, path: &Path, source| AgentUserError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let dir = workspaces.join(".bin");
    std::fs::create_dir_all(&dir).map_err(|e| io("create directory", &dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io("chmod 0755", &dir, e))?;
    let name = agent_bin
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_else(|| "guildnet-agent".into());
    let dest = dir.join(name);
    let src_meta = std::fs::metadata(agent_bin).map_err(|e| io("stat", agent_bin, e))?;
    let fresh = std::fs::metadata(&dest)
        .map(|d| d.len() == src_meta.len() && d.mtime() >= src_meta.mtime())
        .unwrap_or(false);
    if !fresh {
        let tmp = dir.join(format!(".copy-{}", std::process::id()));
        std::fs::copy(agent_bin, &tmp).map_err(|e| io("copy the agent to", &tmp, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("chmod 0755", &tmp, e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| io("rename", &dest, e))?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<(u32, u32)> {
        match name {
            "nobody" => Some((65534, 65534)),
            "dev" => Some((1000, 1000)),
            "root" => Some((0, 0)),
            _ => None,
        }
    }

    #[test]
    fn parses_every_form_and_rejects_junk() {
        assert_eq!(
            "auto".parse::<AgentUserSpec>().ok(),
            Some(AgentUserSpec::Auto)
        );
        assert_eq!(
            "current".parse::<AgentUserSpec>().ok(),
            Some(AgentUserSpec::Current)
        );
        assert_eq!(
            "1000:100".parse::<AgentUserSpec>().ok(),
            Some(AgentUserSpec::Ids {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(
            "1000".parse::<AgentUserSpec>().ok(),
            Some(AgentUserSpec::Ids {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            "dev".parse::<AgentUserSpec>().ok(),
            Some(AgentUserSpec::Name("dev".into()))
        );
        for bad in ["", "1000:x", "12a", "a b", "x/y"] {
            let err = bad.parse::<AgentUserSpec>().unwrap_err().to_string();
            assert!(err.contains("--agent-user"), "{bad}: {err}");
        }
    }

    #[test]
    fn root_switches_to_nobody_by_default_and_others_stay() {
        let nobody = AgentUserSpec::Auto.resolve_for(0, lookup).unwrap();
        assert_eq!(nobody.map(|u| (u.uid, u.gid)), Some((65534, 65534)));
        assert_eq!(AgentUserSpec::Auto.resolve_for(1000, lookup).unwrap(), None);
        assert_eq!(AgentUserSpec::Current.resolve_for(0, lookup).unwrap(), None);
        // Asking for yourself is no switch.
        let dev = AgentUserSpec::Name("dev".into());
        assert_eq!(dev.resolve_for(1000, lookup).unwrap(), None);
    }

    #[test]
    fn refuses_what_cannot_or_must_not_work() {
        let dev = AgentUserSpec::Name("dev".into());
        assert!(matches!(
            dev.resolve_for(1001, lookup),
            Err(AgentUserError::NeedsRoot { .. })
        ));
        assert!(matches!(
            AgentUserSpec::Name("ghost".into()).resolve_for(0, lookup),
            Err(AgentUserError::NoSuchUser(_))
        ));
        assert!(matches!(
            AgentUserSpec::Ids { uid: 0, gid: 0 }.resolve_for(1000, lookup),
            Err(AgentUserError::IsRoot(_))
        ));
    }

    #[test]
    fn reachability_follows_every_ancestor() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let other = AgentUser {
            name: "other".into(),
            uid: me.wrapping_add(4242),
            gid: 4242,
        };
        let closed = tmp.path().join("closed");
        let file = closed.join("bin");
        std::fs::create_dir(&closed).unwrap();
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (blocker, mode, _) = reachable_by(&file, &other, 0o5).expect("blocked");
        assert_eq!(blocker, closed);
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(reachable_by(&file, &other, 0o5), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(reachable_by(&file, &other, 0o5).map(|b| b.0), Some(file));
    }
}
