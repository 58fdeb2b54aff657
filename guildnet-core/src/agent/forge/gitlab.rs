//! GitLab merge requests (`/api/v4`): `POST /projects/{path}/merge_requests` to create (a
//! duplicate answers 409, "Another open merge request already exists for this source branch"),
//! `GET /projects/{path}/merge_requests?source_branch=…&target_branch=…&state=opened` to find.
//! The project is addressed by its URL-encoded full path (`group%2Fsub%2Fname`); the token goes
//! in the `PRIVATE-TOKEN` header (personal, project and group access tokens).

use super::{
    check_api, decode, http_client, reply_error, send, valid_segment, Created, Forge, ForgeError,
    ForgeKind, OpenedPr, PullRequest,
};
use crate::token::Secret;
use async_trait::async_trait;
use reqwest::Url;
use serde::{Deserialize, Serialize};

/// A GitLab project.
pub struct GitLabForge {
    api: String,
    project: String,
    token: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for GitLabForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitLabForge")
            .field("api", &self.api)
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct MrReply {
    web_url: String,
    iid: Option<u64>,
}

#[derive(Serialize)]
struct CreateBody<'a> {
    source_branch: &'a str,
    target_branch: &'a str,
    title: &'a str,
    description: &'a str,
}

impl GitLabForge {
    /// The project `group[/subgroup...]/name` at API base `api` (`https://HOST/api/v4`),
    /// authenticated with `token`.
    pub fn new(api: &str, project_path: &str, token: Secret) -> Result<Self, ForgeError> {
        let project = project_path.trim_matches('/').trim_end_matches(".git");
        let segs: Vec<&str> = project.split('/').collect();
        if segs.len() < 2 || !segs.iter().all(|s| valid_segment(s)) {
            return Err(ForgeError::Config(format!(
                "project {project_path:?} is not group/name"
            )));
        }
        Ok(Self {
            api: check_api(api)?,
            project: project.to_owned(),
            token,
            http: http_client()?,
        })
    }

    fn mrs_url(&self) -> Result<Url, ForgeError> {
        let mut u = Url::parse(&self.api)
            .map_err(|e| ForgeError::Config(format!("forge API {:?}: {e}", self.api)))?;
        u.path_segments_mut()
            .map_err(|_| ForgeError::Config(format!("forge API {:?} has no path", self.api)))?
            .pop_if_empty()
            // One segment: its `/` are encoded as %2F, as GitLab wants a project path.
            .extend(["projects", &self.project, "merge_requests"]);
        Ok(u)
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("PRIVATE-TOKEN", self.token.expose())
            .header("Accept", "application/json")
    }
}

#[async_trait]
impl Forge for GitLabForge {
    fn kind(&self) -> ForgeKind {
        ForgeKind::GitLab
    }

    fn api_base(&self) -> &str {
        &self.api
    }

    async fn find_open(&self, head: &str, base: &str) -> Result<Option<OpenedPr>, ForgeError> {
        let req = self.request(reqwest::Method::GET, self.mrs_url()?).query(&[
            ("source_branch", head),
            ("target_branch", base),
            ("state", "opened"),
        ]);
        let reply = send(&self.api, req).await?;
        if reply.status != 200 {
            return Err(reply_error(&self.api, &reply));
        }
        let list: Vec<MrReply> = decode(&self.api, "merge request list", &reply.body)?;
        Ok(list.into_iter().next().map(|m| OpenedPr {
            url: m.web_url,
            number: m.iid,
            reused: true,
        }))
    }

    async fn create(&self, pr: &PullRequest) -> Result<Created, ForgeError> {
        let body = CreateBody {
            source_branch: &pr.head,
            target_branch: &pr.base,
            title: &pr.title,
            description: &pr.body,
        };
        let req = self
            .request(reqwest::Method::POST, self.mrs_url()?)
            .json(&body);
        let reply = send(&self.api, req).await?;
        match reply.status {
            200 | 201 => {
                let m: MrReply = decode(&self.api, "merge request", &reply.body)?;
                Ok(Created::Created(OpenedPr {
                    url: m.web_url,
                    number: m.iid,
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
