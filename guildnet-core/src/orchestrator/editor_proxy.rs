//! `ANY /editor/proxy/{port}/...`: the orchestrator's reverse proxy to agents' editors.
//!
//! It reaches only the ports `POST /agents/editor/open` opened (a registry keyed by port), so it
//! cannot be turned into a proxy to other hosts or ports. Callers authenticate with the admin
//! token (the dashboard relays with it) or with the HttpOnly session cookie the open call set
//! for that port. When the backend knows the editor's password, the proxy logs in to
//! code-server itself and keeps code-server's session cookie server-side: the person never
//! sees the password.

use super::error::ApiError;
use super::http::ApiPath;
use super::Orchestrator;
use crate::names::{AgentName, OrgName};
use crate::proxy::{ProxyError, Upstream};
use crate::token::{self, Secret};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Name of the proxy's session cookie (scoped to `/editor/proxy/<port>/`).
pub const SESSION_COOKIE: &str = "guildnet_editor";
/// code-server's session cookie.
const CODE_SERVER_COOKIE: &str = "code-server-session";

/// An editor the orchestrator opened.
pub(crate) struct OpenEditor {
    pub(crate) org: OrgName,
    pub(crate) agent: AgentName,
    authority: String,
    password: Option<Secret>,
    via_tailnet: bool,
    session: Secret,
    upstream_cookie: tokio::sync::Mutex<Option<String>>,
}

/// Editors by the port the proxy serves them under.
#[derive(Default)]
pub(crate) struct EditorPorts {
    map: Mutex<HashMap<u16, Arc<OpenEditor>>>,
}

impl EditorPorts {
    /// Registers (or refreshes) an editor reached at `authority`, served under `port` when
    /// that is free (a backend's local port is unique; an editor reached over the tailnet gets
    /// the next free number instead). Returns the proxy port and the browser session token.
    pub(crate) fn open(
        &self,
        port: u16,
        org: &OrgName,
        agent: &AgentName,
        authority: String,
        password: Option<Secret>,
        via_tailnet: bool,
    ) -> (u16, Secret) {
        let Ok(mut m) = self.map.lock() else {
            return (port, token::generate("ges"));
        };
        // Reopening: the same editor keeps its port and session.
        if let Some((p, e)) = m
            .iter()
            .find(|(_, e)| e.agent == *agent && e.org == *org && e.authority == authority)
        {
            return (*p, e.session.clone());
        }
        let key = if via_tailnet || m.contains_key(&port) {
            (20000..=u16::MAX)
                .chain(1024..20000)
                .find(|p| !m.contains_key(p))
                .unwrap_or(port)
        } else {
            port
        };
        let session = token::generate("ges");
        m.insert(
            key,
            Arc::new(OpenEditor {
                org: org.clone(),
                agent: agent.clone(),
                authority,
                password,
                via_tailnet,
                session: session.clone(),
                upstream_cookie: tokio::sync::Mutex::new(None),
            }),
        );
        (key, session)
    }

    /// Forgets every editor of `agent`.
    pub(crate) fn close(&self, org: &OrgName, agent: &AgentName) -> bool {
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
}

/// The `Set-Cookie` value for an editor session.
pub(crate) fn session_cookie(port: u16, session: &Secret) -> String {
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

/// `ANY /editor/proxy/{port}/` and `ANY /editor/proxy/{port}/{*rest}`. The rest of the path is
/// forwarded as the client sent it, still percent-encoded
/// ([`crate::proxy::split_mounted_path`]).
pub async fn editor_proxy(
    State(o): State<Orchestrator>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = req.uri().path().to_owned();
    let (port, rest) = crate::proxy::split_mounted_path(&path, MOUNT)
        .ok_or_else(|| ApiError::not_found("not an editor proxy path"))?;
    let rest = rest.to_owned();
    proxy(o, port, &rest, req).await
}

async fn proxy(
    o: Orchestrator,
    port: &str,
    rest: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let port = port_param(port)?;
    // Authenticate before saying anything about the port.
    let admin = match bearer(&req) {
        Some(t) if o.is_admin_token(t) => true,
        Some(_) => return Err(ApiError::unauthorized("invalid admin token")),
        None => false,
    };
    let editor = o.editor_ports().get(port);
    let by_cookie = match (&editor, cookie_value(&req, SESSION_COOKIE)) {
        (Some(e), Some(c)) => token::equals(c, e.session.expose()),
        _ => false,
    };
    if !admin && !by_cookie {
        return Err(ApiError::unauthorized(
            "missing Authorization: Bearer <admin token> or editor session cookie \
             (POST /agents/editor/open sets it)",
        ));
    }
    let editor = editor.ok_or_else(|| {
        ApiError::not_found(format!(
            "no editor is open on port {port}; open one with POST /agents/editor/open"
        ))
    })?;
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
        frame_ancestors: Some(o.config().editor_frame_ancestors.clone()),
        dialer: if editor.via_tailnet {
            o.editor_dialer()
        } else {
            None
        },
    };
    if up.cookie.is_none() {
        if let Some(pw) = &editor.password {
            match login(o.editor_proxy_client(), &up, pw).await {
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
    let resp = o
        .editor_proxy_client()
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

/// Adds the editor session cookie to an `editor/open` reply.
pub(crate) fn with_session_cookie(mut resp: Response, port: u16, session: &Secret) -> Response {
    if let Ok(v) = HeaderValue::from_str(&session_cookie(port, session)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
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
    fn relay_prefixes_are_checked() {
        assert!(valid_prefix("/embed/orchestrator/41234"));
        for bad in ["embed", "/a/", "/a/../b", "//evil.example", "/a b", "/a?x"] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn ports_are_reused_per_agent_and_replaced_otherwise() {
        let ports = EditorPorts::default();
        let org = OrgName::new("acme").unwrap();
        let a = AgentName::new("agent-a-1").unwrap();
        let b = AgentName::new("agent-b-1").unwrap();
        let (p1, s1) = ports.open(9000, &org, &a, "127.0.0.1:9000".into(), None, false);
        let (p2, s2) = ports.open(9000, &org, &a, "127.0.0.1:9000".into(), None, false);
        assert_eq!((p1, &s1), (p2, &s2), "reopening keeps the port and session");
        assert_eq!(p1, 9000);
        // Two tailnet editors on the same port of different hosts get distinct proxy ports.
        let (t1, _) = ports.open(8443, &org, &a, "100.64.0.2:8443".into(), None, true);
        let (t2, _) = ports.open(8443, &org, &b, "100.64.0.3:8443".into(), None, true);
        assert_ne!(t1, t2);
        assert!(t1 >= 1024 && t2 >= 1024 && t1 != 9000 && t2 != 9000);
        assert!(ports.close(&org, &b));
        assert!(ports.get(t2).is_none());
        assert!(ports.get(9000).is_some());
        assert!(!ports.close(&org, &b));
    }
}
