//! Typed HTTP clients: [`OrchestratorClient`] for the admin API (used by the CLI and the Python
//! bindings) and [`AgentClient`] for the agent protocol (used by the agent).

use crate::api::*;
use crate::model::{Agent, LogLine, Org, Task};
use crate::names::{AgentName, OrgName, TaskId};
use crate::token::Secret;
use futures_util::{Stream, StreamExt};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Errors from the clients.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The orchestrator answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code from the body (`http_<status>` when the body was not JSON).
        code: String,
        /// Message.
        message: String,
        /// Field at fault.
        field: Option<String>,
    },
    /// The orchestrator could not be reached (or the connection broke).
    #[error("cannot reach the orchestrator at {url}: {reason}")]
    Transport {
        /// Base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A reply could not be decoded.
    #[error("unexpected reply from {url}: {reason}")]
    Decode {
        /// Request URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The URL given is not usable.
    #[error("invalid orchestrator URL {0:?}")]
    BadUrl(String),
}

impl ClientError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code, for API errors (`stale_fencing`, `log_sealed`, `log_out_of_order`, ...;
    /// `http_<status>` when the body was not a JSON error).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The field at fault, for API errors that name one (`repo.url`, `files[0].path`).
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Api { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// True when retrying later may succeed (transport errors, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

#[derive(Clone)]
struct Http {
    base: String,
    http: reqwest::Client,
    token: Secret,
    /// Longest reply body read; `None` reads any (the admin client lists may be large).
    max_reply: Option<usize>,
}

impl Http {
    fn new(base: &str, token: Secret, pool_idle: Option<Duration>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl(base));
        }
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(idle) = pool_idle {
            builder = builder.pool_idle_timeout(idle);
        }
        let http = builder.build().map_err(|e| ClientError::Transport {
            url: base.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            base,
            http,
            token,
            max_reply: None,
        })
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        // reqwest errors carry the URL, which never holds secrets here (tokens go in headers).
        // The whole cause chain ("error sending request" alone does not say "connection
        // refused").
        let e = e.without_url();
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !reason.contains(&text) {
                reason.push_str(": ");
                reason.push_str(&text);
            }
            source = s.source();
        }
        ClientError::Transport {
            url: self.base.clone(),
            reason,
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .timeout(Duration::from_secs(30))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        Ok(self.send_with_headers(rb).await?.0)
    }

    /// [`Http::send`], also returning the response headers.
    async fn send_with_headers<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<(T, reqwest::header::HeaderMap), ClientError> {
        let mut resp = rb.send().await.map_err(|e| self.transport(e))?;
        let headers = resp.headers().clone();
        let url = resp.url().path().to_owned();
        let status = resp.status();
        let bytes = match self.max_reply {
            None => resp.bytes().await.map_err(|e| self.transport(e))?.to_vec(),
            Some(max) => {
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
                    if body.len() + chunk.len() > max {
                        return Err(ClientError::Decode {
                            url,
                            reason: format!("reply larger than {max} bytes"),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
        };
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })?;
        Ok((value, headers))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(Method::GET, path)).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(Method::POST, path).json(body)).await
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
            field: b.error.field,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: String::from_utf8_lossy(body).chars().take(300).collect(),
            field: None,
        },
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMessage {
    /// `id:` field.
    pub id: Option<String>,
    /// `event:` field (`message` when absent).
    pub event: String,
    /// `data:` lines joined by newlines.
    pub data: String,
}

/// Why an SSE body could not be read ([`sse_messages`]).
#[derive(Debug, thiserror::Error)]
pub enum SseStreamError<E> {
    /// The body's own stream failed (the connection broke).
    #[error("{0}")]
    Transport(E),
    /// The body is not a UTF-8 event stream.
    #[error("malformed event stream: {0}")]
    Malformed(String),
}

/// A `text/event-stream` body (any stream of byte chunks) as its messages, parsed by the
/// `eventsource-stream` crate: bytes are kept across chunks, so a character split between two
/// chunks stays whole; comments (keep-alives) and events without data yield nothing; an event's
/// id is the last one the stream set, as the SSE specification says (`None` before any).
pub fn sse_messages<S, B, E>(
    body: S,
) -> impl Stream<Item = Result<SseMessage, SseStreamError<E>>> + Send + 'static
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: Send + 'static,
{
    use eventsource_stream::{EventStreamError, Eventsource};
    body.eventsource().map(|r| match r {
        Ok(ev) => Ok(SseMessage {
            id: (!ev.id.is_empty()).then_some(ev.id),
            event: ev.event,
            data: ev.data,
        }),
        Err(EventStreamError::Transport(e)) => Err(SseStreamError::Transport(e)),
        Err(EventStreamError::Utf8(e)) => Err(SseStreamError::Malformed(e.to_string())),
        Err(EventStreamError::Parser(e)) => Err(SseStreamError::Malformed(e.to_string())),
    })
}

/// An item of a followed log.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFollow {
    /// A log line.
    Line(LogLine),
    /// The task finished and every line was delivered.
    End(Box<Task>),
}

/// Client of the orchestrator's admin API.
#[derive(Clone)]
pub struct OrchestratorClient {
    http: Http,
}

impl OrchestratorClient {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8080`) with the admin token.
    pub fn new(base_url: &str, admin_token: Secret) -> Result<Self, ClientError> {
        Ok(Self {
            http: Http::new(base_url, admin_token, Some(ADMIN_POOL_IDLE))?,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.http.base
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.http.get("/health").await
    }

    /// `POST /orgs`.
    pub async fn create_org(&self, name: &OrgName) -> Result<Org, ClientError> {
        self.http
            .post("/orgs", &CreateOrgRequest { name: name.clone() })
            .await
    }

    /// `DELETE /orgs/{org}`: removes an org with no unfinished task.
    pub async fn delete_org(&self, name: &OrgName) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .http
            .send(self.http.request(Method::DELETE, &format!("/orgs/{name}")))
            .await?;
        Ok(())
    }

    /// `PUT /orgs/{org}/pool`: sets the org's warm agent pool.
    pub async fn set_pool(
        &self,
        org: &OrgName,
        spec: &PoolSpec,
    ) -> Result<PoolStatus, ClientError> {
        self.http
            .send(
                self.http
                    .request(Method::PUT, &format!("/orgs/{org}/pool"))
                    .json(spec),
            )
            .await
    }

    /// `GET /orgs/{org}/pool`.
    pub async fn pool(&self, org: &OrgName) -> Result<PoolStatus, ClientError> {
        self.http.get(&format!("/orgs/{org}/pool")).await
    }

    /// `DELETE /orgs/{org}/pool`: removes the org's warm pool.
    pub async fn delete_pool(&self, org: &OrgName) -> Result<DeletedPool, ClientError> {
        self.http
            .send(
                self.http
                    .request(Method::DELETE, &format!("/orgs/{org}/pool")),
            )
            .await
    }

    /// `GET /mesh`: the tailnet agents go on (never the API key).
    pub async fn mesh(&self) -> Result<crate::api::MeshStatus, ClientError> {
        self.http.get("/mesh").await
    }

    /// `PUT /mesh`: hands a mesh to the orchestrator (its host joins it; new agents go on it).
    pub async fn set_mesh(
        &self,
        req: &crate::api::MeshRequest,
    ) -> Result<crate::api::MeshStatus, ClientError> {
        // Joining the tailnet can take longer than the default request timeout.
        self.http
            .send(
                self.http
                    .request(Method::PUT, "/mesh")
                    .timeout(Duration::from_secs(120))
                    .json(req),
            )
            .await
    }

    /// `DELETE /mesh`: removes the mesh.
    pub async fn delete_mesh(&self) -> Result<crate::api::MeshStatus, ClientError> {
        self.http
            .send(self.http.request(Method::DELETE, "/mesh"))
            .await
    }

    /// `GET /orgs`.
    pub async fn orgs(&self) -> Result<Vec<Org>, ClientError> {
        self.http.get("/orgs").await
    }

    /// `GET /admin/disk`: disk use of the state dir, database and workspaces.
    pub async fn disk(&self) -> Result<crate::api::DiskUsage, ClientError> {
        self.http.get("/admin/disk").await
    }

    /// `POST /admin/prune`: removes the tasks that finished more than `older_than` ago, with
    /// their logs and workspaces.
    pub async fn prune(
        &self,
        older_than: Duration,
    ) -> Result<crate::api::PruneReport, ClientError> {
        self.http
            .post(
                "/admin/prune",
                &crate::api::PruneRequest {
                    older_than_secs: older_than.as_secs(),
                },
            )
            .await
    }

    /// `POST /schedule`.
    pub async fn schedule(
        &self,
        org: &OrgName,
        task: &str,
        agent_hint: Option<&str>,
    ) -> Result<Task, ClientError> {
        self.http
            .post(
                "/schedule",
                &ScheduleRequest {
                    agent_hint: agent_hint.map(str::to_owned),
                    ..ScheduleRequest::new(org.clone(), task)
                },
            )
            .await
    }

    /// `POST /schedule` with every field (repository, context files).
    pub async fn schedule_request(&self, req: &ScheduleRequest) -> Result<Task, ClientError> {
        self.http.post("/schedule", req).await
    }

    /// `GET /tasks`.
    pub async fn tasks(&self, q: &TaskListQuery) -> Result<Vec<Task>, ClientError> {
        Ok(self.tasks_page(q).await?.0)
    }

    /// `GET /tasks`, one page: the tasks and the cursor of the next page (set `q.cursor` to it
    /// for that page), `None` once a page was not full.
    pub async fn tasks_page(
        &self,
        q: &TaskListQuery,
    ) -> Result<(Vec<Task>, Option<String>), ClientError> {
        let mut path = String::from("/tasks?");
        if let Some(s) = q.status {
            path.push_str(&format!("status={s}&"));
        }
        if let Some(o) = &q.org {
            path.push_str(&format!("org={o}&"));
        }
        if let Some(l) = q.limit {
            path.push_str(&format!("limit={l}&"));
        }
        if let Some(c) = &q.cursor {
            // Cursors are digits, a dot and a task id: nothing to escape in a query.
            path.push_str(&format!("cursor={c}&"));
        }
        let path = path.trim_end_matches(['&', '?']);
        let (tasks, headers) = self
            .http
            .send_with_headers(self.http.request(Method::GET, path))
            .await?;
        let next = headers
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((tasks, next))
    }

    /// `GET /tasks/{id}`.
    pub async fn task(&self, id: &TaskId) -> Result<Task, ClientError> {
        self.http.get(&format!("/tasks/{id}")).await
    }

    /// `GET /tasks/{id}` with the backend's view of the workload (why a pod does not start...).
    pub async fn task_detail(&self, id: &TaskId) -> Result<crate::api::TaskDetail, ClientError> {
        self.http.get(&format!("/tasks/{id}")).await
    }

    /// `GET /tasks/{id}/logs`.
    pub async fn logs(&self, id: &TaskId, after: u64) -> Result<Vec<LogLine>, ClientError> {
        self.http
            .get(&format!("/tasks/{id}/logs?after={after}"))
            .await
    }

    /// `POST /tasks/{id}/cancel`.
    pub async fn cancel(&self, id: &TaskId) -> Result<Task, ClientError> {
        self.http
            .post(&format!("/tasks/{id}/cancel"), &serde_json::json!({}))
            .await
    }

    /// `GET /agents`.
    pub async fn agents(&self) -> Result<Vec<Agent>, ClientError> {
        self.http.get("/agents").await
    }

    /// `GET /agents/{name}`.
    pub async fn agent(&self, name: &AgentName) -> Result<Agent, ClientError> {
        self.http.get(&format!("/agents/{name}")).await
    }

    /// Opens an SSE stream at `path`, resuming after `last_id`.
    pub async fn open_sse(
        &self,
        path: &str,
        last_id: Option<&str>,
    ) -> Result<impl Stream<Item = Result<SseMessage, ClientError>> + Send + 'static, ClientError>
    {
        let mut rb = self
            .http
            .http
            .get(format!("{}{path}", self.http.base))
            .bearer_auth(self.http.token.expose())
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            rb = rb.header("last-event-id", id);
        }
        let resp = rb.send().await.map_err(|e| self.http.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        let base = self.http.base.clone();
        let url = format!("{base}{path}");
        Ok(sse_messages(resp.bytes_stream()).map(move |r| {
            r.map_err(|e| match e {
                SseStreamError::Transport(e) => ClientError::Transport {
                    url: base.clone(),
                    reason: e.without_url().to_string(),
                },
                SseStreamError::Malformed(reason) => ClientError::Decode {
                    url: url.clone(),
                    reason,
                },
            })
        }))
    }

    /// `POST /orgs/bootstrap`: starts an org's cluster bootstrap.
    pub async fn start_bootstrap(
        &self,
        req: &crate::api::OrgBootstrapRequest,
    ) -> Result<crate::api::BootstrapStatus, ClientError> {
        self.http.post("/orgs/bootstrap", req).await
    }

    /// `GET /orgs/{org}/bootstrap`.
    pub async fn bootstrap_status(
        &self,
        org: &OrgName,
    ) -> Result<crate::api::BootstrapStatus, ClientError> {
        self.http.get(&format!("/orgs/{org}/bootstrap")).await
    }

    /// `GET /orgs/{org}/bootstrap/stream`: `progress` messages (data: a
    /// [`crate::seams::BootstrapProgress`]), then one `done` or `error` (data: the final
    /// [`crate::api::BootstrapStatus`]).
    pub async fn follow_bootstrap(
        &self,
        org: &OrgName,
    ) -> Result<impl Stream<Item = Result<SseMessage, ClientError>> + Send + 'static, ClientError>
    {
        self.open_sse(&format!("/orgs/{org}/bootstrap/stream"), None)
            .await
    }

    /// `POST /kubeconfig/generate`.
    pub async fn generate_kubeconfig(
        &self,
        org: &OrgName,
        endpoint: &str,
    ) -> Result<crate::api::KubeconfigResponse, ClientError> {
        self.http
            .post(
                "/kubeconfig/generate",
                &crate::api::KubeconfigRequest {
                    org: org.clone(),
                    endpoint: endpoint.to_owned(),
                },
            )
            .await
    }

    /// Follows a task's log until it finishes, reconnecting (with `Last-Event-ID`) when the
    /// connection drops, so no line is missed or repeated. Gives up after `max_retry` of
    /// consecutive failed reconnects.
    pub fn follow_logs(
        &self,
        id: &TaskId,
        after: u64,
        max_retry: Duration,
    ) -> impl Stream<Item = Result<LogFollow, ClientError>> + Send + 'static {
        let client = self.clone();
        let path = format!("/tasks/{id}/logs/stream");
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut last = after;
            let mut failing_since: Option<tokio::time::Instant> = None;
            loop {
                let opened = client.open_sse(&path, Some(&last.to_string())).await;
                let mut stream = match opened {
                    Ok(s) => Box::pin(s),
                    Err(e) if e.is_transient() => {
                        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > max_retry {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                failing_since = None;
                while let Some(msg) = stream.next().await {
                    let Ok(msg) = msg else { break };
                    let item = match msg.event.as_str() {
                        "end" => match serde_json::from_str::<Task>(&msg.data) {
                            Ok(t) => {
                                let _ = tx.send(Ok(LogFollow::End(Box::new(t)))).await;
                                return;
                            }
                            Err(e) => Err(ClientError::Decode {
                                url: path.clone(),
                                reason: e.to_string(),
                            }),
                        },
                        "error" => Err(ClientError::Decode {
                            url: path.clone(),
                            reason: msg.data.clone(),
                        }),
                        _ => match serde_json::from_str::<LogLine>(&msg.data) {
                            Ok(l) => {
                                last = l.seq;
                                Ok(LogFollow::Line(l))
                            }
                            Err(e) => Err(ClientError::Decode {
                                url: path.clone(),
                                reason: e.to_string(),
                            }),
                        },
                    };
                    let fatal = item.is_err();
                    if tx.send(item).await.is_err() || fatal {
                        return;
                    }
                }
                // The connection dropped: reconnect from the last line seen.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Waits until task `id` is Succeeded, Failed or Cancelled and returns it, driven by the
    /// event stream (`GET /events?tail=true`: the task's status events), not by polling: the
    /// stream is open before the task is read, so no change is missed; it reconnects after the
    /// last event seen when the connection drops. No time limit: wrap it in a timeout.
    pub async fn wait_finished(&self, id: &TaskId) -> Result<Task, ClientError> {
        let mut last: Option<String> = None;
        loop {
            let stream = match &last {
                None => self.open_sse("/events?tail=true", None).await,
                Some(l) => self.open_sse("/events", Some(l)).await,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            futures_util::pin_mut!(stream);
            // Connected (the cursor is fixed): a status reached before now is in the task.
            let t = self.task(id).await?;
            if t.status.is_terminal() {
                return Ok(t);
            }
            while let Some(msg) = stream.next().await {
                let Ok(msg) = msg else { break };
                if let Some(i) = &msg.id {
                    last = Some(i.clone());
                }
                let Ok(ev) = serde_json::from_str::<crate::model::Event>(&msg.data) else {
                    continue;
                };
                if ev.task_id.as_ref() == Some(id) && ev.status.is_some_and(|s| s.is_terminal()) {
                    return self.task(id).await;
                }
            }
            if last.is_none() {
                // Dropped before any event: the tail cursor again (the task read covers the gap).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Follows the event stream (`GET /events`: task and agent events, in id order) from event
    /// id `after` (0: from the start), reconnecting with the last id seen when the connection
    /// drops; gives up after `max_retry` of consecutive failed reconnects. It never ends by
    /// itself: drop it to stop.
    pub fn follow_events(
        &self,
        after: u64,
        max_retry: Duration,
    ) -> impl Stream<Item = Result<crate::model::Event, ClientError>> + Send + 'static {
        let client = self.clone();
        let path = "/events".to_owned();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut last = after;
            let mut failing_since: Option<tokio::time::Instant> = None;
            loop {
                let mut stream = match client.open_sse(&path, Some(&last.to_string())).await {
                    Ok(s) => Box::pin(s),
                    Err(e) if e.is_transient() => {
                        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > max_retry {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                failing_since = None;
                while let Some(msg) = stream.next().await {
                    let Ok(msg) = msg else { break };
                    let item =
                        serde_json::from_str::<crate::model::Event>(&msg.data).map_err(|e| {
                            ClientError::Decode {
                                url: path.clone(),
                                reason: e.to_string(),
                            }
                        });
                    if let Ok(ev) = &item {
                        last = ev.id;
                    }
                    let fatal = item.is_err();
                    if tx.send(item).await.is_err() || fatal {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// How long the admin client keeps an idle connection: less than the orchestrator's
/// [`DEFAULT_IDLE_TIMEOUT`](crate::http_server::DEFAULT_IDLE_TIMEOUT), so the client drops a
/// connection before the server would close it under a request.
pub const ADMIN_POOL_IDLE: Duration = Duration::from_secs(20);

/// How long an agent keeps an idle connection to the orchestrator. Shorter than any heartbeat
/// interval: an idle agent holds no connection between heartbeats (each costs the orchestrator
/// about 14 KB while open, 140 MB with 10,000 agents), while bursts of log batches still share
/// one connection.
pub const AGENT_POOL_IDLE: Duration = Duration::from_millis(500);

/// Longest reply the agent reads from the orchestrator (a claim holds the task: at most 64 KiB
/// of text and 1 MiB of context files, in a body the orchestrator keeps under 2 MiB).
pub const AGENT_MAX_REPLY: usize = 8 * 1024 * 1024;

/// Client of the agent protocol, holding one task's agent token.
#[derive(Clone)]
pub struct AgentClient {
    http: Http,
}

impl AgentClient {
    /// A client for `base_url` with the per-task agent token. Replies are read up to
    /// [`AGENT_MAX_REPLY`] bytes.
    pub fn new(base_url: &str, agent_token: Secret) -> Result<Self, ClientError> {
        let mut http = Http::new(base_url, agent_token, Some(AGENT_POOL_IDLE))?;
        http.max_reply = Some(AGENT_MAX_REPLY);
        Ok(Self { http })
    }

    /// `POST /agent/register`.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.http.post("/agent/register", req).await
    }

    /// `POST /agent/heartbeat`.
    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.http.post("/agent/heartbeat", req).await
    }

    /// `POST /agent/claim`.
    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimResponse, ClientError> {
        self.http.post("/agent/claim", req).await
    }

    /// `POST /agent/log`.
    pub async fn log(&self, req: &LogRequest) -> Result<LogResponse, ClientError> {
        self.http.post("/agent/log", req).await
    }

    /// `POST /agent/complete`.
    pub async fn complete(&self, req: &CompleteRequest) -> Result<Task, ClientError> {
        self.http.post("/agent/complete", req).await
    }
}

/// The client of a warm pool agent: waits for a task of its org with the pool token.
#[derive(Clone)]
pub struct PoolClient {
    http: Http,
}

impl PoolClient {
    /// A client for `base_url` with the pool token.
    pub fn new(base_url: &str, pool_token: Secret) -> Result<Self, ClientError> {
        let mut http = Http::new(base_url, pool_token, Some(AGENT_POOL_IDLE))?;
        http.max_reply = Some(AGENT_MAX_REPLY);
        Ok(Self { http })
    }

    /// `POST /pool/wait`: holds the request open until a task is handed over or the wait ends
    /// (`handoff: null`; ask again).
    pub async fn wait(&self, req: &PoolWaitRequest) -> Result<PoolWaitResponse, ClientError> {
        let secs = req
            .wait_secs
            .unwrap_or(crate::pool::DEFAULT_WAIT_SECS)
            .saturating_add(10);
        self.http
            .send(
                self.http
                    .request(Method::POST, "/pool/wait")
                    .timeout(Duration::from_secs(secs))
                    .json(req),
            )
            .await
    }

    /// An agent client with a task's token over this client's connections: the connection the
    /// wait used carries the register and the claim (no new connection on the hot path).
    pub fn agent_client(&self, agent_token: Secret) -> AgentClient {
        let mut http = self.http.clone();
        http.token = agent_token;
        AgentClient { http }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` to [`sse_messages`] (a ready stream: no runtime needed).
    fn parse(chunks: &[&[u8]]) -> Vec<SseMessage> {
        use futures_util::FutureExt;
        let body = futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::convert::Infallible>(c.to_vec()))
                .collect::<Vec<_>>(),
        );
        sse_messages(body)
            .map(|r| r.expect("well-formed"))
            .collect::<Vec<_>>()
            .now_or_never()
            .expect("ready")
    }

    #[test]
    fn sse_parser_handles_split_chunks_comments_and_multiline_data() {
        let msgs = parse(&[
            b": keepalive\n\nid: 7\nda",
            b"ta: {\"a\":1}\n\nevent: end\ndata: x\ndata: y\n\n",
        ]);
        assert_eq!(
            msgs,
            vec![
                SseMessage {
                    id: Some("7".into()),
                    event: "message".into(),
                    data: "{\"a\":1}".into()
                },
                SseMessage {
                    // The last id set carries over (the SSE specification's last event id).
                    id: Some("7".into()),
                    event: "end".into(),
                    data: "x\ny".into()
                }
            ]
        );
    }

    #[test]
    fn a_character_split_between_chunks_stays_whole() {
        let body = "data: caf\u{e9} \u{1f600}\n\n".as_bytes();
        let whole = parse(&[body]);
        assert_eq!(whole[0].data, "caf\u{e9} \u{1f600}");
        for at in 1..body.len() {
            assert_eq!(parse(&[&body[..at], &body[at..]]), whole, "split at {at}");
        }
    }

    #[test]
    fn api_errors_decode_and_classify() {
        let e = api_error(
            StatusCode::CONFLICT,
            br#"{"error":{"code":"stale_fencing","message":"m","field":"fencing"}}"#,
        );
        assert_eq!(e.status(), Some(409));
        assert!(!e.is_transient());
        assert!(matches!(e, ClientError::Api { ref code, .. } if code == "stale_fencing"));
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>");
        assert!(e.is_transient());
        assert!(matches!(
            OrchestratorClient::new("ftp://x", Secret::new("t")),
            Err(ClientError::BadUrl(_))
        ));
    }
}
