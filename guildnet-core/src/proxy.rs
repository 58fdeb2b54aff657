//! A small HTTP/1.1 reverse proxy with WebSocket upgrades, used by the orchestrator's editor
//! proxy (to code-server) and by the dashboard's embed relay (to the orchestrator).
//!
//! What it does to a request: the path is rebased onto the upstream's prefix, hop-by-hop
//! headers and the caller's credentials (`Authorization`, the proxy's own cookies) are dropped,
//! `Host` is kept (code-server checks WebSocket origins against it) and `X-Forwarded-*` are set.
//! What it does to a response: `Location` and `Set-Cookie` paths under the upstream's prefix
//! are moved under the external prefix, and framing is restricted to the configured ancestors
//! (an upstream `X-Frame-Options` or `frame-ancestors` is replaced, never just removed).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;

/// A proxy path's port segment: a TCP port number 1-65535, nothing else (no host, no `0`).
pub fn parse_port(raw: &str) -> Option<u16> {
    raw.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Splits a request's raw (still percent-encoded) path `{mount}{port}{rest}` into the port
/// segment and the rest (`/` when empty). Proxies forward `rest` byte for byte: decoding it
/// first would turn `%2F` into a path separator, `%3F` into a query and refuse `%20`, so
/// handlers take the path from here, never from a decoded `Path` extractor. `None` when `path`
/// is not under `mount`.
pub fn split_mounted_path<'a>(path: &'a str, mount: &str) -> Option<(&'a str, &'a str)> {
    let after = path.strip_prefix(mount)?;
    let (port, rest) = match after.find('/') {
        Some(i) => after.split_at(i),
        None => (after, "/"),
    };
    Some((port, rest))
}

/// How long a connection of the proxy's own (a dialer's, a WebSocket's) keeps being retried
/// while the upstream refuses it. An editor that was just started (its pod Running, its
/// tailnet node up) may not listen for a second or two yet: the first request then waits
/// instead of failing with 502. No request byte has been sent when a dial fails, so a retry
/// cannot repeat one.
pub const DIAL_PATIENCE: Duration = Duration::from_secs(3);

enum DialError {
    Authority,
    Io(std::io::Error),
}

/// Connects to the upstream (through its dialer if any), retrying failed connects with a
/// short backoff for at most [`DIAL_PATIENCE`].
async fn dial_patiently(up: &Upstream) -> Result<tokio::net::TcpStream, DialError> {
    use backon::Retryable;
    let start = tokio::time::Instant::now();
    let policy = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .without_max_times();
    let once = || async {
        match &up.dialer {
            Some(d) => {
                let (host, port) = split_authority(&up.authority).ok_or(DialError::Authority)?;
                d.dial(host, port).await.map_err(DialError::Io)
            }
            None => tokio::net::TcpStream::connect(&up.authority)
                .await
                .map_err(DialError::Io),
        }
    };
    once.retry(policy)
        .sleep(tokio::time::sleep)
        .when(|e: &DialError| matches!(e, DialError::Io(_)) && start.elapsed() < DIAL_PATIENCE)
        .notify(|e: &DialError, wait: Duration| {
            if let DialError::Io(e) = e {
                tracing::debug!(upstream = %up.authority, error = %e, ?wait, "upstream refuses: retrying");
            }
        })
        .await
}

/// Where and how one request is forwarded.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` of the upstream server.
    pub authority: String,
    /// Path prefix on the upstream (`""` for code-server itself; `/editor/proxy/<port>` when the
    /// dashboard relays to the orchestrator).
    pub path_prefix: String,
    /// The prefix the browser sees (`/editor/proxy/<port>`, `/embed/orchestrator/<port>`).
    pub external_prefix: String,
    /// Headers added to the upstream request (e.g. the orchestrator's bearer token).
    pub add_headers: Vec<(HeaderName, HeaderValue)>,
    /// A cookie added to the upstream request (e.g. code-server's session, logged in by the
    /// proxy).
    pub cookie: Option<String>,
    /// Cookie names the browser sent for the proxy itself; they are not forwarded. `"*"`
    /// drops every browser cookie (a relay whose upstream logs in by itself).
    pub strip_cookies: Vec<String>,
    /// `frame-ancestors` sources for the response (`'self' https://dash.example`); `None` leaves
    /// framing headers as the upstream sent them.
    pub frame_ancestors: Option<String>,
    /// How to reach the upstream when not by a direct TCP connection (e.g. through a tailnet
    /// node's SOCKS5 proxy).
    pub dialer: Option<Arc<dyn Dialer>>,
}

/// Opens connections to an upstream some other way than a direct TCP connect: guildnet-mesh's
/// `TailnetDialer` goes through a userspace tailscaled's SOCKS5 proxy.
#[async_trait::async_trait]
pub trait Dialer: Send + Sync + std::fmt::Debug {
    /// A TCP stream to `host:port`.
    async fn dial(&self, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream>;
    /// Whether it can dial now ([`SwappableDialer`]: only while it holds a dialer).
    fn ready(&self) -> bool {
        true
    }
}

/// A [`Dialer`] that can be replaced while the proxy runs: the tailnet dialer of a mesh set at
/// run time (`PUT /mesh`), through the orchestrator's own node. Empty, it is not
/// [`Dialer::ready`] and refuses to dial.
#[derive(Debug, Default)]
pub struct SwappableDialer {
    current: std::sync::RwLock<Option<Arc<dyn Dialer>>>,
}

impl SwappableDialer {
    /// Starts with `dialer` (or none).
    pub fn new(dialer: Option<Arc<dyn Dialer>>) -> Self {
        Self {
            current: std::sync::RwLock::new(dialer),
        }
    }

    /// Replaces the dialer (`None`: no tailnet); connections already open are kept.
    pub fn set(&self, dialer: Option<Arc<dyn Dialer>>) {
        match self.current.write() {
            Ok(mut g) => *g = dialer,
            Err(p) => *p.into_inner() = dialer,
        }
    }

    fn get(&self) -> Option<Arc<dyn Dialer>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

#[async_trait::async_trait]
impl Dialer for SwappableDialer {
    async fn dial(&self, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        match self.get() {
            Some(d) => d.dial(host, port).await,
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "this orchestrator is not on a tailnet (no mesh set)",
            )),
        }
    }

    fn ready(&self) -> bool {
        self.get().is_some_and(|d| d.ready())
    }
}

/// Errors of a forward, mapped to 502/504 by the callers.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream could not be reached or broke the connection.
    #[error("upstream {authority} unreachable: {reason}")]
    Unreachable {
        /// `host:port`.
        authority: String,
        /// Why.
        reason: String,
    },
    /// The request could not be rebuilt (bad path).
    #[error("cannot forward the request: {0}")]
    BadRequest(String),
}

/// A pooled reverse proxy. Cheap to clone.
#[derive(Clone)]
pub struct ReverseProxy {
    client: Client<HttpConnector, Body>,
}

impl Default for ReverseProxy {
    fn default() -> Self {
        Self::new()
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

impl ReverseProxy {
    /// A proxy with a connection pool.
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            // Below the idle timeout of GuildNet servers (the dashboard relays to the orchestrator).
            .pool_idle_timeout(crate::client::ADMIN_POOL_IDLE)
            .build(http);
        Self { client }
    }

    /// Forwards `req`, whose path is `rest` below the external prefix (`/` + the remainder,
    /// query included in `req`'s URI).
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        rest: &str,
        up: &Upstream,
    ) -> Result<Response<Body>, ProxyError> {
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let rest = if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        };
        let uri: Uri = format!("http://{}{}{}{}", up.authority, up.path_prefix, rest, query)
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("upstream URI: {e}")))?;
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        rewrite_request_headers(&mut parts.headers, up, upgrade);
        let own_connection = upgrade || up.dialer.is_some();
        if own_connection {
            // hyper's connection-level client sends the URI and headers as given, unlike the
            // pooled client: the request-target must be in origin form (`/path?query`) and the
            // Host header must be there. Node's HTTP server (code-server) refuses a request
            // without Host (400) and keeps an absolute-form target in `req.url`, which makes
            // code-server's relative redirects climb out of the proxy's prefix.
            if !parts.headers.contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(&up.authority) {
                    parts.headers.insert(header::HOST, v);
                }
            }
            parts.uri = uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/")
                .parse()
                .map_err(|e| ProxyError::BadRequest(format!("upstream path: {e}")))?;
        } else {
            parts.uri = uri;
        }
        let out = Request::from_parts(parts, body);
        let unreachable = |e: &dyn std::fmt::Display| ProxyError::Unreachable {
            authority: up.authority.clone(),
            reason: e.to_string(),
        };
        let resp = if own_connection {
            // A connection of its own: an upgraded stream is not returned to the pool, and a
            // dialer's connections do not fit the pooled connector.
            let tcp = dial_patiently(up).await.map_err(|e| match e {
                DialError::Authority => {
                    ProxyError::BadRequest(format!("upstream {}", up.authority))
                }
                DialError::Io(e) => unreachable(&e),
            })?;
            let _ = tcp.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "proxied websocket connection ended");
                }
            });
            let mut resp = sender
                .send_request(out)
                .await
                .map_err(|e| unreachable(&e))?;
            if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
                (client_upgrade, resp.status())
            {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((c, u)) => {
                            let mut c = TokioIo::new(c);
                            let mut u = TokioIo::new(u);
                            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                    }
                });
            }
            resp.map(Body::new)
        } else {
            self.client
                .request(out)
                .await
                .map_err(|e| unreachable(&e))?
                .map(Body::new)
        };
        let (mut parts, body) = resp.into_parts();
        rewrite_response_headers(&mut parts.headers, up, parts.status);
        Ok(Response::from_parts(parts, body))
    }
}

/// `host:port` (IPv6 hosts in brackets) into its parts.
fn split_authority(a: &str) -> Option<(&str, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

fn rewrite_request_headers(h: &mut HeaderMap, up: &Upstream, upgrade: bool) {
    let connection_tokens: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    for t in connection_tokens {
        if t != "upgrade" {
            h.remove(t.as_str());
        }
    }
    for name in HOP_BY_HOP {
        if upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        h.remove(name);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    h.remove(header::AUTHORIZATION);
    h.remove("x-forwarded-prefix");
    // Browser cookies minus the proxy's own, plus the upstream session cookie.
    let mut cookies: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';').map(|c| c.trim().to_owned()))
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let name = c.split('=').next().unwrap_or("");
            !up.strip_cookies.iter().any(|s| s == name || s == "*")
        })
        .collect();
    if let Some(c) = &up.cookie {
        let name = c.split('=').next().unwrap_or("");
        cookies.retain(|x| x.split('=').next() != Some(name));
        cookies.push(c.clone());
    }
    h.remove(header::COOKIE);
    if !cookies.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
            h.insert(header::COOKIE, v);
        }
    }
    if let Some(host) = h.get(header::HOST).cloned() {
        h.insert("x-forwarded-host", host);
    }
    if let Ok(v) = HeaderValue::from_str(&up.external_prefix) {
        h.insert("x-forwarded-prefix", v);
    }
    for (k, v) in &up.add_headers {
        h.insert(k.clone(), v.clone());
    }
}

/// Moves an absolute path under the upstream prefix to the external prefix.
fn rebase_path(path: &str, up: &Upstream) -> Option<String> {
    if !path.starts_with('/') || path.starts_with("//") {
        return None;
    }
    let below = if up.path_prefix.is_empty() {
        path
    } else {
        let r = path.strip_prefix(&up.path_prefix)?;
        if !(r.is_empty() || r.starts_with('/') || r.starts_with('?')) {
            return None;
        }
        r
    };
    let below = if below.is_empty() { "/" } else { below };
    Some(format!("{}{}", up.external_prefix, below))
}

/// Rewrites a `Location` value: absolute paths and absolute URLs pointing at the upstream.
pub fn rewrite_location(loc: &str, up: &Upstream) -> Option<String> {
    if let Some(rest) = loc
        .strip_prefix("http://")
        .and_then(|r| r.strip_prefix(up.authority.as_str()))
    {
        let rest = if rest.is_empty() { "/" } else { rest };
        return rebase_path(rest, up);
    }
    rebase_path(loc, up)
}

/// Rewrites a `Set-Cookie` value: `Path` moves under the external prefix, `Domain` is dropped
/// (the browser talks to the proxy's host).
pub fn rewrite_set_cookie(v: &str, up: &Upstream) -> String {
    match cookie::Cookie::parse(v.to_owned()) {
        Ok(mut c) => {
            // The proxy's host is the browser's only host for this cookie.
            c.unset_domain();
            let path = match c.path() {
                Some(p) => rebase_path(p, up).unwrap_or_else(|| p.to_owned()),
                None => format!("{}/", up.external_prefix),
            };
            c.set_path(path);
            c.to_string()
        }
        // Not a cookie the browser would take either: pass it on confined to the prefix.
        Err(_) => format!(
            "{}; Path={}/",
            v.split(';').next().unwrap_or("").trim(),
            up.external_prefix
        ),
    }
}

/// Removes the `frame-ancestors` directive from a CSP value (the proxy adds its own).
fn without_frame_ancestors(csp: &str) -> String {
    csp.split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.to_ascii_lowercase().starts_with("frame-ancestors"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn rewrite_response_headers(h: &mut HeaderMap, up: &Upstream, status: StatusCode) {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        for name in HOP_BY_HOP {
            h.remove(name);
        }
    }
    if let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        if let Some(new) = rewrite_location(loc, up) {
            if let Ok(v) = HeaderValue::from_str(&new) {
                h.insert(header::LOCATION, v);
            }
        }
    }
    let cookies: Vec<String> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| rewrite_set_cookie(v, up))
        .collect();
    if !cookies.is_empty() {
        h.remove(header::SET_COOKIE);
        for c in cookies {
            if let Ok(v) = HeaderValue::from_str(&c) {
                h.append(header::SET_COOKIE, v);
            }
        }
    }
    if let Some(ancestors) = &up.frame_ancestors {
        h.remove(header::X_FRAME_OPTIONS);
        let csps: Vec<String> = h
            .get_all(header::CONTENT_SECURITY_POLICY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(without_frame_ancestors)
            .filter(|c| !c.is_empty())
            .collect();
        h.remove(header::CONTENT_SECURITY_POLICY);
        for c in csps {
            if let Ok(v) = HeaderValue::from_str(&c) {
                h.append(header::CONTENT_SECURITY_POLICY, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&format!("frame-ancestors {ancestors}")) {
            h.append(header::CONTENT_SECURITY_POLICY, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(path_prefix: &str, external: &str) -> Upstream {
        Upstream {
            authority: "127.0.0.1:9000".into(),
            path_prefix: path_prefix.into(),
            external_prefix: external.into(),
            add_headers: vec![],
            cookie: None,
            strip_cookies: vec!["guildnet_editor".into()],
            frame_ancestors: Some("'self' https://dash.example".into()),
            dialer: None,
        }
    }

    /// Dials every host to one loopback port.
    #[derive(Debug)]
    struct ToLoopback(u16);

    #[async_trait::async_trait]
    impl Dialer for ToLoopback {
        async fn dial(&self, _: &str, _: u16) -> std::io::Result<tokio::net::TcpStream> {
            tokio::net::TcpStream::connect(("127.0.0.1", self.0)).await
        }
    }

    /// An upstream that answers 204 and sends back each request's head (request line and
    /// headers, as received).
    async fn recording_upstream() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && s.read_exact(&mut b).await.is_ok() {
                        head.push(b[0]);
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn own_connections_send_an_origin_form_target_and_a_host() {
        let (port, mut heads) = recording_upstream().await;
        let mut u = up("", "/editor/proxy/20000");
        u.authority = "100.64.0.7:8443".into();
        u.dialer = Some(Arc::new(ToLoopback(port)));
        let proxy = ReverseProxy::new();
        // A request the proxy makes itself (the editor login) has no Host: the upstream's.
        let req = Request::post("/login?x=1").body(Body::empty()).unwrap();
        let resp = proxy.forward(req, "/login", &u).await.expect("forward");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /login?x=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: 100.64.0.7:8443\r\n"), "{head}");
        // A browser's request keeps its Host (code-server checks origins against it).
        let req = Request::get("/editor/proxy/20000/a%2Fb/")
            .header(header::HOST, "orch.example:8080")
            .body(Body::empty())
            .unwrap();
        proxy.forward(req, "/a%2Fb/", &u).await.expect("forward");
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /a%2fb/ http/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: orch.example:8080\r\n"), "{head}");
        // A WebSocket upgrade (its own connection without a dialer) too.
        u.dialer = None;
        u.authority = format!("127.0.0.1:{port}");
        let req = Request::get("/editor/proxy/20000/?t=1")
            .header(header::HOST, "orch.example:8080")
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .body(Body::empty())
            .unwrap();
        proxy.forward(req, "/", &u).await.expect("forward");
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /?t=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: orch.example:8080\r\n"), "{head}");
    }

    /// Refuses the first `refusals` dials, then dials one loopback port (`None`: always
    /// refuses).
    #[derive(Debug)]
    struct LateUpstream {
        refusals: std::sync::atomic::AtomicU32,
        port: Option<u16>,
    }

    #[async_trait::async_trait]
    impl Dialer for LateUpstream {
        async fn dial(&self, _: &str, _: u16) -> std::io::Result<tokio::net::TcpStream> {
            use std::sync::atomic::Ordering;
            let left = self.refusals.load(Ordering::SeqCst);
            match self.port {
                Some(port) if left == 0 => {
                    tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                }
                _ => {
                    self.refusals
                        .store(left.saturating_sub(1), Ordering::SeqCst);
                    Err(std::io::Error::other("general SOCKS server failure"))
                }
            }
        }
    }

    #[tokio::test]
    async fn an_upstream_that_listens_late_is_waited_for_then_given_up_on() {
        let (port, mut heads) = recording_upstream().await;
        let mut u = up("", "/editor/proxy/20000");
        u.authority = "100.64.0.7:8443".into();
        // Refused three times (an editor still starting): the request still gets through.
        let late = Arc::new(LateUpstream {
            refusals: 3.into(),
            port: Some(port),
        });
        u.dialer = Some(late.clone());
        let proxy = ReverseProxy::new();
        let req = Request::get("/").body(Body::empty()).unwrap();
        let resp = proxy.forward(req, "/", &u).await.expect("forward");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(heads.recv().await.is_some());
        assert_eq!(late.refusals.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Never listening: unreachable, after about DIAL_PATIENCE, naming the upstream.
        u.dialer = Some(Arc::new(LateUpstream {
            refusals: 0.into(),
            port: None,
        }));
        let t = std::time::Instant::now();
        let req = Request::get("/").body(Body::empty()).unwrap();
        match proxy.forward(req, "/", &u).await {
            Err(ProxyError::Unreachable { authority, reason }) => {
                assert_eq!(authority, "100.64.0.7:8443");
                assert!(reason.contains("SOCKS"), "{reason}");
            }
            other => panic!("expected Unreachable, got {:?}", other.map(|r| r.status())),
        }
        let waited = t.elapsed();
        assert!(
            waited >= DIAL_PATIENCE && waited < DIAL_PATIENCE * 2,
            "{waited:?}"
        );
    }

    #[test]
    fn locations_move_under_the_external_prefix() {
        let u = up("", "/editor/proxy/9000");
        assert_eq!(
            rewrite_location("/login", &u).as_deref(),
            Some("/editor/proxy/9000/login")
        );
        assert_eq!(
            rewrite_location("http://127.0.0.1:9000/?folder=/w", &u).as_deref(),
            Some("/editor/proxy/9000/?folder=/w")
        );
        // Relative and foreign locations are left alone.
        assert_eq!(rewrite_location("./login", &u), None);
        assert_eq!(rewrite_location("https://evil.example/x", &u), None);
        assert_eq!(rewrite_location("//evil.example/x", &u), None);
        // Relaying to a prefixed upstream: only paths under its prefix move.
        let d = up("/editor/proxy/9000", "/embed/orchestrator/9000");
        assert_eq!(
            rewrite_location("/editor/proxy/9000/login", &d).as_deref(),
            Some("/embed/orchestrator/9000/login")
        );
        assert_eq!(rewrite_location("/editor/proxy/90001/x", &d), None);
        assert_eq!(rewrite_location("/embed/orchestrator/9000/login", &d), None);
    }

    /// End to end through [`ReverseProxy::forward`]: the upstream sees the path bytes the
    /// client sent (`%2F`, `%3F`, `%20` stay encoded) and the query apart.
    #[tokio::test]
    async fn forwarded_paths_arrive_as_sent() {
        let app =
            axum::Router::new().fallback(|req: Request<Body>| async move { req.uri().to_string() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut u = up("", "/editor/proxy/1");
        u.authority = addr.to_string();
        let proxy = ReverseProxy::new();
        for (sent, want) in [
            ("/editor/proxy/1/a%2Fb%3Fc%20d?x=1", "/a%2Fb%3Fc%20d?x=1"),
            ("/editor/proxy/1/", "/"),
            (
                "/editor/proxy/1/static/%E2%9C%93.js",
                "/static/%E2%9C%93.js",
            ),
        ] {
            let req = Request::builder().uri(sent).body(Body::empty()).unwrap();
            let path = req.uri().path().to_owned();
            let (_, rest) = split_mounted_path(&path, "/editor/proxy/").unwrap();
            let resp = proxy.forward(req, rest, &u).await.unwrap();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&body), want, "{sent}");
        }
    }

    #[test]
    fn mounted_paths_keep_their_encoding() {
        assert_eq!(
            split_mounted_path("/editor/proxy/8443/a%2Fb%3Fc%20d", "/editor/proxy/"),
            Some(("8443", "/a%2Fb%3Fc%20d"))
        );
        assert_eq!(
            split_mounted_path("/editor/proxy/8443", "/editor/proxy/"),
            Some(("8443", "/"))
        );
        assert_eq!(
            split_mounted_path("/editor/proxy/8443/", "/editor/proxy/"),
            Some(("8443", "/"))
        );
        assert_eq!(split_mounted_path("/other/8443/x", "/editor/proxy/"), None);
    }

    #[test]
    fn cookies_are_scoped_to_the_prefix() {
        let u = up("", "/editor/proxy/9000");
        assert_eq!(
            rewrite_set_cookie(
                "code-server-session=abc; Path=/; Domain=127.0.0.1; HttpOnly",
                &u
            ),
            "code-server-session=abc; HttpOnly; Path=/editor/proxy/9000/"
        );
        assert_eq!(
            rewrite_set_cookie("k=v; Path=/static; SameSite=Lax; Max-Age=60", &u),
            "k=v; SameSite=Lax; Path=/editor/proxy/9000/static; Max-Age=60"
        );
        assert_eq!(
            rewrite_set_cookie("=;;garbage", &u),
            "=; Path=/editor/proxy/9000/"
        );
        assert_eq!(
            rewrite_set_cookie("a=b", &u),
            "a=b; Path=/editor/proxy/9000/"
        );
    }

    #[test]
    fn request_headers_drop_credentials_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer admin"),
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("guildnet_editor=s1; theme=dark"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("orch:8080"));
        let mut u = up("", "/editor/proxy/9000");
        u.cookie = Some("code-server-session=xyz".into());
        rewrite_request_headers(&mut h, &u, false);
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h[header::COOKIE], "theme=dark; code-server-session=xyz");
        assert_eq!(h[header::HOST], "orch:8080");
        assert_eq!(h["x-forwarded-prefix"], "/editor/proxy/9000");
    }

    #[test]
    fn framing_is_restricted_not_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
        );
        rewrite_response_headers(&mut h, &up("", "/p"), StatusCode::OK);
        assert!(h.get(header::X_FRAME_OPTIONS).is_none());
        let csps: Vec<&str> = h
            .get_all(header::CONTENT_SECURITY_POLICY)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            csps,
            [
                "default-src 'self'",
                "frame-ancestors 'self' https://dash.example"
            ]
        );
    }
}
