//! Opening a pull request (a merge request on GitLab) for a pushed branch, on the code forges
//! people host their repositories on: GitHub (github.com and GitHub Enterprise Server),
//! Gitea and Forgejo, and GitLab (gitlab.com and self-managed).
//!
//! One trait, [`Forge`], with a provided [`Forge::open_pull_request`] that never duplicates:
//! it first looks for an open pull request from the same head branch into the same base, reuses
//! it, and only then creates one. When the create call says the pull request already exists
//! (GitHub 422, Gitea/Forgejo 409, GitLab 409: a requeued attempt, or two attempts racing) it
//! looks again and reuses what it finds. The forge's status code decides, never its message.
//!
//! Why not a client crate: each forge needs two calls (find, create). `octocrab` covers GitHub
//! only, brings its own HTTP stack (hyper, tower, its own TLS setup) beside the `reqwest` client
//! the agent already has, and types its errors around GitHub; there is no comparably kept crate
//! for the Gitea and GitLab REST APIs that fits an async `reqwest` agent. The three
//! implementations here share one HTTP client, one error type and one redaction rule, and are
//! tested against a real Gitea (bin/tests/forge_gitea.rs) and against recorded GitHub and
//! GitLab responses (guildnet-core/tests/forge_fixtures.rs).
//!
//! Tokens go only into request headers; errors name the API base URL and the forge's message,
//! never the token.

mod gitea;
mod github;
mod gitlab;

pub use gitea::GiteaForge;
pub use github::GitHubForge;
pub use gitlab::GitLabForge;

use crate::token::Secret;
use async_trait::async_trait;
use base64::Engine;
use reqwest::Url;
use serde::Serialize;
use std::time::Duration;

/// Which forge API to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForgeKind {
    /// GitHub and GitHub Enterprise Server (REST v3).
    GitHub,
    /// Gitea and Forgejo (`/api/v1`).
    Gitea,
    /// GitLab (`/api/v4`), merge requests.
    GitLab,
}

impl ForgeKind {
    /// Parses `github`, `gitea`, `forgejo` (the Gitea API) or `gitlab`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "github" | "ghe" | "github-enterprise" => Some(Self::GitHub),
            "gitea" | "forgejo" => Some(Self::Gitea),
            "gitlab" => Some(Self::GitLab),
            _ => None,
        }
    }

    /// The canonical name (`github`, `gitea`, `gitlab`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::Gitea => "gitea",
            Self::GitLab => "gitlab",
        }
    }

    /// The user name sent with the token in git's HTTP Basic auth. The forges check the token
    /// (the password); GitHub and GitLab document these names for tokens.
    pub fn git_user(self) -> &'static str {
        match self {
            Self::GitHub => "x-access-token",
            Self::Gitea => "guildnet",
            Self::GitLab => "oauth2",
        }
    }

    /// Guesses the kind from an API or web URL: `github.com` and `/api/v3` are GitHub,
    /// `gitlab` in the host or `/api/v4` GitLab, `/api/v1` Gitea.
    pub fn guess(url: &str) -> Option<Self> {
        let u = Url::parse(url).ok()?;
        let host = u.host_str()?.to_ascii_lowercase();
        let path = u.path().trim_end_matches('/');
        if host == "github.com" || host == "api.github.com" || path.ends_with("/api/v3") {
            Some(Self::GitHub)
        } else if path.ends_with("/api/v4") || host.split('.').any(|p| p == "gitlab") {
            Some(Self::GitLab)
        } else if path.ends_with("/api/v1") {
            Some(Self::Gitea)
        } else {
            None
        }
    }
}

impl std::fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pull request to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// Title.
    pub title: String,
    /// Branch with the changes (in the same repository).
    pub head: String,
    /// Branch to merge into.
    pub base: String,
    /// Description.
    pub body: String,
}

/// An opened (or already open) pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedPr {
    /// Web URL of the pull request.
    pub url: String,
    /// Its number (GitLab: the merge request's `iid`).
    pub number: Option<u64>,
    /// True when an open pull request for the same branches already existed and was reused.
    pub reused: bool,
}

/// What a create call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The forge created it.
    Created(OpenedPr),
    /// The forge answered its "already exists" status (GitHub 422, Gitea and GitLab 409).
    Conflict {
        /// HTTP status.
        status: u16,
        /// The forge's message.
        message: String,
    },
}

/// Why a pull request could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The settings are unusable (bad URL, repository not `owner/name`).
    #[error("forge settings: {0}")]
    Config(String),
    /// The forge refused the token.
    #[error("forge {api} refused the credentials (HTTP {status}): {message}")]
    Auth {
        /// API base URL.
        api: String,
        /// HTTP status.
        status: u16,
        /// The forge's message.
        message: String,
    },
    /// The forge answered with an error.
    #[error("forge {api} answered HTTP {status}: {message}")]
    Api {
        /// API base URL.
        api: String,
        /// HTTP status.
        status: u16,
        /// The forge's message.
        message: String,
    },
    /// The forge answered 2xx with a body this client does not understand.
    #[error("forge {api}: unexpected {what}: {reason}")]
    Decode {
        /// API base URL.
        api: String,
        /// What was being read.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The forge could not be reached.
    #[error("forge {api} unreachable: {reason}")]
    Unreachable {
        /// API base URL.
        api: String,
        /// Why.
        reason: String,
    },
}

/// Something that opens pull requests for one repository.
#[async_trait]
pub trait Forge: Send + Sync {
    /// Which API this speaks.
    fn kind(&self) -> ForgeKind;

    /// The open pull request from `head` into `base`, if there is one.
    async fn find_open(&self, head: &str, base: &str) -> Result<Option<OpenedPr>, ForgeError>;

    /// Creates a pull request; the forge's "already exists" answer is [`Created::Conflict`].
    async fn create(&self, pr: &PullRequest) -> Result<Created, ForgeError>;

    /// Opens a pull request, or returns the open one for the same head and base: never a
    /// second one.
    async fn open_pull_request(&self, pr: &PullRequest) -> Result<OpenedPr, ForgeError> {
        if let Some(existing) = self.find_open(&pr.head, &pr.base).await? {
            return Ok(existing);
        }
        match self.create(pr).await? {
            Created::Created(p) => Ok(p),
            Created::Conflict { status, message } => {
                match self.find_open(&pr.head, &pr.base).await? {
                    Some(existing) => Ok(existing),
                    None => Err(ForgeError::Api {
                        api: self.api_base().to_owned(),
                        status,
                        message,
                    }),
                }
            }
        }
    }

    /// The API base URL (for messages).
    fn api_base(&self) -> &str;
}

/// Settings of a forge, as the agent reads them (`GUILDNET_FORGE_*`).
#[derive(Debug, Clone)]
pub struct ForgeSettings {
    /// Which API.
    pub kind: ForgeKind,
    /// The forge's URL as configured: its web root (`https://gitea.example`,
    /// `https://github.com`, `https://ghe.example`) or its API base (`https://api.github.com`,
    /// `https://ghe.example/api/v3`, `https://gitea.example/api/v1`,
    /// `https://gitlab.example/api/v4`).
    pub url: String,
    /// The token (API and git over HTTPS).
    pub token: Secret,
}

/// Where a forge lives: its web root (where clone URLs start) and its REST API base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeEndpoints {
    /// Web root, ending in `/` (`https://github.com/`, `https://gitea.example/`).
    pub web: String,
    /// REST API base, without a trailing `/` (`https://api.github.com`,
    /// `https://gitea.example/api/v1`).
    pub api: String,
}

impl ForgeSettings {
    /// The web root and API base derived from [`ForgeSettings::url`].
    pub fn endpoints(&self) -> Result<ForgeEndpoints, ForgeError> {
        endpoints(self.kind, &self.url)
    }

    /// The forge for the repository `repo_path` (`owner/name`; GitLab: `group/sub/name`).
    pub fn connect(&self, repo_path: &str) -> Result<Box<dyn Forge>, ForgeError> {
        let ep = self.endpoints()?;
        Ok(match self.kind {
            ForgeKind::GitHub => {
                Box::new(GitHubForge::new(&ep.api, repo_path, self.token.clone())?)
            }
            ForgeKind::Gitea => Box::new(GiteaForge::new(&ep.api, repo_path, self.token.clone())?),
            ForgeKind::GitLab => {
                Box::new(GitLabForge::new(&ep.api, repo_path, self.token.clone())?)
            }
        })
    }

    /// The repository path on this forge for a clone URL: everything after the web root,
    /// without `.git` (`owner/name`, or `group/sub/name` on GitLab). `None` when the clone URL
    /// is not under the forge's web root.
    pub fn repo_path(&self, clone_url: &str) -> Option<String> {
        let ep = self.endpoints().ok()?;
        let rest = strip_prefix_ci(clone_url, &ep.web)?;
        let path = rest.trim_end_matches('/').trim_end_matches(".git");
        let segs: Vec<&str> = path.split('/').collect();
        let ok = match self.kind {
            ForgeKind::GitLab => segs.len() >= 2,
            _ => segs.len() == 2,
        };
        (ok && segs.iter().all(|s| valid_segment(s))).then(|| segs.join("/"))
    }

    /// The git configuration that sends the token with HTTP(S) requests to this forge's web
    /// root only: `http.<web root>.extraHeader` = `Authorization: Basic <user:token>`. Passed
    /// to git through `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`, never on a
    /// command line (which any local user can read in /proc) and never in `.git/config`.
    pub fn git_http_auth(&self) -> Result<GitHttpAuth, ForgeError> {
        let ep = self.endpoints()?;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.kind.git_user(),
            self.token.expose()
        ));
        Ok(GitHttpAuth {
            url: ep.web,
            header: Secret::new(format!("Authorization: Basic {basic}")),
        })
    }
}

impl ForgeSettings {
    /// Who the token belongs to (`GET /user` on every forge): the login name, or
    /// [`ForgeError::Auth`] when the forge refuses the token. The agent asks this after a clone
    /// or push over HTTP(S) failed, to tell a refused token from other failures by the forge's
    /// status code rather than by git's message.
    pub async fn whoami(&self) -> Result<String, ForgeError> {
        let ep = self.endpoints()?;
        let http = http_client()?;
        let req = http.get(format!("{}/user", ep.api));
        let req = match self.kind {
            ForgeKind::GitHub => req
                .bearer_auth(self.token.expose())
                .header("Accept", "application/vnd.github+json"),
            ForgeKind::Gitea => {
                req.header("Authorization", format!("token {}", self.token.expose()))
            }
            ForgeKind::GitLab => req.header("PRIVATE-TOKEN", self.token.expose()),
        };
        let reply = send(&ep.api, req).await?;
        if reply.status != 200 {
            return Err(reply_error(&ep.api, &reply));
        }
        let v: serde_json::Value = decode(&ep.api, "user", &reply.body)?;
        Ok(v.get("login")
            .or_else(|| v.get("username"))
            .and_then(|l| l.as_str())
            .unwrap_or("")
            .to_owned())
    }
}

/// An HTTP header git sends to URLs under `url` (see [`ForgeSettings::git_http_auth`]).
#[derive(Debug, Clone)]
pub struct GitHttpAuth {
    /// The URL prefix the header is scoped to (`https://gitea.example/`).
    pub url: String,
    /// The header line.
    pub header: Secret,
}

impl GitHttpAuth {
    /// The `(name, value)` environment pairs that configure git with this header.
    pub fn git_env(&self) -> Vec<(String, String)> {
        vec![
            ("GIT_CONFIG_COUNT".into(), "1".into()),
            (
                "GIT_CONFIG_KEY_0".into(),
                format!("http.{}.extraHeader", self.url),
            ),
            ("GIT_CONFIG_VALUE_0".into(), self.header.expose().to_owned()),
        ]
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

/// The web root and API base for `kind` from a configured URL (see [`ForgeSettings::url`]).
pub fn endpoints(kind: ForgeKind, url: &str) -> Result<ForgeEndpoints, ForgeError> {
    let u = Url::parse(url.trim())
        .map_err(|e| ForgeError::Config(format!("forge URL {url:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ForgeError::Config(format!(
            "forge URL {url:?} must be http(s)"
        )));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(ForgeError::Config(
            "the forge URL must not carry credentials; give the token separately".into(),
        ));
    }
    let Some(host) = u.host_str() else {
        return Err(ForgeError::Config(format!("forge URL {url:?} has no host")));
    };
    let origin = match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    };
    let path = u.path().trim_end_matches('/');
    let (web, api) = match kind {
        ForgeKind::GitHub if host.eq_ignore_ascii_case("api.github.com") => (
            "https://github.com/".to_owned(),
            "https://api.github.com".to_owned(),
        ),
        ForgeKind::GitHub if host.eq_ignore_ascii_case("github.com") => (
            "https://github.com/".to_owned(),
            "https://api.github.com".to_owned(),
        ),
        // GitHub Enterprise Server: https://HOST/api/v3 (the web root is the host).
        ForgeKind::GitHub => {
            let root = path.strip_suffix("/api/v3").unwrap_or(path);
            (format!("{origin}{root}/"), format!("{origin}{root}/api/v3"))
        }
        ForgeKind::Gitea => {
            let root = path.strip_suffix("/api/v1").unwrap_or(path);
            (format!("{origin}{root}/"), format!("{origin}{root}/api/v1"))
        }
        ForgeKind::GitLab => {
            let root = path.strip_suffix("/api/v4").unwrap_or(path);
            (format!("{origin}{root}/"), format!("{origin}{root}/api/v4"))
        }
    };
    Ok(ForgeEndpoints { web, api })
}

/// One path segment of a repository path: letters, digits, `-`, `_`, `.`; not `.` or `..`.
pub(crate) fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s != "."
        && s != ".."
}

/// `owner/name` from a clone URL (`https://host/owner/name.git`, `git@host:owner/name.git`):
/// its last two path segments.
pub fn owner_repo_from_url(url: &str) -> Option<String> {
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => url.split_once(':')?.1,
    };
    let mut parts: Vec<&str> = path
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let last = parts.pop()?;
    // One ".git" suffix: a repository may be named "x.git" (its URL then ends "x.git.git").
    let name = last.strip_suffix(".git").unwrap_or(last);
    let owner = parts.pop()?;
    (valid_segment(owner) && valid_segment(name)).then(|| format!("{owner}/{name}"))
}

/// `owner/name` split and checked.
pub(crate) fn split_owner_repo(owner_repo: &str) -> Result<(String, String), ForgeError> {
    owner_repo
        .split_once('/')
        .map(|(o, r)| (o, r.strip_suffix(".git").unwrap_or(r)))
        .filter(|(o, r)| valid_segment(o) && valid_segment(r))
        .map(|(o, r)| (o.to_owned(), r.to_owned()))
        .ok_or_else(|| ForgeError::Config(format!("repository {owner_repo:?} is not owner/name")))
}

/// The shared HTTP client of the forges: 30 s timeout, a user agent, no proxy surprises.
pub(crate) fn http_client() -> Result<reqwest::Client, ForgeError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("guildnet-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ForgeError::Config(format!("HTTP client: {e}")))
}

/// Checks an API base URL (http or https, no credentials) and drops a trailing `/`.
pub(crate) fn check_api(api: &str) -> Result<String, ForgeError> {
    let u = Url::parse(api).map_err(|e| ForgeError::Config(format!("forge API {api:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ForgeError::Config(format!(
            "forge API URL {api:?} must be http(s)"
        )));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(ForgeError::Config(
            "the forge API URL must not carry credentials".into(),
        ));
    }
    Ok(api.trim_end_matches('/').to_owned())
}

/// A response read whole: status and body text.
pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
}

/// Sends a request and reads the reply; transport errors become [`ForgeError::Unreachable`]
/// (with the URL left out: it may carry query values).
pub(crate) async fn send(api: &str, req: reqwest::RequestBuilder) -> Result<Reply, ForgeError> {
    let resp = req.send().await.map_err(|e| ForgeError::Unreachable {
        api: api.to_owned(),
        reason: e.without_url().to_string(),
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Ok(Reply { status, body })
}

/// The forge's error message from a JSON body: `message` as a string or a list of strings
/// (GitLab), with GitHub's `errors[].message` appended; else the start of the body.
pub(crate) fn error_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        let t: String = body.trim().chars().take(200).collect();
        return if t.is_empty() {
            "(empty reply)".into()
        } else {
            t
        };
    };
    let mut parts = Vec::new();
    match v.get("message") {
        Some(serde_json::Value::String(s)) => parts.push(s.clone()),
        Some(serde_json::Value::Array(a)) => {
            parts.extend(a.iter().filter_map(|m| m.as_str().map(str::to_owned)))
        }
        Some(other) => parts.push(other.to_string()),
        None => {}
    }
    if let Some(errs) = v.get("errors").and_then(|e| e.as_array()) {
        parts.extend(
            errs.iter()
                .filter_map(|e| e.get("message").and_then(|m| m.as_str()).map(str::to_owned)),
        );
    }
    if let Some(s) = v.get("error").and_then(|e| e.as_str()) {
        parts.push(s.to_owned());
    }
    if parts.is_empty() {
        body.chars().take(200).collect()
    } else {
        parts.join("; ")
    }
}

/// The error for a non-success reply: 401/403 are [`ForgeError::Auth`].
pub(crate) fn reply_error(api: &str, reply: &Reply) -> ForgeError {
    let message = error_message(&reply.body);
    if reply.status == 401 || reply.status == 403 {
        ForgeError::Auth {
            api: api.to_owned(),
            status: reply.status,
            message,
        }
    } else {
        ForgeError::Api {
            api: api.to_owned(),
            status: reply.status,
            message,
        }
    }
}

/// Parses a 2xx JSON body.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    api: &str,
    what: &'static str,
    body: &str,
) -> Result<T, ForgeError> {
    serde_json::from_str(body).map_err(|e| ForgeError::Decode {
        api: api.to_owned(),
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kind: ForgeKind, url: &str) -> ForgeSettings {
        ForgeSettings {
            kind,
            url: url.into(),
            token: Secret::new("tok-123456"),
        }
    }

    #[test]
    fn owner_repo_from_clone_urls() {
        assert_eq!(
            owner_repo_from_url("https://github.com/acme/app.git").as_deref(),
            Some("acme/app")
        );
        assert_eq!(
            owner_repo_from_url("git@github.com:acme/app.git").as_deref(),
            Some("acme/app")
        );
        assert_eq!(
            owner_repo_from_url("file:///srv/git/acme/app.git").as_deref(),
            Some("acme/app")
        );
        assert_eq!(owner_repo_from_url("https://github.com/app"), None);
        assert_eq!(
            owner_repo_from_url("https://forge.example/acme/lib.git.git").as_deref(),
            Some("acme/lib.git")
        );
    }

    #[test]
    fn endpoints_of_each_forge() {
        let e = |k, u| endpoints(k, u).unwrap();
        for u in [
            "https://github.com",
            "https://api.github.com/",
            "https://github.com/acme",
        ] {
            assert_eq!(
                e(ForgeKind::GitHub, u),
                ForgeEndpoints {
                    web: "https://github.com/".into(),
                    api: "https://api.github.com".into()
                },
                "{u}"
            );
        }
        for u in ["https://ghe.example", "https://ghe.example/api/v3/"] {
            assert_eq!(
                e(ForgeKind::GitHub, u),
                ForgeEndpoints {
                    web: "https://ghe.example/".into(),
                    api: "https://ghe.example/api/v3".into()
                }
            );
        }
        for u in ["http://127.0.0.1:3000", "http://127.0.0.1:3000/api/v1"] {
            assert_eq!(
                e(ForgeKind::Gitea, u),
                ForgeEndpoints {
                    web: "http://127.0.0.1:3000/".into(),
                    api: "http://127.0.0.1:3000/api/v1".into()
                }
            );
        }
        assert_eq!(
            e(ForgeKind::GitLab, "https://git.example/gitlab/api/v4"),
            ForgeEndpoints {
                web: "https://git.example/gitlab/".into(),
                api: "https://git.example/gitlab/api/v4".into()
            }
        );
        assert!(endpoints(ForgeKind::Gitea, "ftp://x").is_err());
        assert!(endpoints(ForgeKind::Gitea, "https://u:p@x").is_err());
    }

    #[test]
    fn repo_paths_under_the_web_root() {
        let gh = settings(ForgeKind::GitHub, "https://api.github.com");
        assert_eq!(
            gh.repo_path("https://github.com/acme/app.git").as_deref(),
            Some("acme/app")
        );
        assert_eq!(gh.repo_path("https://gitlab.com/acme/app.git"), None);
        assert_eq!(gh.repo_path("https://github.com/a/b/c"), None);
        let gl = settings(ForgeKind::GitLab, "https://gitlab.com");
        assert_eq!(
            gl.repo_path("https://gitlab.com/grp/sub/app.git")
                .as_deref(),
            Some("grp/sub/app")
        );
        let gt = settings(ForgeKind::Gitea, "http://127.0.0.1:3000/api/v1");
        assert_eq!(
            gt.repo_path("http://127.0.0.1:3000/acme/app.git")
                .as_deref(),
            Some("acme/app")
        );
        assert_eq!(gt.repo_path("http://127.0.0.1:3001/acme/app.git"), None);
    }

    #[test]
    fn git_auth_is_scoped_to_the_web_root_and_kept_out_of_urls() {
        let s = settings(ForgeKind::Gitea, "http://127.0.0.1:3000/api/v1");
        let a = s.git_http_auth().unwrap();
        assert_eq!(a.url, "http://127.0.0.1:3000/");
        let env = a.git_env();
        assert_eq!(env[1].1, "http.http://127.0.0.1:3000/.extraHeader");
        let b64 = base64::engine::general_purpose::STANDARD.encode("guildnet:tok-123456");
        assert_eq!(env[2].1, format!("Authorization: Basic {b64}"));
        assert!(!format!("{a:?}").contains("tok-123456"));
    }

    #[test]
    fn kinds_parse_and_guess() {
        assert_eq!(ForgeKind::parse("Forgejo"), Some(ForgeKind::Gitea));
        assert_eq!(ForgeKind::parse("gitlab"), Some(ForgeKind::GitLab));
        assert_eq!(ForgeKind::parse("bitbucket"), None);
        assert_eq!(
            ForgeKind::guess("https://api.github.com"),
            Some(ForgeKind::GitHub)
        );
        assert_eq!(
            ForgeKind::guess("https://ghe.x/api/v3"),
            Some(ForgeKind::GitHub)
        );
        assert_eq!(
            ForgeKind::guess("https://gitlab.com"),
            Some(ForgeKind::GitLab)
        );
        assert_eq!(
            ForgeKind::guess("http://h:3000/api/v1"),
            Some(ForgeKind::Gitea)
        );
        assert_eq!(ForgeKind::guess("http://h:3000"), None);
    }

    #[test]
    fn error_messages_of_each_forge() {
        assert_eq!(
            error_message(
                r#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","code":"custom","message":"A pull request already exists for acme:x."}]}"#
            ),
            "Validation Failed; A pull request already exists for acme:x."
        );
        assert_eq!(
            error_message(
                r#"{"message":["Another open merge request already exists for this source branch: !3"]}"#
            ),
            "Another open merge request already exists for this source branch: !3"
        );
        assert_eq!(
            error_message("<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(error_message(""), "(empty reply)");
    }
}
