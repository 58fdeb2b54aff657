//! The editor origin: agents' editors are served from a listener of their own, never from the
//! dashboard's origin.
//!
//! What an editor serves is untrusted: the runner controls the agent's machine and can replace
//! code-server with any HTTP server. Served from the dashboard's origin, a `<script>` there
//! would run with the admin's session and call `/api/*` as the admin. So the dashboard binds a
//! second listener (`--editor-listen`; by default the dashboard's IP and a free port) and the
//! iframe loads the editor from there:
//!
//! - `POST /api/agents/{name}/editor` (dashboard origin, session + same-origin checks) opens the
//!   editor through the orchestrator and mints a one-time **ticket** (60 s) bound to the
//!   session and the editor's port. It answers `{name, port, url}` where `url` is
//!   `<editor origin>/_guildnet/enter?ticket=…`.
//! - `GET /_guildnet/enter?ticket=…` (editor origin) redeems the ticket: it sets the editor
//!   origin's own cookie `guildnet_editor` (HttpOnly, `SameSite=Strict`, bound to the dashboard
//!   session and to the ports it was given) and redirects to `/e/{port}/`.
//! - `ANY /e/{port}/…` (editor origin) relays to the orchestrator's `/editor/proxy/{port}/…`
//!   (HTTP and WebSocket) with the admin token added server-side; the path is forwarded as the
//!   browser sent it ([`guildnet_core::proxy::split_mounted_path`]). **No browser cookie is
//!   forwarded** (the orchestrator logs in to code-server itself), and responses may be framed
//!   only by the dashboard origin that asked for the ticket. The relay adds the orchestrator's
//!   own editor session cookie (from the `editor/open` reply, kept server-side with the
//!   ticket): a signed token naming the agent, with which any orchestrator replica behind a
//!   load balancer serves the editor, also after the replica that opened it died
//!   (docs/REPLICAS.md).
//!
//! A script on the editor origin cannot act on the dashboard: its requests to `/api/*` are
//! cross-origin, so the dashboard refuses state changes (`Sec-Fetch-Site`/`Origin` checks in
//! [`crate::auth`]) and the browser does not let it read answers. Logging out of the dashboard
//! ends the editor sessions made from it. The editor origin must be *same-site* with the
//! dashboard (another port, or a sibling subdomain via `--editor-url`), or the browser will not
//! send its `SameSite=Strict` cookie inside the dashboard's iframe.

use crate::{ApiError, AppState};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use guildnet_core::proxy::{ProxyError, Upstream};
use guildnet_core::token::{self, Secret};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the editor origin's cookie.
pub const EDITOR_COOKIE: &str = "guildnet_editor";
/// Path that redeems a ticket on the editor origin.
pub const ENTER_PATH: &str = "/_guildnet/enter";
/// Mount of the relayed editors on the editor origin: `/e/{port}/…`.
pub const MOUNT: &str = "/e/";
/// How long a ticket can be redeemed.
pub const TICKET_TTL: Duration = Duration::from_secs(60);

/// The prefix the browser sees for the editor on `port`.
pub fn external_prefix(port: u16) -> String {
    format!("/e/{port}")
}

/// The orchestrator's `host:port` from its base URL; only plain `http://` can be relayed.
pub fn orchestrator_authority(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!(
            "the editor relay reaches the orchestrator over plain http (loopback or the tailnet); {} is {}",
            url,
            parsed.scheme()
        ));
    }
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Whether `s` is a bare origin (`http(s)://host[:port]`, no path, no quotes or spaces), safe
/// to put in a `Content-Security-Policy` header.
pub fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The host part of a `Host` header value (`example.com`, `[::1]`), without the port.
fn host_without_port(host: &str) -> Option<&str> {
    let h = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        host.split(':').next()?
    };
    (!h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')))
    .then_some(h)
}

/// The editor origin a browser that reached the dashboard with these headers uses: the
/// configured `--editor-url`, else the same host as the dashboard with the editor listener's
/// port.
pub fn editor_origin_for(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if let Some(u) = &state.editor.public_url {
        return Some(u.to_string());
    }
    let scheme = if state.tls { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(host_without_port)?;
    Some(format!("{scheme}://{host}:{}", state.editor.port))
}

/// The dashboard origin of a request (its `Origin` header, else scheme + `Host`), used as the
/// only allowed frame ancestor of the editor it opens.
fn dashboard_origin(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if let Some(o) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return is_origin(o).then(|| o.to_owned());
    }
    let scheme = if state.tls { "https" } else { "http" };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok())?;
    let o = format!("{scheme}://{host}");
    is_origin(&o).then_some(o)
}

struct Ticket {
    session_key: String,
    port: u16,
    frame_ancestor: String,
    orchestrator_session: Option<Secret>,
    expires: Instant,
}

struct EditorSession {
    session_key: String,
    /// The ports granted, with the orchestrator's editor session for each (when it gave one).
    ports: BTreeMap<u16, Option<Secret>>,
    frame_ancestor: String,
}

/// What an editor session may do on a port (see `EditorGate::allows`).
pub struct Grant {
    /// The only origin allowed to frame the editor.
    pub frame_ancestor: String,
    /// The orchestrator's editor session token for the port (sent as its `guildnet_editor`
    /// cookie, so any orchestrator replica can serve the editor).
    pub orchestrator_session: Option<Secret>,
}

/// Tickets and editor-origin sessions (only hashes of their secrets are kept).
#[derive(Default)]
pub struct EditorGate {
    tickets: Mutex<HashMap<String, Ticket>>,
    sessions: Mutex<HashMap<String, EditorSession>>,
}

impl EditorGate {
    /// Mints a one-time ticket for `port`, bound to the dashboard session `session_id`;
    /// `orchestrator_session` is the orchestrator's editor session for the port, kept here and
    /// never sent to the browser.
    pub fn mint(
        &self,
        session_id: &str,
        port: u16,
        frame_ancestor: String,
        orchestrator_session: Option<Secret>,
    ) -> Secret {
        let ticket = token::generate("gnt_");
        let now = Instant::now();
        let mut m = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, t| t.expires > now);
        m.insert(
            token::hash(ticket.expose()),
            Ticket {
                session_key: token::hash(session_id),
                port,
                frame_ancestor,
                orchestrator_session,
                expires: now + TICKET_TTL,
            },
        );
        ticket
    }

    /// Redeems a ticket: adds its port to the editor session `existing` (when it belongs to the
    /// same dashboard session) or starts a new one. Returns the new session's cookie value, if
    /// one was started, and the port.
    fn redeem(
        &self,
        ticket: &str,
        existing: Option<&str>,
    ) -> Result<(Option<Secret>, u16), &'static str> {
        let t = self
            .tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token::hash(ticket))
            .ok_or("unknown or already used ticket")?;
        if t.expires <= Instant::now() {
            return Err("the ticket expired; open the editor again");
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = existing.and_then(|id| sessions.get_mut(&token::hash(id))) {
            if s.session_key == t.session_key {
                s.ports.insert(t.port, t.orchestrator_session);
                s.frame_ancestor = t.frame_ancestor;
                return Ok((None, t.port));
            }
        }
        let id = token::generate("");
        sessions.insert(
            token::hash(id.expose()),
            EditorSession {
                session_key: t.session_key,
                ports: BTreeMap::from([(t.port, t.orchestrator_session)]),
                frame_ancestor: t.frame_ancestor,
            },
        );
        Ok((Some(id), t.port))
    }

    /// What editor session `id` may do on `port`, if it may use it and its dashboard session is
    /// still live (checked with `live`); a dead dashboard session ends the editor session.
    fn allows(&self, id: &str, port: u16, live: impl Fn(&str) -> bool) -> Option<Grant> {
        let key = token::hash(id);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.get(&key)?;
        if !live(&s.session_key) {
            sessions.remove(&key);
            return None;
        }
        s.ports.get(&port).map(|o| Grant {
            frame_ancestor: s.frame_ancestor.clone(),
            orchestrator_session: o.clone(),
        })
    }

    /// Ends every editor session made from dashboard session `session_id` (logout).
    pub fn end_for(&self, session_id: &str) {
        let key = token::hash(session_id);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.session_key != key);
    }
}

/// The editor origin's settings and state, in [`AppState`].
pub struct EditorOrigin {
    /// The editor listener's port.
    pub port: u16,
    /// The editor origin as browsers reach it, when configured (`--editor-url`).
    pub public_url: Option<String>,
    /// Tickets and sessions.
    pub gate: EditorGate,
}

/// The editor URL for a new ticket on `port`, answered by `POST /api/agents/{name}/editor`;
/// `orchestrator_session` is the orchestrator's editor session cookie value for the port.
pub fn open_url(
    state: &AppState,
    headers: &HeaderMap,
    port: u16,
    orchestrator_session: Option<Secret>,
) -> Result<String, ApiError> {
    let session = crate::auth::session_cookie(headers)
        .ok_or_else(|| ApiError::unauthorized("log in first (no valid session)"))?;
    let origin = editor_origin_for(state, headers).ok_or_else(|| {
        ApiError::invalid("Host", "the request's Host header names no usable host")
    })?;
    let ancestor = dashboard_origin(state, headers).ok_or_else(|| {
        ApiError::invalid("Origin", "the request names no usable dashboard origin")
    })?;
    let ticket = state
        .editor
        .gate
        .mint(&session, port, ancestor, orchestrator_session);
    Ok(format!("{origin}{ENTER_PATH}?ticket={}", ticket.expose()))
}

#[derive(Deserialize)]
struct EnterQuery {
    ticket: Option<String>,
}

/// `GET /_guildnet/enter?ticket=…`.
async fn enter(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<EnterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let ticket = q
        .ok()
        .and_then(|Query(q)| q.ticket)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::invalid("ticket", "missing; open the editor from the dashboard")
        })?;
    let existing = crate::auth::cookie_value(&headers, EDITOR_COOKIE);
    let (new, port) = s
        .editor
        .gate
        .redeem(&ticket, existing.as_deref())
        .map_err(|why| ApiError::unauthorized(why).with_field("ticket"))?;
    let mut resp = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("{}/", external_prefix(port)))],
    )
        .into_response();
    if let Some(id) = new {
        let secure = if s.tls { "; Secure" } else { "" };
        let v = HeaderValue::from_str(&format!(
            "{EDITOR_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/{secure}",
            id.expose()
        ))
        .map_err(|_| ApiError::internal("editor cookie is not a header value"))?;
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `ANY /e/{port}/…`: the relay.
async fn relay(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    let (port_raw, rest) = guildnet_core::proxy::split_mounted_path(&path, MOUNT)
        .ok_or_else(|| ApiError::not_found("no such editor path"))?;
    let port = guildnet_core::proxy::parse_port(port_raw)
        .ok_or_else(|| ApiError::invalid("port", "must be a TCP port number (1-65535)"))?;
    if !path[MOUNT.len() + port_raw.len()..].starts_with('/') {
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{}/", external_prefix(port)))],
        )
            .into_response());
    }
    let grant = crate::auth::cookie_value(req.headers(), EDITOR_COOKIE)
        .and_then(|id| {
            s.editor
                .gate
                .allows(&id, port, |key| s.sessions.check_key(key))
        })
        .ok_or_else(|| {
            ApiError::unauthorized("open this editor from the dashboard (no editor session for it)")
        })?;
    let authority =
        s.orchestrator_authority.as_ref().clone().map_err(|why| {
            ApiError::new(StatusCode::BAD_GATEWAY, "editor_relay_unavailable", why)
        })?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", s.orchestrator_token.expose()))
        .map_err(|_| ApiError::internal("the orchestrator token is not a valid header value"))?;
    let up = Upstream {
        authority,
        path_prefix: format!("/editor/proxy/{port}"),
        external_prefix: external_prefix(port),
        add_headers: vec![(header::AUTHORIZATION, bearer)],
        // The orchestrator's own session for this editor: any replica serves it.
        cookie: grant.orchestrator_session.as_ref().map(|o| {
            format!(
                "{}={}",
                guildnet_core::orchestrator::editor_proxy::SESSION_COOKIE,
                o.expose()
            )
        }),
        strip_cookies: vec!["*".to_owned()],
        frame_ancestors: Some(grant.frame_ancestor),
        dialer: None,
    };
    let rest = rest.to_owned();
    s.embed_proxy
        .forward(req, &rest, &up)
        .await
        .map_err(|e| match e {
            ProxyError::Unreachable { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "orchestrator_unreachable",
                format!("the orchestrator's editor proxy does not answer: {e}"),
            ),
            ProxyError::BadRequest(m) => ApiError::invalid("path", m),
        })
}

async fn headers_layer(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Error pages of the relay itself are not to be framed by anyone else either.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    resp
}

/// The editor origin's app: the ticket exchange and the relay, nothing else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(ENTER_PATH, get(enter))
        .route("/e/{port}", any(relay))
        .route("/e/{port}/", any(relay))
        .route("/e/{port}/{*rest}", any(relay))
        .fallback(|| async { ApiError::not_found("the editor origin serves only /e/{port}/") })
        .layer(middleware::from_fn(headers_layer))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_orchestrator_urls() {
        assert_eq!(
            orchestrator_authority("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            orchestrator_authority("http://orch.tail.example/").unwrap(),
            "orch.tail.example:80"
        );
        assert_eq!(
            orchestrator_authority("http://[::1]:9000").unwrap(),
            "[::1]:9000"
        );
        let e = orchestrator_authority("https://orch.example").unwrap_err();
        assert!(e.contains("plain http"), "{e}");
        assert!(orchestrator_authority("not a url").is_err());
    }

    #[test]
    fn origins_and_hosts() {
        assert!(is_origin("http://127.0.0.1:8090"));
        assert!(is_origin("https://dash.example"));
        assert!(is_origin("http://[::1]:8090"));
        for bad in [
            "null",
            "http://",
            "http://a b",
            "http://x/path",
            "http://x'; script-src *",
            "ftp://x",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
        assert_eq!(host_without_port("127.0.0.1:8090"), Some("127.0.0.1"));
        assert_eq!(host_without_port("[::1]:8090"), Some("[::1]"));
        assert_eq!(host_without_port("dash.example"), Some("dash.example"));
        assert_eq!(host_without_port("a\"b:1"), None);
    }

    #[test]
    fn tickets_are_one_time_and_sessions_follow_the_dashboard_session() {
        let g = EditorGate::default();
        let t = g.mint(
            "dash-1",
            9001,
            "http://d:1".into(),
            Some(Secret::new("ges.x")),
        );
        let (id, port) = g.redeem(t.expose(), None).unwrap();
        let id = id.expect("a new editor session");
        assert_eq!(port, 9001);
        assert!(g.redeem(t.expose(), None).is_err(), "second use");
        let live_key = token::hash("dash-1");
        let live = |k: &str| k == live_key;
        let grant = g.allows(id.expose(), 9001, live).unwrap();
        assert_eq!(grant.frame_ancestor, "http://d:1");
        assert_eq!(
            grant.orchestrator_session.as_ref().map(Secret::expose),
            Some("ges.x"),
            "the orchestrator's session is kept for the relay"
        );
        assert!(
            g.allows(id.expose(), 9002, live).is_none(),
            "port not granted"
        );
        // A second ticket of the same dashboard session adds its port to the same session.
        let t2 = g.mint("dash-1", 9002, "http://d:1".into(), None);
        let (again, _) = g.redeem(t2.expose(), Some(id.expose())).unwrap();
        assert!(again.is_none());
        assert!(g.allows(id.expose(), 9002, live).is_some());
        // Another dashboard session's ticket does not extend this editor session.
        let t3 = g.mint("dash-2", 9003, "http://d:1".into(), None);
        let (other, _) = g.redeem(t3.expose(), Some(id.expose())).unwrap();
        assert!(other.is_some());
        assert!(g.allows(id.expose(), 9003, live).is_none());
        // Logout (or an expired dashboard session) ends it.
        g.end_for("dash-1");
        assert!(g.allows(id.expose(), 9001, live).is_none());
        assert!(g.redeem("nope", None).is_err());
    }
}
