//! Smoke tests of the real node: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
//! containerd and a kubelet on this machine, with images pulled from the testbed registry.
//! Only one real node runs per machine; these tests wait for each other (the node lock).
//!
//! Each test prints its timings as `NODE-TIMING <what> <ms>` lines (run with `--nocapture` to
//! see them); docs/TESTBED.md quotes them.

use guildnet_testbed::host;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::node::NodeOptions;
use guildnet_testbed::registry::{testbed_image, Registry};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, DeleteParams, ListParams, LogParams, PostParams};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("test manifest")
}

fn timing(what: &str, d: Duration) {
    println!("NODE-TIMING {what} {}", d.as_millis());
}

/// A unique tag, so every run pushes (and the node pulls) an image the registry never had.
fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("t{}-{nanos}", std::process::id())
}

/// A busybox Deployment: prints a line, serves `/www` with httpd on 8080.
fn web_deployment(name: &str, image: &str, pull: &str) -> Deployment {
    from_json(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web",
                        "image": image,
                        "imagePullPolicy": pull,
                        "command": ["/bin/sh", "-c",
                            "echo web-started; echo served-by-pod > /www/index.html; exec busybox httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                    }],
                },
            },
        },
    }))
}

/// Waits until the Deployment's pod is Running and Ready; returns it.
async fn running_pod(pods: &Api<Pod>, app: &str, timeout: Duration, logs: &str) -> Pod {
    let start = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .expect("list pods");
        if let Some(p) = list.items.into_iter().find(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.phase.as_deref() == Some("Running")
                    && s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        }) {
            return p;
        }
        assert!(
            start.elapsed() < timeout,
            "no Ready pod for app={app} after {timeout:?}; logs in {logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exec_stdout(pods: &Api<Pod>, pod: &str, cmd: &[&str]) -> String {
    let mut attached = pods
        .exec(
            pod,
            cmd.iter().copied(),
            &AttachParams::default().stdout(true).stderr(false),
        )
        .await
        .expect("exec");
    let mut out = String::new();
    attached
        .stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read exec stdout");
    attached.join().await.expect("exec finished");
    out
}

/// A one-route HTTP server on `addr`: answers every request with `body`.
async fn host_http_server(addr: std::net::SocketAddr, body: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let local = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    local
}

#[tokio::test]
async fn registry_serves_a_pushed_oci_archive() {
    let registry = Registry::start().await.expect("start registry");
    let archive = testbed_image("busybox").expect("busybox image");
    let tag = unique_tag();
    let reference = registry
        .push_oci_archive(&archive, "testbed/busybox", &tag)
        .await
        .expect("push");
    assert_eq!(
        reference,
        format!("{}/testbed/busybox:{tag}", registry.host())
    );
    let digest = registry
        .manifest_digest("testbed/busybox", &tag)
        .await
        .expect("digest");
    assert!(digest.starts_with("sha256:"), "{digest}");
    // A tag never pushed is not there.
    registry
        .manifest_digest("testbed/busybox", "never-pushed")
        .await
        .expect_err("unknown tag");
}

#[tokio::test]
async fn real_node_runs_a_pulled_image_with_logs_exec_port_forward_and_host_access() {
    let registry = Registry::start().await.expect("start registry");
    let archive = testbed_image("busybox").expect("busybox image");
    let tag = unique_tag();
    let t = Instant::now();
    let image = registry
        .push_oci_archive(&archive, "testbed/busybox", &tag)
        .await
        .expect("push");
    timing("push", t.elapsed());
    let digest = registry
        .manifest_digest("testbed/busybox", &tag)
        .await
        .expect("digest");

    let t = Instant::now();
    let cluster = KubeCluster::start_with_node(NodeOptions {
        insecure_registries: vec![registry.host().to_owned()],
        ..NodeOptions::default()
    })
    .await
    .expect("control plane + real node");
    let node = cluster.node().expect("node");
    timing("cluster_start_to_node_ready", t.elapsed());
    timing("node_lock_to_ready", node.ready_after());
    let logs = format!("{} and {}", cluster.dir().display(), node.dir().display());

    // The node registered with its eth0 address, not loopback.
    let client = cluster.client().await.expect("client");
    let n = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .get(node.name())
        .await
        .expect("node");
    let addresses = n.status.and_then(|s| s.addresses).unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == node.ip().to_string()),
        "{addresses:?}"
    );
    assert!(!node.ip().is_loopback());

    // Cold pull: the node has never seen this image.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    deployments
        .create(
            &PostParams::default(),
            &web_deployment("web", &image, "Always"),
        )
        .await
        .expect("create deployment");
    let pod = running_pod(&pods, "web", Duration::from_secs(120), &logs).await;
    timing("first_pod_ready_cold_pull", t.elapsed());
    let name = pod.metadata.name.clone().expect("pod name");
    let status = pod.status.clone().expect("status");
    let cs = &status.container_statuses.expect("container statuses")[0];
    // The image really came from the registry: containerd records its digest.
    assert!(
        cs.image_id.ends_with(&digest),
        "imageID {} does not name the pushed digest {digest}",
        cs.image_id
    );
    let pod_ip = status.pod_ip.expect("pod IP");
    assert!(pod_ip.starts_with("10.217.0."), "pod IP {pod_ip}");

    // kubectl logs. The shim copies the container's output to the log file on its own
    // schedule, so a Ready pod's first line can take a moment to appear.
    let t = Instant::now();
    let log = loop {
        let log = pods
            .logs(&name, &LogParams::default())
            .await
            .expect("pod logs");
        if log.contains("web-started") || t.elapsed() > Duration::from_secs(10) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains("web-started"), "log: {log:?}");

    // kubectl exec
    let out = exec_stdout(&pods, &name, &["/bin/sh", "-c", "echo exec-$((6*7))"]).await;
    assert_eq!(out.trim(), "exec-42");

    // kubectl port-forward to httpd in the pod.
    let mut pf = pods
        .portforward(&name, &[8080])
        .await
        .expect("port-forward");
    let mut stream = pf.take_stream(8080).expect("stream");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("served-by-pod") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(
            n > 0,
            "stream closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&got);
    assert!(
        reply.starts_with("HTTP/1.")
            && reply.lines().next().is_some_and(|l| l.ends_with(" 200 OK")),
        "{reply}"
    );
    drop(stream);
    let _ = pf.join().await;

    // A pod reaches a server on the host at the node's address (a server on 127.0.0.1 would
    // not be reachable: the pod's loopback is its own).
    let host_addr = host_http_server((node.ip(), 0).into(), "hello-from-the-host").await;
    let url = format!("http://{host_addr}/");
    let t = Instant::now();
    let out = exec_stdout(
        &pods,
        &name,
        &["/bin/busybox", "wget", "-q", "-O", "-", &url],
    )
    .await;
    timing("pod_to_host_http_via_exec", t.elapsed());
    assert_eq!(out, "hello-from-the-host");
    // The same host port on loopback is not reachable from the pod.
    let loopback = format!("http://127.0.0.1:{}/", host_addr.port());
    let out = exec_stdout(
        &pods,
        &name,
        &[
            "/bin/sh",
            "-c",
            &format!("wget -q -T 2 -O - {loopback} || echo unreachable"),
        ],
    )
    .await;
    assert_eq!(out.trim(), "unreachable");

    // Warm: a second Deployment of the same image, already on the node.
    let t = Instant::now();
    deployments
        .create(
            &PostParams::default(),
            &web_deployment("web-warm", &image, "IfNotPresent"),
        )
        .await
        .expect("create deployment");
    running_pod(&pods, "web-warm", Duration::from_secs(60), &logs).await;
    timing("second_pod_ready_image_present", t.elapsed());

    // Deleting a Deployment's pod really stops its container: the replacement is a new pod.
    let t = Instant::now();
    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete pod");
    loop {
        if pods.get_opt(&name).await.expect("get pod").is_none() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "pod {name} not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timing("pod_delete_grace_1s", t.elapsed());

    let t = Instant::now();
    drop(cluster);
    timing("cluster_drop_with_2_pods", t.elapsed());
}

#[tokio::test]
async fn dropping_the_node_leaves_the_host_clean() {
    let registry = Registry::start().await.expect("start registry");
    let archive = testbed_image("busybox").expect("busybox image");
    let image = registry
        .push_oci_archive(&archive, "testbed/busybox", &unique_tag())
        .await
        .expect("push");
    let mut cluster = KubeCluster::start_with_node(NodeOptions {
        insecure_registries: vec![registry.host().to_owned()],
        ..NodeOptions::default()
    })
    .await
    .expect("control plane + real node");
    let node = cluster.node().expect("node");
    let dir = node.dir().to_owned();
    let socket = node.containerd_socket().to_owned();
    let logs = format!("{} and {}", cluster.dir().display(), dir.display());
    let client = cluster.client().await.expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    deployments
        .create(
            &PostParams::default(),
            &web_deployment("web", &image, "Always"),
        )
        .await
        .expect("create deployment");
    running_pod(&pods, "web", Duration::from_secs(120), &logs).await;

    // While the pod runs, the node has changed the host: a shim (and its socket), the bridge
    // and a veth, mounts under its dir, its cgroup tree.
    let shims = host::shims(Some(&socket));
    assert!(!shims.is_empty(), "no shim for {}", socket.display());
    for s in &shims {
        assert!(
            s.socket().exists(),
            "shim socket {} missing",
            s.socket().display()
        );
    }
    let before = host::leftovers(&dir, &socket);
    for want in ["shim pid", "mount ", "bridge ", "veth ", "cgroup ", "dir "] {
        assert!(
            before.items.iter().any(|i| i.starts_with(want)),
            "expected a {want:?} while the node runs: {:?}",
            before.items
        );
    }

    let t = Instant::now();
    let (lock, errors) = cluster.stop_node().expect("node");
    timing("node_teardown_with_1_pod", t.elapsed());
    assert!(lock.is_some(), "the node lock is handed back");
    assert!(errors.is_empty(), "teardown errors: {errors:?}");
    // Still holding the machine-wide lock: no other node can have started since.
    let after = host::leftovers(&dir, &socket);
    assert!(after.is_clean(), "left on the host: {:?}", after.items);
    for s in &shims {
        assert!(
            !s.socket().exists(),
            "shim socket {} left",
            s.socket().display()
        );
        assert!(!host::process_alive(s.pid), "shim {} still running", s.pid);
    }
    drop(lock);
}
