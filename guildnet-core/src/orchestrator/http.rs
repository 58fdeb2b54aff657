//! The orchestrator's HTTP API (axum) and its OpenAPI description.

use super::api::*;
use super::error::{ApiError, ErrorBody};
use super::service::Orchestrator;
use super::sse::{poll_stream, Batch};
use crate::model::{Agent, AuditEntry, Event, LogLine, Org, Task};
use crate::names::{AgentName, OrgName, TaskId};
use axum::extract::{DefaultBodyLimit, FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use crate::httpapi::{parse_json, ApiJson, ApiPath, ApiQuery, OptionalApiJson, MAX_BODY_BYTES};

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, tok) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(tok.trim())
}

/// Proof that the caller presented the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl<S> FromRequestParts<S> for AdminAuth
where
    S: Send + Sync,
    Orchestrator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        let o = Orchestrator::from_ref(s);
        match bearer(parts) {
            Some(t) if o.is_admin_token(t) => Ok(AdminAuth),
            Some(_) => Err(ApiError::unauthorized("invalid admin token")),
            None => Err(ApiError::unauthorized(
                "missing Authorization: Bearer <admin token>",
            )),
        }
    }
}

/// The task whose agent token the caller presented.
#[derive(Debug, Clone)]
pub struct AgentAuth(pub TaskId);

impl<S> FromRequestParts<S> for AgentAuth
where
    S: Send + Sync,
    Orchestrator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        let o = Orchestrator::from_ref(s);
        let tok = bearer(parts)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <agent token>"))?;
        o.authenticate_agent(tok).await.map(AgentAuth)
    }
}

/// The org whose pool token the caller presented (a warm pool agent).
#[derive(Debug, Clone)]
pub struct PoolAuth(pub OrgName);

impl<S> FromRequestParts<S> for PoolAuth
where
    S: Send + Sync,
    Orchestrator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        let o = Orchestrator::from_ref(s);
        let tok = bearer(parts)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <pool token>"))?;
        o.authenticate_pool(tok).map(PoolAuth)
    }
}

fn org_param(raw: &str) -> Result<OrgName, ApiError> {
    OrgName::new(raw).map_err(|e| ApiError::invalid("org", e.to_string()))
}

fn task_id_param(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse_field("id", raw).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()).with_field("id")
    })
}

fn agent_param(raw: &str) -> Result<AgentName, ApiError> {
    AgentName::parse_field("name", raw).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()).with_field("name")
    })
}

/// What a log stream does when it has caught up: end (with the task) once the task's log is
/// complete and a last read finds nothing, else wait for a change, or for the moment the log
/// completes by time (a cancelled task's agent that never sends its final batch).
async fn log_end_or_wait<F, Fut>(task: &Task, fetch: F) -> Result<LogBatchEnd, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<LogLine>, ApiError>>,
{
    let now = chrono::Utc::now();
    if !task.log_complete(now) {
        let recheck = task.finished_at.map(|f| {
            (f + crate::model::LOG_SEAL_GRACE - now)
                .to_std()
                .unwrap_or_default()
                .max(std::time::Duration::from_millis(50))
        });
        return Ok(LogBatchEnd {
            lines: Vec::new(),
            end: None,
            recheck_after: recheck,
        });
    }
    // Complete: nothing more can be written, so one more read is final.
    let lines = fetch().await?;
    Ok(LogBatchEnd {
        end: lines.is_empty().then(|| to_json(task)),
        lines,
        recheck_after: None,
    })
}

/// [`log_end_or_wait`]'s answer, before the lines are keyed by their stream's cursor.
struct LogBatchEnd {
    lines: Vec<LogLine>,
    end: Option<String>,
    recheck_after: Option<std::time::Duration>,
}

impl LogBatchEnd {
    fn map_items(self, key: impl Fn(&LogLine) -> u64) -> Batch {
        Batch {
            items: self.lines.iter().map(|l| (key(l), to_json(l))).collect(),
            end: self.end,
            recheck_after: self.recheck_after,
        }
    }
}

fn resume_cursor(headers: &HeaderMap, after: Option<u64>) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    "Last-Event-ID must be a non-negative integer",
                )
                .with_field("Last-Event-ID")
            }),
        None => Ok(after.unwrap_or(0)),
    }
}

fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let l = limit.unwrap_or(default);
    if l == 0 || l > max {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(l)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

const SSE_PAGE: usize = 500;

// ---- handlers -----------------------------------------------------------------------------------

/// The orchestrator's Prometheus metrics: HTTP requests by route and status, request times,
/// and tasks by status (counted when scraped).
pub struct OrchestratorMetrics {
    http: Arc<crate::metrics::HttpMetrics>,
    tasks: prometheus_client::metrics::family::Family<
        crate::metrics::StatusLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl OrchestratorMetrics {
    fn new() -> Self {
        let mut http = crate::metrics::HttpMetrics::new("guildnet_orchestrator");
        let tasks = prometheus_client::metrics::family::Family::default();
        http.registry_mut()
            .register("tasks", "Tasks by status", tasks.clone());
        Self {
            http: Arc::new(http),
            tasks,
        }
    }
}

/// Prometheus metrics in the text format (aggregate numbers only: no org names, ids or
/// secrets). Needs the admin token, like every route but `/health` and `/openapi.json`
/// (Prometheus: `authorization: {credentials_file: ...}`).
#[utoipa::path(get, path = "/metrics", tag = "meta", security(("admin" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, body = ErrorBody)))]
pub async fn metrics(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    axum::Extension(m): axum::Extension<Arc<OrchestratorMetrics>>,
) -> Result<Response, ApiError> {
    for (status, n) in o.task_counts().await? {
        m.tasks
            .get_or_create(&crate::metrics::StatusLabels {
                status: status.as_str().to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    Ok(crate::metrics::response(m.http.encode()))
}

/// Liveness and basic facts.
#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, body = Health)))]
pub async fn health(State(o): State<Orchestrator>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        backend: o.backend_name().into(),
    })
}

/// This API's OpenAPI description.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi().to_json().unwrap_or_else(|_| "{}".into()),
    )
        .into_response()
}

/// Registers an org.
#[utoipa::path(post, path = "/orgs", tag = "orgs", request_body = CreateOrgRequest,
    security(("admin" = [])),
    responses((status = 201, body = Org), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_org(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiJson(req): ApiJson<CreateOrgRequest>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    Ok((StatusCode::CREATED, Json(o.create_org(req.name).await?)))
}

/// Removes an org that has no unfinished task; its finished tasks, events and audit rows stay.
#[utoipa::path(delete, path = "/orgs/{org}", tag = "orgs", security(("admin" = [])),
    params(("org" = String, Path, description = "Org name")),
    responses((status = 200, body = DeletedOrg), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn delete_org(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(org): ApiPath<String>,
) -> Result<Json<DeletedOrg>, ApiError> {
    let org = OrgName::new(&org).map_err(|e| ApiError::invalid("org", e.to_string()))?;
    o.delete_org(org.clone()).await?;
    Ok(Json(DeletedOrg { deleted: org }))
}

/// Lists orgs.
#[utoipa::path(get, path = "/orgs", tag = "orgs", security(("admin" = [])),
    responses((status = 200, body = Vec<Org>)))]
pub async fn list_orgs(
    State(o): State<Orchestrator>,
    _: AdminAuth,
) -> Result<Json<Vec<Org>>, ApiError> {
    Ok(Json(o.orgs().await?))
}

/// Schedules a task: records it durably, then hands it to the org's cluster backend.
#[utoipa::path(post, path = "/schedule", tag = "tasks", request_body = ScheduleRequest,
    security(("admin" = [])),
    responses((status = 202, body = Task), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn schedule(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(o.schedule(req).await?)))
}

/// Lists tasks, newest first, a page at a time: when a page is full, `X-Next-Cursor` gives the
/// `cursor` of the next one (and `Link` the next page's URL, `rel="next"`).
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(TaskListQuery), security(("admin" = [])),
    responses((status = 200, body = Vec<Task>, headers(
        ("X-Next-Cursor" = String, description = "Present when the page is full: pass it as `cursor` for the next page"),
        ("Link" = String, description = "Present with X-Next-Cursor: the next page's URL, `rel=\"next\"`"))),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list_tasks(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<TaskListQuery>,
) -> Result<Response, ApiError> {
    let mut next_url = String::from("/tasks?");
    if let Some(s) = q.status {
        next_url.push_str(&format!("status={s}&"));
    }
    if let Some(org) = &q.org {
        next_url.push_str(&format!("org={org}&"));
    }
    if let Some(l) = q.limit {
        next_url.push_str(&format!("limit={l}&"));
    }
    let (json, next) = o.task_page(q).await?;
    let body = axum::body::Body::new(crate::http_server::ChunksBody::new(json));
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(next) = next {
        // Cursors are `<digits>.<task id>`: valid header text and URL query text as they are.
        let link = format!("<{next_url}cursor={next}>; rel=\"next\"");
        let h = resp.headers_mut();
        if let (Ok(c), Ok(l)) = (
            axum::http::HeaderValue::from_str(&next),
            axum::http::HeaderValue::from_str(&link),
        ) {
            h.insert("x-next-cursor", c);
            h.insert(header::LINK, l);
        }
    }
    Ok(resp)
}

/// One task.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "Task id")),
    security(("admin" = [])), responses((status = 200, body = TaskDetail), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TaskDetail>, ApiError> {
    Ok(Json(o.task_detail(&task_id_param(&id)?).await?))
}

/// A task's log lines after `after` (sequence number).
#[utoipa::path(get, path = "/tasks/{id}/logs", tag = "tasks",
    params(("id" = String, Path, description = "Task id"), LogQuery), security(("admin" = [])),
    responses((status = 200, body = Vec<LogLine>), (status = 404, body = ErrorBody)))]
pub async fn task_logs(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<Vec<LogLine>>, ApiError> {
    let id = task_id_param(&id)?;
    o.task(&id).await?;
    let limit = page_limit(q.limit, 1000, 10_000)?;
    Ok(Json(o.task_logs(&id, q.after.unwrap_or(0), limit).await?))
}

/// Follows a task's log (SSE). Event ids are sequence numbers; `Last-Event-ID` resumes. Ends with
/// an `end` event carrying the task once it has finished and every line was sent.
#[utoipa::path(get, path = "/tasks/{id}/logs/stream", tag = "tasks",
    params(("id" = String, Path, description = "Task id"), LogQuery), security(("admin" = [])),
    responses((status = 200, description = "text/event-stream of LogLine", content_type = "text/event-stream")))]
pub async fn task_log_stream(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let id = task_id_param(&id)?;
    o.task(&id).await?;
    let cursor = resume_cursor(&headers, q.after)?;
    let keepalive = o.config().sse_keepalive;
    let changes = o.subscribe_changes();
    let closing = o.subscribe_closing();
    let stream = poll_stream(cursor, changes, closing, move |after| {
        let o = o.clone();
        let id = id.clone();
        async move {
            let lines = o.task_logs(&id, after, SSE_PAGE).await?;
            if !lines.is_empty() {
                return Ok(Batch::items(
                    lines.iter().map(|l| (l.seq, to_json(l))).collect(),
                ));
            }
            let task = o.task(&id).await?;
            Ok(log_end_or_wait(&task, || {
                let (o, id) = (o.clone(), id.clone());
                async move { o.task_logs(&id, after, SSE_PAGE).await }
            })
            .await?
            .map_items(|l| l.seq))
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

/// Cancels a task; its agent is stopped.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "Task id")),
    security(("admin" = [])), request_body(content = Option<CancelRequest>, description = "optional; `{}`"),
    responses((status = 200, body = Task), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn cancel_task(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(id): ApiPath<String>,
    // No body is needed; one that is sent must be `{}`.
    _: OptionalApiJson<CancelRequest>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(o.cancel(&task_id_param(&id)?).await?))
}

/// Lists agents.
#[utoipa::path(get, path = "/agents", tag = "agents", security(("admin" = [])),
    responses((status = 200, body = Vec<Agent>)))]
pub async fn list_agents(
    State(o): State<Orchestrator>,
    _: AdminAuth,
) -> Result<Json<Vec<Agent>>, ApiError> {
    Ok(Json(o.agents().await?))
}

/// One agent.
#[utoipa::path(get, path = "/agents/{name}", tag = "agents", params(("name" = String, Path, description = "Agent name")),
    security(("admin" = [])), responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
pub async fn get_agent(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(o.agent(&agent_param(&name)?).await?))
}

/// Follows an agent's log (SSE). Event ids are global log ids; `Last-Event-ID` resumes. Ends with
/// an `end` event once the agent's task has finished and every line was sent.
#[utoipa::path(get, path = "/agents/{name}/logs/stream", tag = "agents",
    params(("name" = String, Path, description = "Agent name"), LogQuery), security(("admin" = [])),
    responses((status = 200, description = "text/event-stream of LogLine", content_type = "text/event-stream")))]
pub async fn agent_log_stream(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let name = agent_param(&name)?;
    let agent = o.agent(&name).await?;
    let cursor = resume_cursor(&headers, q.after)?;
    let keepalive = o.config().sse_keepalive;
    let changes = o.subscribe_changes();
    let closing = o.subscribe_closing();
    let stream = poll_stream(cursor, changes, closing, move |after| {
        let o = o.clone();
        let name = name.clone();
        let task_id = agent.task_id.clone();
        async move {
            let fetch = |o: Orchestrator, name: AgentName| async move {
                o.agent_logs(&name, after, SSE_PAGE).await
            };
            let lines = fetch(o.clone(), name.clone()).await?;
            if !lines.is_empty() {
                return Ok(Batch::items(
                    lines.iter().map(|l| (l.id, to_json(l))).collect(),
                ));
            }
            let Some(task_id) = task_id else {
                return Ok(Batch::items(vec![]));
            };
            let task = o.task(&task_id).await?;
            if task.agent.as_ref() != Some(&name) {
                // A later attempt took over: this agent can no longer write.
                let lines = fetch(o.clone(), name.clone()).await?;
                return Ok(Batch {
                    end: lines.is_empty().then(|| to_json(&task)),
                    items: lines.iter().map(|l| (l.id, to_json(l))).collect(),
                    recheck_after: None,
                });
            }
            Ok(log_end_or_wait(&task, || fetch(o.clone(), name.clone()))
                .await?
                .map_items(|l| l.id))
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

/// Follows all events (SSE). Event ids are event ids; `Last-Event-ID` resumes.
#[utoipa::path(get, path = "/events", tag = "events", params(AfterQuery), security(("admin" = [])),
    responses((status = 200, description = "text/event-stream of Event", content_type = "text/event-stream")))]
pub async fn events_stream(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<AfterQuery>,
) -> Result<Response, ApiError> {
    let cursor =
        if q.tail == Some(true) && q.after.is_none() && !headers.contains_key("last-event-id") {
            o.last_event_id().await?
        } else {
            resume_cursor(&headers, q.after)?
        };
    let keepalive = o.config().sse_keepalive;
    let changes = o.subscribe_changes();
    let closing = o.subscribe_closing();
    let stream = poll_stream(cursor, changes, closing, move |after| {
        let o = o.clone();
        async move {
            let evs = o.events_after(after, SSE_PAGE).await?;
            Ok(Batch::items(
                evs.iter().map(|e| (e.id, to_json(e))).collect(),
            ))
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

/// Reads the append-only audit log.
#[utoipa::path(get, path = "/audit", tag = "events", params(AfterQuery), security(("admin" = [])),
    responses((status = 200, body = Vec<AuditEntry>)))]
pub async fn audit(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiQuery(q): ApiQuery<AfterQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = page_limit(q.limit, 1000, 10_000)?;
    Ok(Json(o.audit_after(q.after.unwrap_or(0), limit).await?))
}

/// Agent protocol: register (agent token).
#[utoipa::path(post, path = "/agent/register", tag = "agent protocol", request_body = RegisterRequest,
    security(("agent" = [])),
    responses((status = 200, body = RegisterResponse), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn agent_register(
    State(o): State<Orchestrator>,
    AgentAuth(task): AgentAuth,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    Ok(Json(o.register(&task, req).await?))
}

/// Agent protocol: heartbeat; with a fencing token it renews the claim lease.
#[utoipa::path(post, path = "/agent/heartbeat", tag = "agent protocol", request_body = HeartbeatRequest,
    security(("agent" = [])),
    responses((status = 200, body = HeartbeatResponse), (status = 409, body = ErrorBody)))]
pub async fn agent_heartbeat(
    State(o): State<Orchestrator>,
    AgentAuth(task): AgentAuth,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    Ok(Json(o.heartbeat(&task, req).await?))
}

/// Agent protocol: claim the agent's task (a lease with a fencing token).
#[utoipa::path(post, path = "/agent/claim", tag = "agent protocol", request_body = ClaimRequest,
    security(("agent" = [])),
    responses((status = 200, body = ClaimResponse), (status = 409, body = ErrorBody)))]
pub async fn agent_claim(
    State(o): State<Orchestrator>,
    AgentAuth(task): AgentAuth,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    Ok(Json(o.claim(&task, req).await?))
}

/// Agent protocol: append log lines (idempotent per sequence number).
#[utoipa::path(post, path = "/agent/log", tag = "agent protocol", request_body = LogRequest,
    security(("agent" = [])),
    responses((status = 200, body = LogResponse), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn agent_log(
    State(o): State<Orchestrator>,
    AgentAuth(task): AgentAuth,
    ApiJson(req): ApiJson<LogRequest>,
) -> Result<Json<LogResponse>, ApiError> {
    Ok(Json(o.append_logs(&task, req).await?))
}

/// Agent protocol: report completion with artifacts.
#[utoipa::path(post, path = "/agent/complete", tag = "agent protocol", request_body = CompleteRequest,
    security(("agent" = [])),
    responses((status = 200, body = Task), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn agent_complete(
    State(o): State<Orchestrator>,
    AgentAuth(task): AgentAuth,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(o.complete(&task, req).await?))
}

/// Sets an org's warm agent pool (size, image, runner, idle time); the backend keeps it.
#[utoipa::path(put, path = "/orgs/{org}/pool", tag = "pools", request_body = PoolSpec,
    security(("admin" = [])), params(("org" = String, Path, description = "Org name")),
    responses((status = 200, body = PoolStatus), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 501, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn put_pool(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(org): ApiPath<String>,
    ApiJson(spec): ApiJson<PoolSpec>,
) -> Result<Json<PoolStatus>, ApiError> {
    Ok(Json(o.set_pool(org_param(&org)?, spec).await?))
}

/// An org's warm pool: agents waiting now, warm and cold starts, and the backend's view.
#[utoipa::path(get, path = "/orgs/{org}/pool", tag = "pools", security(("admin" = [])),
    params(("org" = String, Path, description = "Org name")),
    responses((status = 200, body = PoolStatus), (status = 404, body = ErrorBody)))]
pub async fn get_pool(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(org): ApiPath<String>,
) -> Result<Json<PoolStatus>, ApiError> {
    Ok(Json(o.pool_status(org_param(&org)?).await?))
}

/// Removes an org's warm pool and its idle agents.
#[utoipa::path(delete, path = "/orgs/{org}/pool", tag = "pools", security(("admin" = [])),
    params(("org" = String, Path, description = "Org name")),
    responses((status = 200, body = DeletedPool), (status = 422, body = ErrorBody)))]
pub async fn delete_pool(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiPath(org): ApiPath<String>,
) -> Result<Json<DeletedPool>, ApiError> {
    let org = org_param(&org)?;
    let removed = o.delete_pool(org.clone()).await?;
    Ok(Json(DeletedPool { org, removed }))
}

/// Warm pool agents: wait (long poll, pool token) for a task of the token's org. The reply
/// carries the task's id, agent name, per-task token and settings, or no task (ask again).
#[utoipa::path(post, path = "/pool/wait", tag = "agent protocol", request_body = PoolWaitRequest,
    security(("pool" = [])),
    responses((status = 200, body = PoolWaitResponse), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn pool_wait(
    State(o): State<Orchestrator>,
    PoolAuth(org): PoolAuth,
    ApiJson(req): ApiJson<PoolWaitRequest>,
) -> Result<Json<PoolWaitResponse>, ApiError> {
    Ok(Json(o.pool_wait(org, req).await?))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see GET /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route; see GET /openapi.json",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("handler panicked").into_response()
}

/// Every documented route, each declared once with its handler: the router serves exactly
/// these (plus the editor proxy, which is not part of the API), and the OpenAPI document is
/// built from the same declarations, so the two cannot disagree.
fn api_routes() -> OpenApiRouter<super::App> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(self::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(delete_org))
        .routes(routes!(put_pool, get_pool, self::delete_pool))
        .routes(routes!(pool_wait))
        .routes(routes!(super::bootstrap::start_bootstrap))
        .routes(routes!(super::bootstrap::bootstrap_status))
        .routes(routes!(super::bootstrap::bootstrap_stream))
        .routes(routes!(super::bootstrap::generate_kubeconfig))
        .routes(routes!(
            super::mesh::get_mesh,
            super::mesh::put_mesh,
            super::mesh::delete_mesh
        ))
        .routes(routes!(schedule))
        .routes(routes!(list_tasks))
        .routes(routes!(get_task))
        .routes(routes!(task_logs))
        .routes(routes!(task_log_stream))
        .routes(routes!(cancel_task))
        .routes(routes!(list_agents))
        .routes(routes!(get_agent))
        .routes(routes!(agent_log_stream))
        .routes(routes!(super::editor_proxy::editor_open))
        .routes(routes!(super::editor_proxy::editor_close))
        .routes(routes!(events_stream))
        .routes(routes!(audit))
        .routes(routes!(super::retention::disk))
        .routes(routes!(super::retention::prune))
        .routes(routes!(agent_register))
        .routes(routes!(agent_heartbeat))
        .routes(routes!(agent_claim))
        .routes(routes!(agent_log))
        .routes(routes!(agent_complete))
}

/// The OpenAPI description of the whole API (built once from the route declarations).
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| api_routes().split_for_parts().1)
}

/// Every route of the API as `(method, path)` (lower-case method, OpenAPI path template), as
/// served and as documented.
pub fn routes() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in &openapi().paths.paths {
        let methods = [
            ("get", item.get.is_some()),
            ("put", item.put.is_some()),
            ("post", item.post.is_some()),
            ("delete", item.delete.is_some()),
            ("patch", item.patch.is_some()),
        ];
        for (m, present) in methods {
            if present {
                out.push((m.to_owned(), path.clone()));
            }
        }
    }
    out
}

/// The orchestrator's router: the API and the editor proxy. An [`Orchestrator`] alone gets a
/// default editor proxy ([`super::App`]).
pub fn router(app: impl Into<super::App>) -> Router {
    let metrics = Arc::new(OrchestratorMetrics::new());
    let (api, _doc) = api_routes().split_for_parts();
    api.route(
        "/editor/proxy/{port}",
        any(super::editor_proxy::editor_proxy_root),
    )
    .route(
        "/editor/proxy/{port}/",
        any(super::editor_proxy::editor_proxy),
    )
    .route(
        "/editor/proxy/{port}/{*rest}",
        any(super::editor_proxy::editor_proxy),
    )
    .route_layer(axum::middleware::from_fn_with_state(
        metrics.http.clone(),
        crate::metrics::track,
    ))
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(axum::Extension(metrics))
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    .layer(tower_http::catch_panic::CatchPanicLayer::custom(
        panic_response,
    ))
    .layer(tower_http::trace::TraceLayer::new_for_http())
    .with_state(app.into())
}

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "agent",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "pool",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document's frame: title, security schemes and the schemas no route names; the
/// paths come from the route declarations ([`openapi`] is the whole document).
#[derive(OpenApi)]
#[openapi(
    info(title = "GuildNet orchestrator API", description = "Schedule AI coding-agent tasks onto per-org clusters and follow them. Admin routes take the admin token; /agent/* routes take the per-task agent token; /pool/wait takes a pool token. Errors are {\"error\": {\"code\", \"message\", \"field\"?}}."),
    // The data of the SSE events (`GET /events`), which no route's body names; every other
    // schema is collected from the routes.
    components(schemas(Event)),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;
