//! Gitea and Forgejo (`/api/v1`): `POST /repos/{owner}/{repo}/pulls` to create (a duplicate
//! answers 409 Conflict), `GET /repos/{owner}/{repo}/pulls/{base}/{head}` to find (it answers
//! any one pull request for the branches, closed ones too), and the list of open pull requests,
//! page by page, when that one is closed or the base branch has a `/` in it (which that route
//! cannot carry).

use super::{
    check_api, decode, http_client, reply_error, send, split_owner_repo, Created, Forge,
    ForgeError, ForgeKind, OpenedPr, PullRequest,
};
use crate::token::Secret;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Pages of open pull requests read when looking for one by a base branch containing `/`.
const MAX_PAGES: u32 = 20;
/// Pull requests per page (Gitea's default maximum is 50).
const PAGE: u32 = 50;

/// A Gitea or Forgejo repository.
pub struct GiteaForge {
    api: String,
    owner: String,
    repo: String,
    token: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for GiteaForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GiteaForge")
            .field("api", &self.api)
            .field("repo", &format!("{}/{}", self.owner, self.repo))
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct BranchRef {
    #[serde(rename = "ref")]
    name: String,
}

#[derive(Deserialize)]
struct PrReply {
    html_url: String,
    number: Option<u64>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    head: Option<BranchRef>,
    #[serde(default)]
    base: Option<BranchRef>,
}

#[derive(Serialize)]
struct CreateBody<'a> {
    title: &'a str,
    head: &'a str,
    base: &'a str,
    body: &'a str,
}

impl GiteaForge {
    /// The repository `owner/name` at API base `api` (`https://HOST/api/v1`), authenticated
    /// with `token`.
    pub fn new(api: &str, owner_repo: &str, token: Secret) -> Result<Self, ForgeError> {
        let (owner, repo) = split_owner_repo(owner_repo)?;
        Ok(Self {
            api: check_api(api)?,
            owner,
            repo,
            token,
            http: http_client()?,
        })
    }

    fn repo_url(&self) -> String {
        format!("{}/repos/{}/{}", self.api, self.owner, self.repo)
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("Authorization", format!("token {}", self.token.expose()))
            .header("Accept", "application/json")
    }

    fn opened(p: PrReply) -> OpenedPr {
        OpenedPr {
            url: p.html_url,
            number: p.number,
            reused: true,
        }
    }

    async fn find_in_list(&self, head: &str, base: &str) -> Result<Option<OpenedPr>, ForgeError> {
        for page in 1..=MAX_PAGES {
            let req = self
                .request(reqwest::Method::GET, format!("{}/pulls", self.repo_url()))
                .query(&[
                    ("state", "open".to_owned()),
                    ("page", page.to_string()),
                    ("limit", PAGE.to_string()),
                ]);
            let reply = send(&self.api, req).await?;
            if reply.status != 200 {
                return Err(reply_error(&self.api, &reply));
            }
            let list: Vec<PrReply> = decode(&self.api, "pull request list", &reply.body)?;
            let n = list.len();
            if let Some(p) = list.into_iter().find(|p| {
                p.head.as_ref().is_some_and(|h| h.name == head)
                    && p.base.as_ref().is_some_and(|b| b.name == base)
            }) {
                return Ok(Some(Self::opened(p)));
            }
            if n < PAGE as usize {
                break;
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Forge for GiteaForge {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Gitea
    }

    fn api_base(&self) -> &str {
        &self.api
    }

    async fn find_open(&self, head: &str, base: &str) -> Result<Option<OpenedPr>, ForgeError> {
        if base.contains('/') {
            return self.find_in_list(head, base).await;
        }
        // The head is the rest of the path, so branch names with `/` pass unescaped.
        let url = format!("{}/pulls/{base}/{head}", self.repo_url());
        let reply = send(&self.api, self.request(reqwest::Method::GET, url)).await?;
        match reply.status {
            200 => {
                let p: PrReply = decode(&self.api, "pull request", &reply.body)?;
                if p.state.as_deref().unwrap_or("open") == "open" {
                    return Ok(Some(Self::opened(p)));
                }
                // That route answers any one pull request for the branches, a closed one too,
                // while an open one may also exist: look through the open ones.
                self.find_in_list(head, base).await
            }
            404 => Ok(None),
            _ => Err(reply_error(&self.api, &reply)),
        }
    }

    async fn create(&self, pr: &PullRequest) -> Result<Created, ForgeError> {
        let body = CreateBody {
            title: &pr.title,
            head: &pr.head,
            base: &pr.base,
            body: &pr.body,
        };
        let req = self
            .request(reqwest::Method::POST, format!("{}/pulls", self.repo_url()))
            .json(&body);
        let reply = send(&self.api, req).await?;
        match reply.status {
            200 | 201 => {
                let p: PrReply = decode(&self.api, "pull request", &reply.body)?;
                Ok(Created::Created(OpenedPr {
                    url: p.html_url,
                    number: p.number,
                    reused: false,
                }))
            }
            409 => Ok(Created::Conflict {
                status: 409,
                message: super::error_message(&reply.body),
            }),
            _ => Err(reply_error(&self.api, &reply)),
        }
    }
}
