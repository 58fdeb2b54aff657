//! deploy/helm/guildnet: the Helm chart, checked by the real `helm` (built pinned by
//! `scripts/testbed/install.sh helm`). `helm lint --strict` on the main value sets; `helm
//! template` rendered and read back (SQLite on a PVC by default; no orchestrator PVC and the
//! PostgreSQL URL from a Secret with postgres; no secret value in a pod spec; the CRDs only with
//! the operator, and the same as deploy/crd.yaml); bad values refused at template time with a
//! message naming the field; and `helm install`, `upgrade` and `uninstall` against the testbed's
//! real kube-apiserver, which validates every object (the objects are read back from it).
//!
//! The pods are not run here: like deploy_orchestrator.rs, this checks what the API server
//! accepts and stores. `helm_node.rs` runs the chart's pods on the testbed's real node.

use base64::Engine as _;
use guildnet_testbed::kube::KubeCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The real helm, with its cache, config and data dirs in a temp dir (never the user's).
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

/// A finished helm command.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Helm {
    fn new() -> Helm {
        Helm {
            bin: guildnet_testbed::bin("helm")
                .expect("the testbed's helm (bash scripts/testbed/install.sh helm)"),
            home: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let h = self.home.path();
        let out = Command::new(&self.bin)
            .args(args)
            .env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_DATA_HOME", h.join("data"))
            .env_remove("KUBECONFIG")
            .output()
            .expect("run helm");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `helm <args>` that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(r.ok, "helm {args:?} failed:\n{}\n{}", r.stdout, r.stderr);
        r.stdout
    }

    /// `helm template gn <chart> -n guildnet` with `--set` values: the rendered objects, or
    /// helm's error.
    fn template(&self, sets: &[&str]) -> Result<Vec<Value>, String> {
        let chart = chart();
        let mut args = vec![
            "template",
            "gn",
            chart.to_str().unwrap(),
            "--namespace",
            "guildnet",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        let r = self.run(&args);
        if !r.ok {
            return Err(r.stderr);
        }
        let objs = serde_saphyr::from_multiple::<Value>(&r.stdout).expect("helm template's YAML");
        Ok(objs.into_iter().filter(|o| !o.is_null()).collect())
    }
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/guildnet")
}

fn kinds(objs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objs
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    k.sort();
    k
}

fn get<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", kinds(objs)))
}

fn has(objs: &[Value], kind: &str, name: &str) -> bool {
    objs.iter()
        .any(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn container<'a>(dep: &'a Value, name: &str) -> &'a Value {
    dep["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
}

fn secret_ref(c: &Value, var: &str) -> (String, String) {
    let e = env(c, var).unwrap_or_else(|| panic!("env {var} missing"));
    assert!(e.get("value").is_none(), "{var} must not be inline: {e}");
    let r = &e["valueFrom"]["secretKeyRef"];
    (
        r["name"].as_str().unwrap().to_owned(),
        r["key"].as_str().unwrap().to_owned(),
    )
}

fn decoded(secret: &Value, key: &str) -> String {
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in the Secret"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// No workload carries any of these strings anywhere in its spec (env values, args, ...).
fn assert_not_in_workloads(objs: &[Value], secrets: &[String]) {
    for o in objs.iter().filter(|o| o["kind"] == "Deployment") {
        let text = o.to_string();
        for s in secrets {
            assert!(
                !text.contains(s.as_str()),
                "a secret value is in Deployment {}",
                o["metadata"]["name"]
            );
        }
    }
}

#[test]
fn helm_lint_passes_on_each_kind_of_install() {
    let helm = Helm::new();
    let chart = chart();
    for sets in [
        vec![],
        vec![
            "controlPlane.store.postgres.url=postgres://g:pw@db:5432/g",
            "controlPlane.orchestrator.replicas=3",
        ],
        vec!["controlPlane.enabled=false"],
        vec!["operator.enabled=false"],
    ] {
        let mut args = vec!["lint", chart.to_str().unwrap(), "--strict"];
        for s in &sets {
            args.extend(["--set", s]);
        }
        let out = helm.ok(&args);
        assert!(out.contains("0 chart(s) failed"), "{sets:?}: {out}");
    }
}

#[test]
fn by_default_the_orchestrator_keeps_sqlite_on_a_persistent_volume() {
    let helm = Helm::new();
    let objs = helm.template(&[]).expect("default values render");
    let pvc = get(
        &objs,
        "PersistentVolumeClaim",
        "gn-guildnet-orchestrator-state",
    );
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteOnce");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "uninstalling must not delete the database"
    );
    let dep = get(&objs, "Deployment", "gn-guildnet-orchestrator");
    assert_eq!(dep["spec"]["replicas"], 1);
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    let pod = &dep["spec"]["template"]["spec"];
    let state = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert_eq!(
        state["persistentVolumeClaim"]["claimName"],
        "gn-guildnet-orchestrator-state"
    );
    let c = container(dep, "orchestrator");
    assert!(env(c, "GUILDNET_STORE").is_none(), "SQLite: no store URL");
    assert_eq!(
        env(c, "GUILDNET_STATE_DIR").unwrap()["value"],
        "/var/lib/guildnet/state"
    );
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "state" && m["mountPath"] == "/var/lib/guildnet/state"));
    assert_eq!(env(c, "GUILDNET_BACKEND").unwrap()["value"], "kubernetes");
    assert_eq!(env(c, "GUILDNET_NAMESPACE").unwrap()["value"], "guildnet");
    assert_eq!(
        env(c, "PUBLIC_ORCHESTRATOR_URL").unwrap()["value"],
        "http://gn-guildnet-orchestrator.guildnet.svc:8080",
        "agents reach the orchestrator through its Service"
    );
    let svc = get(&objs, "Service", "gn-guildnet-orchestrator");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&dep["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert!(!has(
        &objs,
        "PodDisruptionBudget",
        "gn-guildnet-orchestrator"
    ));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);

    // The admin token and the dashboard password: generated into the chart's Secret, taken
    // from it by reference, never written into a pod spec.
    let secret = get(&objs, "Secret", "gn-guildnet");
    let token = decoded(secret, "admin-token");
    let password = decoded(secret, "dashboard-password");
    assert!(token.len() >= 32 && password.len() >= 16);
    assert!(secret["data"].get("store-url").is_none());
    assert_eq!(
        secret_ref(c, "ORCHESTRATOR_TOKEN"),
        ("gn-guildnet".into(), "admin-token".into())
    );
    let dash = get(&objs, "Deployment", "gn-guildnet-dashboard");
    let d = container(dash, "dashboard");
    assert_eq!(
        secret_ref(d, "ORCHESTRATOR_TOKEN"),
        ("gn-guildnet".into(), "admin-token".into())
    );
    assert_eq!(
        secret_ref(d, "GUILDNET_DASHBOARD_PASSWORD"),
        ("gn-guildnet".into(), "dashboard-password".into())
    );
    assert_eq!(
        env(d, "GUILDNET_ORCHESTRATOR_URL").unwrap()["value"],
        "http://gn-guildnet-orchestrator.guildnet.svc:8080"
    );
    assert!(has(
        &objs,
        "PersistentVolumeClaim",
        "gn-guildnet-dashboard-state"
    ));
    assert_not_in_workloads(&objs, &[token, password]);

    // The operator is on by default: its CRDs, kept on uninstall, and its RBAC in the agents'
    // namespace, the one the orchestrator creates AgentTasks in.
    for crd in ["agenttasks.guildnet.io", "agentpools.guildnet.io"] {
        let o = get(&objs, "CustomResourceDefinition", crd);
        assert_eq!(
            o["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
    let op = get(&objs, "Deployment", "gn-guildnet-operator");
    let args = container(op, "operator")["args"].clone();
    assert_eq!(
        args,
        serde_json::json!(["run", "--namespace", "guildnet", "--leader-elect"])
    );
    assert_eq!(
        get(&objs, "Role", "gn-guildnet-operator")["metadata"]["namespace"],
        "guildnet"
    );
}

#[test]
fn the_orchestrator_runs_orgs_without_a_kubeconfig_in_its_own_cluster_with_a_namespaced_role() {
    let helm = Helm::new();
    let objs = helm
        .template(&["agentNamespace=agents"])
        .expect("default values render");
    let dep = get(&objs, "Deployment", "gn-guildnet-orchestrator");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    let c = container(dep, "orchestrator");
    assert_eq!(env(c, "GUILDNET_KUBE_IN_CLUSTER").unwrap()["value"], "true");
    // Its rights: a Role in the agents' namespace only, bound to its ServiceAccount.
    let role = get(&objs, "Role", "gn-guildnet-orchestrator");
    assert_eq!(role["metadata"]["namespace"], "agents");
    let rules = serde_json::to_string(&role["rules"]).unwrap();
    for r in [
        "agenttasks",
        "agenttasks/status",
        "agentpools",
        "secrets",
        "pods/portforward",
    ] {
        assert!(rules.contains(r), "{r} missing from {rules}");
    }
    assert!(
        !rules.contains("namespaces") && !rules.contains('*'),
        "{rules}"
    );
    let binding = get(&objs, "RoleBinding", "gn-guildnet-orchestrator");
    assert_eq!(binding["metadata"]["namespace"], "agents");
    assert_eq!(binding["subjects"][0]["name"], "gn-guildnet-orchestrator");
    assert_eq!(binding["subjects"][0]["namespace"], "guildnet");
    assert!(
        !objs.iter().any(|o| o["kind"] == "ClusterRole"
            && o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("orchestrator"))),
        "nothing cluster-wide for the orchestrator"
    );

    // Off: no token, no rights, no flag.
    let objs = helm
        .template(&["controlPlane.orchestrator.inCluster=false"])
        .expect("inCluster=false renders");
    let dep = get(&objs, "Deployment", "gn-guildnet-orchestrator");
    assert_eq!(
        dep["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    assert!(env(container(dep, "orchestrator"), "GUILDNET_KUBE_IN_CLUSTER").is_none());
    assert!(!has(&objs, "Role", "gn-guildnet-orchestrator"));
}

#[test]
fn with_postgres_there_is_no_orchestrator_volume_and_the_url_comes_from_a_secret() {
    let helm = Helm::new();
    let url = "postgres://guildnet:s3cr3t-pw@db.internal:5432/guildnet?sslmode=require";
    let objs = helm
        .template(&[
            &format!("controlPlane.store.postgres.url={url}"),
            "controlPlane.orchestrator.replicas=3",
        ])
        .expect("postgres values render");
    assert!(!has(
        &objs,
        "PersistentVolumeClaim",
        "gn-guildnet-orchestrator-state"
    ));
    let dep = get(&objs, "Deployment", "gn-guildnet-orchestrator");
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(dep["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let state = dep["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert!(state.get("emptyDir").is_some(), "{state}");
    let c = container(dep, "orchestrator");
    assert_eq!(
        secret_ref(c, "GUILDNET_STORE"),
        ("gn-guildnet".into(), "store-url".into())
    );
    let secret = get(&objs, "Secret", "gn-guildnet");
    assert_eq!(decoded(secret, "store-url"), url);
    assert_not_in_workloads(&objs, &[url.to_owned(), "s3cr3t-pw".to_owned()]);
    assert_eq!(
        get(&objs, "PodDisruptionBudget", "gn-guildnet-orchestrator")["spec"]["minAvailable"],
        1
    );

    // A Secret of the user's own: the chart's Secret then holds no URL.
    let objs = helm
        .template(&[
            "controlPlane.store.postgres.existingSecret=guildnet-db",
            "controlPlane.store.postgres.existingSecretKey=url",
            "controlPlane.orchestrator.replicas=2",
        ])
        .expect("existingSecret values render");
    let c = container(
        get(&objs, "Deployment", "gn-guildnet-orchestrator"),
        "orchestrator",
    );
    assert_eq!(
        secret_ref(c, "GUILDNET_STORE"),
        ("guildnet-db".into(), "url".into())
    );
    assert!(get(&objs, "Secret", "gn-guildnet")["data"]
        .get("store-url")
        .is_none());
    assert!(!has(
        &objs,
        "PersistentVolumeClaim",
        "gn-guildnet-orchestrator-state"
    ));
}

#[test]
fn the_operator_and_the_control_plane_install_alone() {
    let helm = Helm::new();
    let op = helm
        .template(&["controlPlane.enabled=false"])
        .expect("operator only");
    assert_eq!(
        kinds(&op),
        [
            "CustomResourceDefinition/agentpools.guildnet.io",
            "CustomResourceDefinition/agenttasks.guildnet.io",
            "Deployment/gn-guildnet-operator",
            "Role/gn-guildnet-operator",
            "RoleBinding/gn-guildnet-operator",
            "ServiceAccount/gn-guildnet-operator",
        ]
    );
    let cp = helm
        .template(&["operator.enabled=false", "agentNamespace=agents"])
        .expect("control plane only");
    assert!(cp.iter().all(|o| o["kind"] != "CustomResourceDefinition"));
    assert!(!has(&cp, "Deployment", "gn-guildnet-operator"));
    assert!(has(&cp, "Deployment", "gn-guildnet-dashboard"));
    let c = container(
        get(&cp, "Deployment", "gn-guildnet-orchestrator"),
        "orchestrator",
    );
    assert_eq!(env(c, "GUILDNET_NAMESPACE").unwrap()["value"], "agents");
    // CRDs managed elsewhere.
    let no_crds = helm
        .template(&["operator.installCRDs=false"])
        .expect("no CRDs");
    assert!(no_crds
        .iter()
        .all(|o| o["kind"] != "CustomResourceDefinition"));
    assert!(has(&no_crds, "Deployment", "gn-guildnet-operator"));
}

#[test]
fn values_that_cannot_work_fail_at_template_time_with_a_message() {
    let helm = Helm::new();
    for (sets, want) in [
        (
            vec!["controlPlane.store.sqlite.persistence.enabled=false"],
            "no durable store",
        ),
        (
            vec!["controlPlane.orchestrator.replicas=2"],
            "controlPlane.orchestrator.replicas=2 needs PostgreSQL",
        ),
        (
            vec![
                "controlPlane.store.postgres.url=postgres://a@b/c",
                "controlPlane.store.postgres.existingSecret=s",
            ],
            "set url or existingSecret, not both",
        ),
        (
            vec!["controlPlane.store.postgres.url=mysql://a@b/c"],
            "controlPlane.store.postgres.url must start with postgres://",
        ),
        (
            vec!["operator.enabled=false", "controlPlane.enabled=false"],
            "nothing to install",
        ),
        // The schema: types, enums, and misspelt keys.
        (
            vec!["controlPlane.orchestrator.replicas=two"],
            "/controlPlane/orchestrator/replicas",
        ),
        (
            vec!["controlPlane.orchestrator.backend=docker"],
            "/controlPlane/orchestrator/backend",
        ),
        (
            vec!["controlPlane.orchestrator.replica=2"],
            "additional properties 'replica' not allowed",
        ),
        (
            vec!["controlPlane.store.sqlite.persistence.size=lots"],
            "/controlPlane/store/sqlite/persistence/size",
        ),
    ] {
        let err = helm
            .template(&sets)
            .err()
            .unwrap_or_else(|| panic!("{sets:?} rendered"));
        assert!(err.contains(want), "{sets:?}: {err}");
    }
}

/// Numbers as f64, so that `minimum: 0.0` (deploy/crd.yaml) equals helm's re-rendered `0`.
fn normalise(v: &mut Value) {
    match v {
        Value::Number(n) => *v = serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => a.iter_mut().for_each(normalise),
        Value::Object(o) => o.values_mut().for_each(normalise),
        _ => {}
    }
}

#[test]
fn the_charts_crds_are_the_generated_deploy_crd_yaml() {
    let helm = Helm::new();
    let objs = helm.template(&[]).expect("render");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crd.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let copy = chart().join("files/crd.yaml");
    if std::env::var_os("GUILDNET_BLESS").is_some() {
        std::fs::write(&copy, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        text,
        "deploy/helm/guildnet/files/crd.yaml differs from deploy/crd.yaml: \
         GUILDNET_BLESS=1 cargo test -p guildnet-bin --test helm_chart copies it"
    );
    let want = serde_saphyr::from_multiple::<Value>(&text).unwrap();
    let want: Vec<Value> = want.into_iter().filter(|o| !o.is_null()).collect();
    assert_eq!(want.len(), 2);
    for mut w in want {
        let name = w["metadata"]["name"].as_str().unwrap().to_owned();
        let mut got = get(&objs, "CustomResourceDefinition", &name).clone();
        // The chart adds only its labels and the keep annotation.
        got["metadata"] = w["metadata"].clone();
        normalise(&mut got);
        normalise(&mut w);
        assert_eq!(got, w, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_and_uninstalls_on_a_real_api_server() {
    let cluster = KubeCluster::start()
        .await
        .expect("the testbed's kube-apiserver (scripts/testbed/install.sh etcd kube)");
    let client = cluster.client().await.expect("admin client");
    let helm = Helm::new();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_owned();
    let kc = ["--kubeconfig", kubeconfig.as_str()];
    let with_kc = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(kc.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        helm.ok(&a)
    };

    // The default install: operator + orchestrator on SQLite + dashboard.
    let out = run(with_kc(&[
        "install",
        "gn",
        chart,
        "--namespace",
        "guildnet",
        "--create-namespace",
        "--set",
        "controlPlane.orchestrator.orgs={acme}",
    ]));
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("kubectl -n guildnet port-forward svc/gn-guildnet-dashboard"),
        "{out}"
    );

    let ns = "guildnet";
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for d in [
        "gn-guildnet-operator",
        "gn-guildnet-orchestrator",
        "gn-guildnet-dashboard",
    ] {
        deps.get(d).await.unwrap_or_else(|e| panic!("{d}: {e}"));
    }
    let orch = deps.get("gn-guildnet-orchestrator").await.unwrap();
    let orgs = orch.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .find(|e| e.name == "GUILDNET_ORGS")
        .and_then(|e| e.value);
    assert_eq!(orgs.as_deref(), Some("acme"));
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = pvcs
        .get("gn-guildnet-orchestrator-state")
        .await
        .expect("pvc");
    assert_eq!(
        pvc.spec
            .and_then(|s| s.resources)
            .and_then(|r| r.requests)
            .unwrap()["storage"]
            .0,
        "2Gi"
    );
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    svcs.get("gn-guildnet-orchestrator").await.expect("service");
    svcs.get("gn-guildnet-dashboard").await.expect("service");
    Api::<Role>::namespaced(client.clone(), ns)
        .get("gn-guildnet-operator")
        .await
        .expect("role");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for c in ["agenttasks.guildnet.io", "agentpools.guildnet.io"] {
        crds.get(c).await.unwrap_or_else(|e| panic!("{c}: {e}"));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let token = |s: Secret| s.data.unwrap()["admin-token"].0.clone();
    let first = token(secrets.get("gn-guildnet").await.expect("secret"));
    assert!(first.len() >= 32);

    // An upgrade keeps the generated admin token (else every agent and the dashboard would
    // lose access): the chart reads it back from the cluster.
    let out = run(with_kc(&[
        "upgrade",
        "gn",
        chart,
        "--namespace",
        ns,
        "--reuse-values",
        "--set",
        "controlPlane.orchestrator.logLevel=debug",
    ]));
    assert!(out.contains("REVISION: 2"), "{out}");
    assert_eq!(
        token(secrets.get("gn-guildnet").await.unwrap()),
        first,
        "the upgrade changed the admin token"
    );
    // A bad upgrade is refused before anything changes.
    let bad = helm.run(
        &with_kc(&[
            "upgrade",
            "gn",
            chart,
            "--namespace",
            ns,
            "--reuse-values",
            "--set",
            "controlPlane.orchestrator.replicas=2",
        ])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(
        !bad.ok && bad.stderr.contains("needs PostgreSQL"),
        "{}",
        bad.stderr
    );
    assert_eq!(
        deps.get("gn-guildnet-orchestrator")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(1)
    );

    // Several replicas on PostgreSQL, control plane only, in a second namespace.
    run(with_kc(&[
        "install",
        "pg",
        chart,
        "--namespace",
        "guildnet-pg",
        "--create-namespace",
        "--set",
        "operator.enabled=false",
        "--set",
        "agentNamespace=guildnet",
        "--set",
        "controlPlane.store.postgres.url=postgres://g:pw@db.internal:5432/g",
        "--set",
        "controlPlane.orchestrator.replicas=2",
    ]));
    let pg_deps: Api<Deployment> = Api::namespaced(client.clone(), "guildnet-pg");
    let d = pg_deps
        .get("pg-guildnet-orchestrator")
        .await
        .expect("deployment");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(2));
    Api::<PodDisruptionBudget>::namespaced(client.clone(), "guildnet-pg")
        .get("pg-guildnet-orchestrator")
        .await
        .expect("pdb");
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), "guildnet-pg")
            .get_opt("pg-guildnet-orchestrator-state")
            .await
            .unwrap()
            .is_none()
    );

    // Uninstall removes the workloads and keeps the CRDs (the AgentTasks) and the database.
    run(with_kc(&["uninstall", "gn", "--namespace", ns]));
    assert!(deps
        .get_opt("gn-guildnet-orchestrator")
        .await
        .unwrap()
        .is_none());
    assert!(deps
        .get_opt("gn-guildnet-operator")
        .await
        .unwrap()
        .is_none());
    assert!(crds
        .get_opt("agenttasks.guildnet.io")
        .await
        .unwrap()
        .is_some());
    assert!(pvcs
        .get_opt("gn-guildnet-orchestrator-state")
        .await
        .unwrap()
        .is_some());
    let list = run(with_kc(&["list", "--all-namespaces", "-q"]));
    assert_eq!(list.split_whitespace().collect::<Vec<_>>(), ["pg"]);
}
