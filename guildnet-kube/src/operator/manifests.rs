//! The objects the operator creates, as typed k8s-openapi structs: an AgentTask's env Secret,
//! Deployment (around [`agent_pod_spec`]) and Service, and an AgentPool's warm pods. Every agent
//! pod, cold or warm, is built on [`agent_container`] and [`hardened_pod_spec`], so both carry
//! the same security settings, ports and image defaults.
//!
//! A change to what runs in a task's pod (an extra container, a volume) goes in
//! [`agent_pod_spec`]; one for every agent pod (warm ones too) in [`hardened_pod_spec`].
//!
//! This module owns the shape of the children and nothing else: pure functions of their inputs,
//! no API calls, no clock, no randomness (the spec hash of an object is stable).

use super::OperatorConfig;
use crate::crd::{AgentTask, EDITOR_PORT, MANAGED_BY, TASK_LABEL};
use crate::pool::{
    AgentPool, AgentPoolSpec, POOL_HASH_ANNOTATION, POOL_LABEL, POOL_STATE_LABEL, POOL_TOKEN_KEY,
};
use guildnet_core::agent_env;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction,
    LocalObjectReference, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::Resource;
use std::collections::BTreeMap;

/// Port of the agent's own health endpoint (`/healthz`), probed by the kubelet.
pub const AGENT_HEALTH_PORT: u16 = 8081;
/// Annotation on the pod template carrying the attempt (a new attempt rolls the pod).
pub const ATTEMPT_ANNOTATION: &str = "guildnet.io/attempt";
/// Annotation on each child with a hash of what the operator last applied: a reconcile that
/// would apply the same object again skips the request (the watch cache shows it is there).
pub const SPEC_HASH_ANNOTATION: &str = "guildnet.io/spec-hash";
/// Name of the agent's container in every agent pod.
pub const AGENT_CONTAINER: &str = "agent";
/// The agent image's user and group (`coder`); pods run as it, never as root.
pub const AGENT_UID: i64 = 1000;
/// The agent image's workspace.
pub const POD_WORKSPACE: &str = "/home/coder/workspace";
/// The agent's state dir in its image (outside the workspace).
pub const POD_STATE_DIR: &str = "/home/coder/.guildnet/state";
/// Value of `app.kubernetes.io/name` on every agent object.
const APP_NAME: &str = "guildnet-agent";

/// What the orchestrator's credentials Secret holds for one attempt.
#[derive(Clone)]
pub struct Credentials {
    /// The agent token.
    pub token: String,
    /// The code-server password.
    pub password: String,
    /// The agent's secret environment (`env.<NAME>` keys), as raw bytes.
    pub secret_env: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the values are secrets.
        f.debug_struct("Credentials")
            .field("secret_env", &self.secret_env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Name of the operator-made env Secret for a workload.
pub fn env_secret_name(workload: &str) -> String {
    format!("{workload}-env")
}

/// Labels of an AgentTask's children and of its pods.
pub fn labels(workload: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (TASK_LABEL.to_owned(), workload.to_owned()),
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
    ])
}

/// Metadata of an AgentTask's child: name, namespace, labels, the controller owner reference.
fn child_meta(name: String, workload: &str, ns: &str, oref: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ns.to_owned()),
        labels: Some(labels(workload)),
        owner_references: Some(vec![oref.clone()]),
        ..ObjectMeta::default()
    }
}

/// The URL agents reach the orchestrator at: the operator's own, else the resource's.
pub fn orchestrator_url(cfg: &OperatorConfig, from_spec: Option<&str>) -> String {
    cfg.public_orchestrator_url
        .as_deref()
        .or(from_spec)
        .unwrap_or_default()
        .to_owned()
}

/// The env Secret `<workload>-env`: the launch contract, the code-server password and the
/// secret settings, which the agent container reads through `envFrom` (never plain `env`).
pub fn env_secret(
    at: &AgentTask,
    cfg: &OperatorConfig,
    workload: &str,
    ns: &str,
    oref: &OwnerReference,
    creds: &Credentials,
) -> Secret {
    let url = orchestrator_url(cfg, at.spec.orchestrator_url.as_deref());
    // The secret settings first: the launch contract below always wins.
    let mut data: BTreeMap<String, ByteString> = creds
        .secret_env
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect();
    for (k, v) in [
        (agent_env::ORCHESTRATOR_URL, url.as_str()),
        (agent_env::AGENT_TOKEN, creds.token.as_str()),
        (agent_env::TASK_ID, at.spec.task_id.as_str()),
        (agent_env::ORG_NAME, at.spec.org_id.as_str()),
        (agent_env::AGENT_NAME, at.spec.agent_name.as_str()),
        (agent_env::CODE_SERVER_PASSWORD, creds.password.as_str()),
    ] {
        data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
    }
    Secret {
        metadata: child_meta(env_secret_name(workload), workload, ns, oref),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The agent image's defaults (code-server on :8443, /healthz on :8081, workspace and state dir
/// in the image's home). A task's `spec.env` comes after them and so can override any of these.
pub fn image_defaults() -> Vec<EnvVar> {
    vec![
        plain(agent_env::CODE_SERVER, "code-server"),
        plain(agent_env::EDITOR_ADDR, format!("0.0.0.0:{EDITOR_PORT}")),
        plain(
            agent_env::HEALTH_ADDR,
            format!("0.0.0.0:{AGENT_HEALTH_PORT}"),
        ),
        plain(agent_env::WORKSPACE, POD_WORKSPACE),
        plain(agent_env::STATE_DIR, POD_STATE_DIR),
    ]
}

fn resources(requests: (&str, &str), limits: (&str, &str)) -> ResourceRequirements {
    let pair = |(cpu, memory): (&str, &str)| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(pair(requests)),
        limits: Some(pair(limits)),
        ..ResourceRequirements::default()
    }
}

/// The agent container: image, env, its two named ports (`editor`, `health`), no privilege
/// escalation, every capability dropped. Callers add probes, `envFrom` and resources.
pub fn agent_container(image: &str, env: Vec<EnvVar>) -> Container {
    Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        ports: Some(vec![
            ContainerPort {
                name: Some("editor".to_owned()),
                container_port: i32::from(EDITOR_PORT),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("health".to_owned()),
                container_port: i32::from(AGENT_HEALTH_PORT),
                ..ContainerPort::default()
            },
        ]),
        env: Some(env),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// A pod spec around `containers` with every agent pod's hardening: no service account token,
/// no service links, non-root (the image's `coder` user), the runtime's default seccomp
/// profile, and the operator's image pull Secrets.
pub fn hardened_pod_spec(containers: Vec<Container>, cfg: &OperatorConfig) -> PodSpec {
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        image_pull_secrets: Some(
            cfg.image_pull_secrets
                .iter()
                .map(|n| LocalObjectReference { name: n.clone() })
                .collect(),
        ),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(AGENT_UID),
            run_as_group: Some(AGENT_UID),
            fs_group: Some(AGENT_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers,
        ..PodSpec::default()
    }
}

fn health_probe(initial: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".to_owned()),
            port: IntOrString::String("health".to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The pod spec of an AgentTask's agent: the image defaults then `spec.env` as plain env, the
/// launch contract and secrets from the env Secret (`envFrom`), health probes, `spec.resources`
/// or the defaults (requests 250m / 512Mi, limits 2 CPUs / 4Gi).
pub fn agent_pod_spec(at: &AgentTask, workload: &str, cfg: &OperatorConfig) -> PodSpec {
    let env = image_defaults()
        .into_iter()
        .chain(at.spec.env.iter().map(|(k, v)| plain(k, v.clone())))
        .collect();
    let mut agent = agent_container(&at.spec.image, env);
    agent.env_from = Some(vec![EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: env_secret_name(workload),
            ..SecretEnvSource::default()
        }),
        ..EnvFromSource::default()
    }]);
    agent.readiness_probe = Some(health_probe(2, 5, 3));
    agent.liveness_probe = Some(health_probe(15, 10, 6));
    agent.resources = Some(
        at.spec
            .resources
            .clone()
            .unwrap_or_else(|| resources(("250m", "512Mi"), ("2", "4Gi"))),
    );
    let mut pod = hardened_pod_spec(vec![agent], cfg);
    // On the tailnet: the tailscale sidecar (issue 22).
    if let Some(m) = crate::mesh_sidecar::pod_parts(
        at,
        &crate::crd::credentials_secret_name(at),
        &cfg.mesh_sidecar,
    ) {
        m.apply(&mut pod, AGENT_CONTAINER);
    }
    pod
}

/// The Deployment `<workload>`: one replica of [`agent_pod_spec`], recreated (never two agents of
/// one task at once, even across attempts), the attempt on the pod template so a new attempt
/// rolls the pod.
pub fn deployment(
    at: &AgentTask,
    workload: &str,
    ns: &str,
    oref: &OwnerReference,
    cfg: &OperatorConfig,
) -> Deployment {
    Deployment {
        metadata: child_meta(workload.to_owned(), workload, ns, oref),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                ..DeploymentStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    TASK_LABEL.to_owned(),
                    workload.to_owned(),
                )])),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(workload)),
                    annotations: Some(BTreeMap::from([(
                        ATTEMPT_ANNOTATION.to_owned(),
                        at.spec.attempt.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(agent_pod_spec(at, workload, cfg)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The Service `<workload>`: the agent's editor port.
pub fn service(workload: &str, ns: &str, oref: &OwnerReference) -> Service {
    Service {
        metadata: child_meta(workload.to_owned(), workload, ns, oref),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                TASK_LABEL.to_owned(),
                workload.to_owned(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some("editor".to_owned()),
                port: i32::from(EDITOR_PORT),
                target_port: Some(IntOrString::String("editor".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The hash of the settings that shape a warm pod (not the pool's size).
pub fn pod_hash(spec: &AgentPoolSpec, url: &str) -> String {
    use sha2::Digest;
    let key = serde_json::to_vec(&(&spec.image, &spec.runner, url, &spec.token_secret))
        .unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&key)[..8])
}

/// A warm agent pod of `pool`: the pool token from the pool's Secret, its own pod name from the
/// downward API, no task credentials; never restarted in place (a used agent exits after its
/// task).
pub fn warm_pod(pool: &AgentPool, ns: &str, cfg: &OperatorConfig) -> Pod {
    let s = &pool.spec;
    let url = orchestrator_url(cfg, s.orchestrator_url.as_deref());
    let mut env = image_defaults();
    env.push(plain(agent_env::ORCHESTRATOR_URL, url.clone()));
    env.push(plain(agent_env::ORG_NAME, s.org_id.clone()));
    env.push(EnvVar {
        name: agent_env::POOL_POD.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    env.push(EnvVar {
        name: agent_env::POOL_TOKEN.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s.token_secret.clone(),
                key: POOL_TOKEN_KEY.to_owned(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    if let Some(r) = &s.runner {
        env.push(plain(agent_env::POOL_RUNNER, r.clone()));
    }
    let mut agent = agent_container(&s.image, env);
    agent.resources = Some(resources(("100m", "256Mi"), ("2", "4Gi")));
    let mut spec = hardened_pod_spec(vec![agent], cfg);
    spec.restart_policy = Some("Never".to_owned());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("pool-{}-", s.org_id)),
            namespace: Some(ns.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (POOL_LABEL.to_owned(), s.org_id.clone()),
                (POOL_STATE_LABEL.to_owned(), "warm".to_owned()),
                ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                POOL_HASH_ANNOTATION.to_owned(),
                pod_hash(s, &url),
            )])),
            owner_references: Some(pool.controller_owner_ref(&()).into_iter().collect()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        ..Pod::default()
    }
}

/// A stable hash of an object as it would be applied.
pub fn spec_hash<K: serde::Serialize>(obj: &K) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&bytes)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AgentTaskSpec;
    use crate::pool::AgentPoolSpec;

    fn task(env: &[(&str, &str)]) -> AgentTask {
        let mut spec: AgentTaskSpec = serde_json::from_value(serde_json::json!({
            "orgId": "acme", "taskId": "t1", "task": "x", "image": "img:1", "agentName": "t1-a1",
            "attempt": 3, "orchestratorUrl": "http://spec:1",
        }))
        .expect("spec");
        spec.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut t = AgentTask::new("atask-t1", spec);
        t.metadata.uid = Some("uid-1".into());
        t
    }

    fn oref(t: &AgentTask) -> OwnerReference {
        t.controller_owner_ref(&()).expect("owner ref")
    }

    fn cfg() -> OperatorConfig {
        let mut c = OperatorConfig::new("ns");
        c.image_pull_secrets = vec!["regcred".into()];
        c
    }

    fn creds() -> Credentials {
        Credentials {
            token: "tok-secret".into(),
            password: "pw-secret".into(),
            secret_env: [
                ("GUILDNET_FORGE_TOKEN".to_owned(), b"forge-secret".to_vec()),
                ("OPENAI_API_KEY".to_owned(), b"sk-1".to_vec()),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn env_of(c: &Container) -> Vec<EnvVar> {
        c.env.clone().unwrap_or_default()
    }

    fn value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter()
            .rev()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    fn assert_owned(meta: &ObjectMeta, uid: &str, kind: &str) {
        let refs = meta.owner_references.as_ref().expect("owner references");
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].uid, uid);
        assert_eq!(refs[0].kind, kind);
        assert_eq!(refs[0].controller, Some(true));
    }

    fn assert_hardened(pod: &PodSpec) {
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        let sc = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(AGENT_UID));
        assert_eq!(sc.run_as_group, Some(AGENT_UID));
        assert_eq!(sc.fs_group, Some(AGENT_UID));
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let names: Vec<&str> = pod
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["regcred"]);
        let agent = &pod.containers[0];
        assert_eq!(agent.name, AGENT_CONTAINER);
        let csc = agent
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(
            csc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(csc.privileged, None);
        let ports: Vec<(Option<&str>, i32)> = agent
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                (Some("editor"), i32::from(EDITOR_PORT)),
                (Some("health"), i32::from(AGENT_HEALTH_PORT))
            ]
        );
    }

    #[test]
    fn the_env_secret_holds_the_contract_and_the_secret_settings_and_the_contract_wins() {
        let t = task(&[]);
        let mut c = creds();
        // A credentials key naming a contract variable never overrides the contract.
        c.secret_env
            .insert(agent_env::TASK_ID.to_owned(), b"forged".to_vec());
        let s = env_secret(&t, &cfg(), "atask-t1", "ns", &oref(&t), &c);
        assert_eq!(s.metadata.name.as_deref(), Some("atask-t1-env"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_owned(&s.metadata, "uid-1", "AgentTask");
        assert_eq!(s.metadata.labels, Some(labels("atask-t1")));
        let data = s.data.expect("data");
        let get = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf8");
        assert_eq!(get("GUILDNET_FORGE_TOKEN"), "forge-secret");
        assert_eq!(get("OPENAI_API_KEY"), "sk-1");
        assert_eq!(get(agent_env::AGENT_TOKEN), "tok-secret");
        assert_eq!(get(agent_env::CODE_SERVER_PASSWORD), "pw-secret");
        assert_eq!(get(agent_env::TASK_ID), "t1");
        assert_eq!(get(agent_env::ORG_NAME), "acme");
        assert_eq!(get(agent_env::AGENT_NAME), "t1-a1");
        // Without an operator URL the spec's is used; the operator's wins.
        assert_eq!(get(agent_env::ORCHESTRATOR_URL), "http://spec:1");
        let mut op = cfg();
        op.public_orchestrator_url = Some("http://op:1".into());
        let s = env_secret(&t, &op, "atask-t1", "ns", &oref(&t), &c);
        assert_eq!(
            s.data.expect("data")[agent_env::ORCHESTRATOR_URL].0,
            b"http://op:1"
        );
        // The serialized Secret carries base64 `data`, never plain `stringData`.
        let v = serde_json::to_value(env_secret(&t, &cfg(), "atask-t1", "ns", &oref(&t), &c))
            .expect("json");
        assert!(v.get("stringData").is_none());
        assert!(!v.to_string().contains("tok-secret"));
    }

    #[test]
    fn the_deployment_is_owned_hardened_and_reads_its_secrets_from_the_env_secret() {
        let t = task(&[("LEVEL", "3"), (agent_env::WORKSPACE, "/elsewhere")]);
        let d = deployment(&t, "atask-t1", "ns", &oref(&t), &cfg());
        assert_eq!(d.metadata.name.as_deref(), Some("atask-t1"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("ns"));
        assert_owned(&d.metadata, "uid-1", "AgentTask");
        let l = d.metadata.labels.clone().expect("labels");
        assert_eq!(l[MANAGED_BY.0], MANAGED_BY.1);
        assert_eq!(l[TASK_LABEL], "atask-t1");
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.and_then(|s| s.type_).as_deref(),
            Some("Recreate")
        );
        let sel = spec.selector.match_labels.expect("selector");
        let tmpl_meta = spec.template.metadata.expect("template metadata");
        // The selector matches the pod's labels.
        for (k, v) in &sel {
            assert_eq!(
                tmpl_meta.labels.as_ref().expect("pod labels").get(k),
                Some(v)
            );
        }
        assert_eq!(
            tmpl_meta.annotations.expect("annotations")[ATTEMPT_ANNOTATION],
            "3"
        );
        let pod = spec.template.spec.expect("pod spec");
        assert_hardened(&pod);
        assert_eq!(pod.containers.len(), 1);
        let agent = &pod.containers[0];
        assert_eq!(agent.image.as_deref(), Some("img:1"));
        let from = agent.env_from.clone().expect("envFrom");
        assert_eq!(
            from[0].secret_ref.as_ref().map(|r| r.name.as_str()),
            Some("atask-t1-env")
        );
        // No secret and no contract variable in plain env: they come from the env Secret.
        let env = env_of(agent);
        for name in agent_env::OPERATOR_SET.iter().chain(agent_env::SECRETS) {
            assert!(env.iter().all(|e| e.name != *name), "{name} in plain env");
        }
        assert!(env.iter().all(|e| e.value_from.is_none()));
        // The image defaults, then spec.env (which wins).
        assert_eq!(value(&env, agent_env::CODE_SERVER), Some("code-server"));
        assert_eq!(value(&env, agent_env::HEALTH_ADDR), Some("0.0.0.0:8081"));
        assert_eq!(value(&env, agent_env::STATE_DIR), Some(POD_STATE_DIR));
        assert_eq!(value(&env, agent_env::WORKSPACE), Some("/elsewhere"));
        assert_eq!(value(&env, "LEVEL"), Some("3"));
        // Probes on the named health port; default resources.
        let probe = agent.readiness_probe.clone().expect("readiness");
        let get = probe.http_get.expect("httpGet");
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        assert_eq!(get.port, IntOrString::String("health".into()));
        assert!(agent.liveness_probe.is_some());
        let res = agent.resources.clone().expect("resources");
        assert_eq!(
            res.limits.expect("limits")["memory"],
            Quantity("4Gi".into())
        );
        assert_eq!(
            res.requests.expect("requests")["cpu"],
            Quantity("250m".into())
        );
    }

    #[test]
    fn the_task_resources_replace_the_defaults() {
        let mut t = task(&[]);
        t.spec.resources = Some(resources(("1", "1Gi"), ("3", "8Gi")));
        let pod = agent_pod_spec(&t, "atask-t1", &cfg());
        let res = pod.containers[0].resources.clone().expect("resources");
        assert_eq!(res.limits.expect("limits")["cpu"], Quantity("3".into()));
    }

    #[test]
    fn the_service_exposes_the_editor_port_of_the_workload() {
        let t = task(&[]);
        let s = service("atask-t1", "ns", &oref(&t));
        assert_owned(&s.metadata, "uid-1", "AgentTask");
        let spec = s.spec.expect("spec");
        assert_eq!(
            spec.selector,
            Some(BTreeMap::from([(
                TASK_LABEL.to_owned(),
                "atask-t1".to_owned()
            )]))
        );
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, i32::from(EDITOR_PORT));
        assert_eq!(port.target_port, Some(IntOrString::String("editor".into())));
    }

    #[test]
    fn applied_objects_carry_their_kind_and_api_version() {
        let t = task(&[]);
        let d = serde_json::to_value(deployment(&t, "w", "ns", &oref(&t), &cfg())).expect("json");
        assert_eq!(d["apiVersion"], "apps/v1");
        assert_eq!(d["kind"], "Deployment");
        let s = serde_json::to_value(service("w", "ns", &oref(&t))).expect("json");
        assert_eq!(
            (s["apiVersion"].as_str(), s["kind"].as_str()),
            (Some("v1"), Some("Service"))
        );
        let e = serde_json::to_value(env_secret(&t, &cfg(), "w", "ns", &oref(&t), &creds()))
            .expect("json");
        assert_eq!(e["kind"], "Secret");
    }

    #[test]
    fn the_spec_hash_is_stable_and_sees_changes() {
        let t = task(&[]);
        let a = deployment(&t, "w", "ns", &oref(&t), &cfg());
        assert_eq!(spec_hash(&a), spec_hash(&a.clone()));
        let mut t2 = t.clone();
        t2.spec.image = "img:2".into();
        assert_ne!(
            spec_hash(&a),
            spec_hash(&deployment(&t2, "w", "ns", &oref(&t2), &cfg()))
        );
    }

    fn pool(size: u32) -> AgentPool {
        let mut p = AgentPool::new(
            "acme",
            AgentPoolSpec {
                org_id: "acme".into(),
                size,
                image: "reg/agent:1".into(),
                runner: Some("claude".into()),
                idle_seconds: Some(60),
                orchestrator_url: Some("http://10.0.0.1:8080".into()),
                token_secret: "acme-pool-token".into(),
            },
        );
        p.metadata.uid = Some("uid-p".into());
        p
    }

    #[test]
    fn warm_pods_hold_the_pool_token_and_no_task_credentials() {
        let p = warm_pod(&pool(3), "mvp-agents", &cfg());
        let meta = &p.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("pool-acme-"));
        assert_owned(meta, "uid-p", "AgentPool");
        let l = meta.labels.clone().expect("labels");
        assert_eq!(l[POOL_LABEL], "acme");
        assert_eq!(l[POOL_STATE_LABEL], "warm");
        assert_eq!(l[MANAGED_BY.0], MANAGED_BY.1);
        let spec = p.spec.expect("spec");
        assert_hardened(&spec);
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let agent = &spec.containers[0];
        assert!(agent.env_from.is_none());
        let env = env_of(agent);
        for forbidden in [
            agent_env::AGENT_TOKEN,
            agent_env::TASK_ID,
            agent_env::AGENT_NAME,
            agent_env::CODE_SERVER_PASSWORD,
        ] {
            assert!(
                env.iter().all(|e| e.name != forbidden),
                "{forbidden} in a warm pod"
            );
        }
        let tok = env
            .iter()
            .find(|e| e.name == agent_env::POOL_TOKEN)
            .expect("pool token");
        assert!(tok.value.is_none(), "the token comes from the Secret");
        let sel = tok
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .expect("secretKeyRef");
        assert_eq!(
            (sel.name.as_str(), sel.key.as_str()),
            ("acme-pool-token", POOL_TOKEN_KEY)
        );
        let pod_name = env
            .iter()
            .find(|e| e.name == agent_env::POOL_POD)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|f| f.field_ref.as_ref())
            .expect("fieldRef");
        assert_eq!(pod_name.field_path, "metadata.name");
        assert_eq!(value(&env, agent_env::POOL_RUNNER), Some("claude"));
        assert_eq!(value(&env, agent_env::ORG_NAME), Some("acme"));
        assert_eq!(
            value(&env, agent_env::ORCHESTRATOR_URL),
            Some("http://10.0.0.1:8080")
        );
        assert_eq!(value(&env, agent_env::CODE_SERVER), Some("code-server"));
        // The operator's URL wins over the spec's.
        let mut op = cfg();
        op.public_orchestrator_url = Some("http://op:1".into());
        let p = warm_pod(&pool(1), "ns", &op);
        let env = env_of(&p.spec.expect("spec").containers[0]);
        assert_eq!(
            value(&env, agent_env::ORCHESTRATOR_URL),
            Some("http://op:1")
        );
    }

    #[test]
    fn a_new_image_runner_or_url_changes_the_pod_hash_and_the_size_does_not() {
        let p = pool(3);
        let h = pod_hash(&p.spec, "http://u");
        let mut op = cfg();
        op.public_orchestrator_url = Some("http://u".into());
        let pod = warm_pod(&p, "ns", &op);
        assert_eq!(
            pod.metadata.annotations.expect("annotations")[POOL_HASH_ANNOTATION],
            h
        );
        let mut q = p.clone();
        q.spec.size = 7;
        assert_eq!(
            pod_hash(&q.spec, "http://u"),
            h,
            "size does not reshape a pod"
        );
        q.spec.image = "reg/agent:2".into();
        assert_ne!(pod_hash(&q.spec, "http://u"), h);
        let mut r = p.clone();
        r.spec.runner = None;
        assert_ne!(pod_hash(&r.spec, "http://u"), h);
        assert_ne!(pod_hash(&p.spec, "http://other"), h);
        // The hash is the one earlier operators wrote, so an upgrade replaces no warm pod.
        assert_eq!(pod_hash(&p.spec, "http://u"), {
            use sha2::Digest;
            let key = serde_json::to_vec(&serde_json::json!([
                "reg/agent:1",
                "claude",
                "http://u",
                "acme-pool-token"
            ]))
            .expect("json");
            hex::encode(&sha2::Sha256::digest(&key)[..8])
        });
    }

    #[test]
    fn a_mesh_task_gets_the_tailscale_sidecar_and_the_pod_stays_hardened() {
        let mut t = task(&[]);
        let plain = agent_pod_spec(&t, "atask-t1", &cfg());
        assert!(plain.init_containers.is_none(), "no mesh, no sidecar");
        t.spec.mesh = Some(crate::crd::AgentMeshSpec {
            login_server: "http://100.64.0.9:8080".into(),
            hostname: "t1-a1".into(),
            orchestrator_url: Some("http://100.64.0.1:8080".into()),
        });
        assert_eq!(crate::operator::reconcile::validate(&t), Ok(()));
        let pod = agent_pod_spec(&t, "atask-t1", &cfg());
        // What the operator had built is still there.
        assert_hardened(&pod);
        let agent = &pod.containers[0];
        let env = env_of(agent);
        assert_eq!(value(&env, "HTTPS_PROXY"), Some("http://127.0.0.1:1056"));
        assert_eq!(
            value(&env, "ORCHESTRATOR_URL"),
            Some("http://100.64.0.1:8080")
        );
        let side = &pod.init_containers.as_ref().expect("sidecar")[0];
        assert_eq!(side.name, "tailscale");
        assert_eq!(side.restart_policy.as_deref(), Some("Always"));
        let sc = side.security_context.as_ref().expect("security context");
        assert_eq!(sc.privileged, Some(false));
        assert!(sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .is_none());
        let key = side
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "TS_AUTHKEY")
            .expect("TS_AUTHKEY");
        assert!(key.value.is_none(), "the key is never inline");
        assert_eq!(
            key.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|r| r.name.as_str()),
            Some("atask-t1-credentials")
        );
        t.spec.mesh.as_mut().expect("mesh").hostname = "No Label".into();
        assert!(crate::operator::reconcile::validate(&t)
            .expect_err("bad")
            .starts_with("spec.mesh.hostname"));
    }
}
