//! The connect flow: an existing Headscale (`HEADSCALE_URL`), a pre-auth key (`TS_AUTHKEY`) and
//! this node's name (`TS_HOSTNAME`), validated, probed, and optionally joined.

use super::events::{Flow, Reporter};
use super::SetupError;
use crate::headscale::probe;
use crate::redact::display_url;
use crate::tailscale::{NodeStatus, TailscaleCli};
use crate::MeshJoin;
use guildnet_core::progress::Progress;
use guildnet_core::token::Secret;
use std::time::Duration;
use tokio::sync::mpsc;

/// Environment variable holding the Headscale URL.
pub const ENV_URL: &str = "HEADSCALE_URL";
/// Environment variable holding the pre-auth key.
pub const ENV_AUTHKEY: &str = "TS_AUTHKEY";
/// Environment variable holding this node's host name.
pub const ENV_HOSTNAME: &str = "TS_HOSTNAME";

/// The inputs of the connect flow, as given (not yet validated).
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// `HEADSCALE_URL`: `http(s)://host[:port]`.
    pub headscale_url: String,
    /// `TS_AUTHKEY`: a pre-auth key (redacted in `Debug`).
    pub auth_key: Secret,
    /// `TS_HOSTNAME`: this node's name, a DNS label.
    pub hostname: String,
}

/// A validated [`ConnectRequest`].
#[derive(Debug, Clone)]
pub struct ValidConnect {
    /// The Headscale URL, normalized (no trailing slash).
    pub headscale_url: String,
    /// The pre-auth key.
    pub auth_key: Secret,
    /// The host name.
    pub hostname: String,
}

impl ValidConnect {
    /// The join request for [`crate::TailscaleMesh::join`].
    pub fn mesh_join(&self) -> MeshJoin {
        MeshJoin {
            login_server: self.headscale_url.clone(),
            auth_key: self.auth_key.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

impl ConnectRequest {
    /// Reads `HEADSCALE_URL`, `TS_AUTHKEY` and `TS_HOSTNAME` through `get` (missing reads as
    /// empty, which [`ConnectRequest::validate`] rejects naming the variable).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            headscale_url: get(ENV_URL).unwrap_or_default(),
            auth_key: Secret::new(get(ENV_AUTHKEY).unwrap_or_default()),
            hostname: get(ENV_HOSTNAME).unwrap_or_default(),
        }
    }

    /// [`ConnectRequest::from_lookup`] over the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Checks every field; errors name the variable (`HEADSCALE_URL`, `TS_AUTHKEY`,
    /// `TS_HOSTNAME`) and never quote the key.
    pub fn validate(&self) -> Result<ValidConnect, SetupError> {
        let invalid = |field, reason: String| SetupError::Invalid { field, reason };
        if self.headscale_url.trim().is_empty() {
            return Err(invalid(ENV_URL, "must not be empty".into()));
        }
        let url = crate::headscale::parse_base_url(&self.headscale_url).map_err(|e| match e {
            crate::headscale::HeadscaleError::Invalid { reason, .. } => invalid(ENV_URL, reason),
            other => invalid(ENV_URL, other.to_string()),
        })?;
        let key = self.auth_key.expose();
        if key.is_empty() {
            return Err(invalid(ENV_AUTHKEY, "must not be empty".into()));
        }
        if key.len() > 512 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                ENV_AUTHKEY,
                "must be a single token without spaces (at most 512 characters)".into(),
            ));
        }
        if key.starts_with("file:") {
            return Err(invalid(
                ENV_AUTHKEY,
                "must hold the key itself, not a file: reference".into(),
            ));
        }
        guildnet_core::names::validate_dns_label(ENV_HOSTNAME, &self.hostname)
            .map_err(|e| invalid(ENV_HOSTNAME, e.reason))?;
        Ok(ValidConnect {
            headscale_url: display_url(url.as_str()),
            auth_key: self.auth_key.clone(),
            hostname: self.hostname.clone(),
        })
    }
}

/// What [`connect`] found and did.
#[derive(Debug, Clone)]
pub struct ConnectOutcome {
    /// The validated inputs.
    pub request: ValidConnect,
    /// The server's version, if it reports one.
    pub server_version: Option<String>,
    /// The node's status after joining, when a node was given.
    pub status: Option<NodeStatus>,
}

const STEPS: &[(&str, &str)] = &[
    (
        "validate",
        "Validate HEADSCALE_URL, TS_AUTHKEY and TS_HOSTNAME",
    ),
    ("probe", "Reach the Headscale server"),
    ("join", "Join this node to the tailnet"),
];

/// Validates the inputs, probes the server (`GET /health`, `GET /version`) and, when `node` is
/// given, joins it (`tailscale up`, waiting up to `join_timeout`). Idempotent: a node that already
/// is on that server's tailnet under the same name is left untouched (no re-login, its
/// connections stay up).
pub async fn connect(
    req: &ConnectRequest,
    node: Option<&TailscaleCli>,
    join_timeout: Duration,
    events: Option<mpsc::Sender<Progress>>,
) -> Result<ConnectOutcome, SetupError> {
    let rep = Reporter::new(events);
    let steps = if node.is_some() { STEPS } else { &STEPS[..2] };
    rep.begin(Flow::Connect, steps).await;

    rep.step("validate", STEPS[0].1).await;
    let valid = match req.validate() {
        Ok(v) => v,
        Err(e) => return fail(&rep, "validate", e, None).await,
    };
    rep.step_done(
        "validate",
        format!("{} as {}", valid.headscale_url, valid.hostname),
    )
    .await;

    rep.step("probe", STEPS[1].1).await;
    let url = Some(valid.headscale_url.clone());
    let server_version = match probe_server(&valid.headscale_url).await {
        Ok(v) => v,
        Err(e) => {
            rep.hint("check HEADSCALE_URL and that the server is reachable from this machine")
                .await;
            return fail(&rep, "probe", e, url).await;
        }
    };
    rep.step_done(
        "probe",
        match &server_version {
            Some(v) => format!("headscale {v}"),
            None => "healthy".into(),
        },
    )
    .await;

    let mut status = None;
    if let Some(node) = node {
        rep.step("join", STEPS[2].1).await;
        let joined = node
            .join(
                &valid.headscale_url,
                &valid.auth_key,
                &valid.hostname,
                join_timeout,
            )
            .await;
        if matches!(joined, Ok(crate::tailscale::Joined::Already)) {
            rep.log(format!(
                "already on this tailnet as {}: left as it is (the key was not used)",
                valid.hostname
            ))
            .await;
        }
        let st = match joined {
            Ok(_) => node.status().await,
            Err(e) => Err(e),
        };
        match st {
            Ok(st) => {
                rep.step_done(
                    "join",
                    format!("{} at {}", st.hostname, st.addresses.join(", ")),
                )
                .await;
                status = Some(st);
            }
            Err(e) => {
                if matches!(e, crate::tailscale::TailscaleError::Auth { .. }) {
                    rep.hint("the pre-auth key was refused: create a new one (headscale preauthkeys create) and set TS_AUTHKEY")
                        .await;
                }
                return fail(&rep, "join", e.into(), url).await;
            }
        }
    }
    rep.log("connect flow finished").await;
    rep.done(true, "connected", url).await;
    Ok(ConnectOutcome {
        request: valid,
        server_version,
        status,
    })
}

async fn fail<T>(
    rep: &Reporter,
    step: &str,
    e: SetupError,
    url: Option<String>,
) -> Result<T, SetupError> {
    rep.step_error(step, &e).await;
    rep.done(false, format!("mesh connect failed at {step}"), url)
        .await;
    Err(e)
}

async fn probe_server(url: &str) -> Result<Option<String>, SetupError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| SetupError::Io {
            what: "build an HTTP client".into(),
            reason: e.without_url().to_string(),
        })?;
    let base = crate::headscale::parse_base_url(url)?;
    probe(&http, &base).await?;
    let version = async {
        let r = http.get(base.join("/version").ok()?).send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v.get("version")?.as_str().map(str::to_owned)
    }
    .await;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str, key: &str, host: &str) -> ConnectRequest {
        ConnectRequest {
            headscale_url: url.into(),
            auth_key: Secret::new(key),
            hostname: host.into(),
        }
    }

    #[test]
    fn validation_names_the_field_and_hides_the_key() {
        let cases = [
            (req("", "k", "h"), ENV_URL),
            (req("ftp://hs", "k", "h"), ENV_URL),
            (req("https://", "k", "h"), ENV_URL),
            (req("https://u:p@hs", "k", "h"), ENV_URL),
            (req("https://hs", "", "h"), ENV_AUTHKEY),
            (req("https://hs", "two words-s3cret", "h"), ENV_AUTHKEY),
            (req("https://hs", "file:/etc/k", "h"), ENV_AUTHKEY),
            (req("https://hs", "k", ""), ENV_HOSTNAME),
            (req("https://hs", "k", "Bad_Host"), ENV_HOSTNAME),
            (req("https://hs", "k", "a.b"), ENV_HOSTNAME),
        ];
        for (r, field) in cases {
            let e = r.validate().expect_err(field);
            assert_eq!(e.field(), Some(field), "{e}");
            assert!(e.to_string().contains(field), "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        let ok = req("https://hs.example.com/", "hskey-auth-x", "agent-1")
            .validate()
            .expect("valid");
        assert_eq!(ok.headscale_url, "https://hs.example.com");
        assert_eq!(ok.mesh_join().hostname, "agent-1");
    }

    #[test]
    fn reads_the_environment_names() {
        let r = ConnectRequest::from_lookup(|k| match k {
            "HEADSCALE_URL" => Some("http://127.0.0.1:8080".into()),
            "TS_AUTHKEY" => Some("key".into()),
            "TS_HOSTNAME" => Some("node-a".into()),
            _ => None,
        });
        assert_eq!(r.validate().expect("valid").hostname, "node-a");
        let e = ConnectRequest::from_lookup(|_| None)
            .validate()
            .expect_err("empty");
        assert_eq!(e.field(), Some(ENV_URL));
    }
}
