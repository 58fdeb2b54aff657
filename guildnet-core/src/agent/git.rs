//! The agent's git work: clone the task's repository into the workspace, write context files,
//! and after a successful run commit whatever changed on `guildnet/<task id>` and push it.
//!
//! Git runs as a child process with argument vectors (no shell), `--` before user-supplied
//! values, no terminal prompts and a timeout. Credentials embedded in a URL never reach the
//! log: URLs are shown with their user-info removed.
//!
//! The working copy is untrusted: the repository chose its content and the runner (of this or
//! an earlier attempt) could change anything in it, `.git` included. So git runs in the same
//! kind of sandbox as the runner ([`super::sandbox`]), with hooks and fsmonitor off, its output
//! read up to a bound; `.git/config` is restored to what the clone left before the agent
//! commits and pushes; the checkout dir and `.git` must be real directories; and context files
//! are written without following links ([`super::fsafe`]).

use crate::context::{ContextFile, RepoSpec, TaskContext};
use crate::model::LogStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::LogShipper;

/// The branch a task's changes are pushed to.
pub fn task_branch(task_id: &str) -> String {
    format!("guildnet/{task_id}")
}

/// Settings of the git steps.
#[derive(Debug, Clone)]
pub struct GitConfig {
    /// The git executable.
    pub git: PathBuf,
    /// Author and committer name of the agent's commit.
    pub author_name: String,
    /// Author and committer email of the agent's commit.
    pub author_email: String,
    /// Longest a single git command may take.
    pub timeout: Duration,
    /// An `Authorization` header for HTTP(S) URLs under the forge's web root, passed to git
    /// in its environment (`GIT_CONFIG_*`), never on a command line or in `.git/config`.
    pub http_auth: Option<super::forge::GitHttpAuth>,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            git: PathBuf::from("git"),
            author_name: "GuildNet Agent".into(),
            author_email: "agent@guildnet.invalid".into(),
            timeout: Duration::from_secs(600),
            http_auth: None,
        }
    }
}

/// A prepared working copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// `.git/config` right after the clone: restored before the agent commits and pushes.
    pub config_snapshot: Option<Vec<u8>>,
    /// Directory of the working copy.
    pub dir: PathBuf,
    /// The repository (for the log and the PR).
    pub repo: RepoSpec,
    /// HEAD right after checkout.
    pub base_commit: String,
    /// The branch checked out, if HEAD is on one (the PR's base).
    pub base_branch: Option<String>,
}

/// A branch pushed with the task's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Branch name (`guildnet/<task id>`).
    pub branch: String,
    /// The pushed commit.
    pub commit: String,
}

/// Why a git step failed (the message is safe to show: URLs are redacted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {message}")]
pub struct GitError {
    /// Which step (`clone`, `checkout`, `commit`, `push`, `context files`).
    pub step: &'static str,
    /// Why.
    pub message: String,
}

impl GitError {
    fn new(step: &'static str, message: impl Into<String>) -> Self {
        Self {
            step,
            message: message.into(),
        }
    }
}

pub use crate::redact::redact_url;

/// Most bytes of git's stdout kept (the rest is read and discarded).
const MAX_GIT_STDOUT: usize = 1024 * 1024;
/// Most bytes of git's stderr kept.
const MAX_GIT_STDERR: usize = 64 * 1024;

/// Reads `r` to its end, keeping at most `cap` bytes.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>, cap: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut r) = r else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Runs git steps for one task.
#[derive(Debug, Clone)]
pub struct GitWork {
    cfg: GitConfig,
    sandbox: Option<super::sandbox::SandboxPolicy>,
}

impl GitWork {
    /// Git work with `cfg`, unconfined (tests and embedders; the agent adds a sandbox).
    pub fn new(cfg: GitConfig) -> Self {
        Self { cfg, sandbox: None }
    }

    /// Runs every git command inside `policy`.
    pub fn with_sandbox(mut self, policy: super::sandbox::SandboxPolicy) -> Self {
        self.sandbox = Some(policy);
        self
    }

    async fn git(
        &self,
        step: &'static str,
        cwd: &Path,
        args: &[&str],
        shipper: Option<&LogShipper>,
    ) -> Result<String, GitError> {
        let mut cmd = tokio::process::Command::new(&self.cfg.git);
        // Hooks and fsmonitor are commands the working copy can plant: never run them.
        cmd.args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
        ])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", &self.cfg.author_name)
        .env("GIT_AUTHOR_EMAIL", &self.cfg.author_email)
        .env("GIT_COMMITTER_NAME", &self.cfg.author_name)
        .env("GIT_COMMITTER_EMAIL", &self.cfg.author_email)
        // Never run remote-helper transports that execute commands.
        .env("GIT_ALLOW_PROTOCOL", "https:http:ssh:git:file");
        for k in crate::agent_env::SECRETS {
            cmd.env_remove(k);
        }
        // The forge credentials, scoped to the forge's URL (GIT_CONFIG_* entries, never on a
        // command line or in .git/config).
        if let Some(auth) = &self.cfg.http_auth {
            cmd.envs(auth.git_env());
        }
        if let Some(policy) = &self.sandbox {
            policy
                .prepare()
                .map_err(|e| GitError::new(step, format!("cannot sandbox git: {e}")))?
                .install(&mut cmd, super::sandbox::ChildOptions::default());
        }
        let run = async {
            let (mut child, _tracked) = super::process::spawn_tracked(&mut cmd)?;
            let (stdout, stderr) = tokio::join!(
                read_capped(child.stdout.take(), MAX_GIT_STDOUT),
                read_capped(child.stderr.take(), MAX_GIT_STDERR)
            );
            let status = child.wait().await?;
            Ok::<_, std::io::Error>(std::process::Output {
                status,
                stdout,
                stderr,
            })
        };
        let out = match tokio::time::timeout(self.cfg.timeout, run).await {
            Err(_) => {
                return Err(GitError::new(
                    step,
                    format!("git {} timed out after {:?}", args[0], self.cfg.timeout),
                ))
            }
            Ok(Err(e)) => {
                return Err(GitError::new(
                    step,
                    format!("cannot run {}: {e}", self.cfg.git.display()),
                ))
            }
            Ok(Ok(o)) => o,
        };
        let stderr = redact_url(String::from_utf8_lossy(&out.stderr).trim());
        if let Some(s) = shipper {
            for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
                s.push(LogStream::System, format!("git {}: {line}", args[0]));
            }
        }
        if !out.status.success() {
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            return Err(GitError::new(
                step,
                format!(
                    "git {} exited with {}: {last}",
                    args[0],
                    out.status.code().unwrap_or(-1)
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Clones the context's repository into `dir` (which must not exist or be empty; a clone
    /// of the same repository left by an earlier attempt is fetched and reused), checks out its
    /// ref, then writes the context files into the working copy (or into `dir` when there is no
    /// repository). Returns the checkout, if there is a repository.
    pub async fn prepare(
        &self,
        ctx: &TaskContext,
        dir: &Path,
        shipper: &LogShipper,
    ) -> Result<Option<Checkout>, GitError> {
        let checkout = match &ctx.repo {
            None => None,
            Some(repo) => Some(self.clone_repo(repo, dir, shipper).await?),
        };
        write_context_files(dir, &ctx.files)?;
        if !ctx.files.is_empty() {
            shipper.push(
                LogStream::System,
                format!("wrote {} context file(s)", ctx.files.len()),
            );
        }
        Ok(checkout)
    }

    async fn clone_repo(
        &self,
        repo: &RepoSpec,
        dir: &Path,
        shipper: &LogShipper,
    ) -> Result<Checkout, GitError> {
        let shown = redact_url(&repo.url);
        let parent = dir.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| GitError::new("clone", format!("create {}: {e}", parent.display())))?;
        // A link where the checkout belongs (planted by an earlier runner) is removed, never
        // followed.
        if std::fs::symlink_metadata(dir)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            std::fs::remove_file(dir)
                .map_err(|e| GitError::new("clone", format!("remove {}: {e}", dir.display())))?;
        }
        let reuse = super::fsafe::is_real_dir(dir)
            && super::fsafe::is_real_dir(&dir.join(".git"))
            && self
                .git(
                    "clone",
                    dir,
                    &["config", "--get", "remote.origin.url"],
                    None,
                )
                .await
                .map(|u| u == repo.url)
                .unwrap_or(false);
        if reuse {
            shipper.push(
                LogStream::System,
                format!("reusing the clone of {shown} in the workspace"),
            );
            self.git("clone", dir, &["fetch", "--prune", "origin"], Some(shipper))
                .await
                .map_err(|e| {
                    GitError::new("clone", format!("cannot fetch {shown}: {}", e.message))
                })?;
            // Start from a clean tree: an earlier attempt may have left changes.
            self.git("clone", dir, &["reset", "--hard", "-q"], None)
                .await?;
            self.git("clone", dir, &["clean", "-fdq"], None).await?;
        } else {
            shipper.push(LogStream::System, format!("cloning {shown}"));
            let target = dir.display().to_string();
            self.git(
                "clone",
                parent,
                &["clone", "--quiet", "--", &repo.url, &target],
                Some(shipper),
            )
            .await
            .map_err(|e| GitError::new("clone", format!("cannot clone {shown}: {}", e.message)))?;
        }
        if let Some(r) = &repo.git_ref {
            // A branch or tag name on the remote, else a commit.
            let remote_branch = format!("origin/{r}");
            let target = if self
                .git(
                    "checkout",
                    dir,
                    &["rev-parse", "--verify", "-q", &remote_branch],
                    None,
                )
                .await
                .is_ok()
            {
                self.git(
                    "checkout",
                    dir,
                    &["checkout", "-q", "-B", r, &remote_branch],
                    Some(shipper),
                )
                .await?;
                None
            } else {
                Some(r.as_str())
            };
            if let Some(commitish) = target {
                self.git(
                    "checkout",
                    dir,
                    &["checkout", "-q", "--detach", commitish],
                    Some(shipper),
                )
                .await
                .map_err(|e| {
                    GitError::new(
                        "checkout",
                        format!("ref {r:?} not found in {shown}: {}", e.message),
                    )
                })?;
            }
        }
        let base_commit = self
            .git("checkout", dir, &["rev-parse", "HEAD"], None)
            .await?;
        let base_branch = self
            .git(
                "checkout",
                dir,
                &["symbolic-ref", "-q", "--short", "HEAD"],
                None,
            )
            .await
            .ok()
            .filter(|b| !b.is_empty());
        shipper.push(
            LogStream::System,
            format!(
                "checked out {} at {}",
                base_branch.as_deref().unwrap_or("(detached)"),
                base_commit.chars().take(12).collect::<String>()
            ),
        );
        Ok(Checkout {
            config_snapshot: read_git_config(dir),
            dir: dir.to_path_buf(),
            repo: repo.clone(),
            base_commit,
            base_branch,
        })
    }

    /// After a successful run: if the runner changed the working copy (uncommitted changes or
    /// new commits), commits what is uncommitted on `guildnet/<task id>` and pushes the branch
    /// to `origin`. `None` when nothing changed.
    pub async fn commit_and_push(
        &self,
        co: &Checkout,
        task_id: &str,
        message: &str,
        shipper: &LogShipper,
    ) -> Result<Option<Pushed>, GitError> {
        let dir = &co.dir;
        restore_git_dir(co)?;
        let dirty = !self
            .git("commit", dir, &["status", "--porcelain"], None)
            .await?
            .is_empty();
        let head = self
            .git("commit", dir, &["rev-parse", "HEAD"], None)
            .await?;
        if !dirty && head == co.base_commit {
            shipper.push(
                LogStream::System,
                "no changes in the working copy: nothing to push".into(),
            );
            return Ok(None);
        }
        let branch = task_branch(task_id);
        self.git("commit", dir, &["checkout", "-q", "-B", &branch], None)
            .await?;
        if dirty {
            self.git("commit", dir, &["add", "-A"], None).await?;
            self.git(
                "commit",
                dir,
                &["commit", "-q", "--no-verify", "-m", message],
                Some(shipper),
            )
            .await?;
        }
        let commit = self
            .git("commit", dir, &["rev-parse", "HEAD"], None)
            .await?;
        let refspec = format!("HEAD:refs/heads/{branch}");
        // The branch belongs to this task: a requeued attempt replaces an earlier one's push.
        self.git(
            "push",
            dir,
            &["push", "--quiet", "--force", "origin", &refspec],
            Some(shipper),
        )
        .await
        .map_err(|e| {
            GitError::new(
                "push",
                format!(
                    "cannot push {branch} to {}: {}",
                    redact_url(&co.repo.url),
                    e.message
                ),
            )
        })?;
        shipper.push(
            LogStream::System,
            format!(
                "pushed {branch} at {}",
                commit.chars().take(12).collect::<String>()
            ),
        );
        Ok(Some(Pushed { branch, commit }))
    }
}

/// `.git/config` of a checkout, read without following links.
fn read_git_config(dir: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !super::fsafe::is_real_dir(dir) || !super::fsafe::is_real_dir(&dir.join(".git")) {
        return None;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(".git").join("config"))
        .ok()?;
    let mut bytes = Vec::new();
    f.take(1024 * 1024).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Before the agent's own git steps: `.git` must still be a real directory, its config is put
/// back to what the clone left (a runner could have added a remote URL, a credential helper,
/// `url.*.insteadOf`, filters or includes), and `commondir` (which would point git at another
/// repository's config) must not exist.
fn restore_git_dir(co: &Checkout) -> Result<(), GitError> {
    let err = |m: String| GitError::new("commit", m);
    if !super::fsafe::is_real_dir(&co.dir) || !super::fsafe::is_real_dir(&co.dir.join(".git")) {
        return Err(err(format!(
            "{} or its .git is no longer a directory",
            co.dir.display()
        )));
    }
    let commondir = co.dir.join(".git").join("commondir");
    if std::fs::symlink_metadata(&commondir).is_ok() {
        std::fs::remove_file(&commondir).map_err(|e| err(format!(".git/commondir: {e}")))?;
    }
    if let Some(snapshot) = &co.config_snapshot {
        if read_git_config(&co.dir).as_ref() != Some(snapshot) {
            super::fsafe::write_beneath(&co.dir, ".git/config", snapshot, 0o644)
                .map_err(|e| err(format!("cannot restore .git/config: {e}")))?;
        }
    }
    Ok(())
}

/// Writes context files under `dir` (paths were validated when the task was scheduled; they are
/// checked again here so a hand-made claim cannot escape the workspace). No component of a
/// path may be a symlink or a non-directory: a repository's `link -> /tmp/x` cannot take
/// `link/pwned.txt` outside.
pub fn write_context_files(dir: &Path, files: &[ContextFile]) -> Result<(), GitError> {
    if !files.is_empty() {
        std::fs::create_dir_all(dir)
            .map_err(|e| GitError::new("context files", format!("{}: {e}", dir.display())))?;
    }
    for f in files {
        crate::context::validate_rel_path(&f.path)
            .map_err(|why| GitError::new("context files", format!("{}: {why}", f.path)))?;
        super::fsafe::write_beneath(dir, &f.path, f.content.as_bytes(), 0o644)
            .map_err(|e| GitError::new("context files", e.to_string()))?;
    }
    Ok(())
}

/// The first line of the task text, shortened, as a commit subject.
pub fn commit_message(task_id: &str, task_text: &str) -> String {
    let first = task_text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let mut subject: String = first.trim().chars().take(72).collect();
    if subject.is_empty() {
        subject = "GuildNet task".into();
    }
    format!("{subject}\n\nGuildNet task {task_id}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("fatal: could not read from https://bot:ghp_secret@github.com/a/b.git"),
            "fatal: could not read from https://***@github.com/a/b.git"
        );
        assert_eq!(
            redact_url("https://github.com/a/b"),
            "https://github.com/a/b"
        );
        assert_eq!(redact_url("no url here"), "no url here");
    }

    #[test]
    fn commit_messages_use_the_first_line() {
        assert_eq!(
            commit_message("t1", "\n  Fix the login bug\nmore detail"),
            "Fix the login bug\n\nGuildNet task t1\n"
        );
        assert!(commit_message("t1", "").starts_with("GuildNet task\n"));
    }

    #[test]
    fn context_files_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        let ok = ContextFile {
            path: "a/b.txt".into(),
            content: "hi".into(),
        };
        write_context_files(d.path(), std::slice::from_ref(&ok)).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("a/b.txt")).unwrap(),
            "hi"
        );
        let bad = ContextFile {
            path: "../x".into(),
            content: String::new(),
        };
        assert!(write_context_files(d.path(), &[bad]).is_err());
        assert!(!d.path().parent().unwrap().join("x").exists());
    }

    #[test]
    fn context_files_do_not_follow_symlinks_out_of_the_workspace() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // What a repository can contain: a link to a directory outside.
        std::os::unix::fs::symlink(outside.path(), ws.path().join("link")).unwrap();
        let f = ContextFile {
            path: "link/pwned.txt".into(),
            content: "pwned".into(),
        };
        let err = write_context_files(ws.path(), &[f]).unwrap_err();
        assert_eq!(err.step, "context files");
        assert!(err.message.contains("link"), "{err}");
        assert!(!outside.path().join("pwned.txt").exists());
        // A link at the file's own name is replaced, its target untouched.
        std::fs::write(outside.path().join("victim"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), ws.path().join("notes.md"))
            .unwrap();
        let f = ContextFile {
            path: "notes.md".into(),
            content: "mine".into(),
        };
        write_context_files(ws.path(), &[f]).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.path().join("victim")).unwrap(),
            "keep"
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("notes.md")).unwrap(),
            "mine"
        );
    }
}
