//! A task's working context: the git repository the agent clones and optional extra files it
//! writes into the workspace before the runner starts. Validated once, when the task is
//! scheduled, so an agent never sees a URL or path it would have to refuse.

use serde::{Deserialize, Serialize};

/// At most this many context files per task.
pub const MAX_CONTEXT_FILES: usize = 64;
/// At most this many bytes of context file content per task.
pub const MAX_CONTEXT_BYTES: usize = 1024 * 1024;

/// What the agent prepares before running the task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskContext {
    /// Repository to clone into the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoSpec>,
    /// Files written into the workspace (after the clone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ContextFile>,
}

impl TaskContext {
    /// True when there is nothing to prepare.
    pub fn is_empty(&self) -> bool {
        self.repo.is_none() && self.files.is_empty()
    }

    /// Checks every field; the error names the field (`repo.url`, `files[2].path`) and why.
    pub fn validate(&self) -> Result<(), ContextError> {
        if let Some(r) = &self.repo {
            validate_repo_url(&r.url).map_err(|why| ContextError::new("repo.url", why))?;
            if let Some(g) = &r.git_ref {
                validate_ref(g).map_err(|why| ContextError::new("repo.ref", why))?;
            }
        }
        if self.files.len() > MAX_CONTEXT_FILES {
            return Err(ContextError::new(
                "files",
                format!("at most {MAX_CONTEXT_FILES} files"),
            ));
        }
        let total: usize = self.files.iter().map(|f| f.content.len()).sum();
        if total > MAX_CONTEXT_BYTES {
            return Err(ContextError {
                too_large: true,
                ..ContextError::new(
                    "files",
                    format!("{total} bytes of content; the limit is {MAX_CONTEXT_BYTES}"),
                )
            });
        }
        for (i, f) in self.files.iter().enumerate() {
            validate_rel_path(&f.path)
                .map_err(|why| ContextError::new(&format!("files[{i}].path"), why))?;
        }
        Ok(())
    }
}

/// A git repository and the ref to check out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepoSpec {
    /// Clone URL: `https://`, `http://`, `ssh://`, `git://`, `file://` or `user@host:path`.
    pub url: String,
    /// Branch, tag or commit; the remote's default branch when absent.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

impl RepoSpec {
    /// Parses `URL[@REF]`, the form the CLI and the Python client accept: the ref follows the
    /// last `@` in the URL's path (so `git@host:o/r.git` keeps its user, and
    /// `https://host/o/r.git@release/1.2` checks out `release/1.2`). Nothing is validated here:
    /// the orchestrator checks both when the task is scheduled.
    pub fn parse(spec: &str) -> RepoSpec {
        let path_start = match spec.split_once("://") {
            Some((scheme, rest)) => rest.find('/').map(|i| scheme.len() + 3 + i),
            None => spec.find(':').map(|i| i + 1),
        };
        if let Some(start) = path_start {
            if let Some(at) = spec[start..].rfind('@') {
                let (url, r) = (&spec[..start + at], &spec[start + at + 1..]);
                if !r.is_empty() {
                    return RepoSpec {
                        url: url.to_owned(),
                        git_ref: Some(r.to_owned()),
                    };
                }
            }
        }
        RepoSpec {
            url: spec.to_owned(),
            git_ref: None,
        }
    }
}

/// A file the agent writes into its workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextFile {
    /// Relative path inside the workspace (no `..`, not absolute).
    pub path: String,
    /// UTF-8 content.
    pub content: String,
}

/// A context field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ContextError {
    /// The field, e.g. `repo.url` or `files[0].path`.
    pub field: String,
    /// Why.
    pub message: String,
    /// The files are too large in total (the API answers 413 rather than 422).
    pub too_large: bool,
}

impl ContextError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
            too_large: false,
        }
    }
}

/// Accepts the clone URL forms git itself understands without helpers; refuses `ext::` and other
/// remote-helper transports (they run commands), option-like values and control characters.
pub fn validate_repo_url(url: &str) -> Result<(), String> {
    if url.is_empty() || url.len() > 2048 {
        return Err("must be 1 to 2048 characters".into());
    }
    if url.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        // Credentials in the URL would be stored with the task and shown to everyone who can
        // list tasks: give the forge token to the orchestrator instead (--forge-token-file).
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            let has_password = userinfo.contains(':');
            if matches!(scheme, "https" | "http" | "git") || has_password {
                return Err(
                    "repo.url must not contain credentials (user:token@): give the forge token to the \
                     orchestrator (--forge-token-file), which hands it to agents as a secret"
                        .into(),
                );
            }
        }
        return match scheme {
            "https" | "http" | "ssh" | "git" | "file" if !rest.is_empty() => Ok(()),
            "https" | "http" | "ssh" | "git" | "file" => Err("has no host or path".into()),
            other => Err(format!(
                "scheme {other:?} is not allowed (use https, http, ssh, git or file)"
            )),
        };
    }
    if url.contains("::") {
        return Err("remote-helper transports (`<helper>::<address>`) are not allowed".into());
    }
    // scp-like `user@host:path` (ssh: the user is a login name, never a password).
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !path.is_empty() && !host.contains('/') => Ok(()),
        _ => Err("must be a URL (https://, ssh://, git://, file://) or user@host:path".into()),
    }
}

/// A subset of `git check-ref-format`: enough to refuse anything git would read as an option or
/// a revision expression.
pub fn validate_ref(r: &str) -> Result<(), String> {
    if r.is_empty() || r.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    if r.starts_with('-') || r.starts_with('/') || r.ends_with('/') || r.ends_with('.') {
        return Err("must not start with '-' or '/' or end with '/' or '.'".into());
    }
    if r.contains("..") || r.contains("@{") || r.contains("//") || r.ends_with(".lock") {
        return Err("must not contain '..', '@{', '//' or end with '.lock'".into());
    }
    if r.chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err("must not contain spaces, control characters or any of ~^:?*[\\".into());
    }
    Ok(())
}

/// A relative path that stays inside the directory it is joined to.
pub fn validate_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 1024 {
        return Err("must be 1 to 1024 characters".into());
    }
    if p.starts_with('/') || p.contains('\\') || p.chars().any(|c| c.is_control()) {
        return Err("must be a relative path with '/' separators and no control characters".into());
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("must not contain empty, '.' or '..' components".into());
    }
    if p.split('/').next() == Some(".git") {
        return Err("must not write into .git".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_urls() {
        for ok in [
            "https://github.com/acme/app.git",
            "ssh://git@host/x.git",
            "file:///srv/git/app.git",
            "https://github.com/acme/app@v2.git",
            "git@github.com:acme/app.git",
        ] {
            assert_eq!(validate_repo_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "-uhttps://x",
            "ftp://host/x",
            "https://",
            "/srv/git/app.git",
            "https://host/a b",
            "https://bot:ghp_secret@github.com/acme/app.git",
            "https://ghp_secret@github.com/acme/app.git",
            "ssh://git:pw@host/x.git",
        ] {
            assert!(validate_repo_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repo_specs_with_refs() {
        let p = |s: &str| {
            let r = RepoSpec::parse(s);
            (r.url, r.git_ref)
        };
        assert_eq!(
            p("https://host/o/r.git@release/1.2"),
            ("https://host/o/r.git".into(), Some("release/1.2".into()))
        );
        assert_eq!(p("git@host:o/r.git"), ("git@host:o/r.git".into(), None));
        assert_eq!(
            p("git@host:o/r.git@main"),
            ("git@host:o/r.git".into(), Some("main".into()))
        );
        assert_eq!(p("https://host/o/r"), ("https://host/o/r".into(), None));
        assert_eq!(p("https://host"), ("https://host".into(), None));
        assert_eq!(p("https://host/o/r@"), ("https://host/o/r@".into(), None));
    }

    #[test]
    fn refs_and_paths() {
        assert!(validate_ref("main").is_ok());
        assert!(validate_ref("release/1.2").is_ok());
        for bad in ["-x", "a..b", "a b", "HEAD@{1}", "x.lock", "a:b", ""] {
            assert!(validate_ref(bad).is_err(), "{bad}");
        }
        assert!(validate_rel_path("docs/notes.md").is_ok());
        for bad in ["/etc/passwd", "../x", "a/../b", "a//b", ".git/config", ""] {
            assert!(validate_rel_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ctx = TaskContext {
            repo: None,
            files: vec![
                ContextFile {
                    path: "ok.txt".into(),
                    content: String::new(),
                },
                ContextFile {
                    path: "../escape".into(),
                    content: String::new(),
                },
            ],
        };
        assert_eq!(ctx.validate().unwrap_err().field, "files[1].path");
        let ctx = TaskContext {
            repo: Some(RepoSpec {
                url: "https://x/y".into(),
                git_ref: Some("--upload-pack=evil".into()),
            }),
            files: vec![],
        };
        assert_eq!(ctx.validate().unwrap_err().field, "repo.ref");
    }
}
