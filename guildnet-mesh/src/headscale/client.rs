//! A typed client for Headscale's REST API (`/api/v1`, `Authorization: Bearer <API key>`).

use super::error::HeadscaleError;
use super::types::{
    mask_key, ApiKey, CreatedPreAuthKey, Node, PreAuthKey, PreAuthKeyRequest, User,
};
use crate::redact::display_url;
use chrono::{DateTime, Utc};
use guildnet_core::token::Secret;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::time::Duration;

/// Default per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(15);

/// A Headscale REST client. Cheap to clone. Its `Debug` output never shows the API key.
#[derive(Clone)]
pub struct HeadscaleClient {
    base: Url,
    shown: String,
    api_key: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for HeadscaleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadscaleClient")
            .field("url", &self.shown)
            .field("api_key", &self.api_key)
            .finish()
    }
}

/// What secret a response body holds, so decoding errors never quote it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    Plain,
    HoldsSecret,
}

/// grpc-gateway's error body.
#[derive(Deserialize)]
struct GatewayError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

impl HeadscaleClient {
    /// A client for the server at `url` (`http(s)://host[:port]`, without `/api/v1`).
    pub fn new(url: &str, api_key: Secret) -> Result<Self, HeadscaleError> {
        Self::with_timeout(url, api_key, TIMEOUT)
    }

    /// Like [`HeadscaleClient::new`] with a per-request timeout.
    pub fn with_timeout(
        url: &str,
        api_key: Secret,
        timeout: Duration,
    ) -> Result<Self, HeadscaleError> {
        let base = parse_base_url(url)?;
        if api_key.expose().trim().is_empty() {
            return Err(HeadscaleError::Invalid {
                field: "api_key",
                reason: "must not be empty".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .no_proxy()
            .build()
            .map_err(|e| HeadscaleError::Invalid {
                field: "http client",
                reason: e.without_url().to_string(),
            })?;
        Ok(Self {
            shown: display_url(base.as_str()),
            base,
            api_key,
            http,
        })
    }

    /// The server's base URL (no credentials).
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// The API key (redacted in `Debug`).
    pub fn api_key(&self) -> &Secret {
        &self.api_key
    }

    /// `GET /health` (no API key): Ok when the server answers 200.
    pub async fn health(&self) -> Result<(), HeadscaleError> {
        probe_health(&self.http, &self.base).await
    }

    /// `GET /version` (no API key): the server's version string, if it reports one.
    pub async fn version(&self) -> Result<Option<String>, HeadscaleError> {
        let url = self.endpoint("/version")?;
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !r.status().is_success() {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct V {
            version: Option<String>,
        }
        Ok(r.json::<V>().await.ok().and_then(|v| v.version))
    }

    // ---- users ----

    /// All users.
    pub async fn list_users(&self) -> Result<Vec<User>, HeadscaleError> {
        #[derive(Deserialize)]
        struct R {
            #[serde(default)]
            users: Option<Vec<User>>,
        }
        let r: R = self
            .call(Method::GET, "list users", "/api/v1/user", None, Body::Plain)
            .await?;
        Ok(r.users.unwrap_or_default())
    }

    /// The user named `name`, if any.
    pub async fn find_user(&self, name: &str) -> Result<Option<User>, HeadscaleError> {
        Ok(self
            .list_users()
            .await?
            .into_iter()
            .find(|u| u.name == name))
    }

    /// Creates a user.
    pub async fn create_user(&self, name: &str) -> Result<User, HeadscaleError> {
        validate_user_name(name)?;
        #[derive(Deserialize)]
        struct R {
            user: User,
        }
        let body = serde_json::json!({ "name": name });
        let r: R = self
            .call(
                Method::POST,
                "create user",
                "/api/v1/user",
                Some(body),
                Body::Plain,
            )
            .await?;
        Ok(r.user)
    }

    /// The user named `name`, created if missing. Returns it and whether it was created.
    pub async fn ensure_user(&self, name: &str) -> Result<(User, bool), HeadscaleError> {
        if let Some(u) = self.find_user(name).await? {
            return Ok((u, false));
        }
        Ok((self.create_user(name).await?, true))
    }

    /// Deletes a user by id.
    pub async fn delete_user(&self, id: u64) -> Result<(), HeadscaleError> {
        let _: serde_json::Value = self
            .call(
                Method::DELETE,
                "delete user",
                &format!("/api/v1/user/{id}"),
                None,
                Body::Plain,
            )
            .await?;
        Ok(())
    }

    // ---- pre-auth keys ----

    /// Creates a pre-auth key. The returned key is a [`Secret`]; the listing part is masked.
    pub async fn create_preauth_key(
        &self,
        req: &PreAuthKeyRequest,
    ) -> Result<CreatedPreAuthKey, HeadscaleError> {
        for t in &req.acl_tags {
            if !t.starts_with("tag:") || t.len() < 5 {
                return Err(HeadscaleError::Invalid {
                    field: "acl_tags",
                    reason: format!("{t:?} must look like tag:<name>"),
                });
            }
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct R {
            pre_auth_key: PreAuthKey,
        }
        let body = serde_json::json!({
            "user": req.user_id.to_string(),
            "reusable": req.reusable,
            "ephemeral": req.ephemeral,
            "expiration": req.expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "aclTags": req.acl_tags,
        });
        let r: R = self
            .call(
                Method::POST,
                "create pre-auth key",
                "/api/v1/preauthkey",
                Some(body),
                Body::HoldsSecret,
            )
            .await?;
        let mut info = r.pre_auth_key;
        let key = std::mem::take(&mut info.masked_key);
        if key.is_empty() {
            return Err(self.mismatch("create pre-auth key: the response holds no key"));
        }
        info.masked_key = mask_key(&key);
        Ok(CreatedPreAuthKey {
            info,
            key: Secret::new(key),
        })
    }

    /// All pre-auth keys (masked).
    pub async fn list_preauth_keys(&self) -> Result<Vec<PreAuthKey>, HeadscaleError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct R {
            #[serde(default)]
            pre_auth_keys: Option<Vec<PreAuthKey>>,
        }
        let r: R = self
            .call(
                Method::GET,
                "list pre-auth keys",
                "/api/v1/preauthkey",
                None,
                Body::Plain,
            )
            .await?;
        Ok(r.pre_auth_keys.unwrap_or_default())
    }

    /// Expires a pre-auth key by id: it can no longer register nodes.
    pub async fn expire_preauth_key(&self, id: u64) -> Result<(), HeadscaleError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                "expire pre-auth key",
                "/api/v1/preauthkey/expire",
                Some(serde_json::json!({ "id": id.to_string() })),
                Body::Plain,
            )
            .await?;
        Ok(())
    }

    // ---- nodes ----

    /// All nodes, or those of user `user` (by name).
    pub async fn list_nodes(&self, user: Option<&str>) -> Result<Vec<Node>, HeadscaleError> {
        #[derive(Deserialize)]
        struct R {
            #[serde(default)]
            nodes: Option<Vec<Node>>,
        }
        let mut path = "/api/v1/node".to_owned();
        if let Some(u) = user {
            validate_user_name(u)?;
            path.push_str("?user=");
            path.push_str(u);
        }
        let r: R = self
            .call(Method::GET, "list nodes", &path, None, Body::Plain)
            .await?;
        Ok(r.nodes.unwrap_or_default())
    }

    /// Expires a node's key now: it must log in again.
    pub async fn expire_node(&self, id: u64) -> Result<Node, HeadscaleError> {
        #[derive(Deserialize)]
        struct R {
            node: Node,
        }
        let r: R = self
            .call(
                Method::POST,
                "expire node",
                &format!("/api/v1/node/{id}/expire"),
                None,
                Body::Plain,
            )
            .await?;
        Ok(r.node)
    }

    /// Deletes a node.
    pub async fn delete_node(&self, id: u64) -> Result<(), HeadscaleError> {
        let _: serde_json::Value = self
            .call(
                Method::DELETE,
                "delete node",
                &format!("/api/v1/node/{id}"),
                None,
                Body::Plain,
            )
            .await?;
        Ok(())
    }

    /// Renames a node (its given name, a DNS label).
    pub async fn rename_node(&self, id: u64, new_name: &str) -> Result<Node, HeadscaleError> {
        guildnet_core::names::validate_dns_label("new_name", new_name).map_err(|e| {
            HeadscaleError::Invalid {
                field: e.field,
                reason: e.reason,
            }
        })?;
        #[derive(Deserialize)]
        struct R {
            node: Node,
        }
        let r: R = self
            .call(
                Method::POST,
                "rename node",
                &format!("/api/v1/node/{id}/rename/{new_name}"),
                None,
                Body::Plain,
            )
            .await?;
        Ok(r.node)
    }

    // ---- API keys ----

    /// Creates an API key expiring at `expiration`.
    pub async fn create_api_key(
        &self,
        expiration: DateTime<Utc>,
    ) -> Result<Secret, HeadscaleError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct R {
            api_key: String,
        }
        let body = serde_json::json!({
            "expiration": expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let r: R = self
            .call(
                Method::POST,
                "create API key",
                "/api/v1/apikey",
                Some(body),
                Body::HoldsSecret,
            )
            .await?;
        if r.api_key.is_empty() {
            return Err(self.mismatch("create API key: the response holds no key"));
        }
        Ok(Secret::new(r.api_key))
    }

    /// All API keys (prefixes only).
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, HeadscaleError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct R {
            #[serde(default)]
            api_keys: Option<Vec<ApiKey>>,
        }
        let r: R = self
            .call(
                Method::GET,
                "list API keys",
                "/api/v1/apikey",
                None,
                Body::Plain,
            )
            .await?;
        Ok(r.api_keys.unwrap_or_default())
    }

    /// Expires an API key by its prefix (as [`ApiKey::bare_prefix`] gives it).
    pub async fn expire_api_key(&self, prefix: &str) -> Result<(), HeadscaleError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                "expire API key",
                "/api/v1/apikey/expire",
                Some(serde_json::json!({ "prefix": prefix })),
                Body::Plain,
            )
            .await?;
        Ok(())
    }

    // ---- plumbing ----

    fn endpoint(&self, path: &str) -> Result<Url, HeadscaleError> {
        self.base.join(path).map_err(|e| HeadscaleError::Invalid {
            field: "path",
            reason: e.to_string(),
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> HeadscaleError {
        unreachable_error(&self.shown, e)
    }

    fn mismatch(&self, what: impl Into<String>) -> HeadscaleError {
        HeadscaleError::VersionMismatch {
            url: self.shown.clone(),
            what: what.into(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        op: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
        kind: Body,
    ) -> Result<T, HeadscaleError> {
        let url = self.endpoint(path)?;
        let route = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.api_key.expose());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(HeadscaleError::Auth {
                url: self.shown.clone(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(self.api_error(op, &route, status, &text));
        }
        serde_json::from_str(&text).map_err(|e| {
            let detail = match kind {
                Body::Plain => e.to_string(),
                // serde quotes values; this body holds a secret, so say only where it broke.
                Body::HoldsSecret => format!(
                    "{:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            };
            self.mismatch(format!("{op} ({route}): unexpected response: {detail}"))
        })
    }

    fn api_error(
        &self,
        op: &'static str,
        route: &str,
        status: StatusCode,
        text: &str,
    ) -> HeadscaleError {
        match serde_json::from_str::<GatewayError>(text) {
            // grpc-gateway's answers for a route it does not have.
            Ok(g)
                if (status == StatusCode::NOT_FOUND && g.code == 5 && g.message == "Not Found")
                    || (g.code == 12 && g.message == "Method Not Allowed") =>
            {
                self.mismatch(format!("{op}: route {route} is missing (HTTP {status})"))
            }
            Ok(g) => HeadscaleError::Api {
                op,
                status: status.as_u16(),
                message: if g.message.is_empty() {
                    format!("grpc code {}", g.code)
                } else {
                    g.message
                },
            },
            Err(_) if matches!(status.as_u16(), 404 | 405 | 501) => self.mismatch(format!(
                "{op}: route {route} answered HTTP {status} without a Headscale error body"
            )),
            Err(_) => HeadscaleError::Api {
                op,
                status: status.as_u16(),
                message: crate::redact::tail(text, 300),
            },
        }
    }
}

/// Parses and checks a Headscale base URL: http or https, a host, no credentials, no query.
pub(crate) fn parse_base_url(url: &str) -> Result<Url, HeadscaleError> {
    let invalid = |reason: &str| HeadscaleError::Invalid {
        field: "url",
        reason: reason.to_owned(),
    };
    let u = Url::parse(url.trim()).map_err(|e| invalid(&format!("not a URL ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(invalid("scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(invalid("must name a host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid("must not contain credentials"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok(u)
}

/// `GET {base}/health` expecting 200.
pub(crate) async fn probe_health(http: &reqwest::Client, base: &Url) -> Result<(), HeadscaleError> {
    let shown = display_url(base.as_str());
    let url = base.join("/health").map_err(|e| HeadscaleError::Invalid {
        field: "url",
        reason: e.to_string(),
    })?;
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|e| unreachable_error(&shown, e))?;
    match r.status() {
        StatusCode::OK => Ok(()),
        StatusCode::NOT_FOUND => Err(HeadscaleError::VersionMismatch {
            url: shown,
            what: "GET /health is missing: not a Headscale server".into(),
        }),
        s => Err(HeadscaleError::Unreachable {
            url: shown,
            reason: format!("GET /health answered HTTP {s}"),
        }),
    }
}

fn unreachable_error(shown: &str, e: reqwest::Error) -> HeadscaleError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The chain of causes, without the URL (which reqwest would add).
    let mut reason = kind.to_owned();
    let e = e.without_url();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    HeadscaleError::Unreachable {
        url: shown.to_owned(),
        reason,
    }
}

fn validate_user_name(name: &str) -> Result<(), HeadscaleError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(HeadscaleError::Invalid {
            field: "user",
            reason: format!(
                "{name:?} must be 1-63 characters of letters, digits, '-', '_', '.', '@'"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_checked() {
        for (bad, why) in [
            ("ftp://h", "scheme"),
            ("http://u:p@h", "credentials"),
            ("http://h/?k=v", "query"),
            ("nope", "not a URL"),
        ] {
            let e = parse_base_url(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("url"), "{e}");
        }
        assert!(parse_base_url("https://hs.example.com").is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        let c = HeadscaleClient::new("http://127.0.0.1:1", Secret::new("hskey-api-s3cret"))
            .expect("client");
        let d = format!("{c:?}");
        assert!(!d.contains("s3cret"), "{d}");
        assert!(HeadscaleClient::new("http://h", Secret::new(" ")).is_err());
    }

    #[test]
    fn gateway_errors_are_classified() {
        let c = HeadscaleClient::new("http://h", Secret::new("k")).expect("client");
        let e = c.api_error(
            "x",
            "GET /api/v1/nope",
            StatusCode::NOT_FOUND,
            r#"{"code":5,"message":"Not Found","details":[]}"#,
        );
        assert!(matches!(e, HeadscaleError::VersionMismatch { .. }), "{e}");
        assert!(e.to_string().contains("GET /api/v1/nope"));
        let e = c.api_error(
            "delete user",
            "DELETE /api/v1/user/9",
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"code":2,"message":"user not found","details":[]}"#,
        );
        assert!(
            matches!(&e, HeadscaleError::Api { status: 500, message, .. } if message == "user not found"),
            "{e}"
        );
        let e = c.api_error("x", "GET /x", StatusCode::NOT_FOUND, "404 page not found");
        assert!(matches!(e, HeadscaleError::VersionMismatch { .. }), "{e}");
    }
}
