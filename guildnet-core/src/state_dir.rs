//! The one state-directory resolver every GuildNet component uses, and the paths inside it.
//!
//! Resolution order: `GUILDNET_STATE_DIR`, else `${GUILDNET_HOME}/state`, else
//! `~/.guildnetdev/state` when `GUILDNET_ENV=dev`, else `~/.guildnet/state`.

use crate::names::OrgName;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors while resolving or writing inside the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// No env var points at a state dir and no home directory is known.
    #[error("cannot resolve the state directory: set GUILDNET_STATE_DIR or HOME")]
    NoHome,
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
    /// The state dir cannot be written (read-only directory or file system).
    #[error("the state dir {dir} is read-only ({source}); the orchestrator needs to write there")]
    ReadOnly {
        /// The state dir.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Resolves the state dir from an environment lookup (pure, so it is testable).
pub fn resolve_state_dir_with(
    get: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, StateDirError> {
    let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty(crate::agent_env::STATE_DIR) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(home) = non_empty("GUILDNET_HOME") {
        return Ok(PathBuf::from(home).join("state"));
    }
    let home = non_empty("HOME").ok_or(StateDirError::NoHome)?;
    let sub = if non_empty("GUILDNET_ENV").as_deref() == Some("dev") {
        ".guildnetdev"
    } else {
        ".guildnet"
    };
    Ok(PathBuf::from(home).join(sub).join("state"))
}

/// Resolves the state dir from the process environment.
pub fn resolve_state_dir() -> Result<PathBuf, StateDirError> {
    resolve_state_dir_with(|k| std::env::var(k).ok())
}

/// Paths inside a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePaths {
    root: PathBuf,
}

impl StatePaths {
    /// Paths under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Paths under the resolved state dir.
    pub fn resolve() -> Result<Self, StateDirError> {
        resolve_state_dir().map(Self::new)
    }

    /// The state dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `kube/<org>.config`: the org cluster's kubeconfig.
    pub fn kubeconfig(&self, org: &OrgName) -> PathBuf {
        self.root.join("kube").join(format!("{org}.config"))
    }

    /// `talos/<org>.talosconfig`: the org cluster's talosconfig (mode 0600).
    pub fn talosconfig(&self, org: &OrgName) -> PathBuf {
        self.root.join("talos").join(format!("{org}.talosconfig"))
    }

    /// `dashboard.db`: the dashboard's SQLite database.
    pub fn dashboard_db(&self) -> PathBuf {
        self.root.join("dashboard.db")
    }

    /// `orchestrator.db`: the orchestrator's SQLite database.
    pub fn orchestrator_db(&self) -> PathBuf {
        self.root.join("orchestrator.db")
    }

    /// `orchestrator.token`: the generated admin token (mode 0600) when none is configured.
    pub fn admin_token_file(&self) -> PathBuf {
        self.root.join("orchestrator.token")
    }

    /// Where the local backend keeps its agents' directories: outside the state dir, so a
    /// runner's workspace is never inside the tree that holds the admin token, kubeconfigs
    /// and the database. Next to the state dir: `<parent>/workspaces` when the state dir is
    /// named `state` (`~/.guildnet/state` -> `~/.guildnet/workspaces`), else
    /// `<state dir>-workspaces`.
    pub fn workspaces_root(&self) -> PathBuf {
        match (self.root.file_name(), self.root.parent()) {
            (Some(name), Some(parent)) if name == "state" => parent.join("workspaces"),
            (Some(name), Some(parent)) => {
                parent.join(format!("{}-workspaces", name.to_string_lossy()))
            }
            _ => PathBuf::from("guildnet-workspaces"),
        }
    }

    /// `<workspaces root>/<task id>`: the directory of a task's agent under the local backend
    /// (its `workspace/`, `state/`, log and pid file).
    pub fn local_agent_dir(&self, task: &crate::names::TaskId) -> PathBuf {
        self.workspaces_root().join(task.as_str())
    }

    /// Creates the state dir (mode 0700) if missing.
    pub fn ensure(&self) -> Result<(), StateDirError> {
        create_private_dir(&self.root)
    }

    /// The lock file of [`StatePaths::lock`].
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("orchestrator.lock")
    }

    /// Takes the state dir's exclusive lock (`flock` on `orchestrator.lock`) for one
    /// orchestrator process, and records `holder` in it. A second orchestrator on the same
    /// state dir fails with [`LockError::Held`], naming the first.
    pub fn lock(&self, holder: &str) -> Result<StateLock, LockError> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::OpenOptionsExt;
        self.ensure()?;
        let path = self.lock_file();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(nix::libc::EROFS) | Some(nix::libc::EACCES) => StateDirError::ReadOnly {
                    dir: self.root.clone(),
                    source: e,
                },
                _ => io_err("open", &path)(e),
            })?;
        let mut locked =
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((mut file, _)) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(LockError::Held {
                        dir: self.root.clone(),
                        holder: if holder.is_empty() {
                            "unknown process".into()
                        } else {
                            holder.to_owned()
                        },
                    });
                }
            };
        let record = format!(
            "pid {} ({holder}) since {}",
            std::process::id(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        locked.set_len(0).map_err(io_err("truncate", &path))?;
        locked.rewind().map_err(io_err("rewind", &path))?;
        locked
            .write_all(record.as_bytes())
            .map_err(io_err("write", &path))?;
        Ok(StateLock {
            _file: locked,
            path,
        })
    }
}

/// Kubeconfig lookup for an org. The org's own files come first, so one org's tasks can never
/// be sent to another org's cluster because of the environment:
///
/// 1. `<state>/kube/<org>.config` (written by `guildnet org add` / the bootstrap);
/// 2. `~/.kube/<org>.config`;
/// 3. only when the org has neither: `$KUBECONFIG` (first existing entry), then
///    `~/.kube/config`, a shared kubeconfig every such org uses (one cluster for them all).
///
/// Returns the first that exists. `$KUBECONFIG` never overrides a per-org file.
pub fn find_kubeconfig_with(
    paths: &StatePaths,
    org: &OrgName,
    get: impl Fn(&str) -> Option<String>,
) -> Option<PathBuf> {
    let home = get("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".kube"));
    let mut candidates: Vec<PathBuf> = vec![paths.kubeconfig(org)];
    if let Some(kube) = &home {
        candidates.push(kube.join(format!("{org}.config")));
    }
    if let Some(kc) = get("KUBECONFIG").filter(|v| !v.is_empty()) {
        candidates.extend(std::env::split_paths(&kc));
    }
    if let Some(kube) = &home {
        candidates.push(kube.join("config"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Whether `path` (from [`find_kubeconfig_with`]) is the org's own kubeconfig rather than the
/// shared fallback (`$KUBECONFIG`, `~/.kube/config`).
pub fn is_org_kubeconfig(path: &Path, org: &OrgName) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy() == format!("{org}.config"))
}

/// [`find_kubeconfig_with`] over the process environment.
pub fn find_kubeconfig(paths: &StatePaths, org: &OrgName) -> Option<PathBuf> {
    find_kubeconfig_with(paths, org, |k| std::env::var(k).ok())
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StateDirError + 'a {
    move |source| StateDirError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` and its parents with mode 0700 (existing dirs are left as they are).
pub fn create_private_dir(dir: &Path) -> Result<(), StateDirError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp file + rename), creating parents.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), StateDirError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    create_private_dir(parent)?;
    // A temp file of its own per writer (mode 0600, random name) in the same directory, so
    // concurrent writers of one path never share a temp file: the last rename wins whole.
    let mut tmp = tempfile::Builder::new()
        .prefix(".guildnet-")
        .suffix(".tmp")
        .tempfile_in(parent)
        .map_err(io_err("create a temp file in", parent))?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("sync", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .map_err(io_err("rename into", path))?;
    Ok(())
}

/// Sets this process's umask to 077, so every file and directory it creates (database `-wal`
/// and `-shm` files, logs, uploads) is private to its user from the first byte. The server
/// binaries call it first thing; a library embedding GuildNet decides for itself.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// An exclusive lock on a state dir, held while the value lives (see [`StatePaths::lock`]).
#[derive(Debug)]
pub struct StateLock {
    _file: nix::fcntl::Flock<std::fs::File>,
    path: PathBuf,
}

impl StateLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Errors of [`StatePaths::lock`].
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "the state dir {dir} is in use by another orchestrator ({holder}); stop it, or give \
         this one its own state dir (GUILDNET_STATE_DIR)"
    )]
    Held {
        /// State dir.
        dir: PathBuf,
        /// What the holder wrote into the lock file (pid, program, start time).
        holder: String,
    },
    /// The lock file could not be opened.
    #[error(transparent)]
    Io(#[from] StateDirError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn resolution_order() {
        let all = [
            ("GUILDNET_STATE_DIR", "/s"),
            ("GUILDNET_HOME", "/g"),
            ("GUILDNET_ENV", "dev"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            resolve_state_dir_with(env(&all)).unwrap(),
            PathBuf::from("/s")
        );
        assert_eq!(
            resolve_state_dir_with(env(&all[1..])).unwrap(),
            PathBuf::from("/g/state")
        );
        assert_eq!(
            resolve_state_dir_with(env(&all[2..])).unwrap(),
            PathBuf::from("/h/.guildnetdev/state")
        );
        assert_eq!(
            resolve_state_dir_with(env(&all[3..])).unwrap(),
            PathBuf::from("/h/.guildnet/state")
        );
        assert_eq!(
            resolve_state_dir_with(env(&[("GUILDNET_ENV", "prod"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.guildnet/state")
        );
        assert!(matches!(
            resolve_state_dir_with(env(&[])),
            Err(StateDirError::NoHome)
        ));
        // Empty values count as unset.
        assert_eq!(
            resolve_state_dir_with(env(&[("GUILDNET_STATE_DIR", ""), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.guildnet/state")
        );
    }

    #[test]
    fn org_paths() {
        let p = StatePaths::new("/st");
        let org = OrgName::new("acme").unwrap();
        assert_eq!(p.kubeconfig(&org), PathBuf::from("/st/kube/acme.config"));
        assert_eq!(
            p.talosconfig(&org),
            PathBuf::from("/st/talos/acme.talosconfig")
        );
        assert_eq!(p.dashboard_db(), PathBuf::from("/st/dashboard.db"));
        assert_eq!(p.orchestrator_db(), PathBuf::from("/st/orchestrator.db"));
    }

    #[test]
    fn private_files_are_0600_and_kubeconfig_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path().join("state"));
        let org = OrgName::new("acme").unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".kube")).unwrap();
        let home_kc = home.join(".kube/acme.config");
        std::fs::write(&home_kc, "home").unwrap();
        let h = home.to_string_lossy().into_owned();

        // Only ~/.kube exists.
        assert_eq!(
            find_kubeconfig_with(&paths, &org, env(&[("HOME", &h)])),
            Some(home_kc.clone())
        );
        // The state path wins over ~/.kube.
        write_private_file(&paths.kubeconfig(&org), b"state").unwrap();
        let mode = std::fs::metadata(paths.kubeconfig(&org))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            find_kubeconfig_with(&paths, &org, env(&[("HOME", &h)])),
            Some(paths.kubeconfig(&org))
        );
        // $KUBECONFIG never overrides the org's own file.
        let explicit = dir.path().join("explicit.config");
        std::fs::write(&explicit, "x").unwrap();
        let kc = format!(
            "{}:{}",
            dir.path().join("missing").display(),
            explicit.display()
        );
        assert_eq!(
            find_kubeconfig_with(&paths, &org, env(&[("HOME", &h), ("KUBECONFIG", &kc)])),
            Some(paths.kubeconfig(&org))
        );
        // An org with no file of its own falls back to $KUBECONFIG (a missing entry is
        // skipped), then to ~/.kube/config.
        let other = OrgName::new("globex").unwrap();
        let found = find_kubeconfig_with(&paths, &other, env(&[("HOME", &h), ("KUBECONFIG", &kc)]));
        assert_eq!(found.as_deref(), Some(explicit.as_path()));
        assert!(!is_org_kubeconfig(&explicit, &other));
        assert!(is_org_kubeconfig(&paths.kubeconfig(&other), &other));
        assert_eq!(
            find_kubeconfig_with(&paths, &other, env(&[("HOME", &h)])),
            None
        );
        std::fs::write(home.join(".kube/config"), "shared").unwrap();
        assert_eq!(
            find_kubeconfig_with(&paths, &other, env(&[("HOME", &h)])),
            Some(home.join(".kube/config"))
        );
    }

    #[test]
    fn concurrent_writers_of_one_file_never_tear_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kube").join("acme.config");
        let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 256 * 1024]).collect();
        std::thread::scope(|s| {
            for b in &bodies {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..5 {
                        write_private_file(path, b).expect("write");
                    }
                });
            }
        });
        let got = std::fs::read(&path).unwrap();
        assert!(bodies.contains(&got), "the file is one whole upload");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "acme.config")
            .collect();
        assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
    }

    #[test]
    fn a_second_lock_on_a_state_dir_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path().join("state"));
        let held = paths.lock("guildnet up").expect("first lock");
        let err = paths.lock("guildnet-orchestrator").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("guildnet up"),
            "{msg}"
        );
        drop(held);
        paths.lock("guildnet-orchestrator").expect("free again");
    }
}
