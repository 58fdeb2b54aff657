//! Login, sessions and CSRF protection.
//!
//! - The admin password comes from configuration, else from `${state}/dashboard.password`, else
//!   it is generated and stored there (mode 0600). It never reaches the browser's JavaScript.
//! - `POST /api/login` sets `guildnet_session`: a random id (only its hash is kept server-side,
//!   with an expiry), `HttpOnly; SameSite=Strict; Path=/`, plus `Secure` under TLS.
//! - Every `/api` route but health, session and login needs a live session (401 otherwise).
//! - State-changing requests (anything but GET/HEAD/OPTIONS) from a browser must be same-origin:
//!   `Sec-Fetch-Site` must be `same-origin` (or `none`) and `Origin`, when sent, must match
//!   `Host`; otherwise 403. Together with `SameSite=Strict` this stops cross-site requests.
//! - Password guessing is throttled ([`LoginThrottle`]): after a few wrong passwords from one
//!   IP address, that address waits (doubling up to 15 min) and gets 429 with `Retry-After`;
//!   and across all addresses at most [`GLOBAL_FAILURES_PER_SEC`] wrong passwords per second
//!   are even checked. Sessions live only in memory: a restart logs everyone out.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use guildnet_core::state_dir::{write_private_file, StateDirError, StatePaths};
use guildnet_core::token::{self, Secret};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "guildnet_session";
/// Name of the stored password file inside the state dir.
pub const PASSWORD_FILE: &str = "dashboard.password";

/// Where the admin password came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// Given in configuration.
    Configured,
    /// Read from a file a previous run generated.
    File(std::path::PathBuf),
    /// Generated now and stored (0600) at this path.
    Generated(std::path::PathBuf),
}

/// The admin password: configured, else stored, else generated and stored (0600).
pub fn admin_password(
    configured: Option<Secret>,
    paths: &StatePaths,
) -> Result<(Secret, PasswordSource), StateDirError> {
    if let Some(p) = configured.filter(|p| !p.expose().trim().is_empty()) {
        return Ok((
            Secret::new(p.expose().trim().to_owned()),
            PasswordSource::Configured,
        ));
    }
    let file = paths.root().join(PASSWORD_FILE);
    if let Ok(t) = std::fs::read_to_string(&file) {
        let t = t.trim();
        if !t.is_empty() {
            return Ok((Secret::new(t), PasswordSource::File(file)));
        }
    }
    let p = token::generate("gnd_");
    write_private_file(&file, format!("{}\n", p.expose()).as_bytes())?;
    Ok((p, PasswordSource::Generated(file)))
}

/// Wrong passwords one IP address may send before it has to wait.
pub const FREE_FAILURES: u32 = 5;
/// Longest wait imposed on one address.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Wrong passwords accepted for checking per second, all addresses together.
pub const GLOBAL_FAILURES_PER_SEC: u32 = 10;

/// Throttles password guessing per client IP and globally (see the module docs).
#[derive(Default)]
pub struct LoginThrottle {
    per_ip: Mutex<HashMap<std::net::IpAddr, (u32, Instant)>>,
    global: Mutex<(Option<Instant>, u32)>,
}

impl LoginThrottle {
    /// Whether `ip` may try a password now; `Err(wait)` when it must wait.
    pub fn check(&self, ip: Option<std::net::IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        if let Some(ip) = ip {
            let m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, until)) = m.get(&ip) {
                if *until > now {
                    return Err(*until - now);
                }
            }
        }
        let g = self.global.lock().unwrap_or_else(|p| p.into_inner());
        match g.0 {
            Some(start)
                if now.duration_since(start) < Duration::from_secs(1)
                    && g.1 >= GLOBAL_FAILURES_PER_SEC =>
            {
                Err(Duration::from_secs(1) - now.duration_since(start))
            }
            _ => Ok(()),
        }
    }

    /// Records a wrong password from `ip`.
    pub fn failed(&self, ip: Option<std::net::IpAddr>) {
        let now = Instant::now();
        {
            let mut g = self.global.lock().unwrap_or_else(|p| p.into_inner());
            match g.0 {
                Some(start) if now.duration_since(start) < Duration::from_secs(1) => g.1 += 1,
                _ => *g = (Some(now), 1),
            }
        }
        let Some(ip) = ip else { return };
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 100_000 {
            m.retain(|_, (_, until)| *until > now);
        }
        let e = m.entry(ip).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        if e.0 >= FREE_FAILURES {
            let doublings = (e.0 - FREE_FAILURES).min(10);
            let wait = Duration::from_secs(1 << doublings).min(MAX_LOCKOUT);
            e.1 = now + wait;
        }
    }

    /// Forgets `ip`'s failures (after a right password).
    pub fn succeeded(&self, ip: Option<std::net::IpAddr>) {
        if let Some(ip) = ip {
            self.per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ip);
        }
    }
}

/// Server-side sessions, keyed by the hash of the cookie value.
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// Sessions that expire `ttl` after login.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session; returns the cookie value.
    pub fn create(&self) -> Secret {
        let id = token::generate("");
        if let Ok(mut m) = self.map.lock() {
            let now = Instant::now();
            m.retain(|_, exp| *exp > now);
            m.insert(token::hash(id.expose()), now + self.ttl);
        }
        id
    }

    /// Whether `id` is a live session.
    pub fn check(&self, id: &str) -> bool {
        let key = token::hash(id);
        match self.map.lock() {
            Ok(mut m) => match m.get(&key) {
                Some(exp) if *exp > Instant::now() => true,
                Some(_) => {
                    m.remove(&key);
                    false
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    /// Whether the session whose id hashes to `key` ([`token::hash`]) is live.
    pub fn check_key(&self, key: &str) -> bool {
        match self.map.lock() {
            Ok(m) => m.get(key).is_some_and(|exp| *exp > Instant::now()),
            Err(_) => false,
        }
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&token::hash(id));
        }
    }

    /// Session lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// The value of the cookie `name`, if the request has one.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The session cookie's value, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, SESSION_COOKIE)
}

/// How long a login link printed by `guildnet up` stays valid.
pub const LOGIN_LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// One-time login links: a random token that, opened once within [`LOGIN_LINK_TTL`], starts a
/// session without the password (what `guildnet up` prints, like Jupyter's token URL). Only the
/// tokens' hashes are kept; a redeemed or expired token is gone.
#[derive(Debug, Default)]
pub struct LoginLinks {
    map: Mutex<HashMap<String, Instant>>,
}

impl LoginLinks {
    /// Mints a token valid for `ttl`.
    pub fn mint(&self, ttl: Duration) -> Secret {
        let t = token::generate("");
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, exp| *exp > now);
        m.insert(token::hash(t.expose()), now + ttl);
        t
    }

    /// Whether `t` is a live token; it cannot be used again either way.
    pub fn redeem(&self, t: &str) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&token::hash(t))
            .is_some_and(|exp| exp > Instant::now())
    }
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(id: &Secret, ttl: Duration, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        id.expose(),
        ttl.as_secs()
    ))
    .ok()
}

/// `Set-Cookie` that clears the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("guildnet_session=; Max-Age=0"))
}

/// Whether the request carries a live session.
pub fn has_session(state: &AppState, headers: &HeaderMap) -> bool {
    session_cookie(headers).is_some_and(|id| state.sessions.check(&id))
}

/// Refuses cross-site state-changing requests (see the module docs).
pub fn check_same_origin(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(ApiError::forbidden(format!(
                "cross-site request refused (Sec-Fetch-Site: {site})"
            )));
        }
    }
    if let Some(origin) = get(header::ORIGIN) {
        let host = get(header::HOST).unwrap_or("");
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or("");
        if origin == "null" || origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err(ApiError::forbidden(
                "cross-site request refused: Origin does not match this dashboard",
            ));
        }
    }
    Ok(())
}

/// Paths under `/api` that need no session.
fn is_public_api(path: &str) -> bool {
    matches!(path, "/api/health" | "/api/login" | "/api/session")
}

/// Middleware: CSRF check on every request, session check on `/api`.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(e) = check_same_origin(req.method(), req.headers()) {
        return e.into_response();
    }
    let path = req.uri().path();
    let protected = path.starts_with("/api/") && !is_public_api(path);
    if protected && !has_session(&state, req.headers()) {
        return ApiError::unauthorized("log in first (no valid session)").into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_link_works_once_and_not_after_it_expired() {
        let links = LoginLinks::default();
        let t = links.mint(Duration::from_secs(60));
        assert!(!links.redeem("not-a-token"));
        assert!(links.redeem(t.expose()));
        assert!(!links.redeem(t.expose()), "a link works once");
        let old = links.mint(Duration::ZERO);
        assert!(!links.redeem(old.expose()), "an expired link");
    }

    #[test]
    fn login_throttle_per_ip_and_global() {
        let t = LoginThrottle::default();
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        for _ in 0..FREE_FAILURES - 1 {
            assert!(t.check(a).is_ok());
            t.failed(a);
        }
        assert!(t.check(a).is_ok());
        t.failed(a);
        let wait = t.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(t.check(b).is_ok(), "another address is not locked out");
        t.succeeded(a);
        assert!(t.check(a).is_ok());
        // Many addresses together: at most GLOBAL_FAILURES_PER_SEC checks a second.
        let t = LoginThrottle::default();
        for i in 0..GLOBAL_FAILURES_PER_SEC {
            let ip = Some(std::net::IpAddr::from([10, 1, 0, i as u8]));
            assert!(t.check(ip).is_ok());
            t.failed(ip);
        }
        assert!(t.check(Some("10.2.0.1".parse().unwrap())).is_err());
    }

    #[test]
    fn sessions_expire_and_are_removed() {
        let s = Sessions::new(Duration::from_millis(50));
        let id = s.create();
        assert!(s.check(id.expose()));
        assert!(!s.check("nope"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!s.check(id.expose()));
        let id = Sessions::new(Duration::from_secs(60)).create();
        assert_eq!(id.expose().len(), 64);
    }

    #[test]
    fn cookie_parsing_and_flags() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; guildnet_session=xyz; c=d"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("xyz"));
        let c = set_cookie(&Secret::new("v"), Duration::from_secs(60), true).unwrap();
        let c = c.to_str().unwrap();
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
            assert!(c.contains(flag), "{c}");
        }
    }

    #[test]
    fn csrf_rules() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9000"));
        assert!(check_same_origin(&Method::POST, &h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9000"),
        );
        assert!(check_same_origin(&Method::POST, &h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.test"),
        );
        assert!(check_same_origin(&Method::POST, &h).is_err());
        assert!(check_same_origin(&Method::GET, &h).is_ok());
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_same_origin(&Method::DELETE, &h).is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(check_same_origin(&Method::PUT, &h).is_err());
    }

    #[test]
    fn password_is_generated_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path());
        let (p1, s1) = admin_password(None, &paths).unwrap();
        assert!(matches!(s1, PasswordSource::Generated(_)));
        let (p2, s2) = admin_password(None, &paths).unwrap();
        assert!(matches!(s2, PasswordSource::File(_)));
        assert_eq!(p1, p2);
        let mode = std::fs::metadata(dir.path().join(PASSWORD_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (p3, s3) = admin_password(Some(Secret::new("given")), &paths).unwrap();
        assert_eq!((p3.expose(), s3), ("given", PasswordSource::Configured));
    }
}
