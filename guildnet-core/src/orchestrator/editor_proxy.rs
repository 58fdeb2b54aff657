//! The orchestrator's reverse proxy to agents' editors: `POST /agents/editor/open` and
//! `/close`, and `ANY /editor/proxy/{port}/...`.
//!
//! **Owns** its state ([`EditorProxy`]): the registry of open editors by proxy port, the pooled
//! HTTP client, the tailnet dialer, the `frame-ancestors` policy and which editor addresses it
//! accepts ([`EditorProxyConfig`]). **Asks the service** ([`Orchestrator`]) only where an agent's
//! editor is ([`Orchestrator::editor_location`]), to close a backend tunnel
//! ([`Orchestrator::close_editor_endpoint`]), whether a bearer token is the admin's, and which
//! agents ended ([`Orchestrator::subscribe_agent_ends`]): their editors are forgotten before
//! the next request is served. **Must not** touch the store or the backend itself.
//!
//! It reaches only agents' editors, by a registry keyed by proxy port, so it cannot be turned
//! into a proxy to other hosts or ports. Callers authenticate with the admin token (the
//! dashboard relays with it) or with the HttpOnly session cookie the open call set for that
//! port: a signed token naming the org, the agent and the port
//! ([`super::editor_session`]). **Any replica serves a session**: a replica that does not have
//! the port open (another replica opened it, and may have died) checks the token, asks the
//! service where that agent's editor is, and opens it under the same port for this and later
//! requests. So a browser whose replica died reconnects through the load balancer to any other
//! one, without opening the editor again. When the backend knows the editor's password, the proxy logs in to
//! code-server itself and keeps code-server's session cookie server-side: the person never
//! sees the password.

use super::api::{EditorCloseResponse, EditorOpenResponse, EditorRequest};
use super::editor_session::{now_ms, EditorClaims, EditorKeys};
use super::error::{ApiError, ErrorBody};
use super::http::{AdminAuth, ApiJson, ApiPath};
use super::service::{EditorSource, EndedAgent};
use super::Orchestrator;
use crate::names::{AgentName, OrgName};
use crate::proxy::{Dialer, ProxyError, ReverseProxy, Upstream};
use crate::token::Secret;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::{self, error::TryRecvError};

/// The editor proxy's settings.
#[derive(Debug, Clone)]
pub struct EditorProxyConfig {
    /// `frame-ancestors` sources allowed to embed proxied editors (`'self'` plus the
    /// dashboard's origin).
    pub frame_ancestors: String,
    /// Proxy to any editor address an agent advertises at register. Off by default: an agent's
    /// credentials could otherwise point the proxy anywhere. Without it, only tailnet addresses
    /// (100.64.0.0/10, fd7a:115c:a1e0::/48) dialed through [`EditorProxyConfig::dialer`] are
    /// accepted.
    pub trust_advertised: bool,
    /// How editors on the tailnet are reached (e.g. guildnet-mesh's `TailnetDialer` through a
    /// userspace tailscaled's SOCKS5 proxy); `None`: tailnet editors are refused.
    pub dialer: Option<Arc<dyn Dialer>>,
}

impl Default for EditorProxyConfig {
    /// Framing by the orchestrator's own pages only, advertised addresses not trusted, no
    /// tailnet dialer.
    fn default() -> Self {
        Self {
            frame_ancestors: "'self'".into(),
            trust_advertised: false,
            dialer: None,
        }
    }
}

/// The editor proxy. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct EditorProxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    service: Orchestrator,
    cfg: EditorProxyConfig,
    /// Editors opened through `POST /agents/editor/open`, by proxy port.
    ports: EditorPorts,
    /// The pooled client to editors.
    client: ReverseProxy,
    /// Agents that ended since the last look (see [`EditorProxy::forget_ended`]).
    ended: Mutex<broadcast::Receiver<EndedAgent>>,
    /// When each agent's editor was last closed on this replica (ms since the epoch): session
    /// tokens issued before are refused here.
    closed: Mutex<HashMap<(OrgName, AgentName), u64>>,
}

impl EditorProxy {
    /// An editor proxy in front of `service`'s agents.
    pub fn new(service: Orchestrator, cfg: EditorProxyConfig) -> Self {
        let ended = Mutex::new(service.subscribe_agent_ends());
        Self {
            inner: Arc::new(ProxyInner {
                service,
                cfg,
                ports: EditorPorts::default(),
                client: ReverseProxy::new(),
                ended,
                closed: Mutex::default(),
            }),
        }
    }

    /// Settings.
    pub fn config(&self) -> &EditorProxyConfig {
        &self.inner.cfg
    }

    /// Forgets the editors of agents that ended. Reads what the service announced since the
    /// last call; when more ended than the announcement buffer holds, asks the service about
    /// each open editor instead.
    async fn forget_ended(&self) {
        let mut lagged = false;
        {
            let Ok(mut rx) = self.inner.ended.lock() else {
                return;
            };
            loop {
                match rx.try_recv() {
                    Ok(a) => {
                        self.inner.ports.close(&a.org, &a.agent);
                        // Its tokens are refused from now on anyway (the agent is not current).
                        if let Ok(mut closed) = self.inner.closed.lock() {
                            closed.remove(&(a.org, a.agent));
                        }
                    }
                    Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
        }
        if lagged {
            for (org, agent) in self.inner.ports.agents() {
                match self.inner.service.agent_is_current(&org, &agent).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.inner.ports.close(&org, &agent);
                    }
                    // Kept: the next announcement or look decides.
                    Err(e) => tracing::warn!(%agent, error = %e, "editor proxy: agent not checked"),
                }
            }
        }
    }

    /// `POST /agents/editor/open`: asks the service where the agent's editor is, checks that
    /// the proxy may go there, and serves it under `/editor/proxy/<port>/`.
    pub async fn open(&self, req: EditorRequest) -> Result<EditorOpenResponse, ApiError> {
        Ok(self.open_session(req).await?.0)
    }

    /// Like [`EditorProxy::open`], also returning the proxy session token for the port.
    async fn open_session(
        &self,
        req: EditorRequest,
    ) -> Result<(EditorOpenResponse, Secret), ApiError> {
        let r = self.locate(&req.org, &req.name).await?;
        self.forget_ended().await;
        // An entry registered here before a close through another replica is not reopened with
        // its old session: a new one is made.
        if let Some(closed) = self.inner.service.editor_closed_at(&req.name).await? {
            self.inner
                .ports
                .close_opened_until(&req.org, &req.name, closed);
            self.note_closed(&req.org, &req.name, closed);
        }
        let (proxy_port, session) = self.inner.ports.open(
            r.unique_port.then_some(r.port),
            &req.org,
            &req.name,
            r.target,
            self.inner.service.editor_keys(),
        );
        Ok((
            EditorOpenResponse {
                name: req.name,
                path: format!("/editor/proxy/{proxy_port}/"),
                host: r.host,
                port: proxy_port,
            },
            session,
        ))
    }

    /// Serves, on this replica, the session `claims` names that is not open here (another
    /// replica opened it): checks that its agent is still current, asks the service where the
    /// editor is (with the same policy as [`EditorProxy::open`]) and registers it under the
    /// session's port. 404 `editor_closed` for an agent that ended, 409 `editor_port_taken`
    /// when this replica serves another editor under that port.
    async fn adopt(&self, claims: &EditorClaims) -> Result<Arc<OpenEditor>, ApiError> {
        if !self
            .inner
            .service
            .agent_is_current(&claims.org, &claims.agent)
            .await?
        {
            return Err(editor_closed(&claims.agent));
        }
        // Closed through any replica after this session was issued: refused, as on the replica
        // that closed it.
        if let Some(closed) = self.inner.service.editor_closed_at(&claims.agent).await? {
            if claims.issued_ms <= closed {
                self.note_closed(&claims.org, &claims.agent, closed);
                return Err(session_closed());
            }
        }
        let r = self.locate(&claims.org, &claims.agent).await?;
        let editor = self
            .inner
            .ports
            .adopt(
                claims,
                r.target,
                self.inner
                    .service
                    .editor_keys()
                    .mint(&claims.org, &claims.agent, claims.port),
            )
            .ok_or_else(|| port_taken(claims.port))?;
        tracing::info!(agent = %claims.agent, port = claims.port,
            "editor proxy: serving a session opened on another replica");
        Ok(editor)
    }

    /// Makes sure, at most every [`RECHECK_MS`], that an editor served here is still open: its
    /// agent still current, and its editor not closed through any replica since it was
    /// registered here. Announcements cover the agents that end through this replica and
    /// `editor/close` on it; this covers what happened through another replica (or while this
    /// one was not listening), so a session ends on every replica within that time.
    /// `Ok(true)`: still open (or not looked at now; a store error also keeps serving and looks
    /// again on the next request). `Ok(false)`: closed through `editor/close`; forgotten here,
    /// and the close recorded here, so the sessions issued before it are refused. 404
    /// `editor_closed` (and forgotten here) when the agent has ended.
    async fn recheck(&self, editor: &OpenEditor) -> Result<bool, ApiError> {
        let now = now_ms();
        let last = editor.checked_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < RECHECK_MS
            || editor
                .checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(true);
        }
        let svc = &self.inner.service;
        let looked = async {
            let current = svc.agent_is_current(&editor.org, &editor.agent).await?;
            let closed = match current {
                true => svc.editor_closed_at(&editor.agent).await?,
                false => None,
            };
            Ok::<_, ApiError>((current, closed))
        };
        match looked.await {
            Ok((false, _)) => {
                self.inner.ports.close(&editor.org, &editor.agent);
                Err(editor_closed(&editor.agent))
            }
            Ok((true, Some(closed))) if closed >= editor.opened_ms => {
                self.inner
                    .ports
                    .close_opened_until(&editor.org, &editor.agent, closed);
                self.note_closed(&editor.org, &editor.agent, closed);
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) => {
                editor.checked_ms.store(last, Ordering::Relaxed);
                tracing::warn!(agent = %editor.agent, error = %e, "editor proxy: agent not checked");
                Ok(true)
            }
        }
    }

    /// Records here that the agent's editor was closed at `at` (ms since the epoch): session
    /// tokens issued until then are refused by this replica.
    fn note_closed(&self, org: &OrgName, agent: &AgentName, at: u64) {
        if let Ok(mut m) = self.inner.closed.lock() {
            let t = m.entry((org.clone(), agent.clone())).or_insert(at);
            *t = (*t).max(at);
        }
    }

    /// Whether `claims` were issued before the editor was last closed on this replica.
    fn revoked(&self, claims: &EditorClaims) -> bool {
        let Ok(m) = self.inner.closed.lock() else {
            return true;
        };
        m.get(&(claims.org.clone(), claims.agent.clone()))
            .is_some_and(|closed| claims.issued_ms <= *closed)
    }

    /// Where the proxy may reach `name`'s editor: the service's answer, checked against the
    /// proxy's policy (tailnet dialer, advertised addresses).
    async fn locate(&self, org: &OrgName, name: &AgentName) -> Result<Reachable, ApiError> {
        let req = EditorRequest {
            org: org.clone(),
            name: name.clone(),
        };
        let loc = self
            .inner
            .service
            .editor_location(&req.org, &req.name)
            .await?;
        let has_dialer = self.inner.cfg.dialer.as_ref().is_some_and(|d| d.ready());
        let (advertised, backend_tailnet) = match loc.source {
            // A backend's tailnet address (an agent pod's sidecar) needs the tailnet dialer.
            EditorSource::Backend { via_tailnet: true } if !has_dialer => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "editor_unavailable",
                    format!(
                        "the editor of agent {} is on the tailnet at {}:{}: the orchestrator is \
                         not on the tailnet (set the mesh with PUT /mesh, or run it with \
                         --tailnet-socks5, its node's SOCKS5 proxy)",
                        req.name, loc.host, loc.port
                    ),
                ))
            }
            EditorSource::Backend { via_tailnet } => (false, via_tailnet),
            EditorSource::Advertised => (true, false),
        };
        let (host, port) = (loc.host, loc.port);
        // An address the agent advertised is dialed over the tailnet when a dialer is set, and
        // only a tailnet address is accepted then, unless advertised addresses are trusted.
        let via_tailnet = (advertised || backend_tailnet) && has_dialer;
        if advertised && !self.inner.cfg.trust_advertised {
            let on_tailnet = via_tailnet && is_tailnet_ip(&host);
            if !on_tailnet {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "editor_unavailable",
                    format!(
                        "agent {} advertises an editor at {host}:{port}, which is not a tailnet \
                         address reached over the tailnet (run the orchestrator with \
                         --tailnet-socks5, or --trust-advertised-editors for sidecar editors)",
                        req.name
                    ),
                ));
            }
        }
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let unique_port = !advertised && !backend_tailnet;
        // Only a port on this host can be checked against its holder.
        let owner = loc
            .held_by
            .filter(|_| unique_port)
            .map(|pid| PortOwner::new(pid, port));
        Ok(Reachable {
            host,
            port,
            target: Target {
                authority,
                password: loc.password,
                via_tailnet,
                owner,
            },
            unique_port,
        })
    }

    /// `POST /agents/editor/close`: forgets the agent's editors and closes the backend's
    /// tunnel. 404 for an agent not in the org.
    pub async fn close(&self, req: EditorRequest) -> Result<EditorCloseResponse, ApiError> {
        let at = now_ms();
        let backend = match self
            .inner
            .service
            .close_editor_endpoint(&req.org, &req.name, at)
            .await
        {
            // Not this org's agent: nothing of it is touched.
            Err(e) if e.status == StatusCode::NOT_FOUND => return Err(e),
            other => other,
        };
        let proxied = self.inner.ports.close(&req.org, &req.name);
        self.note_closed(&req.org, &req.name, at);
        Ok(EditorCloseResponse {
            closed: backend? || proxied,
        })
    }
}

/// How often a replica makes sure that an editor it serves is still open, its agent current
/// and no close recorded through another replica ([`EditorProxy::recheck`]), in ms.
const RECHECK_MS: u64 = 2_000;

/// Name of the proxy's session cookie (scoped to `/editor/proxy/<port>/`).
pub const SESSION_COOKIE: &str = "guildnet_editor";
/// code-server's session cookie.
const CODE_SERVER_COOKIE: &str = "code-server-session";

/// Where the proxy may reach an agent's editor ([`EditorProxy::locate`]).
struct Reachable {
    /// The editor's host, as the service gave it.
    host: String,
    /// The editor's port.
    port: u16,
    /// How to reach it.
    target: Target,
    /// The port is unique on this host (a backend's local port-forward or process), unlike the
    /// ports of editors on the tailnet or at advertised addresses.
    unique_port: bool,
}

/// How the proxy reaches an editor.
struct Target {
    /// `host:port` to dial.
    authority: String,
    /// code-server's password, when the backend knows it.
    password: Option<Secret>,
    /// Dialed through the tailnet dialer.
    via_tailnet: bool,
    /// The processes that must hold the port ([`PortOwner`]), for an editor on this host.
    owner: Option<PortOwner>,
}

/// The agent process whose tree must hold every listening socket of a local editor's port
/// before the proxy sends anything there. The local backend picks the port and code-server
/// binds it; while code-server restarts the port is free, and a process that binds it then
/// (another task's runner, say) would get the person's requests and the proxy's login with
/// code-server's password. Checked on every request: once the port's listening sockets
/// (`/proc/net/tcp{,6}`) were found held by the agent's tree, a request only checks that each
/// holding process still has its socket open under the same descriptor (one `readlink` per
/// socket: an open listening socket stays bound, so nobody else can take the port meanwhile;
/// a process that closed its listener but lives on, as an orchestrator whose port-forward
/// ended, fails this check too); when one of them let go, the sockets are looked up and the
/// tree walked again ([`crate::procfs`]). When
/// `/proc` cannot tell (an unreadable file table), the request goes through, as before the
/// check. What is left: code-server ending between the check and the proxy's connect, and
/// another process binding the port in that window (microseconds).
struct PortOwner {
    pid: u32,
    port: u16,
    /// Where the port's listening sockets were last found open.
    verified: Mutex<Vec<crate::procfs::Holder>>,
}

impl PortOwner {
    fn new(pid: u32, port: u16) -> Self {
        Self {
            pid,
            port,
            verified: Mutex::new(Vec::new()),
        }
    }

    /// Whether the sockets last found holding the port are all still open where they were.
    fn holders_alive(&self) -> bool {
        let held = self.verified.lock().map(|v| v.clone()).unwrap_or_default();
        !held.is_empty() && held.iter().all(crate::procfs::Holder::still_holds)
    }

    /// `Ok` when the agent's tree holds every listener of the port (or `/proc` cannot tell);
    /// 502 `editor_unreachable` when nothing listens or another process holds the port.
    async fn check(&self, agent: &AgentName) -> Result<(), ApiError> {
        if self.holders_alive() {
            return Ok(());
        }
        let unreachable = |why: String| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "editor_unreachable",
                format!("the editor of agent {agent} does not answer: {why}"),
            )
        };
        let (pid, port) = (self.pid, self.port);
        let found = tokio::task::spawn_blocking(move || {
            let inodes = crate::procfs::listeners(port)?;
            if inodes.is_empty() {
                return Some(Err(()));
            }
            // The orchestrator's own port (a port-forward) is held by itself alone: a child
            // of it (a local agent, its runner) that bound the port is another process.
            let pids = if pid == std::process::id() {
                vec![pid]
            } else {
                crate::procfs::tree(pid)
            };
            let held = crate::procfs::holders(&pids, &inodes)?;
            Some(Ok((held.len() == inodes.len()).then_some(held)))
        })
        .await
        .ok()
        .flatten();
        match found {
            // `/proc` cannot tell.
            None => Ok(()),
            Some(Err(())) => Err(unreachable(format!(
                "nothing listens on its port {port} (code-server is starting or restarting)"
            ))),
            Some(Ok(Some(held))) => {
                if let Ok(mut v) = self.verified.lock() {
                    *v = held;
                }
                Ok(())
            }
            Some(Ok(None)) => {
                tracing::warn!(%agent, port, pid,
                    "editor proxy: another process holds the editor's port; nothing sent to it");
                Err(unreachable(format!(
                    "its port {port} is held by another process than its code-server \
                     (code-server restarting?); nothing was sent there"
                )))
            }
        }
    }
}

/// 404 `editor_closed`: the session's agent has ended.
fn editor_closed(agent: &AgentName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "editor_closed",
        format!("agent {agent} has ended: its editor session is over"),
    )
}

/// 401: the session was issued before its editor was closed.
fn session_closed() -> ApiError {
    ApiError::unauthorized(
        "this editor session was closed (POST /agents/editor/close); open the editor again \
         with POST /agents/editor/open",
    )
}

/// 409 `editor_port_taken`: this replica serves another editor under the session's port.
fn port_taken(port: u16) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "editor_port_taken",
        format!(
            "this replica serves another editor on port {port}; open the editor again with \
             POST /agents/editor/open"
        ),
    )
}

/// An editor the proxy opened.
struct OpenEditor {
    org: OrgName,
    agent: AgentName,
    authority: String,
    password: Option<Secret>,
    via_tailnet: bool,
    owner: Option<PortOwner>,
    session: Secret,
    upstream_cookie: tokio::sync::Mutex<Option<String>>,
    /// When this replica last made sure the agent is still current (ms since the epoch).
    checked_ms: AtomicU64,
    /// When it was registered here (ms since the epoch): a close recorded later ends it.
    opened_ms: u64,
}

/// The lowest proxy port given to an editor whose own port cannot be used (one on the tailnet,
/// or a port taken here already).
const PROXY_PORTS_FROM: u16 = 20000;

/// The proxy port an agent's editor gets when its own port cannot be used: derived from the
/// org and agent names (FNV-1a), so every replica prefers the same one for the same agent.
/// Numbering from a counter on each replica made two replicas give the first editor each opened
/// the same port, so a session opened on one was refused by the other (409
/// `editor_port_taken`) whenever the two opened different agents' editors.
fn preferred_port(org: &OrgName, agent: &AgentName) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in org
        .as_str()
        .bytes()
        .chain([b'/'])
        .chain(agent.as_str().bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let span = u32::from(u16::MAX - PROXY_PORTS_FROM) + 1;
    PROXY_PORTS_FROM + (h % span) as u16
}

/// Editors by the port the proxy serves them under.
#[derive(Default)]
struct EditorPorts {
    map: Mutex<HashMap<u16, Arc<OpenEditor>>>,
}

impl EditorPorts {
    /// Registers (or refreshes) an editor reached at `authority`, served under `own_port` when
    /// it has one and that is free (a backend's local port is unique on this host), else under
    /// the agent's [`preferred_port`] or the next free one after it (editors on the tailnet or
    /// at advertised addresses share port numbers: every code-server listens on 8443). Returns
    /// the proxy port and the browser session token (minted with `keys` for that port).
    fn open(
        &self,
        own_port: Option<u16>,
        org: &OrgName,
        agent: &AgentName,
        target: Target,
        keys: &EditorKeys,
    ) -> (u16, Secret) {
        let authority = &target.authority;
        let fallback = own_port.unwrap_or_else(|| preferred_port(org, agent));
        let Ok(mut m) = self.map.lock() else {
            return (fallback, keys.mint(org, agent, fallback));
        };
        // Reopening: the same editor keeps its port and session.
        if let Some((p, e)) = m
            .iter()
            .find(|(_, e)| e.agent == *agent && e.org == *org && e.authority == *authority)
        {
            return (*p, e.session.clone());
        }
        let key = match own_port {
            Some(p) if !m.contains_key(&p) => p,
            // The agent's own number, the same on every replica (so two replicas that open
            // different agents' editors rarely pick the same port, and a session adopted by
            // another replica rarely finds its port taken there); the next free one if taken.
            _ => {
                let first = preferred_port(org, agent);
                (first..=u16::MAX)
                    .chain(PROXY_PORTS_FROM..first)
                    .find(|p| !m.contains_key(p))
                    .unwrap_or(fallback)
            }
        };
        let session = keys.mint(org, agent, key);
        m.insert(
            key,
            Arc::new(OpenEditor {
                org: org.clone(),
                agent: agent.clone(),
                authority: target.authority,
                password: target.password,
                via_tailnet: target.via_tailnet,
                owner: target.owner,
                session: session.clone(),
                upstream_cookie: tokio::sync::Mutex::new(None),
                checked_ms: AtomicU64::new(now_ms()),
                opened_ms: now_ms(),
            }),
        );
        (key, session)
    }

    /// Registers the editor of a session another replica opened under the session's port;
    /// `None` when another editor is served under that port here. The entry found or made.
    fn adopt(
        &self,
        claims: &EditorClaims,
        target: Target,
        session: Secret,
    ) -> Option<Arc<OpenEditor>> {
        let mut m = self.map.lock().ok()?;
        if let Some(e) = m.get(&claims.port) {
            return (e.org == claims.org && e.agent == claims.agent).then(|| e.clone());
        }
        let e = Arc::new(OpenEditor {
            org: claims.org.clone(),
            agent: claims.agent.clone(),
            authority: target.authority,
            password: target.password,
            via_tailnet: target.via_tailnet,
            owner: target.owner,
            session,
            upstream_cookie: tokio::sync::Mutex::new(None),
            checked_ms: AtomicU64::new(now_ms()),
            opened_ms: now_ms(),
        });
        m.insert(claims.port, e.clone());
        Some(e)
    }

    /// Forgets the editors of `agent` registered at or before `at` (ms since the epoch).
    fn close_opened_until(&self, org: &OrgName, agent: &AgentName, at: u64) {
        if let Ok(mut m) = self.map.lock() {
            m.retain(|_, e| !(e.agent == *agent && e.org == *org && e.opened_ms <= at));
        }
    }

    /// Forgets every editor of `agent`.
    fn close(&self, org: &OrgName, agent: &AgentName) -> bool {
        let Ok(mut m) = self.map.lock() else {
            return false;
        };
        let before = m.len();
        m.retain(|_, e| !(e.agent == *agent && e.org == *org));
        m.len() != before
    }

    fn get(&self, port: u16) -> Option<Arc<OpenEditor>> {
        self.map.lock().ok()?.get(&port).cloned()
    }

    /// The agents with an open editor.
    fn agents(&self) -> Vec<(OrgName, AgentName)> {
        let Ok(m) = self.map.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = m
            .values()
            .map(|e| (e.org.clone(), e.agent.clone()))
            .collect();
        out.sort_by(|a, b| (a.0.as_str(), a.1.as_str()).cmp(&(b.0.as_str(), b.1.as_str())));
        out.dedup();
        out
    }
}

/// The `Set-Cookie` value for an editor session.
fn session_cookie(port: u16, session: &Secret) -> String {
    format!(
        "{SESSION_COOKIE}={}; Path=/editor/proxy/{port}/; HttpOnly; SameSite=Strict",
        session.expose()
    )
}

fn cookie_value<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, tok) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(tok.trim())
}

/// A prefix a trusted relay (the dashboard) may ask for: `/segment/...`, safe characters only.
fn valid_prefix(p: &str) -> bool {
    p.starts_with('/')
        && !p.ends_with('/')
        && p.len() <= 200
        && !p.contains("//")
        && !p.split('/').any(|s| s == "..")
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c))
}

/// Logs in to code-server behind `up` and returns its session cookie (`name=value`). The login
/// goes through the proxy itself, so it reaches the editor the same way the person's requests
/// do (through the tailnet dialer for a tailnet editor).
async fn login(
    client: &crate::proxy::ReverseProxy,
    up: &Upstream,
    password: &Secret,
) -> Result<String, String> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("password", password.expose())
        .finish();
    let req = Request::builder()
        .method(axum::http::Method::POST)
        .uri("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(form))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(LOGIN_TIMEOUT, client.forward(req, "login", up))
        .await
        .map_err(|_| format!("no answer in {} s", LOGIN_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|c| c.starts_with(&format!("{CODE_SERVER_COOKIE}=")))
        .map(str::to_owned)
        .ok_or_else(|| format!("editor login refused (HTTP {})", resp.status().as_u16()))
}

/// How long the proxy waits for code-server's login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

fn port_param(raw: &str) -> Result<u16, ApiError> {
    crate::proxy::parse_port(raw)
        .ok_or_else(|| ApiError::invalid("port", "must be a TCP port number (1-65535)"))
}

/// `ANY /editor/proxy/{port}`: redirects to the slash form, which code-server's relative URLs
/// need.
pub async fn editor_proxy_root(ApiPath(port): ApiPath<String>) -> Result<Response, ApiError> {
    let port = port_param(&port)?;
    Ok((
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, format!("/editor/proxy/{port}/"))],
    )
        .into_response())
}

/// The mount of the editor proxy routes.
const MOUNT: &str = "/editor/proxy/";

/// Opens (or reuses) the orchestrator's way to an agent's editor.
#[utoipa::path(post, path = "/agents/editor/open", tag = "agents", request_body = EditorRequest,
    security(("admin" = [])), responses((status = 200, body = EditorOpenResponse),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn editor_open(
    State(p): State<EditorProxy>,
    _: AdminAuth,
    ApiJson(req): ApiJson<EditorRequest>,
) -> Result<Response, ApiError> {
    let (reply, session) = p.open_session(req).await?;
    let port = reply.port;
    Ok(with_session_cookie(
        Json(reply).into_response(),
        port,
        &session,
    ))
}

/// Closes the orchestrator's way to an agent's editor.
#[utoipa::path(post, path = "/agents/editor/close", tag = "agents", request_body = EditorRequest,
    security(("admin" = [])), responses((status = 200, body = EditorCloseResponse),
    (status = 404, body = ErrorBody)))]
pub async fn editor_close(
    State(p): State<EditorProxy>,
    _: AdminAuth,
    ApiJson(req): ApiJson<EditorRequest>,
) -> Result<Json<EditorCloseResponse>, ApiError> {
    Ok(Json(p.close(req).await?))
}

/// `ANY /editor/proxy/{port}/` and `ANY /editor/proxy/{port}/{*rest}`. The rest of the path is
/// forwarded as the client sent it, still percent-encoded
/// ([`crate::proxy::split_mounted_path`]).
pub async fn editor_proxy(
    State(p): State<EditorProxy>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    let (port, rest) = crate::proxy::split_mounted_path(&path, MOUNT)
        .ok_or_else(|| ApiError::not_found("not an editor proxy path"))?;
    let rest = rest.to_owned();
    p.proxy(port, &rest, req).await
}

impl EditorProxy {
    async fn proxy(&self, port: &str, rest: &str, req: Request) -> Result<Response, ApiError> {
        let port = port_param(port)?;
        // Authenticate before saying anything about the port.
        let admin = match bearer(&req) {
            Some(t) if self.inner.service.is_admin_token(t) => true,
            Some(_) => return Err(ApiError::unauthorized("invalid admin token")),
            None => false,
        };
        // A session token of ours for this port (from any replica), not issued before the
        // editor was closed here.
        let mut claims = cookie_value(&req, SESSION_COOKIE)
            .and_then(|c| self.inner.service.editor_keys().verify(c))
            .filter(|c| c.port == port && !self.revoked(c));
        if !admin && claims.is_none() {
            return Err(ApiError::unauthorized(
                "missing Authorization: Bearer <admin token> or editor session cookie \
                 (POST /agents/editor/open sets it)",
            ));
        }
        self.forget_ended().await;
        let mut found = self.inner.ports.get(port);
        if let Some(e) = &found {
            if !self.recheck(e).await? {
                // Closed through another replica: as if it had been closed here.
                found = None;
                if claims.as_ref().is_some_and(|c| self.revoked(c)) {
                    if !admin {
                        return Err(session_closed());
                    }
                    claims = None;
                }
            }
        }
        let editor = match (found, &claims) {
            (Some(e), Some(c)) if e.org == c.org && e.agent == c.agent => e,
            // The session is for another agent's editor than the one served here on its port.
            (Some(_), Some(_)) => return Err(port_taken(port)),
            (Some(e), None) => e,
            // Opened on another replica (perhaps one that died): served here from now on.
            (None, Some(c)) => self.adopt(c).await?,
            (None, None) => {
                return Err(ApiError::not_found(format!(
                    "no editor is open on port {port} on this replica; open one with \
                     POST /agents/editor/open"
                )))
            }
        };
        let external_prefix = match req
            .headers()
            .get("x-forwarded-prefix")
            .and_then(|v| v.to_str().ok())
        {
            Some(p) if admin && valid_prefix(p) => p.to_owned(),
            Some(_) if admin => {
                return Err(ApiError::invalid(
                    "X-Forwarded-Prefix",
                    "must be an absolute path of letters, digits, '-', '_', '.' and '/'",
                ))
            }
            _ => format!("/editor/proxy/{port}"),
        };
        let mut up = Upstream {
            authority: editor.authority.clone(),
            path_prefix: String::new(),
            external_prefix,
            add_headers: Vec::new(),
            cookie: editor.upstream_cookie.lock().await.clone(),
            strip_cookies: vec![SESSION_COOKIE.to_owned()],
            frame_ancestors: Some(self.inner.cfg.frame_ancestors.clone()),
            dialer: if editor.via_tailnet {
                self.inner.cfg.dialer.clone()
            } else {
                None
            },
        };
        // Nothing (not the login with the password, not the person's request) goes to a port
        // that another process took from the agent's code-server.
        if let Some(owner) = &editor.owner {
            owner.check(&editor.agent).await?;
        }
        if up.cookie.is_none() {
            if let Some(pw) = &editor.password {
                match login(&self.inner.client, &up, pw).await {
                    Ok(c) => {
                        *editor.upstream_cookie.lock().await = Some(c.clone());
                        up.cookie = Some(c);
                    }
                    Err(why) => {
                        tracing::warn!(agent = %editor.agent, port, %why, "editor login failed");
                    }
                }
            }
        }
        let cookie = up.cookie.clone();
        let resp = self
            .inner
            .client
            .forward(req, rest, &up)
            .await
            .map_err(|e| match e {
                ProxyError::Unreachable { .. } => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "editor_unreachable",
                    format!("the editor of agent {} does not answer: {e}", editor.agent),
                ),
                ProxyError::BadRequest(m) => ApiError::invalid("path", m),
            })?;
        // code-server sends a stale session back to its login page: log in again next time.
        let to_login = resp.status().is_redirection()
            && resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|l| l.contains("login"));
        if to_login && cookie.is_some() {
            *editor.upstream_cookie.lock().await = None;
        }
        Ok(resp)
    }
}

/// Adds the editor session cookie to an `editor/open` reply.
fn with_session_cookie(mut resp: Response, port: u16, session: &Secret) -> Response {
    if let Ok(v) = HeaderValue::from_str(&session_cookie(port, session)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Whether `host` is an IP address in Tailscale's ranges (CGNAT 100.64.0.0/10 or the
/// Tailscale ULA fd7a:115c:a1e0::/48).
fn is_tailnet_ip(host: &str) -> bool {
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(std::net::IpAddr::V4(ip)) => {
            let o = ip.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            let s = ip.segments();
            s[0] == 0xfd7a && s[1] == 0x115c && s[2] == 0xa1e0
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dials every host to one loopback port and records what it was asked for.
    #[derive(Debug)]
    struct ToLoopback {
        port: u16,
        asked: Mutex<Vec<(String, u16)>>,
    }

    #[async_trait::async_trait]
    impl crate::proxy::Dialer for ToLoopback {
        async fn dial(&self, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
            if let Ok(mut a) = self.asked.lock() {
                a.push((host.to_owned(), port));
            }
            tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await
        }
    }

    #[tokio::test]
    async fn the_editor_login_goes_through_the_tailnet_dialer() {
        use axum::routing::post;
        // A code-server stand-in that only answers on its loopback port.
        let app = axum::Router::new().route(
            "/login",
            post(|body: String| async move {
                if body == "password=p+w%261" {
                    (
                        StatusCode::FOUND,
                        [(
                            header::SET_COOKIE,
                            "code-server-session=s3ss; Path=/; HttpOnly",
                        )],
                    )
                        .into_response()
                } else {
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(l, app).await });
        let dialer = Arc::new(ToLoopback {
            port,
            asked: Mutex::new(Vec::new()),
        });
        let up = Upstream {
            authority: "100.64.0.7:8443".into(),
            path_prefix: String::new(),
            external_prefix: "/editor/proxy/20000".into(),
            add_headers: Vec::new(),
            cookie: None,
            strip_cookies: Vec::new(),
            frame_ancestors: None,
            dialer: Some(dialer.clone()),
        };
        let client = crate::proxy::ReverseProxy::new();
        let c = login(&client, &up, &Secret::new("p w&1")).await;
        assert_eq!(c.as_deref(), Ok("code-server-session=s3ss"));
        assert_eq!(
            dialer.asked.lock().unwrap().as_slice(),
            [("100.64.0.7".to_owned(), 8443)],
            "the login dialed the editor's tailnet address"
        );
        let refused = login(&client, &up, &Secret::new("wrong")).await;
        assert_eq!(refused, Err("editor login refused (HTTP 401)".to_owned()));
    }

    #[test]
    fn tailnet_ranges() {
        for ok in [
            "100.64.0.1",
            "100.127.255.254",
            "fd7a:115c:a1e0::1",
            "[fd7a:115c:a1e0:ab12::3]",
        ] {
            assert!(is_tailnet_ip(ok), "{ok}");
        }
        for bad in [
            "100.63.255.255",
            "100.128.0.1",
            "127.0.0.1",
            "10.0.0.1",
            "::1",
            "fd7a:115c:a1e1::1",
            "host.example",
        ] {
            assert!(!is_tailnet_ip(bad), "{bad}");
        }
    }

    #[test]
    fn relay_prefixes_are_checked() {
        assert!(valid_prefix("/embed/orchestrator/41234"));
        for bad in ["embed", "/a/", "/a/../b", "//evil.example", "/a b", "/a?x"] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn ports_are_reused_per_agent_and_replaced_otherwise() {
        let ports = EditorPorts::default();
        let keys = EditorKeys::from_admin_token(&Secret::new("admin"));
        let org = OrgName::new("acme").unwrap();
        let a = AgentName::new("agent-a-1").unwrap();
        let b = AgentName::new("agent-b-1").unwrap();
        let local = || ports.open(Some(9000), &org, &a, target("127.0.0.1:9000", false), &keys);
        let ((p1, s1), (p2, s2)) = (local(), local());
        assert_eq!((p1, &s1), (p2, &s2), "reopening keeps the port and session");
        assert_eq!(p1, 9000);
        // Two tailnet editors on the same port of different hosts get distinct proxy ports.
        let (t1, _) = ports.open(None, &org, &a, target("100.64.0.2:8443", true), &keys);
        let (t2, _) = ports.open(None, &org, &b, target("100.64.0.3:8443", true), &keys);
        assert_ne!(t1, t2);
        assert!(t1 >= 1024 && t2 >= 1024 && t1 != 9000 && t2 != 9000);
        assert!(ports.close(&org, &b));
        assert!(ports.get(t2).is_none());
        assert!(ports.get(9000).is_some());
        assert!(!ports.close(&org, &b));
        // The session names its agent and port.
        let claims = keys.verify(s1.expose()).unwrap();
        assert_eq!((claims.agent, claims.port), (a.clone(), 9000));
    }

    #[test]
    fn replicas_give_an_agent_the_same_proxy_port_and_different_agents_different_ones() {
        let keys = EditorKeys::from_admin_token(&Secret::new("admin"));
        let org = OrgName::new("acme").unwrap();
        let agents: Vec<AgentName> = (0..50)
            .map(|i| AgentName::new(format!("agent-{i:012x}-1")).unwrap())
            .collect();
        // Two replicas, each opening a different agent's tailnet editor first (all on 8443).
        let (one, two) = (EditorPorts::default(), EditorPorts::default());
        let open = |ports: &EditorPorts, a: &AgentName, host: u8| {
            let addr = format!("100.64.0.{host}:8443");
            ports.open(None, &org, a, target(&addr, true), &keys).0
        };
        let p0 = open(&one, &agents[0], 2);
        let p1 = open(&two, &agents[1], 3);
        assert_ne!(
            p0, p1,
            "the first editor of each replica under its own port"
        );
        // The other replica opening the same agent's editor picks the same port.
        assert_eq!(open(&two, &agents[0], 2), p0);
        // Spread: 50 agents, ports all in range, (almost) all distinct.
        let mut seen: Vec<u16> = agents.iter().map(|a| preferred_port(&org, a)).collect();
        assert!(seen.iter().all(|p| *p >= PROXY_PORTS_FROM));
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= 48, "{} distinct of 50", seen.len());
        // Taken here: the next free one.
        let three = EditorPorts::default();
        let first = open(&three, &agents[2], 4);
        let other = AgentName::new("agent-other-1").unwrap();
        let (q, _) = three.open(
            Some(first),
            &org,
            &other,
            target("127.0.0.1:1", false),
            &keys,
        );
        assert_ne!(q, first);
    }

    #[test]
    fn a_session_from_another_replica_is_adopted_under_its_port_unless_taken() {
        let ports = EditorPorts::default();
        let keys = EditorKeys::from_admin_token(&Secret::new("admin"));
        let org = OrgName::new("acme").unwrap();
        let a = AgentName::new("agent-a-1").unwrap();
        let b = AgentName::new("agent-b-1").unwrap();
        let claims = |agent: &AgentName, port| EditorClaims {
            org: org.clone(),
            agent: agent.clone(),
            port,
            issued_ms: 1,
        };
        let s = || keys.mint(&org, &a, 41000);
        let e = ports
            .adopt(&claims(&a, 41000), target("127.0.0.1:9000", false), s())
            .expect("a free port is adopted");
        assert_eq!(e.authority, "127.0.0.1:9000");
        assert!(ports.get(41000).is_some());
        // Again: the same entry.
        assert!(ports
            .adopt(&claims(&a, 41000), target("127.0.0.1:9000", false), s())
            .is_some());
        // Another agent's session under that port: refused.
        assert!(ports
            .adopt(&claims(&b, 41000), target("127.0.0.1:9001", false), s())
            .is_none());
        // Opening the adopted agent's editor here reuses the port.
        let (p, _) = ports.open(Some(9000), &org, &a, target("127.0.0.1:9000", false), &keys);
        assert_eq!(p, 41000);
    }

    fn target(authority: &str, via_tailnet: bool) -> Target {
        Target {
            authority: authority.to_owned(),
            password: None,
            via_tailnet,
            owner: None,
        }
    }

    #[tokio::test]
    async fn nothing_goes_to_a_port_another_process_took_from_the_editor() {
        let agent = AgentName::new("agent-a-1").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The agent's code-server (its tree holds the port).
        let mut editor = crate::procfs::listener_process("127.0.0.1", port);
        let owner = PortOwner::new(editor.id(), port);
        owner.check(&agent).await.expect("the agent's own listener");
        owner.check(&agent).await.expect("the same sockets again");
        // code-server ends: nothing listens, nothing is sent.
        editor.kill().unwrap();
        editor.wait().unwrap();
        let err = owner.check(&agent).await.unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (StatusCode::BAD_GATEWAY, "editor_unreachable")
        );
        assert!(err.message.contains("nothing listens"), "{}", err.message);
        // Another process takes the port meanwhile: refused, though it would answer.
        refused_once_another_process_binds(&owner, &agent, port).await;
    }

    /// Binds `port` in another process (a child of this one) and checks that `owner` refuses
    /// it: 502 `editor_unreachable`, "held by another process".
    async fn refused_once_another_process_binds(owner: &PortOwner, agent: &AgentName, port: u16) {
        let mut stranger = crate::procfs::listener_process("127.0.0.1", port);
        let err = owner.check(agent).await.unwrap_err();
        let _ = stranger.kill();
        let _ = stranger.wait();
        assert_eq!(
            (err.status, err.code),
            (StatusCode::BAD_GATEWAY, "editor_unreachable")
        );
        assert!(
            err.message.contains("held by another process"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn an_owner_that_lives_on_without_its_listener_holds_nothing() {
        // A port-forward's port is owned by the orchestrator itself: the forward ends (its
        // listener closes) while the process runs on, and another process binds the port:
        // here a child of this process, as a local agent's runner is the orchestrator's.
        let agent = AgentName::new("agent-a-2").unwrap();
        let forward = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = forward.local_addr().unwrap().port();
        let owner = PortOwner::new(std::process::id(), port);
        owner
            .check(&agent)
            .await
            .expect("the forward's own listener");
        drop(forward);
        refused_once_another_process_binds(&owner, &agent, port).await;
    }
}
