//! The agent pod's tailscale sidecar (issue 22): when an AgentTask has `spec.mesh`, the operator
//! adds it to the pod so the agent is on the tailnet.
//!
//! - **Userspace networking, no privileges.** The sidecar is the `tailscale/tailscale` image's
//!   `containerboot` with `TS_USERSPACE=true`, i.e. `tailscaled --tun=userspace-networking`: no
//!   TUN device, no `NET_ADMIN`, not privileged, non-root (the pod's uid 1000), read-only root
//!   filesystem, every capability dropped.
//! - **Joining.** It logs in to `spec.mesh.loginServer` as `spec.mesh.hostname` with the
//!   single-use, ephemeral pre-auth key the orchestrator minted for this attempt, read from the
//!   credentials Secret's [`CREDENTIALS_AUTHKEY_KEY`] (a `secretKeyRef`; the key is never in a
//!   spec, an argument or a log). Its state lives in an `emptyDir`, so a restarted sidecar keeps
//!   its node and never needs the spent key again; a new pod (a new attempt) gets a new key.
//! - **Order.** It is a native sidecar (an init container with `restartPolicy: Always`) whose
//!   startup probe is containerboot's `/healthz` (200 once the node has a tailnet address), so
//!   the agent starts only once the pod is on the tailnet. No liveness probe: a short loss of
//!   the control server must not restart it.
//! - **Outbound** (agent → orchestrator): the agent container gets `HTTP_PROXY`/`HTTPS_PROXY`
//!   pointing at the sidecar's HTTP proxy on the pod's loopback and `ORCHESTRATOR_URL` set to
//!   `spec.mesh.orchestratorUrl` (the orchestrator's tailnet URL). tailscaled dials tailnet
//!   addresses over the tailnet and other addresses directly, so the forge and model APIs still
//!   work; `NO_PROXY` keeps loopback and cluster names direct. A SOCKS5 proxy is there too
//!   (`GUILDNET_TAILNET_SOCKS5`) for tools that want one.
//! - **Inbound** (orchestrator → editor): tailscaled's netstack forwards connections to the
//!   node's tailnet address to the same port on the pod's loopback, where code-server listens
//!   (:8443), so the orchestrator reaches the editor at `<tailnet ip>:8443` through its own
//!   node's SOCKS5 proxy: no Service, port-forward or open port.

use crate::crd::{AgentMeshSpec, AgentTask};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, PodSpec,
    Probe, ResourceRequirements, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Key of the agent's tailnet pre-auth key in the credentials Secret.
pub const CREDENTIALS_AUTHKEY_KEY: &str = "tailscale-authkey";
/// Name of the sidecar container.
pub const SIDECAR_NAME: &str = "tailscale";
/// The sidecar image by default (the tailscale version the project tests against).
pub const DEFAULT_SIDECAR_IMAGE: &str = "tailscale/tailscale:v1.98.10";
/// The sidecar's SOCKS5 proxy on the pod's loopback.
pub const SOCKS5_ADDR: &str = "127.0.0.1:1055";
/// The sidecar's outbound HTTP proxy on the pod's loopback.
pub const HTTP_PROXY_ADDR: &str = "127.0.0.1:1056";
/// Port of containerboot's `/healthz` (the startup probe).
pub const HEALTH_PORT: i32 = 9002;
const STATE_DIR: &str = "/var/lib/tailscale";
const STATE_VOLUME: &str = "tailscale-state";
const TMP_VOLUME: &str = "tailscale-tmp";

/// How the operator builds the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarConfig {
    /// The image (a `tailscale/tailscale` image, or one with the same `containerboot`).
    pub image: String,
    /// Speak plain HTTP to DERP relays (`TS_DEBUG_USE_DERP_HTTP=1`): only for a plain-HTTP
    /// Headscale with its embedded DERP (a local test or dev setup), never over the internet.
    pub plain_http_derp: bool,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            image: DEFAULT_SIDECAR_IMAGE.into(),
            plain_http_derp: false,
        }
    }
}

/// What the sidecar adds to an agent pod.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshPodParts {
    /// The native sidecar (an init container with `restartPolicy: Always`).
    pub sidecar: Container,
    /// Its volumes (state and /tmp, both `emptyDir`).
    pub volumes: Vec<Volume>,
    /// Environment for the agent container (proxies, the orchestrator's tailnet URL).
    pub agent_env: Vec<EnvVar>,
}

/// Checks `spec.mesh`; the message names the field.
pub fn validate(m: &AgentMeshSpec) -> Result<(), String> {
    let url_ok = |u: &str| {
        (u.starts_with("http://") || u.starts_with("https://"))
            && u.len() > "https://".len()
            && !u.contains(|c: char| c.is_whitespace() || c == '@')
    };
    if !url_ok(&m.login_server) {
        return Err("spec.mesh.loginServer: must be an http(s) URL without credentials".into());
    }
    guildnet_core::names::validate_dns_label("spec.mesh.hostname", &m.hostname)
        .map_err(|e| format!("{}: {}", e.field, e.reason))?;
    if let Some(u) = &m.orchestrator_url {
        if !url_ok(u) {
            return Err(
                "spec.mesh.orchestratorUrl: must be an http(s) URL without credentials".into(),
            );
        }
    }
    Ok(())
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The sidecar and what goes with it, for an AgentTask with `spec.mesh` (`None` without).
/// `credentials_secret` is the AgentTask's credentials Secret.
pub fn pod_parts(
    at: &AgentTask,
    credentials_secret: &str,
    cfg: &SidecarConfig,
) -> Option<MeshPodParts> {
    let m = at.spec.mesh.as_ref()?;
    let authkey = EnvVar {
        name: "TS_AUTHKEY".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: credentials_secret.into(),
                key: CREDENTIALS_AUTHKEY_KEY.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    };
    let mut sidecar_env = vec![
        authkey,
        env("TS_HOSTNAME", m.hostname.clone()),
        env(
            "TS_EXTRA_ARGS",
            format!("--login-server={}", m.login_server),
        ),
        env("TS_USERSPACE", "true"),
        // State on the emptyDir, not in a Kubernetes Secret (that would need RBAC).
        env("TS_KUBE_SECRET", ""),
        // A directory tailscaled creates itself: it must own it (it chmods it to 0700), and
        // the emptyDir's root belongs to root.
        env("TS_STATE_DIR", format!("{STATE_DIR}/state")),
        env("TS_SOCKET", format!("{STATE_DIR}/tailscaled.sock")),
        // `tailscale up --login-server=...` at every start: with TS_AUTH_ONCE containerboot
        // waits for NeedsLogin, which tailscaled never reaches without a control URL. A node
        // whose state survived a restart stays logged in and does not use the (spent) key.
        env("TS_AUTH_ONCE", "false"),
        // No log upload to log.tailscale.com.
        env("TS_NO_LOGS_NO_SUPPORT", "true"),
        env("TS_ACCEPT_DNS", "false"),
        env("TS_SOCKS5_SERVER", SOCKS5_ADDR),
        env("TS_OUTBOUND_HTTP_PROXY_LISTEN", HTTP_PROXY_ADDR),
        env("TS_ENABLE_HEALTH_CHECK", "true"),
        env("TS_LOCAL_ADDR_PORT", format!("[::]:{HEALTH_PORT}")),
    ];
    if cfg.plain_http_derp {
        sidecar_env.push(env("TS_DEBUG_USE_DERP_HTTP", "1"));
    }
    let sidecar = Container {
        name: SIDECAR_NAME.into(),
        image: Some(cfg.image.clone()),
        // A native sidecar: started before the agent, kept running beside it.
        restart_policy: Some("Always".into()),
        env: Some(sidecar_env),
        startup_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(HEALTH_PORT),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(120),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("10m".into())),
                ("memory".to_owned(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("256Mi".into()),
            )])),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: STATE_VOLUME.into(),
                mount_path: STATE_DIR.into(),
                ..Default::default()
            },
            VolumeMount {
                name: TMP_VOLUME.into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let volumes = [STATE_VOLUME, TMP_VOLUME]
        .into_iter()
        .map(|name| Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        })
        .collect();
    let proxy = format!("http://{HTTP_PROXY_ADDR}");
    let no_proxy = "localhost,127.0.0.1,::1,.svc,.cluster.local";
    let mut agent_env = vec![
        env("HTTP_PROXY", proxy.clone()),
        env("HTTPS_PROXY", proxy.clone()),
        env("http_proxy", proxy.clone()),
        env("https_proxy", proxy),
        env("NO_PROXY", no_proxy),
        env("no_proxy", no_proxy),
        env(guildnet_core::agent_env::TAILNET_SOCKS5, SOCKS5_ADDR),
    ];
    if let Some(u) = &m.orchestrator_url {
        agent_env.push(env(guildnet_core::agent_env::ORCHESTRATOR_URL, u.clone()));
    }
    Some(MeshPodParts {
        sidecar,
        volumes,
        agent_env,
    })
}

impl MeshPodParts {
    /// Adds the sidecar, its volumes and the agent's environment (to the container named
    /// `agent_container`; container `env` wins over the env Secret's `envFrom`).
    pub fn apply(&self, pod: &mut PodSpec, agent_container: &str) {
        let inits = pod.init_containers.get_or_insert_with(Vec::new);
        inits.retain(|c| c.name != SIDECAR_NAME);
        inits.push(self.sidecar.clone());
        let vols = pod.volumes.get_or_insert_with(Vec::new);
        vols.retain(|v| !self.volumes.iter().any(|m| m.name == v.name));
        vols.extend(self.volumes.iter().cloned());
        if let Some(c) = pod
            .containers
            .iter_mut()
            .find(|c| c.name == agent_container)
        {
            let e = c.env.get_or_insert_with(Vec::new);
            e.retain(|v| !self.agent_env.iter().any(|m| m.name == v.name));
            e.extend(self.agent_env.iter().cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AgentTaskSpec;

    fn task(mesh: Option<AgentMeshSpec>) -> AgentTask {
        let mut spec: AgentTaskSpec = serde_json::from_value(serde_json::json!({
            "orgId": "acme", "taskId": "t1", "task": "x", "image": "img:1", "agentName": "t1-a1",
        }))
        .expect("spec");
        spec.mesh = mesh;
        AgentTask::new("atask-t1", spec)
    }

    fn mesh() -> AgentMeshSpec {
        AgentMeshSpec {
            login_server: "https://hs.example".into(),
            hostname: "t1-a1".into(),
            orchestrator_url: Some("http://100.64.0.1:8080".into()),
        }
    }

    #[test]
    fn no_mesh_no_sidecar() {
        assert!(pod_parts(&task(None), "c", &SidecarConfig::default()).is_none());
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(validate(&mesh()), Ok(()));
        let mut m = mesh();
        m.login_server = "ftp://x".into();
        assert!(validate(&m)
            .expect_err("url")
            .starts_with("spec.mesh.loginServer"));
        let mut m = mesh();
        m.login_server = "https://u:p@hs".into();
        assert!(validate(&m).is_err());
        let mut m = mesh();
        m.hostname = "Bad Name".into();
        assert!(validate(&m)
            .expect_err("host")
            .starts_with("spec.mesh.hostname"));
        let mut m = mesh();
        m.orchestrator_url = Some("nope".into());
        assert!(validate(&m)
            .expect_err("orch")
            .starts_with("spec.mesh.orchestratorUrl"));
    }

    #[test]
    fn the_sidecar_is_userspace_unprivileged_and_keyed_from_the_secret() {
        let p = pod_parts(
            &task(Some(mesh())),
            "atask-t1-credentials",
            &SidecarConfig::default(),
        )
        .expect("parts");
        let c = &p.sidecar;
        assert_eq!(c.restart_policy.as_deref(), Some("Always"));
        assert_eq!(c.image.as_deref(), Some(DEFAULT_SIDECAR_IMAGE));
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let val = |k: &str| env[k].value.clone().unwrap_or_default();
        assert_eq!(val("TS_USERSPACE"), "true");
        assert_eq!(val("TS_HOSTNAME"), "t1-a1");
        assert_eq!(val("TS_EXTRA_ARGS"), "--login-server=https://hs.example");
        assert_eq!(val("TS_KUBE_SECRET"), "");
        // The key comes from the credentials Secret, never as a literal.
        let key = &env["TS_AUTHKEY"];
        assert!(key.value.is_none());
        let r = key
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secretKeyRef");
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("atask-t1-credentials", CREDENTIALS_AUTHKEY_KEY)
        );
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.as_ref().expect("caps");
        assert!(caps.add.is_none(), "no NET_ADMIN or any other capability");
        assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
        let json = serde_json::to_string(&p.sidecar).expect("json");
        assert!(!json.contains("NET_ADMIN") && !json.contains("/dev/net/tun"));
        assert!(c.liveness_probe.is_none());
        assert_eq!(
            c.startup_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.as_deref()),
            Some("/healthz")
        );
    }

    #[test]
    fn the_agent_goes_to_the_orchestrator_through_the_sidecar() {
        let t = task(Some(mesh()));
        let p = pod_parts(&t, "creds", &SidecarConfig::default()).expect("parts");
        let mut pod = PodSpec {
            containers: vec![Container {
                name: "agent".into(),
                env: Some(vec![env("HTTP_PROXY", "http://old")]),
                ..Default::default()
            }],
            ..Default::default()
        };
        p.apply(&mut pod, "agent");
        p.apply(&mut pod, "agent"); // idempotent
        assert_eq!(pod.init_containers.as_ref().map(Vec::len), Some(1));
        assert_eq!(pod.volumes.as_ref().map(Vec::len), Some(2));
        let env: BTreeMap<_, _> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["HTTP_PROXY"], "http://127.0.0.1:1056");
        assert_eq!(env["ORCHESTRATOR_URL"], "http://100.64.0.1:8080");
        assert!(env["NO_PROXY"].contains("127.0.0.1"));
        assert_eq!(env.len(), 8);
    }
}
