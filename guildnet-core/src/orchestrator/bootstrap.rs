//! Org cluster bootstrap through the orchestrator: `POST /orgs/bootstrap` starts a job (one per
//! org at a time), `GET /orgs/{org}/bootstrap` tells where it stands, `GET
//! /orgs/{org}/bootstrap/stream` replays its progress and follows it live (SSE), and `POST
//! /kubeconfig/generate` runs the kubeconfig step alone. The work itself is a
//! [`ClusterBootstrap`](crate::seams::ClusterBootstrap) (guildnet-talos drives talosctl).
//!
//! **Several replicas.** A bootstrap of an org runs once cluster-wide: the replica that starts
//! it takes the store's cluster-wide lock `bootstrap:<org>` ([`crate::store::StateStore::try_lock`],
//! a PostgreSQL session advisory lock) and holds it until the job ends. A start on another
//! replica meanwhile is refused with 409 `bootstrap_running_elsewhere`. If the holding replica
//! dies, PostgreSQL ends its session and so releases the lock: the next start, on any replica,
//! runs the bootstrap again (the steps are re-runnable). The job's status and progress stream
//! live in the replica that runs it; another replica answers 404 for them.

use super::error::ApiError;
use super::http::{AdminAuth, ApiJson, ApiPath};
use super::Orchestrator;
use crate::jobs::{JobError, JobState, JobUpdate};
use crate::names::OrgName;
use crate::seams::{BootstrapError, BootstrapRequest};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use std::convert::Infallible;

pub use crate::api::{BootstrapStatus, KubeconfigRequest, KubeconfigResponse, OrgBootstrapRequest};

fn status_of(org: &OrgName, st: &JobState<crate::seams::BootstrapOutcome>) -> BootstrapStatus {
    let (state, result, error) = match st {
        JobState::Running => ("running", None, None),
        JobState::Succeeded(o) => ("succeeded", serde_json::to_value(o).ok(), None),
        JobState::Failed(e) => ("failed", None, Some(e.clone())),
    };
    BootstrapStatus {
        org: org.clone(),
        state: state.into(),
        result,
        error,
        stream: format!("/orgs/{org}/bootstrap/stream"),
    }
}

fn bootstrap_err(e: BootstrapError) -> ApiError {
    match e {
        BootstrapError::Invalid { field, reason } => {
            // The bootstrapper's names of the node lists, as the API spells them.
            let field = match field.as_str() {
                "control_plane" | "controlPlane" => "cpNodes".to_owned(),
                "workers" => "workerNodes".to_owned(),
                f if f.starts_with("control_plane[") => f.replacen("control_plane", "cpNodes", 1),
                f if f.starts_with("workers[") => f.replacen("workers", "workerNodes", 1),
                "" => "request".to_owned(),
                f => f.to_owned(),
            };
            ApiError::invalid(&field, format!("{field}: {reason}"))
        }
        e @ BootstrapError::NotBootstrapped { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_bootstrapped", e.to_string())
        }
        e @ BootstrapError::Step { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "bootstrap_failed", e.to_string())
        }
    }
}

impl Orchestrator {
    fn require_bootstrap(
        &self,
    ) -> Result<std::sync::Arc<dyn crate::seams::ClusterBootstrap>, ApiError> {
        self.bootstrapper().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "bootstrap_unavailable",
                "this orchestrator has no cluster bootstrap configured (start it with talosctl \
                 available, see docs/TALOS.md)",
            )
        })
    }

    async fn require_org(&self, org: &OrgName) -> Result<(), ApiError> {
        if self.store().get_org(org).await?.is_none() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_org",
                format!(
                    "org {:?} is not registered; create it first (`guildnet org create <name>`, the dashboard's Orgs page, or POST /orgs)",
                    org.as_str()
                ),
            )
            .with_field("org"));
        }
        Ok(())
    }

    /// Starts an org's bootstrap job. 409 while one runs for the org.
    pub async fn start_bootstrap(
        &self,
        req: OrgBootstrapRequest,
    ) -> Result<BootstrapStatus, ApiError> {
        let b = self.require_bootstrap()?;
        self.require_org(&req.org).await?;
        let request = BootstrapRequest {
            org: req.org.clone(),
            control_plane: req.cp_nodes,
            workers: req.worker_nodes,
        };
        b.validate(&request).map_err(bootstrap_err)?;
        let org = req.org.clone();
        let already_here = || {
            ApiError::conflict(format!(
                "a bootstrap of org {org} is already running; follow it at \
                 /orgs/{org}/bootstrap/stream"
            ))
        };
        if self.bootstrap_jobs().is_running(&org) {
            return Err(already_here());
        }
        // Once cluster-wide: the lock lives as long as the job (it moves into it), and a
        // replica that dies mid-run releases it with its database session.
        let lock = self
            .store()
            .try_lock(&format!("bootstrap:{org}"))
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "bootstrap_running_elsewhere",
                    format!(
                        "a bootstrap of org {org} is running on another orchestrator replica; \
                         its status and progress are served by that replica (or start again \
                         once it has finished or died)"
                    ),
                )
            })?;
        self.bootstrap_jobs()
            .start(org.clone(), move |tx| async move {
                let out = b.bootstrap(request, tx).await;
                drop(lock);
                out
            })
            .map_err(|e| match e {
                JobError::AlreadyRunning { .. } => already_here(),
            })?;
        tracing::info!(org = %req.org, "org bootstrap started");
        Ok(status_of(&req.org, &JobState::Running))
    }

    /// Where the org's last bootstrap stands.
    pub fn bootstrap_status(&self, org: &OrgName) -> Result<BootstrapStatus, ApiError> {
        self.bootstrap_jobs()
            .status(org)
            .map(|st| status_of(org, &st))
            .ok_or_else(|| ApiError::not_found(format!("no bootstrap of org {org} has run")))
    }
}

/// Starts an org's cluster bootstrap.
#[utoipa::path(post, path = "/orgs/bootstrap", tag = "orgs", request_body = OrgBootstrapRequest,
    security(("admin" = [])), responses((status = 202, body = BootstrapStatus),
    (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
    (status = 503, body = super::error::ErrorBody)))]
pub async fn start_bootstrap(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiJson(req): ApiJson<OrgBootstrapRequest>,
) -> Result<Response, ApiError> {
    Ok((StatusCode::ACCEPTED, Json(o.start_bootstrap(req).await?)).into_response())
}

/// Where an org's last bootstrap stands.
#[utoipa::path(get, path = "/orgs/{org}/bootstrap", tag = "orgs",
    params(("org" = String, Path, description = "Org name")), security(("admin" = [])),
    responses((status = 200, body = BootstrapStatus), (status = 404, body = super::error::ErrorBody)))]
pub async fn bootstrap_status(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(org): ApiPath<String>,
) -> Result<Json<BootstrapStatus>, ApiError> {
    let org = OrgName::new(org).map_err(|e| ApiError::invalid("org", e.to_string()))?;
    Ok(Json(o.bootstrap_status(&org)?))
}

/// Follows an org's bootstrap (SSE): every `progress` event so far, then live ones, then one
/// `done` (the outcome) or `error` (the reason) event, and the stream ends.
#[utoipa::path(get, path = "/orgs/{org}/bootstrap/stream", tag = "orgs",
    params(("org" = String, Path, description = "Org name")), security(("admin" = [])),
    responses((status = 200, description = "text/event-stream of progress, then done or error", content_type = "text/event-stream"),
    (status = 404, body = super::error::ErrorBody)))]
pub async fn bootstrap_stream(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(org): ApiPath<String>,
) -> Result<Response, ApiError> {
    let org = OrgName::new(org).map_err(|e| ApiError::invalid("org", e.to_string()))?;
    let sub = o
        .bootstrap_jobs()
        .subscribe(&org)
        .ok_or_else(|| ApiError::not_found(format!("no bootstrap of org {org} has run")))?;
    let keepalive = o.config().sse_keepalive;
    let stream = sub.into_stream().map(move |u| {
        let ev = match u {
            JobUpdate::Event(p) => SseEvent::default()
                .event("progress")
                .data(serde_json::to_string(&p).unwrap_or_default()),
            JobUpdate::Finished(st) => {
                let s = status_of(&org, &st);
                let name = if s.state == "succeeded" {
                    "done"
                } else {
                    "error"
                };
                SseEvent::default()
                    .event(name)
                    .data(serde_json::to_string(&s).unwrap_or_default())
            }
        };
        Ok::<_, Infallible>(ev)
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

/// Runs the kubeconfig step alone for an org.
#[utoipa::path(post, path = "/kubeconfig/generate", tag = "orgs", request_body = KubeconfigRequest,
    security(("admin" = [])), responses((status = 200, body = KubeconfigResponse),
    (status = 422, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody),
    (status = 503, body = super::error::ErrorBody)))]
pub async fn generate_kubeconfig(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiJson(req): ApiJson<KubeconfigRequest>,
) -> Result<Json<KubeconfigResponse>, ApiError> {
    let b = o.require_bootstrap()?;
    o.require_org(&req.org).await?;
    if o.bootstrap_jobs().is_running(&req.org) {
        return Err(ApiError::conflict(format!(
            "a bootstrap of org {} is running; it writes the kubeconfig itself",
            req.org
        )));
    }
    let path = b
        .generate_kubeconfig(&req.org, &req.endpoint)
        .await
        .map_err(|e| match e {
            BootstrapError::Invalid { reason, .. } => {
                ApiError::invalid("endpoint", format!("endpoint: {reason}"))
            }
            other => bootstrap_err(other),
        })?;
    Ok(Json(KubeconfigResponse {
        org: req.org,
        path: path.display().to_string(),
    }))
}
