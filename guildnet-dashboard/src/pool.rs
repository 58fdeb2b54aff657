//! An org's warm agent pool from the dashboard (issue 21): `GET`, `PUT` and `DELETE
//! /api/orgs/{name}/pool`, forwarded to the orchestrator's `/orgs/{org}/pool` (what the CLI's
//! `guildnet pool` and the API do). The spec is checked here first, so a bad field is named
//! before anything is sent.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use guildnet_core::api::DeletedPool;
use guildnet_core::httpapi::{ApiJson, ApiPath};
use guildnet_core::names::OrgName;
use guildnet_core::pool::{PoolSpec, PoolStatus};

fn org_param(name: &str) -> Result<OrgName, ApiError> {
    OrgName::new(name).map_err(|e| ApiError::invalid("name", e.to_string()))
}

/// `GET /api/orgs/{name}/pool`: the org's pool as the orchestrator and its backend see it
/// (waiting agents, warm and cold starts, the backend's spec, counts and conditions).
pub async fn get_pool(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PoolStatus>, ApiError> {
    let org = org_param(&name)?;
    Ok(Json(s.orchestrator.pool(&org).await?))
}

/// `PUT /api/orgs/{name}/pool` (body: [`PoolSpec`], camelCase): sets the org's pool.
pub async fn put_pool(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(spec): ApiJson<PoolSpec>,
) -> Result<Json<PoolStatus>, ApiError> {
    let org = org_param(&name)?;
    spec.validate().map_err(|(f, m)| ApiError::invalid(f, m))?;
    let st = s.orchestrator.set_pool(&org, &spec).await?;
    tracing::info!(%org, size = spec.size, "warm pool set from the dashboard");
    Ok(Json(st))
}

/// `DELETE /api/orgs/{name}/pool`: removes the org's pool (`{"org": ..., "removed": bool}`).
pub async fn delete_pool(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<DeletedPool>, ApiError> {
    let org = org_param(&name)?;
    let d = s.orchestrator.delete_pool(&org).await?;
    tracing::info!(%org, removed = d.removed, "warm pool removed from the dashboard");
    Ok(Json(d))
}
