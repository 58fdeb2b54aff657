//! Kubeconfig and talosconfig validation and storage (`${state}/kube/<org>.config`,
//! `${state}/talos/<org>.talosconfig`, mode 0600, written atomically so a bad upload never
//! replaces a good file).
//!
//! Error messages name what is wrong (YAML syntax with line and column, a missing context,
//! a cluster without a server URL) and never quote the file: it holds credentials.

use guildnet_core::names::OrgName;
use guildnet_core::state_dir::{write_private_file, StatePaths};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which kind of config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigKind {
    /// A Kubernetes kubeconfig.
    Kubeconfig,
    /// A Talos talosconfig.
    Talosconfig,
}

impl ConfigKind {
    /// The field/file name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Kubeconfig => "kubeconfig",
            ConfigKind::Talosconfig => "talosconfig",
        }
    }

    /// Where the org's file of this kind lives.
    pub fn path(self, paths: &StatePaths, org: &OrgName) -> PathBuf {
        match self {
            ConfigKind::Kubeconfig => paths.kubeconfig(org),
            ConfigKind::Talosconfig => paths.talosconfig(org),
        }
    }

    /// Validates `text` as this kind; returns the server address (kubeconfig: the current
    /// cluster's server URL; talosconfig: the current context's endpoints).
    pub fn validate(self, text: &str) -> Result<String, ConfigError> {
        match self {
            ConfigKind::Kubeconfig => validate_kubeconfig(text),
            ConfigKind::Talosconfig => validate_talosconfig(text),
        }
    }
}

/// Why a config was refused. Messages never contain the file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Empty input.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Not YAML (or not the expected shape).
    #[error("{kind} is not valid YAML{location}: {reason}")]
    Yaml {
        /// Which config.
        kind: &'static str,
        /// ` (line L, column C)` when known.
        location: String,
        /// What the parser expected (no input echoed).
        reason: String,
    },
    /// Parsed but unusable.
    #[error("{kind}: {reason}")]
    Invalid {
        /// Which config.
        kind: &'static str,
        /// What is missing or wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Option<Vec<NamedContext>>,
    #[serde(default)]
    clusters: Option<Vec<NamedCluster>>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: Option<KubeContext>,
}

#[derive(Deserialize)]
struct KubeContext {
    cluster: Option<String>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Option<Cluster>,
}

#[derive(Deserialize)]
struct Cluster {
    server: Option<String>,
}

#[derive(Deserialize)]
struct Talosconfig {
    context: Option<String>,
    #[serde(default)]
    contexts: Option<BTreeMap<String, TalosContext>>,
}

#[derive(Deserialize)]
struct TalosContext {
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

fn yaml<T: for<'de> Deserialize<'de>>(kind: &'static str, text: &str) -> Result<T, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::Empty(kind));
    }
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let location = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        // The parser's message may quote the input (which holds credentials): keep only its
        // first line, cut before any quoted snippet.
        let full = e.to_string();
        let first = full.lines().next().unwrap_or("").to_owned();
        let reason: String = first
            .split(['`', '"', '\''])
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches(':')
            .chars()
            .take(160)
            .collect();
        ConfigError::Yaml {
            kind,
            location,
            reason: if reason.is_empty() {
                "cannot parse".into()
            } else {
                reason
            },
        }
    })
}

fn invalid(kind: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        kind,
        reason: reason.into(),
    }
}

/// A URL is usable as an API server address: http(s) with a host.
pub fn valid_server_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) => {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty()
                && !host.contains('@')
                && host.chars().all(|c| !c.is_whitespace() && !c.is_control())
        }
        None => false,
    }
}

/// Validates a kubeconfig: YAML, a current context that exists and names a cluster that exists
/// and has an http(s) server URL. Returns that URL.
pub fn validate_kubeconfig(text: &str) -> Result<String, ConfigError> {
    const K: &str = "kubeconfig";
    let kc: Kubeconfig = yaml(K, text)?;
    let current = kc
        .current_context
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| invalid(K, "no current-context is set"))?;
    let ctx = kc
        .contexts
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == current)
        .ok_or_else(|| invalid(K, format!("current-context {current:?} is not in contexts")))?;
    let cluster_name = ctx
        .context
        .and_then(|c| c.cluster)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid(K, format!("context {current:?} names no cluster")))?;
    let cluster = kc
        .clusters
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == cluster_name)
        .ok_or_else(|| invalid(K, format!("cluster {cluster_name:?} is not in clusters")))?;
    let server = cluster
        .cluster
        .and_then(|c| c.server)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| invalid(K, format!("cluster {cluster_name:?} has no server URL")))?;
    if !valid_server_url(&server) {
        return Err(invalid(
            K,
            format!("cluster {cluster_name:?} server is not an http(s) URL with a host"),
        ));
    }
    Ok(server)
}

/// Validates a talosconfig: YAML, a `context` that exists in `contexts` and has endpoints.
/// Returns the endpoints, comma-separated.
pub fn validate_talosconfig(text: &str) -> Result<String, ConfigError> {
    const K: &str = "talosconfig";
    let tc: Talosconfig = yaml(K, text)?;
    let current = tc
        .context
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| invalid(K, "no context is set"))?;
    let ctx = tc
        .contexts
        .unwrap_or_default()
        .remove(&current)
        .ok_or_else(|| invalid(K, format!("context {current:?} is not in contexts")))?;
    let endpoints: Vec<String> = ctx
        .endpoints
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !e.trim().is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(invalid(K, format!("context {current:?} has no endpoints")));
    }
    Ok(endpoints.join(","))
}

/// What the dashboard knows about an org's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// Which kind.
    pub kind: ConfigKind,
    /// A file is stored.
    pub exists: bool,
    /// It validates.
    pub valid: bool,
    /// Server address (kubeconfig) or endpoints (talosconfig), when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Why it is not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads and validates the stored file.
pub fn status(kind: ConfigKind, paths: &StatePaths, org: &OrgName) -> ConfigStatus {
    let path = kind.path(paths, org);
    match std::fs::read_to_string(&path) {
        Err(_) => ConfigStatus {
            kind,
            exists: false,
            valid: false,
            server: None,
            error: None,
        },
        Ok(text) => match kind.validate(&text) {
            Ok(server) => ConfigStatus {
                kind,
                exists: true,
                valid: true,
                server: Some(server),
                error: None,
            },
            Err(e) => ConfigStatus {
                kind,
                exists: true,
                valid: false,
                server: None,
                error: Some(e.to_string()),
            },
        },
    }
}

/// Validates and stores `text` (0600, atomic). A refused upload leaves the old file as it was.
pub fn store(
    kind: ConfigKind,
    paths: &StatePaths,
    org: &OrgName,
    text: &str,
) -> Result<Result<ConfigStatus, ConfigError>, guildnet_core::state_dir::StateDirError> {
    let server = match kind.validate(text) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    write_private_file(&kind.path(paths, org), text.as_bytes())?;
    Ok(Ok(ConfigStatus {
        kind,
        exists: true,
        valid: true,
        server: Some(server),
        error: None,
    }))
}

/// Removes the org's kubeconfig and talosconfig (missing files are fine).
pub fn remove_all(paths: &StatePaths, org: &OrgName) -> Result<(), std::io::Error> {
    for kind in [ConfigKind::Kubeconfig, ConfigKind::Talosconfig] {
        match std::fs::remove_file(kind.path(paths, org)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const GOOD_KC: &str = "apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {cluster: c1, user: u1}
clusters:
- name: c1
  cluster: {server: 'https://10.0.0.1:6443', certificate-authority-data: SECRETCA}
users:
- name: u1
  user: {token: SECRETTOKEN}
";

    #[test]
    fn kubeconfig_validation_names_the_problem() {
        assert_eq!(
            validate_kubeconfig(GOOD_KC).unwrap(),
            "https://10.0.0.1:6443"
        );
        let no_ctx = GOOD_KC.replace("current-context: dev\n", "");
        assert!(validate_kubeconfig(&no_ctx)
            .unwrap_err()
            .to_string()
            .contains("no current-context"));
        let wrong = GOOD_KC.replace("current-context: dev", "current-context: prod");
        assert!(validate_kubeconfig(&wrong)
            .unwrap_err()
            .to_string()
            .contains("\"prod\" is not in contexts"));
        let no_server = GOOD_KC.replace("server: 'https://10.0.0.1:6443', ", "");
        assert!(validate_kubeconfig(&no_server)
            .unwrap_err()
            .to_string()
            .contains("has no server URL"));
        let bad_url = GOOD_KC.replace("https://10.0.0.1:6443", "ftp://x");
        assert!(validate_kubeconfig(&bad_url).is_err());
        let e = validate_kubeconfig("clusters: [SECRETTOKEN\n  - : :").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("not valid YAML"), "{msg}");
        assert!(!msg.contains("SECRETTOKEN"), "{msg}");
        assert_eq!(
            validate_kubeconfig("  ").unwrap_err(),
            ConfigError::Empty("kubeconfig")
        );
    }

    #[test]
    fn talosconfig_validation() {
        let good = "context: c\ncontexts:\n  c:\n    endpoints: [10.0.0.2, 10.0.0.3]\n    ca: X\n";
        assert_eq!(validate_talosconfig(good).unwrap(), "10.0.0.2,10.0.0.3");
        let none = "context: c\ncontexts:\n  c:\n    endpoints: []\n";
        assert!(validate_talosconfig(none)
            .unwrap_err()
            .to_string()
            .contains("no endpoints"));
        assert!(validate_talosconfig("contexts: {}\n").is_err());
    }

    #[test]
    fn store_refuses_bad_and_keeps_good() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path());
        let org = OrgName::new("acme").unwrap();
        let st = store(ConfigKind::Kubeconfig, &paths, &org, GOOD_KC)
            .unwrap()
            .unwrap();
        assert!(st.valid);
        let path = paths.kubeconfig(&org);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(store(ConfigKind::Kubeconfig, &paths, &org, "nope: [")
            .unwrap()
            .is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), GOOD_KC);
        assert!(status(ConfigKind::Kubeconfig, &paths, &org).valid);
        remove_all(&paths, &org).unwrap();
        assert!(!status(ConfigKind::Kubeconfig, &paths, &org).exists);
    }
}
