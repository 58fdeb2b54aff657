//! Per-cluster install: the namespace, the AgentTask CRD, the operator's ServiceAccount, a Role
//! and RoleBinding limited to that namespace and to what the operator does, and the operator's
//! Deployment, as typed k8s-openapi structs ([`OperatorManifests`]; the CRDs come from
//! [`crate::crd`]). Applied server-side (idempotent); the same objects are checked in under
//! `deploy/`.

use crate::{Error, FIELD_MANAGER, MANAGED_BY};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    LocalObjectReference, Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

/// Name of the operator's ServiceAccount, Role, RoleBinding and Deployment.
pub const OPERATOR_NAME: &str = "guildnet-operator";
/// Port of the operator's /metrics and /healthz.
pub const OPERATOR_METRICS_PORT: u16 = 8080;
/// The operator image's non-root user and group (distroless `nonroot`).
const OPERATOR_UID: i64 = 65532;
/// Name of the operator's container and of its metrics port.
const OPERATOR_CONTAINER: &str = "operator";
const METRICS_PORT_NAME: &str = "metrics";

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Namespace the operator watches (and runs in).
    pub namespace: String,
    /// Operator image.
    pub image: String,
    /// URL agents use to reach the orchestrator (the operator's PUBLIC_ORCHESTRATOR_URL).
    pub public_orchestrator_url: Option<String>,
    /// Secrets (`kubernetes.io/dockerconfigjson`, in `namespace`) for a private registry: the
    /// operator's own pod pulls with them, and the operator gives them to every agent pod.
    pub image_pull_secrets: Vec<String>,
    /// The tailscale sidecar image the operator adds to agent pods on the tailnet (`None`: the
    /// operator's default, [`crate::mesh_sidecar::DEFAULT_SIDECAR_IMAGE`]).
    pub mesh_sidecar_image: Option<String>,
    /// The sidecar speaks plain HTTP to DERP relays: only for a plain-HTTP Headscale with its
    /// embedded DERP (a local or test setup).
    pub mesh_plain_http_derp: bool,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            namespace: crate::DEFAULT_NAMESPACE.into(),
            image: format!(
                "ghcr.io/guildnet/guildnet-operator:{}",
                env!("CARGO_PKG_VERSION")
            ),
            public_orchestrator_url: None,
            image_pull_secrets: Vec::new(),
            mesh_sidecar_image: None,
            mesh_plain_http_derp: false,
        }
    }
}

/// Labels of every install object and of the operator's pod.
fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (
            "app.kubernetes.io/name".to_owned(),
            OPERATOR_NAME.to_owned(),
        ),
    ])
}

/// Metadata of a namespaced install object named [`OPERATOR_NAME`].
fn operator_meta(ns: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(OPERATOR_NAME.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// One Role rule: `verbs` on `resources` of the API group `group` (`""`: the core group).
fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(strings(&[group])),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

/// The Role's rules: exactly what the reconciler and its watches use, in one namespace.
pub fn operator_rules() -> Vec<PolicyRule> {
    const CRUD: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    const STATUS: &[&str] = &["get", "update", "patch"];
    vec![
        rule(
            "guildnet.io",
            &["agenttasks"],
            &["get", "list", "watch", "delete"],
        ),
        rule("guildnet.io", &["agenttasks/status"], STATUS),
        rule("guildnet.io", &["agentpools"], &["get", "list", "watch"]),
        rule("guildnet.io", &["agentpools/status"], STATUS),
        rule("", &["pods"], CRUD),
        rule("apps", &["deployments"], CRUD),
        rule("", &["services"], CRUD),
        rule("", &["secrets"], CRUD),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update"],
        ),
    ]
}

/// The operator's command line: `run` in the namespace with leader election, and the settings
/// it hands on to agent pods.
fn operator_args(opts: &InstallOptions) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--namespace".to_owned(),
        opts.namespace.clone(),
        "--leader-elect".to_owned(),
    ];
    for s in &opts.image_pull_secrets {
        args.push("--image-pull-secret".to_owned());
        args.push(s.clone());
    }
    if let Some(i) = &opts.mesh_sidecar_image {
        args.push("--mesh-sidecar-image".to_owned());
        args.push(i.clone());
    }
    if opts.mesh_plain_http_derp {
        args.push("--mesh-plain-http-derp".to_owned());
    }
    args
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// The operator's environment: its namespace, the agents' orchestrator URL if set, and its pod
/// name (the leader-election identity).
fn operator_env(opts: &InstallOptions) -> Vec<EnvVar> {
    let mut env = vec![plain_env("GUILDNET_NAMESPACE", &opts.namespace)];
    if let Some(url) = &opts.public_orchestrator_url {
        env.push(plain_env("PUBLIC_ORCHESTRATOR_URL", url));
    }
    env.push(EnvVar {
        name: "POD_NAME".to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    });
    env
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ])
}

/// The operator's container: non-root, read-only root filesystem, no capabilities, probed on
/// its metrics port's `/healthz`.
fn operator_container(opts: &InstallOptions) -> Container {
    let probe = Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".to_owned()),
            port: IntOrString::String(METRICS_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    Container {
        name: OPERATOR_CONTAINER.to_owned(),
        image: Some(opts.image.clone()),
        args: Some(operator_args(opts)),
        env: Some(operator_env(opts)),
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.to_owned()),
            container_port: i32::from(OPERATOR_METRICS_PORT),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe.clone()),
        liveness_probe: Some(probe),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("50m", "32Mi")),
            limits: Some(quantities("500m", "128Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(strings(&["ALL"])),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The operator's Deployment: one replica (leader election covers a second during a rollout).
fn operator_deployment(opts: &InstallOptions) -> Deployment {
    let pull_secrets = opts
        .image_pull_secrets
        .iter()
        .map(|n| LocalObjectReference { name: n.clone() })
        .collect();
    Deployment {
        metadata: operator_meta(&opts.namespace),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".to_owned(),
                    OPERATOR_NAME.to_owned(),
                )])),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(OPERATOR_NAME.to_owned()),
                    // Always written, empty too: `deploy/operator.yaml` shows where they go.
                    image_pull_secrets: Some(pull_secrets),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(OPERATOR_UID),
                        run_as_group: Some(OPERATOR_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![operator_container(opts)],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The operator's namespaced install objects (everything but the CRDs), typed.
#[derive(Debug, Clone)]
pub struct OperatorManifests {
    /// The namespace the operator watches and runs in.
    pub namespace: Namespace,
    /// The operator's ServiceAccount.
    pub service_account: ServiceAccount,
    /// The operator's Role ([`operator_rules`]), in its namespace only.
    pub role: Role,
    /// Binds the Role to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// The operator's Deployment.
    pub deployment: Deployment,
}

impl OperatorManifests {
    /// Every object as JSON, in apply order (namespace, ServiceAccount, Role, RoleBinding,
    /// Deployment).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, Error> {
        [
            to_value(&self.namespace),
            to_value(&self.service_account),
            to_value(&self.role),
            to_value(&self.role_binding),
            to_value(&self.deployment),
        ]
        .into_iter()
        .collect()
    }
}

fn to_value<T: Serialize>(obj: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(obj).map_err(|e| Error::Serialize {
        what: "manifest",
        reason: e.to_string(),
    })
}

/// The namespaced objects (everything but the CRD).
pub fn operator_manifests(opts: &InstallOptions) -> OperatorManifests {
    let ns = &opts.namespace;
    OperatorManifests {
        namespace: Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(labels()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        },
        service_account: ServiceAccount {
            metadata: operator_meta(ns),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: operator_meta(ns),
            rules: Some(operator_rules()),
        },
        role_binding: RoleBinding {
            metadata: operator_meta(ns),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "Role".to_owned(),
                name: OPERATOR_NAME.to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: OPERATOR_NAME.to_owned(),
                namespace: Some(ns.clone()),
                api_group: None,
            }]),
        },
        deployment: operator_deployment(opts),
    }
}

/// `deploy/crd.yaml`.
pub fn crd_yaml() -> Result<String, Error> {
    crate::crd::crd_yaml()
}

/// `deploy/operator.yaml` for the default options.
pub fn operator_yaml(opts: &InstallOptions) -> Result<String, Error> {
    crate::yaml::to_multi_yaml(&operator_manifests(opts).to_values()?)
}

/// Applies the CRD (and waits until it is established) and the operator's objects. Idempotent:
/// a second run changes nothing.
pub async fn install(client: &kube::Client, opts: &InstallOptions) -> Result<(), Error> {
    for step in InstallStep::ALL {
        step.run(client, opts).await?;
    }
    Ok(())
}

/// One step of [`install`], so a caller can report each on a progress stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallStep {
    /// The CRDs (AgentTask, AgentPool), applied and established.
    Crd,
    /// The namespace, the operator's ServiceAccount, its Role and RoleBinding.
    Rbac,
    /// The operator's Deployment.
    Deployment,
}

impl InstallStep {
    /// Every step, in the order [`install`] runs them.
    pub const ALL: [InstallStep; 3] =
        [InstallStep::Crd, InstallStep::Rbac, InstallStep::Deployment];

    /// The step's name on progress streams (`crd`, `rbac`, `deployment`).
    pub fn name(self) -> &'static str {
        match self {
            InstallStep::Crd => "crd",
            InstallStep::Rbac => "rbac",
            InstallStep::Deployment => "deployment",
        }
    }

    /// Applies this step's objects (server-side, idempotent) and returns what it applied, as
    /// `Kind/name` in apply order.
    pub async fn run(
        self,
        client: &kube::Client,
        opts: &InstallOptions,
    ) -> Result<Vec<String>, Error> {
        if self == InstallStep::Crd {
            install_crd(client).await?;
            return Ok(crate::crd::crds()
                .iter()
                .map(|c| format!("CustomResourceDefinition/{}", c.name_any()))
                .collect());
        }
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let m = operator_manifests(opts);
        let ns = opts.namespace.as_str();
        if self == InstallStep::Deployment {
            let deployments = Api::namespaced(client.clone(), ns);
            return Ok(vec![apply(&deployments, &m.deployment, &pp).await?]);
        }
        Ok(vec![
            apply(&Api::all(client.clone()), &m.namespace, &pp).await?,
            apply(
                &Api::namespaced(client.clone(), ns),
                &m.service_account,
                &pp,
            )
            .await?,
            apply(&Api::namespaced(client.clone(), ns), &m.role, &pp).await?,
            apply(&Api::namespaced(client.clone(), ns), &m.role_binding, &pp).await?,
        ])
    }
}

/// Applies the CRDs (AgentTask, AgentPool) and waits until the API server serves them.
pub async fn install_crd(client: &kube::Client) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crate::crd::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &pp, &Patch::Apply(&crd)).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let c = crds.get(&name).await?;
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Invalid(format!(
                    "CRD {name} not established after 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Server-side applies one typed object through `api` and returns it as `Kind/name`.
async fn apply<K>(api: &Api<K>, obj: &K, pp: &PatchParams) -> Result<String, Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = obj.name_any();
    api.patch(&name, pp, &Patch::Apply(obj)).await?;
    Ok(format!("{}/{name}", K::kind(&())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_spec(m: &OperatorManifests) -> &PodSpec {
        m.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("operator pod spec")
    }

    #[test]
    fn pull_secrets_reach_the_operator_pod_and_its_agent_pods() {
        let opts = InstallOptions {
            image: "registry.example/guildnet-operator:1".into(),
            image_pull_secrets: vec!["regcred".into()],
            ..InstallOptions::default()
        };
        let m = operator_manifests(&opts);
        let pod = pod_spec(&m);
        // The operator's own pod pulls its image with the Secret...
        assert_eq!(
            pod.image_pull_secrets,
            Some(vec![LocalObjectReference {
                name: "regcred".into()
            }])
        );
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("registry.example/guildnet-operator:1")
        );
        // ...and gives it to every agent pod it creates.
        let args = pod.containers[0].args.clone().expect("args");
        let i = args
            .iter()
            .position(|a| a == "--image-pull-secret")
            .expect("--image-pull-secret");
        assert_eq!(args[i + 1], "regcred");
        assert!(!args.iter().any(|a| a == "--mesh-sidecar-image"));
        assert!(!args.iter().any(|a| a == "--mesh-plain-http-derp"));
        // The tailnet sidecar settings reach the operator's command line.
        let mesh = operator_manifests(&InstallOptions {
            mesh_sidecar_image: Some("registry.example/tailscale:1".into()),
            mesh_plain_http_derp: true,
            ..InstallOptions::default()
        });
        assert_eq!(
            pod_spec(&mesh).containers[0].args,
            Some(strings(&[
                "run",
                "--namespace",
                crate::DEFAULT_NAMESPACE,
                "--leader-elect",
                "--mesh-sidecar-image",
                "registry.example/tailscale:1",
                "--mesh-plain-http-derp"
            ]))
        );
        // Without any, the list is written and empty.
        let plain = operator_manifests(&InstallOptions::default());
        let values = plain.to_values().expect("values");
        assert_eq!(
            values[4]["spec"]["template"]["spec"]["imagePullSecrets"],
            serde_json::json!([])
        );
    }

    #[test]
    fn objects_carry_their_kind_and_sit_in_the_operator_namespace() {
        let opts = InstallOptions {
            namespace: "agents-x".into(),
            public_orchestrator_url: Some("http://orch:8080".into()),
            ..InstallOptions::default()
        };
        let values = operator_manifests(&opts).to_values().expect("values");
        let kinds: Vec<(&str, &str)> = values
            .iter()
            .map(|v| {
                (
                    v["apiVersion"].as_str().unwrap_or_default(),
                    v["kind"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("v1", "Namespace"),
                ("v1", "ServiceAccount"),
                ("rbac.authorization.k8s.io/v1", "Role"),
                ("rbac.authorization.k8s.io/v1", "RoleBinding"),
                ("apps/v1", "Deployment"),
            ]
        );
        assert_eq!(values[0]["metadata"]["name"], "agents-x");
        assert!(values[0]["metadata"].get("namespace").is_none());
        for v in &values[1..] {
            assert_eq!(v["metadata"]["namespace"], "agents-x", "{v}");
            assert_eq!(v["metadata"]["name"], OPERATOR_NAME, "{v}");
        }
        assert_eq!(values[3]["subjects"][0]["namespace"], "agents-x");
        let env = &values[4]["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(
            env,
            &serde_json::json!([
                {"name": "GUILDNET_NAMESPACE", "value": "agents-x"},
                {"name": "PUBLIC_ORCHESTRATOR_URL", "value": "http://orch:8080"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ])
        );
    }
}
