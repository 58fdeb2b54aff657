//! Smoke tests of the real Kubernetes control plane (etcd, kube-apiserver, and with workloads
//! kube-controller-manager, kube-scheduler and kwok).

use guildnet_testbed::kube::{client_from_kubeconfig, KubeCluster};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use std::time::{Duration, Instant};

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("test manifest")
}

#[tokio::test]
async fn kube_client_lists_namespaces_creates_a_configmap_and_rbac_is_enforced() {
    let cluster = KubeCluster::start()
        .await
        .expect("start etcd + kube-apiserver");
    let client = cluster.client().await.expect("client");

    let version = client.apiserver_version().await.expect("version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "36")
    );

    let names: Vec<String> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for ns in ["default", "kube-system"] {
        assert!(names.iter().any(|n| n == ns), "{ns} missing from {names:?}");
    }

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = from_json(serde_json::json!({
        "metadata": {"name": "smoke"},
        "data": {"greeting": "hello from guildnet"},
    }));
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let got = cms.get("smoke").await.expect("get configmap");
    assert_eq!(
        got.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hello from guildnet")
    );
    // A second create is a conflict: the object really is stored.
    let err = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );

    // A wrong token is refused (token authentication is on).
    let bad = client_from_kubeconfig(&cluster.kubeconfig_for_token("bad", "not-a-token"))
        .await
        .expect("client");
    let err = Api::<Namespace>::all(bad)
        .list(&ListParams::default())
        .await
        .expect_err("wrong token");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 401),
        "{err:?}"
    );

    // A service account's token (signed by the API server) authenticates, and RBAC gives it
    // nothing until a role says so.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &from_json(serde_json::json!({"metadata": {"name": "reader"}})),
    )
    .await
    .expect("create service account");
    let tr: TokenRequest = from_json(serde_json::json!({"spec": {"audiences": []}}));
    let token = sas
        .create_token_request("reader", &PostParams::default(), &tr)
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token
        .expect("token");
    let sa_client = client_from_kubeconfig(&cluster.kubeconfig_for_token("reader", &token))
        .await
        .expect("client");
    let err = Api::<Secret>::namespaced(sa_client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect_err("no RBAC grant yet");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err:?}"
    );
    // The same token can read config maps once a Role and RoleBinding allow it.
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), "default");
    roles
        .create(
            &PostParams::default(),
            &from_json(serde_json::json!({
                "metadata": {"name": "cm-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            })),
        )
        .await
        .expect("role");
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(client.clone(), "default");
    bindings
        .create(
            &PostParams::default(),
            &from_json(serde_json::json!({
                "metadata": {"name": "cm-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}],
            })),
        )
        .await
        .expect("role binding");
    // The API server's RBAC authorizer reads bindings from an informer cache: a new binding
    // takes effect within moments, not at once.
    let sa_cms = Api::<ConfigMap>::namespaced(sa_client, "default");
    let deadline = Instant::now() + Duration::from_secs(15);
    let read = loop {
        match sa_cms.get("smoke").await {
            Ok(cm) => break cm,
            Err(kube::Error::Api(e)) if e.code == 403 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("allowed by the role binding: {e:?}"),
        }
    };
    assert_eq!(read.metadata.name.as_deref(), Some("smoke"));
}

#[tokio::test]
async fn deployment_becomes_available_on_kwok_nodes() {
    let cluster = KubeCluster::start_with_workloads()
        .await
        .expect("start control plane with kwok");
    let client = cluster.client().await.expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = from_json(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
            },
        },
    }));
    deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");

    let start = Instant::now();
    let available = loop {
        let d = deployments.get("web").await.expect("get deployment");
        let n = d
            .status
            .and_then(|s| s.available_replicas)
            .unwrap_or_default();
        if n == 2 {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "deployment not available after 90 s (available {n}); logs in {}",
            cluster.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(available, 2);

    let pods = Api::<Pod>::namespaced(client, "default")
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list pods");
    assert_eq!(pods.items.len(), 2);
    for p in pods.items {
        let spec = p.spec.expect("pod spec");
        assert_eq!(spec.node_name.as_deref(), Some("kwok-node-0"));
        assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    }
}

#[tokio::test]
async fn pod_port_forward_reaches_a_real_server_through_the_api_server_and_kwok() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A real TCP server on loopback stands in for the pod's process.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = s.write_all(&reply).await;
                }
            });
        }
    });
    let cluster = KubeCluster::start_with(guildnet_testbed::kube::KubeOptions {
        workloads: true,
        pod_port_forwards: vec![(8443, target)],
    })
    .await
    .expect("control plane + kwok with port forward");
    let client = cluster.client().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = from_json(serde_json::json!({
        "metadata": {"name": "editor"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/editor:1",
                                  "ports": [{"containerPort": 8443}]}]},
    }));
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let start = Instant::now();
    loop {
        let p = pods.get("editor").await.expect("get pod");
        if p.status.and_then(|s| s.phase).as_deref() == Some("Running") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "pod not Running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut pf = pods
        .portforward("editor", &[8443])
        .await
        .expect("port-forward");
    let mut stream = pf.take_stream(8443).expect("stream");
    stream.write_all(b"ping").await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < b"echo:ping".len() {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "stream closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"echo:ping");
    drop(stream);
    let _ = pf.join().await;
}
