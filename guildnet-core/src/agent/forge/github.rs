//! GitHub and GitHub Enterprise Server: `POST /repos/{owner}/{repo}/pulls` to create,
//! `GET /repos/{owner}/{repo}/pulls?head=owner:branch&base=…&state=open` to find. A duplicate
//! create answers 422 ("Validation Failed", "A pull request already exists for owner:branch.").

use super::{
    check_api, decode, http_client, reply_error, send, split_owner_repo, Created, Forge,
    ForgeError, ForgeKind, OpenedPr, PullRequest,
};
use crate::token::Secret;
use async_trait::async_trait;
use serde::Deserialize;

/// The REST API version this client was written against.
const API_VERSION: &str = "2022-11-28";

/// A GitHub (or GitHub Enterprise Server) repository.
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
    /// The repository `owner/name` at API base `api` (`https://api.github.com`, or
    /// `https://HOST/api/v3` for GitHub Enterprise Server), authenticated with `token`.
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

    fn pulls_url(&self) -> String {
        format!("{}/repos/{}/{}/pulls", self.api, self.owner, self.repo)
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(self.token.expose())
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
    }
}

#[async_trait]
impl Forge for GitHubForge {
    fn kind(&self) -> ForgeKind {
        ForgeKind::GitHub
    }

    fn api_base(&self) -> &str {
        &self.api
    }

    async fn find_open(&self, head: &str, base: &str) -> Result<Option<OpenedPr>, ForgeError> {
        let req = self
            .request(reqwest::Method::GET, self.pulls_url())
            .query(&[
                ("head", format!("{}:{head}", self.owner).as_str()),
                ("base", base),
                ("state", "open"),
            ]);
        let reply = send(&self.api, req).await?;
        if reply.status != 200 {
            return Err(reply_error(&self.api, &reply));
        }
        let list: Vec<PrReply> = decode(&self.api, "pull request list", &reply.body)?;
        Ok(list.into_iter().next().map(|p| OpenedPr {
            url: p.html_url,
            number: p.number,
            reused: true,
        }))
    }

    async fn create(&self, pr: &PullRequest) -> Result<Created, ForgeError> {
        let req = self
            .request(reqwest::Method::POST, self.pulls_url())
            .json(pr);
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
            // GitHub answers every validation failure with 422, "already exists" among them:
            // the caller looks for the open pull request and reports this if there is none.
            422 => Ok(Created::Conflict {
                status: 422,
                message: super::error_message(&reply.body),
            }),
            _ => Err(reply_error(&self.api, &reply)),
        }
    }
}
