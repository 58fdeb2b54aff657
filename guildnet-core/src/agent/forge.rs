//! Opening a pull request for a pushed branch through a code forge. One small trait, with a
//! GitHub-compatible REST implementation (GitHub, GitHub Enterprise, Gitea and Forgejo speak the
//! same `POST /repos/{owner}/{repo}/pulls`).

use crate::token::Secret;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A pull request to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// Title.
    pub title: String,
    /// Branch with the changes.
    pub head: String,
    /// Branch to merge into.
    pub base: String,
    /// Description.
    pub body: String,
}

/// An opened (or already open) pull request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OpenedPr {
    /// Web URL of the pull request.
    pub url: String,
    /// Its number, when the forge gives one.
    pub number: Option<u64>,
}

/// Why a pull request could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The forge refused the token.
    #[error("forge {api} refused the credentials (HTTP {status})")]
    Auth {
        /// API base URL.
        api: String,
        /// HTTP status.
        status: u16,
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
    /// The forge could not be reached.
    #[error("forge {api} unreachable: {reason}")]
    Unreachable {
        /// API base URL.
        api: String,
        /// Why.
        reason: String,
    },
}

/// Something that opens pull requests.
#[async_trait]
pub trait Forge: Send + Sync {
    /// Opens a pull request, or returns the open one for the same head branch.
    async fn open_pull_request(&self, pr: &PullRequest) -> Result<OpenedPr, ForgeError>;
}

/// A GitHub-compatible REST forge.
pub struct GitHubForge {
    api: String,
    owner: String,
    repo: String,
    token: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for GitHubForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubForge")
            .field("api", &self.api)
            .field("repo", &format!("{}/{}", self.owner, self.repo))
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct PrReply {
    html_url: String,
    number: Option<u64>,
}

impl GitHubForge {
    /// A forge at `api` (e.g. `https://api.github.com`) for `owner/repo`, authenticated with
    /// `token`.
    pub fn new(api: &str, owner_repo: &str, token: Secret) -> Result<Self, String> {
        let (owner, repo) = owner_repo
            .split_once('/')
            .filter(|(o, r)| valid_segment(o) && valid_segment(r))
            .ok_or_else(|| format!("repository {owner_repo:?} is not owner/name"))?;
        let api = api.trim_end_matches('/').to_owned();
        if !(api.starts_with("https://") || api.starts_with("http://")) {
            return Err(format!("forge API URL {api:?} must be http(s)"));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("guildnet-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            api,
            owner: owner.to_owned(),
            repo: repo.trim_end_matches(".git").to_owned(),
            token,
            http,
        })
    }

    fn pulls_url(&self) -> String {
        format!("{}/repos/{}/{}/pulls", self.api, self.owner, self.repo)
    }

    fn err_of(&self, status: u16, body: &str) -> ForgeError {
        if status == 401 || status == 403 {
            return ForgeError::Auth {
                api: self.api.clone(),
                status,
            };
        }
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        ForgeError::Api {
            api: self.api.clone(),
            status,
            message,
        }
    }

    async fn existing(&self, head: &str) -> Result<Option<OpenedPr>, ForgeError> {
        let resp = self
            .http
            .get(self.pulls_url())
            .query(&[
                ("head", format!("{}:{head}", self.owner)),
                ("state", "open".into()),
            ])
            .bearer_auth(self.token.expose())
            .header("Accept", "application/vnd.github+json")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if status != 200 {
            return Err(self.err_of(status, &body));
        }
        let list: Vec<PrReply> = serde_json::from_str(&body).map_err(|e| ForgeError::Api {
            api: self.api.clone(),
            status,
            message: format!("unexpected pull request list: {e}"),
        })?;
        Ok(list.into_iter().next().map(|p| OpenedPr {
            url: p.html_url,
            number: p.number,
        }))
    }

    fn unreachable(&self, e: reqwest::Error) -> ForgeError {
        ForgeError::Unreachable {
            api: self.api.clone(),
            reason: e.without_url().to_string(),
        }
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s != "."
        && s != ".."
}

#[async_trait]
impl Forge for GitHubForge {
    async fn open_pull_request(&self, pr: &PullRequest) -> Result<OpenedPr, ForgeError> {
        let resp = self
            .http
            .post(self.pulls_url())
            .bearer_auth(self.token.expose())
            .header("Accept", "application/vnd.github+json")
            .json(pr)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        match status {
            200 | 201 => {
                let p: PrReply = serde_json::from_str(&body).map_err(|e| ForgeError::Api {
                    api: self.api.clone(),
                    status,
                    message: format!("unexpected pull request reply: {e}"),
                })?;
                Ok(OpenedPr {
                    url: p.html_url,
                    number: p.number,
                })
            }
            // "A pull request already exists": a requeued attempt pushed the same branch again.
            422 => match self.existing(&pr.head).await? {
                Some(p) => Ok(p),
                None => Err(self.err_of(status, &body)),
            },
            _ => Err(self.err_of(status, &body)),
        }
    }
}

/// `owner/name` from a clone URL (`https://host/owner/name.git`, `git@host:owner/name.git`).
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
    let name = parts.pop()?.trim_end_matches(".git");
    let owner = parts.pop()?;
    (valid_segment(owner) && valid_segment(name)).then(|| format!("{owner}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn forge_config_is_checked() {
        let t = || Secret::new("x".to_owned());
        assert!(GitHubForge::new("https://api.github.com", "acme/app", t()).is_ok());
        assert!(GitHubForge::new("https://api.github.com", "acme", t()).is_err());
        assert!(GitHubForge::new("https://api.github.com", "../x/y", t()).is_err());
        assert!(GitHubForge::new("ftp://x", "a/b", t()).is_err());
    }
}
