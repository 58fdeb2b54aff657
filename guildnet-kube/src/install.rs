//! Per-cluster install: the namespace, the AgentTask CRD, the operator's ServiceAccount, a Role
//! and RoleBinding limited to that namespace and to what the operator does, and the operator's
//! Deployment. Applied server-side (idempotent); the same objects are checked in under `deploy/`.

use crate::{Error, FIELD_MANAGER, MANAGED_BY};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::ResourceExt;
use serde_json::{json, Value};
use std::time::Duration;

/// Name of the operator's ServiceAccount, Role, RoleBinding and Deployment.
pub const OPERATOR_NAME: &str = "guildnet-operator";
/// Port of the operator's /metrics and /healthz.
pub const OPERATOR_METRICS_PORT: u16 = 8080;

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

fn labels() -> Value {
    json!({MANAGED_BY.0: MANAGED_BY.1, "app.kubernetes.io/name": OPERATOR_NAME})
}

/// The Role's rules: exactly what the reconciler and its watches use, in one namespace.
pub fn operator_rules() -> Value {
    json!([
        {"apiGroups": ["guildnet.io"], "resources": ["agenttasks"],
         "verbs": ["get", "list", "watch", "delete"]},
        {"apiGroups": ["guildnet.io"], "resources": ["agenttasks/status"],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": ["guildnet.io"], "resources": ["agentpools"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["guildnet.io"], "resources": ["agentpools/status"],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": [""], "resources": ["pods"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["services"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"],
         "verbs": ["create", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "create", "update"]},
    ])
}

/// The namespaced objects (everything but the CRD), in apply order.
pub fn operator_manifests(opts: &InstallOptions) -> Vec<Value> {
    let ns = &opts.namespace;
    let mut env = vec![json!({"name": "GUILDNET_NAMESPACE", "value": ns})];
    if let Some(url) = &opts.public_orchestrator_url {
        env.push(json!({"name": "PUBLIC_ORCHESTRATOR_URL", "value": url}));
    }
    env.push(
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    );
    let probe = json!({"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10});
    let mut args = vec![
        "run".to_owned(),
        "--namespace".to_owned(),
        ns.clone(),
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
    let pull_secrets: Vec<Value> = opts
        .image_pull_secrets
        .iter()
        .map(|n| json!({"name": n}))
        .collect();
    vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels()},
        }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": OPERATOR_NAME, "namespace": ns, "labels": labels()},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": OPERATOR_NAME, "namespace": ns, "labels": labels()},
            "rules": operator_rules(),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": OPERATOR_NAME, "namespace": ns, "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_NAME},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": ns}],
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": OPERATOR_NAME, "namespace": ns, "labels": labels()},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": OPERATOR_NAME}},
                "template": {
                    "metadata": {"labels": labels()},
                    "spec": {
                        "serviceAccountName": OPERATOR_NAME,
                        "imagePullSecrets": pull_secrets,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "operator",
                            "image": opts.image,
                            "args": args,
                            "env": env,
                            "ports": [{"name": "metrics", "containerPort": OPERATOR_METRICS_PORT}],
                            "readinessProbe": probe,
                            "livenessProbe": probe,
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "32Mi"},
                                "limits": {"cpu": "500m", "memory": "128Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }],
                    },
                },
            },
        }),
    ]
}

/// `deploy/crd.yaml`.
pub fn crd_yaml() -> Result<String, Error> {
    crate::crd::crd_yaml()
}

/// `deploy/operator.yaml` for the default options.
pub fn operator_yaml(opts: &InstallOptions) -> Result<String, Error> {
    crate::yaml::to_multi_yaml(&operator_manifests(opts))
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
        let mut applied = Vec::new();
        for obj in operator_manifests(opts) {
            let kind = obj["kind"].as_str().unwrap_or_default();
            if (kind == "Deployment") != (self == InstallStep::Deployment) {
                continue;
            }
            apply_value(client, &obj, &pp).await?;
            applied.push(format!(
                "{kind}/{}",
                obj["metadata"]["name"].as_str().unwrap_or_default()
            ));
        }
        Ok(applied)
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

/// Server-side applies one manifest given as JSON (apiVersion/kind decide the endpoint).
pub async fn apply_value(
    client: &kube::Client,
    obj: &Value,
    pp: &PatchParams,
) -> Result<(), Error> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = match kind {
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Deployment" => "deployments",
        other => {
            return Err(Error::Invalid(format!(
                "install does not know the kind {other}"
            )))
        }
    };
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    let dobj: DynamicObject =
        serde_json::from_value(obj.clone()).map_err(|e| Error::Serialize {
            what: "manifest",
            reason: e.to_string(),
        })?;
    let name = dobj.name_any();
    let api: Api<DynamicObject> = match dobj.namespace() {
        Some(ns) => Api::namespaced_with(client.clone(), &ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(&name, pp, &Patch::Apply(obj)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_secrets_reach_the_operator_pod_and_its_agent_pods() {
        let opts = InstallOptions {
            image: "registry.example/guildnet-operator:1".into(),
            image_pull_secrets: vec!["regcred".into()],
            ..InstallOptions::default()
        };
        let objs = operator_manifests(&opts);
        let dep = objs
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("operator Deployment");
        let pod = &dep["spec"]["template"]["spec"];
        // The operator's own pod pulls its image with the Secret...
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(
            pod["containers"][0]["image"],
            "registry.example/guildnet-operator:1"
        );
        // ...and gives it to every agent pod it creates.
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let i = args
            .iter()
            .position(|a| *a == "--image-pull-secret")
            .expect("--image-pull-secret");
        assert_eq!(args[i + 1], "regcred");
        assert!(!args.contains(&"--mesh-sidecar-image"));
        assert!(!args.contains(&"--mesh-plain-http-derp"));
        // The tailnet sidecar settings reach the operator's command line.
        let mesh = operator_manifests(&InstallOptions {
            mesh_sidecar_image: Some("registry.example/tailscale:1".into()),
            mesh_plain_http_derp: true,
            ..InstallOptions::default()
        });
        let dep = mesh
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("operator Deployment");
        let args = &dep["spec"]["template"]["spec"]["containers"][0]["args"];
        assert_eq!(
            args,
            &json!([
                "run",
                "--namespace",
                crate::DEFAULT_NAMESPACE,
                "--leader-elect",
                "--mesh-sidecar-image",
                "registry.example/tailscale:1",
                "--mesh-plain-http-derp"
            ])
        );
        // Without any, the list is empty.
        let plain = operator_manifests(&InstallOptions::default());
        let dep = plain
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("operator Deployment");
        assert_eq!(
            dep["spec"]["template"]["spec"]["imagePullSecrets"],
            json!([])
        );
    }
}
