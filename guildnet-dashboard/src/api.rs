//! The `/api` handlers.

use crate::auth::{self, has_session};
use crate::configs::{self, ConfigKind};
use crate::error::ApiError;
use crate::flows::{run_flow, ProgressSender};
use crate::validate;
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use guildnet_core::api::TaskListQuery;
use guildnet_core::client::SseMessage;
use guildnet_core::httpapi::ApiJson;
use guildnet_core::httpapi::{ApiPath, ApiQuery};
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::token;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::convert::Infallible;

/// Settings key of the mesh setup summary.
pub const MESH_SETTING: &str = "mesh";

/// An SSE response over a byte stream.
pub fn sse_response(
    body: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Last-Event-ID",
                    "Last-Event-ID must be a non-negative integer",
                )
            }),
    }
}

fn org_param(name: &str) -> Result<OrgName, ApiError> {
    OrgName::new(name).map_err(|e| ApiError::invalid("name", e.to_string()))
}

fn task_param(id: &str) -> Result<TaskId, ApiError> {
    TaskId::new(id).map_err(|e| ApiError::invalid("id", e.to_string()))
}

fn agent_param(name: &str) -> Result<AgentName, ApiError> {
    AgentName::new(name).map_err(|e| ApiError::invalid("name", e.to_string()))
}

// ---- health, session -----------------------------------------------------------------------

/// `GET /api/health`.
pub async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "orchestratorEvents": s.live.connected(),
    }))
}

/// `GET /api/session`: whether the browser is logged in.
pub async fn session(State(s): State<AppState>, headers: HeaderMap) -> Json<Value> {
    Json(json!({"authenticated": has_session(&s, &headers)}))
}

/// `POST /api/login` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// The admin password.
    pub password: String,
}

/// `POST /api/login`.
pub async fn login(
    State(s): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let ip = peer.map(|axum::Extension(axum::extract::ConnectInfo(a))| a.ip());
    if let Err(wait) = s.login_throttle.check(ip) {
        let secs = wait.as_secs().max(1);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many wrong passwords; try again in {secs} s"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(resp);
    }
    if !token::equals(&body.password, s.password.expose()) {
        s.login_throttle.failed(ip);
        tracing::warn!(client = ?ip, "dashboard login with a wrong password");
        return Err(ApiError::unauthorized("wrong password"));
    }
    s.login_throttle.succeeded(ip);
    let id = s.sessions.create();
    let mut resp = Json(json!({"authenticated": true})).into_response();
    if let Some(c) = auth::set_cookie(&id, s.sessions.ttl(), s.tls) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(resp)
}

/// Query of `GET /login/link`.
#[derive(Debug, serde::Deserialize)]
pub struct LoginLinkQuery {
    token: String,
}

/// `GET /login/link?token=…`: redeems a one-time login link ([`crate::Dashboard::login_link`]),
/// starts a session and sends the browser to the dashboard (303). A used, expired or unknown
/// link gets 401 and a page that says how to log in instead.
pub async fn login_link(
    State(s): State<AppState>,
    query: Result<axum::extract::Query<LoginLinkQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let ok = query.is_ok_and(|q| s.login_links.redeem(&q.token));
    if !ok {
        tracing::warn!("a used, expired or unknown dashboard login link was opened");
        let page = "<!doctype html><meta charset=utf-8><title>GuildNet: login link</title>\
            <p>This login link was already used or has expired (links work once, for 15 \
            minutes).</p><p><a href=\"/\">Log in with the dashboard password</a> (in \
            <code>dashboard.password</code> in the state dir), or restart <code>guildnet up</code> \
            for a new link.</p>";
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            page,
        )
            .into_response();
    }
    let id = s.sessions.create();
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Some(c) = auth::set_cookie(&id, s.sessions.ttl(), s.tls) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// `POST /api/logout`.
pub async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = auth::session_cookie(&headers) {
        s.sessions.remove(&id);
        s.editor.gate.end_for(&id);
    }
    let mut resp = Json(json!({"authenticated": false})).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, auth::clear_cookie(s.tls));
    resp
}

// ---- setup ---------------------------------------------------------------------------------

/// `GET /api/setup`: whether a network was set up (or skipped).
pub async fn setup_status(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let v = s.db.setting(MESH_SETTING).await?;
    let setup: Value = v
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or(Value::Null);
    Ok(Json(
        json!({"configured": !setup.is_null(), "setup": setup}),
    ))
}

/// `POST /api/setup/skip`: use GuildNet on this machine only.
pub async fn setup_skip(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let v = json!({"mode": "local"});
    s.db.set_setting(MESH_SETTING, v.to_string()).await?;
    Ok(Json(json!({"configured": true, "setup": v})))
}

/// `POST /api/setup/stream`: create or join the mesh, as SSE.
pub async fn setup_stream(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<validate::SetupBody>,
) -> Result<Response, ApiError> {
    let req = validate::setup(body)?;
    let summary = req.summary();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let sender = ProgressSender::new(tx.clone());
    let flow = s.setup_flow.clone();
    let db = s.db.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<bool>();
    tokio::spawn(async move {
        if let Ok(true) = done_rx.await {
            if let Err(e) = db.set_setting(MESH_SETTING, summary.to_string()).await {
                tracing::error!(error = %e, "cannot record the mesh setup");
            }
        }
    });
    let stream = run_flow(
        async move { flow.run(req, sender).await },
        tx,
        rx,
        move |r| {
            let _ = done_tx.send(r.is_ok());
        },
    );
    Ok(stream)
}

// ---- orgs ----------------------------------------------------------------------------------

/// An org with its config files' status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgView {
    /// Name.
    pub name: OrgName,
    /// Created here at.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Kubeconfig status.
    pub kubeconfig: configs::ConfigStatus,
    /// Talosconfig status.
    pub talosconfig: configs::ConfigStatus,
}

fn org_view(s: &AppState, org: guildnet_core::model::Org) -> OrgView {
    OrgView {
        kubeconfig: configs::status(ConfigKind::Kubeconfig, &s.paths, &org.name),
        talosconfig: configs::status(ConfigKind::Talosconfig, &s.paths, &org.name),
        name: org.name,
        created_at: org.created_at,
    }
}

/// The org named `name`, from the orchestrator's registry (the one list of orgs: the CLI,
/// the API, Python and this dashboard all see the same).
async fn existing_org(s: &AppState, name: &str) -> Result<guildnet_core::model::Org, ApiError> {
    let org = org_param(name)?;
    s.orchestrator
        .orgs()
        .await?
        .into_iter()
        .find(|o| o.name == org)
        .ok_or_else(|| ApiError::not_found(format!("org {org} does not exist")))
}

/// `GET /api/orgs`: the orchestrator's orgs, with this dashboard's config files' status.
pub async fn list_orgs(State(s): State<AppState>) -> Result<Json<Vec<OrgView>>, ApiError> {
    let orgs = s.orchestrator.orgs().await?;
    Ok(Json(orgs.into_iter().map(|o| org_view(&s, o)).collect()))
}

/// `GET /api/orgs/{name}`.
pub async fn get_org(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<OrgView>, ApiError> {
    let org = existing_org(&s, &name).await?;
    Ok(Json(org_view(&s, org)))
}

/// `POST /api/orgs` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgBody {
    /// The org's name (DNS label).
    pub name: String,
}

/// `POST /api/orgs`: registers the org with the orchestrator.
pub async fn create_org(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateOrgBody>,
) -> Result<(StatusCode, Json<OrgView>), ApiError> {
    let org = org_param(&body.name)?;
    let created = s.orchestrator.create_org(&org).await?;
    tracing::info!(org = %org, "org created");
    Ok((StatusCode::CREATED, Json(org_view(&s, created))))
}

/// `DELETE /api/orgs/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteOrgBody {
    /// Must repeat the org's name.
    pub confirm: String,
}

/// `DELETE /api/orgs/{name}`: removes the org from the orchestrator (409 while it has
/// unfinished tasks; its history stays), then its kubeconfig and talosconfig here. The body
/// must confirm the name.
pub async fn delete_org(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<DeleteOrgBody>,
) -> Result<Json<Value>, ApiError> {
    let org = existing_org(&s, &name).await?;
    if body.confirm != org.name.as_str() {
        return Err(ApiError::invalid(
            "confirm",
            format!("type the org's name ({}) to confirm", org.name),
        ));
    }
    s.orchestrator.delete_org(&org.name).await?;
    configs::remove_all(&s.paths, &org.name).map_err(|e| {
        ApiError::internal(format!("cannot remove config files of {}: {e}", org.name))
    })?;
    tracing::info!(org = %org.name, "org deleted");
    Ok(Json(json!({"deleted": org.name})))
}

/// Upload body for kubeconfigs and talosconfigs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    /// The file's text.
    pub content: String,
}

async fn put_config(
    s: AppState,
    name: String,
    kind: ConfigKind,
    body: ConfigBody,
) -> Result<Json<configs::ConfigStatus>, ApiError> {
    let row = existing_org(&s, &name).await?;
    let paths = s.paths.clone();
    let org = row.name.clone();
    let r = tokio::task::spawn_blocking(move || configs::store(kind, &paths, &org, &body.content))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    match r {
        Ok(st) => {
            tracing::info!(org = %row.name, kind = kind.as_str(), "config stored");
            Ok(Json(st))
        }
        Err(e) => Err(ApiError::unprocessable(kind.as_str(), e.to_string())),
    }
}

/// `PUT /api/orgs/{name}/kubeconfig`.
pub async fn put_kubeconfig(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ConfigBody>,
) -> Result<Json<configs::ConfigStatus>, ApiError> {
    put_config(s, name, ConfigKind::Kubeconfig, body).await
}

/// `PUT /api/orgs/{name}/talosconfig`.
pub async fn put_talosconfig(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ConfigBody>,
) -> Result<Json<configs::ConfigStatus>, ApiError> {
    put_config(s, name, ConfigKind::Talosconfig, body).await
}

/// `GET /api/orgs/{name}/kubeconfig`: status only, never the content.
pub async fn get_kubeconfig(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<configs::ConfigStatus>, ApiError> {
    let row = existing_org(&s, &name).await?;
    Ok(Json(configs::status(
        ConfigKind::Kubeconfig,
        &s.paths,
        &row.name,
    )))
}

/// `GET /api/orgs/{name}/talosconfig`: status only, never the content.
pub async fn get_talosconfig(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<configs::ConfigStatus>, ApiError> {
    let row = existing_org(&s, &name).await?;
    Ok(Json(configs::status(
        ConfigKind::Talosconfig,
        &s.paths,
        &row.name,
    )))
}

/// `POST /api/orgs/{name}/provision/stream`: bootstrap + operator install, as SSE.
pub async fn provision_stream(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<validate::ProvisionBody>,
) -> Result<Response, ApiError> {
    let row = existing_org(&s, &name).await?;
    let req = validate::provision(row.name, body)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let sender = ProgressSender::new(tx.clone());
    let flow = s.provision_flow.clone();
    Ok(run_flow(
        async move { flow.run(req, sender).await },
        tx,
        rx,
        |_| {},
    ))
}

// ---- tasks ---------------------------------------------------------------------------------

/// `POST /api/schedule` body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleBody {
    /// The org.
    pub org: String,
    /// What to do.
    pub task: String,
    /// Optional agent hint (a runner name when the orchestrator has named runners).
    #[serde(default)]
    pub agent_hint: Option<String>,
    /// Repository the agent clones before the task (checked by the orchestrator).
    #[serde(default)]
    pub repo: Option<guildnet_core::context::RepoSpec>,
    /// Files the agent writes into the checkout before the task.
    #[serde(default)]
    pub files: Vec<guildnet_core::context::ContextFile>,
}

/// `POST /api/schedule`.
pub async fn schedule(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let org = OrgName::new(&body.org).map_err(|e| ApiError::invalid("org", e.to_string()))?;
    if body.task.trim().is_empty() {
        return Err(ApiError::invalid("task", "task must not be empty"));
    }
    let mut req = guildnet_core::api::ScheduleRequest::new(org, body.task);
    req.agent_hint = body.agent_hint.filter(|h| !h.trim().is_empty());
    req.repo = body.repo.filter(|r| !r.url.trim().is_empty());
    req.files = body.files;
    let t = s.orchestrator.schedule_request(&req).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// `GET /api/tasks` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksQuery {
    /// Only this status.
    #[serde(default)]
    pub status: Option<String>,
    /// Only this org.
    #[serde(default)]
    pub org: Option<String>,
    /// At most this many.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `GET /api/tasks`.
// `..Default::default()` keeps this compiling when the orchestrator's query gains fields.
#[allow(clippy::needless_update)]
pub async fn list_tasks(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<TasksQuery>,
) -> Result<Json<Vec<Task>>, ApiError> {
    let status = q
        .status
        .filter(|v| !v.is_empty())
        .map(|v| {
            TaskStatus::parse(&v)
                .ok_or_else(|| ApiError::invalid("status", format!("unknown status {v:?}")))
        })
        .transpose()?;
    let org = q
        .org
        .filter(|v| !v.is_empty())
        .map(|v| OrgName::new(v).map_err(|e| ApiError::invalid("org", e.to_string())))
        .transpose()?;
    let tq = TaskListQuery {
        status,
        org,
        limit: q.limit,
        ..Default::default()
    };
    Ok(Json(s.orchestrator.tasks(&tq).await?))
}

/// `GET /api/tasks/{id}`: the task and its workload details.
pub async fn get_task(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<guildnet_core::api::TaskDetail>, ApiError> {
    Ok(Json(s.orchestrator.task_detail(&task_param(&id)?).await?))
}

/// `?after=` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterQuery {
    /// Cursor.
    #[serde(default)]
    pub after: Option<u64>,
}

/// `GET /api/tasks/{id}/logs`.
pub async fn task_logs(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AfterQuery>,
) -> Result<Json<Vec<guildnet_core::model::LogLine>>, ApiError> {
    Ok(Json(
        s.orchestrator
            .logs(&task_param(&id)?, q.after.unwrap_or(0))
            .await?,
    ))
}

fn render(msg: SseMessage) -> Bytes {
    let mut out = String::with_capacity(msg.data.len() + 32);
    if let Some(id) = &msg.id {
        out.push_str(&format!("id: {}\n", id.replace(['\n', '\r'], "")));
    }
    if !msg.event.is_empty() && msg.event != "message" {
        out.push_str(&format!("event: {}\n", msg.event.replace(['\n', '\r'], "")));
    }
    for line in msg.data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

async fn relay(s: &AppState, path: String, headers: &HeaderMap) -> Result<Response, ApiError> {
    let last = last_event_id(headers)?.map(|v| v.to_string());
    let upstream = s.orchestrator.open_sse(&path, last.as_deref()).await?;
    let body = upstream
        .take_while(|m| futures_util::future::ready(m.is_ok()))
        .filter_map(|m| futures_util::future::ready(m.ok().map(|m| Ok(render(m)))));
    let first = futures_util::stream::once(async { Ok(Bytes::from_static(b": relay\n\n")) });
    Ok(sse_response(first.chain(body)))
}

/// `GET /api/tasks/{id}/logs/stream`: the orchestrator's log stream, relayed (resumable).
pub async fn task_log_stream(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = task_param(&id)?;
    relay(&s, format!("/tasks/{id}/logs/stream"), &headers).await
}

/// `POST /api/tasks/{id}/cancel`.
pub async fn cancel_task(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(s.orchestrator.cancel(&task_param(&id)?).await?))
}

/// One entry of `GET /api/artifacts`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactsView {
    /// Task.
    pub task_id: TaskId,
    /// Org.
    pub org: OrgName,
    /// Status.
    pub status: TaskStatus,
    /// Artifacts.
    pub artifacts: Vec<guildnet_core::model::Artifact>,
    /// Pull request.
    pub pr_url: Option<String>,
    /// Finished at.
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /api/artifacts`: tasks that produced artifacts or pull requests.
pub async fn artifacts(State(s): State<AppState>) -> Result<Json<Vec<ArtifactsView>>, ApiError> {
    let tasks = s
        .orchestrator
        .tasks(&TaskListQuery {
            limit: Some(500),
            ..Default::default()
        })
        .await?;
    Ok(Json(
        tasks
            .into_iter()
            .filter(|t| !t.artifacts.is_empty() || t.pr_url.is_some())
            .map(|t| ArtifactsView {
                task_id: t.id,
                org: t.org,
                status: t.status,
                artifacts: t.artifacts,
                pr_url: t.pr_url,
                finished_at: t.finished_at,
            })
            .collect(),
    ))
}

// ---- agents --------------------------------------------------------------------------------

/// `GET /api/agents`.
pub async fn list_agents(State(s): State<AppState>) -> Result<Json<Vec<AgentView>>, ApiError> {
    let agents = s.orchestrator.agents().await?;
    // The status of each agent's task: recent tasks in one call, the rest one by one.
    let recent = s
        .orchestrator
        .tasks(&TaskListQuery {
            limit: Some(1000),
            ..TaskListQuery::default()
        })
        .await?;
    let mut status: std::collections::HashMap<TaskId, TaskStatus> =
        recent.into_iter().map(|t| (t.id, t.status)).collect();
    for id in agents.iter().filter_map(|a| a.task_id.clone()).take(200) {
        if let std::collections::hash_map::Entry::Vacant(e) = status.entry(id) {
            if let Ok(t) = s.orchestrator.task(e.key()).await {
                e.insert(t.status);
            }
        }
    }
    Ok(Json(
        agents
            .into_iter()
            .map(|a| {
                let task_status = a.task_id.as_ref().and_then(|t| status.get(t)).copied();
                AgentView::new(a, task_status)
            })
            .collect(),
    ))
}

/// An agent as the agents page shows it: whether it is still at work, and whether it has an
/// editor to open.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    /// The orchestrator's record.
    #[serde(flatten)]
    pub agent: guildnet_core::model::Agent,
    /// Its task's status, when known.
    pub task_status: Option<TaskStatus>,
    /// False once its task finished (the agent has exited or is exiting).
    pub active: bool,
    /// Whether an editor is running for it now.
    pub editor: bool,
}

impl AgentView {
    /// Derives the page's view from the record and the task's status.
    pub fn new(agent: guildnet_core::model::Agent, task_status: Option<TaskStatus>) -> Self {
        let active = !task_status.is_some_and(TaskStatus::is_terminal);
        let editor = active && agent.state["editor"]["state"] == "running";
        Self {
            agent,
            task_status,
            active,
            editor,
        }
    }
}

/// `GET /api/agents/{name}`.
pub async fn get_agent(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<guildnet_core::model::Agent>, ApiError> {
    Ok(Json(s.orchestrator.agent(&agent_param(&name)?).await?))
}

/// `GET /api/agents/{name}/logs/stream`.
pub async fn agent_log_stream(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = agent_param(&name)?;
    relay(&s, format!("/agents/{name}/logs/stream"), &headers).await
}

async fn orchestrator_post(s: &AppState, path: &str, body: Value) -> Result<Value, ApiError> {
    Ok(orchestrator_post_with_headers(s, path, body).await?.0)
}

/// Like [`orchestrator_post`], also returning the reply's headers.
async fn orchestrator_post_with_headers(
    s: &AppState,
    path: &str,
    body: Value,
) -> Result<(Value, HeaderMap), ApiError> {
    let resp = s
        .http
        .post(format!("{}{path}", s.orchestrator.base_url()))
        .bearer_auth(s.orchestrator_token.expose())
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "orchestrator_unreachable",
                format!("cannot reach the orchestrator: {}", e.without_url()),
            )
        })?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok((v, headers));
    }
    Err(guildnet_core::client::ClientError::Api {
        status: status.as_u16(),
        code: v
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_owned(),
        message: v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}")),
        field: None,
    }
    .into())
}

/// `POST /api/agents/{name}/editor`: opens the agent's editor through the orchestrator and
/// answers `{name, port, url}`; the page loads `url`, on the editor origin, in its iframe
/// ([`crate::editor_origin`]).
pub async fn open_editor(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = s.orchestrator.agent(&agent_param(&name)?).await?;
    let (v, reply_headers) = orchestrator_post_with_headers(
        &s,
        "/agents/editor/open",
        json!({"name": agent.name, "org": agent.org}),
    )
    .await?;
    // The orchestrator's editor session (a signed token naming the agent): the relay sends it
    // so that any orchestrator replica serves the editor.
    let orchestrator_session = orchestrator_editor_session(&reply_headers);
    let port = v
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "orchestrator_error",
                "the orchestrator's editor reply has no port",
            )
        })?;
    let url = crate::editor_origin::open_url(&s, &headers, port, orchestrator_session)?;
    Ok(Json(json!({
        "name": agent.name,
        "port": port,
        "url": url,
    })))
}

/// The value of the orchestrator's editor session cookie in an `editor/open` reply.
fn orchestrator_editor_session(h: &HeaderMap) -> Option<guildnet_core::token::Secret> {
    let prefix = format!(
        "{}=",
        guildnet_core::orchestrator::editor_proxy::SESSION_COOKIE
    );
    h.get_all(axum::http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find_map(|c| c.trim().strip_prefix(prefix.as_str()))
        .filter(|v| !v.is_empty())
        .map(guildnet_core::token::Secret::new)
}

/// `POST /api/agents/{name}/editor/close`.
pub async fn close_editor(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = s.orchestrator.agent(&agent_param(&name)?).await?;
    let v = orchestrator_post(
        &s,
        "/agents/editor/close",
        json!({"name": agent.name, "org": agent.org}),
    )
    .await?;
    Ok(Json(v))
}

// ---- live ----------------------------------------------------------------------------------

/// `GET /api/events`: live task and agent events (resumable with `Last-Event-ID` or
/// `?after=`).
pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<AfterQuery>,
) -> Result<Response, ApiError> {
    let after = last_event_id(&headers)?.or(q.after);
    Ok(sse_response(s.live.browser_stream(after)))
}

/// Unknown `/api` routes.
pub async fn api_not_found() -> ApiError {
    ApiError::not_found("no such API route")
}
