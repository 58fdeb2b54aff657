//! Validation of setup and provisioning inputs, before any stream starts (400 JSON on failure).

use crate::error::ApiError;
use crate::flows::{ProvisionRequest, SetupRequest};
use guildnet_core::names::{validate_dns_label, OrgName};
use guildnet_core::token::Secret;
use serde::Deserialize;
use std::collections::HashSet;

/// Most nodes in one provisioning request.
pub const MAX_NODES: usize = 64;

/// `POST /api/setup/stream` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetupBody {
    /// `create` or `connect`.
    pub mode: String,
    /// This machine's mesh host name.
    pub hostname: String,
    /// `create`: the URL the new Headscale will be reachable at.
    #[serde(default)]
    pub server_url: Option<String>,
    /// `connect`: the Headscale URL.
    #[serde(default)]
    pub login_server: Option<String>,
    /// `connect`: the pre-auth key.
    #[serde(default)]
    pub auth_key: Option<String>,
    /// `create`: where Headscale listens (`IP:port`, e.g. `0.0.0.0:8080` or the node IP);
    /// default: loopback when `serverUrl`'s host is loopback, else all interfaces.
    #[serde(default)]
    pub listen_addr: Option<String>,
    /// `connect`: a Headscale API key, so the orchestrator can put agents on the mesh.
    #[serde(default)]
    pub api_key: Option<String>,
}

/// `POST /api/orgs/{name}/provision/stream` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvisionBody {
    /// Control-plane node addresses (IP or host name).
    pub cp_nodes: Vec<String>,
    /// Worker node addresses.
    #[serde(default)]
    pub worker_nodes: Vec<String>,
    /// Install the operator after the bootstrap (default true).
    #[serde(default)]
    pub install_operator: Option<bool>,
    /// URL agents use to reach the orchestrator.
    #[serde(default)]
    pub public_orchestrator_url: Option<String>,
}

/// An `http(s)://host[:port][/path]` URL without credentials or spaces.
pub fn url(field: &str, value: &str) -> Result<String, ApiError> {
    let v = value.trim();
    if v.len() > 2048 || !crate::configs::valid_server_url(v) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// An IP address or a DNS host name (labels of `[a-z0-9-]`, at most 253 characters).
pub fn node(field: &str, value: &str) -> Result<String, ApiError> {
    let v = value.trim().to_ascii_lowercase();
    if v.parse::<std::net::IpAddr>().is_ok() {
        return Ok(v);
    }
    let bad = || {
        ApiError::invalid(
            field,
            format!("{field}: {value:?} is neither an IP address nor a host name"),
        )
    };
    if v.is_empty() || v.len() > 253 {
        return Err(bad());
    }
    for label in v.split('.') {
        if validate_dns_label("node", label).is_err() {
            return Err(bad());
        }
    }
    Ok(v)
}

/// Validates a setup body.
pub fn setup(body: SetupBody) -> Result<SetupRequest, ApiError> {
    validate_dns_label("hostname", &body.hostname)
        .map_err(|e| ApiError::invalid("hostname", e.to_string()))?;
    match body.mode.as_str() {
        "create" => {
            if body.auth_key.is_some() || body.login_server.is_some() || body.api_key.is_some() {
                return Err(ApiError::invalid(
                    "mode",
                    "loginServer, authKey and apiKey are for mode \"connect\"",
                ));
            }
            let listen_addr = match body.listen_addr.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|_| {
                    ApiError::invalid(
                        "listenAddr",
                        "listenAddr must be IP:port, e.g. 0.0.0.0:8080 or 10.0.0.5:8080",
                    )
                })?),
            };
            let server_url = url(
                "serverUrl",
                body.server_url
                    .as_deref()
                    .ok_or_else(|| ApiError::invalid("serverUrl", "serverUrl is required"))?,
            )?;
            Ok(SetupRequest::Create {
                hostname: body.hostname,
                server_url,
                listen_addr,
            })
        }
        "connect" => {
            if body.listen_addr.is_some() {
                return Err(ApiError::invalid(
                    "mode",
                    "listenAddr is for mode \"create\"",
                ));
            }
            let login_server = url(
                "loginServer",
                body.login_server
                    .as_deref()
                    .ok_or_else(|| ApiError::invalid("loginServer", "loginServer is required"))?,
            )?;
            let key = body.auth_key.unwrap_or_default();
            let key = key.trim();
            if key.is_empty() || key.len() > 512 || key.chars().any(|c| c.is_whitespace()) {
                return Err(ApiError::invalid(
                    "authKey",
                    "authKey must be a non-empty pre-auth key without spaces",
                ));
            }
            let api_key = match body.api_key.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(k) if k.len() > 512 || k.chars().any(|c| c.is_whitespace()) => {
                    return Err(ApiError::invalid(
                        "apiKey",
                        "apiKey must be a Headscale API key without spaces",
                    ))
                }
                Some(k) => Some(Secret::new(k)),
            };
            Ok(SetupRequest::Connect {
                hostname: body.hostname,
                login_server,
                auth_key: Secret::new(key),
                api_key,
            })
        }
        other => Err(ApiError::invalid(
            "mode",
            format!("mode must be \"create\" or \"connect\" (got {other:?})"),
        )),
    }
}

/// Validates a provisioning body for `org`.
pub fn provision(org: OrgName, body: ProvisionBody) -> Result<ProvisionRequest, ApiError> {
    if body.cp_nodes.is_empty() {
        return Err(ApiError::invalid(
            "cpNodes",
            "at least one control-plane node is required",
        ));
    }
    if body.cp_nodes.len() + body.worker_nodes.len() > MAX_NODES {
        return Err(ApiError::invalid(
            "workerNodes",
            format!("at most {MAX_NODES} nodes in total"),
        ));
    }
    let mut seen = HashSet::new();
    let mut check = |field: &str, list: Vec<String>| -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        for n in list {
            let n = node(field, &n)?;
            if !seen.insert(n.clone()) {
                return Err(ApiError::invalid(
                    field,
                    format!("node {n} is listed twice"),
                ));
            }
            out.push(n);
        }
        Ok(out)
    };
    let cp_nodes = check("cpNodes", body.cp_nodes)?;
    let worker_nodes = check("workerNodes", body.worker_nodes)?;
    let public_orchestrator_url = body
        .public_orchestrator_url
        .filter(|u| !u.trim().is_empty())
        .map(|u| url("publicOrchestratorUrl", &u))
        .transpose()?;
    Ok(ProvisionRequest {
        org,
        cp_nodes,
        worker_nodes,
        install_operator: body.install_operator.unwrap_or(true),
        public_orchestrator_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_urls() {
        assert_eq!(node("n", "10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(node("n", "fd00::1").unwrap(), "fd00::1");
        assert_eq!(node("n", "CP-1.example.com").unwrap(), "cp-1.example.com");
        for bad in ["", "a b", "-x", "x..y", "../etc", "http://x"] {
            assert!(node("n", bad).is_err(), "{bad}");
        }
        assert!(url("u", "https://hs.example.com:8080").is_ok());
        for bad in ["hs.example.com", "ftp://x", "https://", "https://u:p@x"] {
            assert!(url("u", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn provision_rules() {
        let org = OrgName::new("acme").unwrap();
        let body = |cp: &[&str], w: &[&str]| ProvisionBody {
            cp_nodes: cp.iter().map(|s| s.to_string()).collect(),
            worker_nodes: w.iter().map(|s| s.to_string()).collect(),
            install_operator: None,
            public_orchestrator_url: None,
        };
        let ok = provision(org.clone(), body(&["10.0.0.1"], &["10.0.0.2"])).unwrap();
        assert!(ok.install_operator);
        let e = provision(org.clone(), body(&[], &[])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cpNodes"));
        let e = provision(org.clone(), body(&["10.0.0.1"], &["10.0.0.1"])).unwrap_err();
        assert!(e.message.contains("twice"));
        let e = provision(org, body(&["10.0.0.1"], &["bad host"])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("workerNodes"));
    }

    #[test]
    fn setup_rules() {
        let b = |mode: &str, key: Option<&str>| SetupBody {
            mode: mode.into(),
            hostname: "laptop".into(),
            server_url: Some("https://hs.local".into()),
            login_server: (mode == "connect").then(|| "https://hs.local".into()),
            auth_key: key.map(str::to_owned),
            listen_addr: None,
            api_key: None,
        };
        assert!(matches!(
            setup(b("create", None)),
            Ok(SetupRequest::Create { .. })
        ));
        assert!(setup(b("connect", Some("k"))).is_ok());
        assert_eq!(
            setup(b("connect", None)).unwrap_err().field.as_deref(),
            Some("authKey")
        );
        assert_eq!(
            setup(b("join", None)).unwrap_err().field.as_deref(),
            Some("mode")
        );
        let mut c = b("create", None);
        c.listen_addr = Some("10.0.0.5:8080".into());
        assert!(matches!(
            setup(c),
            Ok(SetupRequest::Create {
                listen_addr: Some(_),
                ..
            })
        ));
        let mut c = b("create", None);
        c.listen_addr = Some("10.0.0.5".into());
        assert_eq!(setup(c).unwrap_err().field.as_deref(), Some("listenAddr"));
        let mut c = b("connect", Some("k"));
        c.api_key = Some("has space".into());
        let e = setup(c).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("apiKey"));
        assert!(!e.message.contains("has space"), "{}", e.message);
    }
}
