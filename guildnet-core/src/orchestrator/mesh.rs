//! The mesh of a running orchestrator (issue 22): `GET /mesh` tells which tailnet agents of the
//! Kubernetes backend go on and whether the orchestrator's own node is on it, `PUT /mesh` sets
//! it (the dashboard's mesh setup hands its mesh over this way), `DELETE /mesh` removes it. The
//! work is a [`MeshControl`](crate::seams::MeshControl) (guildnet-mesh's `RuntimeMesh`).
//!
//! The Headscale API key is a secret: it is validated here without being quoted, handed to the
//! mesh control, and never in a reply, a log line, an error or a URL.

use super::error::{ApiError, ErrorBody};
use super::http::{AdminAuth, ApiJson};
use super::Orchestrator;
use crate::seams::MeshControlError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

pub use crate::api::{MeshRequest, MeshStatus};

fn mesh_err(e: MeshControlError) -> ApiError {
    match e {
        MeshControlError::Invalid { field, reason } => ApiError::invalid(&field, reason),
        e @ MeshControlError::FromFlags => {
            ApiError::new(StatusCode::CONFLICT, "mesh_from_flags", e.to_string())
        }
        e @ MeshControlError::Failed { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "mesh_failed", e.to_string())
        }
    }
}

impl Orchestrator {
    fn require_mesh(&self) -> Result<std::sync::Arc<dyn crate::seams::MeshControl>, ApiError> {
        self.mesh_control().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "mesh_unavailable",
                format!(
                    "the {} backend puts no agent on a mesh: run the orchestrator with \
                     --backend kubernetes (see docs/MESH.md)",
                    self.backend_name()
                ),
            )
        })
    }
}

/// The tailnet agents go on, and the orchestrator's own node on it (never the API key).
#[utoipa::path(get, path = "/mesh", tag = "mesh", security(("admin" = [])),
    responses((status = 200, body = MeshStatus), (status = 401, body = ErrorBody)))]
pub async fn get_mesh(
    State(o): State<Orchestrator>,
    _: AdminAuth,
) -> Result<Json<MeshStatus>, ApiError> {
    Ok(Json(match o.mesh_control() {
        Some(m) => m.status().await,
        None => MeshStatus::default(),
    }))
}

/// Sets the mesh: the orchestrator's host joins the tailnet (a userspace tailscaled under its
/// state dir, reaching agents' editors), new tasks' agents of every org go on it (a
/// single-use, ephemeral pre-auth key per task), and the setting survives restarts. Tasks
/// already running keep their mesh. Refused (409) when start-up flags set the mesh.
#[utoipa::path(put, path = "/mesh", tag = "mesh", request_body = MeshRequest,
    security(("admin" = [])),
    responses((status = 200, body = MeshStatus), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn put_mesh(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiJson(req): ApiJson<MeshRequest>,
) -> Result<Json<MeshStatus>, ApiError> {
    req.validate()
        .map_err(|(field, reason)| ApiError::invalid(&field, reason))?;
    let m = o.require_mesh()?;
    let st = m.set(req).await.map_err(mesh_err)?;
    tracing::info!(
        headscale = st.headscale_url.as_deref().unwrap_or("-"),
        joined = st.joined,
        "mesh set through the API"
    );
    Ok(Json(st))
}

/// Removes the mesh: new agents run off the tailnet and the orchestrator's node leaves it.
/// Tasks already running keep theirs. Refused (409) when start-up flags set the mesh.
#[utoipa::path(delete, path = "/mesh", tag = "mesh", security(("admin" = [])),
    responses((status = 200, body = MeshStatus), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn delete_mesh(
    State(o): State<Orchestrator>,
    _: AdminAuth,
) -> Result<Json<MeshStatus>, ApiError> {
    let st = o.require_mesh()?.clear().await.map_err(mesh_err)?;
    tracing::info!("mesh removed through the API");
    Ok(Json(st))
}
