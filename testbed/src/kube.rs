//! A real Kubernetes control plane on loopback: etcd and kube-apiserver, optionally with
//! kube-controller-manager, kube-scheduler and either kwok (simulated nodes whose pods become
//! Ready) or a real node ([`crate::node::RealNode`]: containerd + kubelet, pods really run).

use crate::host;
use crate::node::{free_port_on, ApiAccess, NodeLock, NodeOptions, RealNode};
use crate::process::{Proc, TestbedError};
use crate::{bin, free_port, probe_client, wait_for, Result};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The annotation kwok uses to pick the nodes it simulates.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What to start besides etcd and kube-apiserver.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// Start kube-controller-manager, kube-scheduler and kwok, and register one simulated node,
    /// so Deployments get pods that become Ready and Available.
    pub workloads: bool,
    /// With workloads: kwok answers port-forwards to any pod's `pod port` by dialling `target`
    /// (a kwok ClusterPortForward), and serves its kubelet API over TLS so the API server can
    /// reach it. kwok pods run no process, so this is how a test puts a real server "in" a pod.
    pub pod_port_forwards: Vec<(u16, std::net::SocketAddr)>,
}

/// A running control plane. Dropping it stops the real node (if any, cleaning the machine),
/// kwok, the scheduler, the controller-manager, the API server and etcd, in that order, and
/// removes its temp dir.
#[derive(Debug)]
pub struct KubeCluster {
    // Stopped in this order by Drop (see there).
    node: Option<RealNode>,
    /// How the node was started, to start it again ([`KubeCluster::restart_node`]).
    node_start: Option<(ApiAccess, NodeOptions)>,
    kwok: Option<Proc>,
    scheduler: Option<Proc>,
    controller_manager: Option<Proc>,
    apiserver: Option<Proc>,
    etcd: Option<Proc>,
    server: String,
    etcd_url: String,
    token: String,
    ca_pem: Vec<u8>,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(TestbedError::io("read /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).map_err(TestbedError::io(format!("write {}", path.display())))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Renders a kubeconfig with one cluster, user and context, all named `name`.
pub fn render_kubeconfig(name: &str, server: &str, ca_pem: &[u8], token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n    namespace: default\ncurrent-context: {name}\n"
    )
}

impl KubeCluster {
    /// Starts etcd and kube-apiserver only.
    pub async fn start() -> Result<KubeCluster> {
        Self::start_with(KubeOptions::default()).await
    }

    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with one
    /// simulated node named `kwok-node-0`.
    pub async fn start_with_workloads() -> Result<KubeCluster> {
        Self::start_with(KubeOptions {
            workloads: true,
            ..KubeOptions::default()
        })
        .await
    }

    /// Starts a control plane with the given options.
    pub async fn start_with(opts: KubeOptions) -> Result<KubeCluster> {
        Self::start_inner(opts, None).await
    }

    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a real node
    /// (containerd + kubelet on this machine), and waits until the node is Ready and the
    /// `default` ServiceAccount exists, so pods can be created at once. Only one real node runs
    /// on a machine at a time: this waits for another one to be dropped (see
    /// [`crate::node::NodeLock`]).
    pub async fn start_with_node(node: NodeOptions) -> Result<KubeCluster> {
        Self::start_inner(KubeOptions::default(), Some(node)).await
    }

    async fn start_inner(opts: KubeOptions, node: Option<NodeOptions>) -> Result<KubeCluster> {
        let etcd_bin = bin("etcd")?;
        let apiserver_bin = bin("kube-apiserver")?;
        let dir = tempfile::Builder::new()
            .prefix("gn-kube-")
            .tempdir()
            .map_err(TestbedError::io("create temp dir"))?;
        let d = dir.path();
        let mut cluster = KubeCluster {
            node: None,
            node_start: None,
            kwok: None,
            scheduler: None,
            controller_manager: None,
            apiserver: None,
            etcd: None,
            server: String::new(),
            etcd_url: String::new(),
            token: random_hex(24)?,
            ca_pem: Vec::new(),
            kubeconfig: d.join("kubeconfig"),
            dir,
        };
        let d = cluster.dir.path().to_owned();

        // etcd
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        cluster.etcd_url = etcd_url.clone();
        let etcd = Proc::spawn(
            "etcd",
            &etcd_bin,
            [
                "--name=testbed".to_owned(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testbed={peer_url}"),
                // Test data: durability across power loss is not needed, speed is.
                "--unsafe-no-fsync".to_owned(),
                "--log-level=warn".to_owned(),
            ],
            &[],
            &d.join("etcd.log"),
        )?
        .listening_on(client_port)
        .listening_on(peer_port);
        let etcd = cluster.etcd.insert(etcd);
        let http = probe_client();
        let health = format!("{etcd_url}/health");
        wait_for("etcd /health", READY_TIMEOUT, Some(etcd), || async {
            let r = http.get(&health).send().await.ok()?;
            let body = r.text().await.ok()?;
            body.contains("\"health\":\"true\"").then_some(())
        })
        .await?;

        // Service-account signing key and the static admin token.
        let sa_key = d.join("sa.key");
        crate::process::run(
            Path::new("openssl"),
            [os("genrsa"), os("-out"), sa_key.as_os_str(), os("2048")],
            &[],
        )
        .await?;
        let mut tokens = format!("{},admin,admin-uid,system:masters\n", cluster.token);
        // A real node: the kubelet's identity (system:node:<name>, authorized by the Node
        // authorizer) and the client certificate the API server shows the kubelet API.
        let mut node_flags = Vec::new();
        let mut node_access = None;
        if let Some(n) = &node {
            let node_token = random_hex(24)?;
            tokens.push_str(&format!(
                "{node_token},system:node:{},node-uid,system:nodes\n",
                n.name
            ));
            let (ca, cert, key) = kubelet_client_cert(&d).await?;
            node_flags = vec![
                "--authorization-mode=Node,RBAC".to_owned(),
                format!("--kubelet-client-certificate={}", cert.display()),
                format!("--kubelet-client-key={}", key.display()),
                // Logs, exec and port-forward dial the node's InternalIP; the node's name does
                // not resolve.
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
            ];
            node_access = Some((node_token, ca));
        }
        write(&d.join("tokens.csv"), tokens)?;

        // kube-apiserver. With a real node it listens on the node's address (eth0): pods reach
        // it there, through the `kubernetes` Service's DNAT (the node sets it up). Its
        // self-signed certificate then names that address and the Service's ClusterIP.
        let api_ip = if node.is_some() {
            host::host_ip().map_err(TestbedError::Unexpected)?
        } else {
            std::net::Ipv4Addr::LOCALHOST
        };
        let port = free_port_on(api_ip)?;
        cluster.server = format!("https://{api_ip}:{port}");
        let pki = d.join("pki");
        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={port}"),
            format!("--bind-address={api_ip}"),
            format!("--advertise-address={api_ip}"),
            format!("--cert-dir={}", pki.display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
            "--profiling=false".to_owned(),
            "--v=1".to_owned(),
        ];
        if node_flags.is_empty() {
            apiserver_args.push("--authorization-mode=RBAC".to_owned());
        }
        apiserver_args.extend(node_flags);
        let apiserver = Proc::spawn(
            "kube-apiserver",
            &apiserver_bin,
            apiserver_args,
            &[],
            &d.join("kube-apiserver.log"),
        )?
        .with_stop_timeout(Duration::from_secs(5))
        .listening_on(port);
        let apiserver = cluster.apiserver.insert(apiserver);
        let readyz = format!("{}/readyz", cluster.server);
        let token = cluster.token.clone();
        wait_for(
            "kube-apiserver /readyz",
            READY_TIMEOUT,
            Some(apiserver),
            || async {
                let r = http.get(&readyz).bearer_auth(&token).send().await.ok()?;
                (r.status().is_success() && r.text().await.ok()? == "ok").then_some(())
            },
        )
        .await?;
        // The self-signed serving certificate, with the CA that signed it, is what clients trust.
        cluster.ca_pem = std::fs::read(pki.join("apiserver.crt"))
            .map_err(TestbedError::io("read the API server's certificate"))?;
        write(
            &cluster.kubeconfig,
            render_kubeconfig("testbed", &cluster.server, &cluster.ca_pem, &cluster.token),
        )?;

        if opts.workloads {
            cluster
                .start_workloads(&sa_key, &opts.pod_port_forwards)
                .await?;
        }
        if let (Some(n), Some((node_token, kubelet_client_ca))) = (node, node_access) {
            cluster.start_controllers(&sa_key).await?;
            let access = ApiAccess {
                server: cluster.server.clone(),
                ca_pem: cluster.ca_pem.clone(),
                node_token,
                kubelet_client_ca,
                service_target: std::net::SocketAddrV4::new(api_ip, port),
            };
            let client = cluster.client().await?;
            cluster.node = Some(RealNode::start(&access, &n, client.clone()).await?);
            cluster.node_start = Some((access, n));
            // Without the default ServiceAccount (the controller-manager makes it) pods are
            // rejected.
            let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
            wait_for(
                "ServiceAccount default/default",
                READY_TIMEOUT,
                cluster.controller_manager.as_mut(),
                || async { sas.get_opt("default").await.ok().flatten().map(|_| ()) },
            )
            .await?;
        }
        Ok(cluster)
    }

    async fn start_workloads(
        &mut self,
        sa_key: &Path,
        forwards: &[(u16, std::net::SocketAddr)],
    ) -> Result<()> {
        let kwok_bin = bin("kwok")?;
        let stages = crate::testbed_dir().join("share/kwok/stages-fast.yaml");
        if !stages.exists() {
            return Err(TestbedError::MissingBinary {
                name: "kwok stages".into(),
                path: stages,
                item: "kwok".into(),
            });
        }
        self.start_controllers(sa_key).await?;
        let d = self.dir.path().to_owned();
        let kc = self.kubeconfig.display().to_string();

        // kwok's config: the stages, plus the port-forward rules.
        let mut config = std::fs::read_to_string(&stages)
            .map_err(TestbedError::io(format!("read {}", stages.display())))?;
        for (i, (port, target)) in forwards.iter().enumerate() {
            config.push_str(&format!(
                "\n---\napiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterPortForward\nmetadata:\n  name: testbed-forward-{i}\nspec:\n  forwards:\n  - ports: [{port}]\n    target:\n      address: \"{}\"\n      port: {}\n",
                target.ip(),
                target.port()
            ));
        }
        let kwok_config = d.join("kwok.yaml");
        write(&kwok_config, config)?;
        // The API server reaches kwok's kubelet API (logs, port-forward) over TLS.
        let (cert, key) = (d.join("kwok.crt"), d.join("kwok.key"));
        crate::process::run(
            Path::new("openssl"),
            [
                os("req"),
                os("-x509"),
                os("-newkey"),
                os("rsa:2048"),
                os("-nodes"),
                os("-days"),
                os("2"),
                os("-subj"),
                os("/CN=kwok"),
                os("-addext"),
                os("subjectAltName=IP:127.0.0.1"),
                os("-keyout"),
                key.as_os_str(),
                os("-out"),
                cert.as_os_str(),
            ],
            &[],
        )
        .await?;
        let kwok_port = free_port()?;
        let kwok = Proc::spawn(
            "kwok",
            &kwok_bin,
            [
                format!("--kubeconfig={kc}"),
                format!("--config={}", kwok_config.display()),
                format!("--server-address=127.0.0.1:{kwok_port}"),
                format!("--tls-cert-file={}", cert.display()),
                format!("--tls-private-key-file={}", key.display()),
                "--manage-all-nodes=false".to_owned(),
                format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                "--node-lease-duration-seconds=40".to_owned(),
                "--cidr=10.0.0.1/24".to_owned(),
                "--node-ip=127.0.0.1".to_owned(),
                format!("--node-port={kwok_port}"),
            ],
            &[],
            &d.join("kwok.log"),
        )?
        .listening_on(kwok_port);
        self.kwok = Some(kwok);
        self.add_node("kwok-node-0").await
    }

    /// Starts kube-controller-manager and kube-scheduler and waits for their /healthz.
    async fn start_controllers(&mut self, sa_key: &Path) -> Result<()> {
        let kcm_bin = bin("kube-controller-manager")?;
        let sched_bin = bin("kube-scheduler")?;
        let d = self.dir.path().to_owned();
        let kc = self.kubeconfig.display().to_string();
        let http = probe_client();

        let kcm_port = free_port()?;
        let kcm = Proc::spawn(
            "kube-controller-manager",
            &kcm_bin,
            [
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={kcm_port}"),
                format!("--service-account-private-key-file={}", sa_key.display()),
                "--controllers=*,-nodeipam,-serviceaccount-token".to_owned(),
                // Its default, /usr/libexec/kubernetes/kubelet-plugins/volume/exec, is created.
                format!(
                    "--flex-volume-plugin-dir={}",
                    d.join("flexvolume").display()
                ),
                "--leader-elect=false".to_owned(),
                "--v=1".to_owned(),
            ],
            &[],
            &d.join("kube-controller-manager.log"),
        )?
        .listening_on(kcm_port);
        let kcm = self.controller_manager.insert(kcm);
        let url = format!("https://127.0.0.1:{kcm_port}/healthz");
        wait_for(
            "kube-controller-manager /healthz",
            READY_TIMEOUT,
            Some(kcm),
            || async {
                let r = http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await?;

        let sched_port = free_port()?;
        let sched = Proc::spawn(
            "kube-scheduler",
            &sched_bin,
            [
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={sched_port}"),
                "--leader-elect=false".to_owned(),
                "--v=1".to_owned(),
            ],
            &[],
            &d.join("kube-scheduler.log"),
        )?
        .listening_on(sched_port);
        let sched = self.scheduler.insert(sched);
        let url = format!("https://127.0.0.1:{sched_port}/healthz");
        wait_for(
            "kube-scheduler /healthz",
            READY_TIMEOUT,
            Some(sched),
            || async {
                let r = http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await
    }

    /// Registers a simulated node (kwok must be running) and waits until it is Ready.
    pub async fn add_node(&mut self, name: &str) -> Result<()> {
        let client = self.client().await?;
        let nodes: Api<Node> = Api::all(client);
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {
                    KWOK_NODE_ANNOTATION: "fake",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            },
        }))
        .map_err(|e| TestbedError::Unexpected(format!("node manifest: {e}")))?;
        nodes.create(&PostParams::default(), &node).await?;
        let kwok = self.kwok.as_mut();
        wait_for(
            &format!("node {name} Ready (kwok)"),
            READY_TIMEOUT,
            kwok,
            || async {
                let n = nodes.get(name).await.ok()?;
                let ready = n
                    .status?
                    .conditions?
                    .into_iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(())
            },
        )
        .await
    }

    /// The API server's URL (`https://127.0.0.1:<port>`; with a real node, the node's address).
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// etcd's client URL (`http://127.0.0.1:<port>`, plain HTTP on loopback).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The admin bearer token (group system:masters).
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// PEM of the API server's serving certificate chain, to trust in clients.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// A kubeconfig file for the admin user (context `testbed`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig for another bearer token (a service account's, say), context `name`.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> String {
        render_kubeconfig(name, &self.server, &self.ca_pem, token)
    }

    /// A kube-rs client for the admin user, built from the kubeconfig file.
    pub async fn client(&self) -> Result<kube::Client> {
        let yaml = std::fs::read_to_string(&self.kubeconfig)
            .map_err(TestbedError::io("read the testbed kubeconfig"))?;
        client_from_kubeconfig(&yaml).await
    }

    /// The control plane's temp dir (logs are `<name>.log` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The real node, if the cluster was started with one.
    pub fn node(&self) -> Option<&RealNode> {
        self.node.as_ref()
    }

    /// Stops the real node now (kubelet, containerd, every container and shim) and cleans the
    /// machine, keeping the control plane. Returns the machine-wide node lock, still held, so
    /// the caller can look at the host before another node starts, and what could not be
    /// removed. `None` if there is no node.
    pub fn stop_node(&mut self) -> Option<(Option<NodeLock>, Vec<String>)> {
        self.node.take().map(RealNode::stop)
    }

    /// Replaces the real node with a fresh one of the same name: containerd with an empty
    /// image and content store, a new kubelet. Pods still bound to the node are started again
    /// by the new kubelet, with their images pulled again. For cold-start measurements: after
    /// this, the next pod pulls its image from the registry. Returns how long the new node took
    /// from the old one's stop to Ready.
    pub async fn restart_node(&mut self) -> Result<Duration> {
        let Some((access, opts)) = self.node_start.clone() else {
            return Err(TestbedError::Unexpected(
                "restart_node: this cluster has no real node".into(),
            ));
        };
        let started = std::time::Instant::now();
        if let Some((lock, errors)) = self.stop_node() {
            if !errors.is_empty() {
                return Err(TestbedError::Unexpected(format!(
                    "restart_node: the old node was not removed cleanly: {errors:?}"
                )));
            }
            // Released here: the new node takes it again.
            drop(lock);
        }
        // The Node object goes too, so "Ready" is the new kubelet's, not the old one's status.
        let client = self.client().await?;
        let nodes: Api<Node> = Api::all(client.clone());
        match nodes.delete(&opts.name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        wait_for(
            &format!("Node {} deleted", opts.name),
            READY_TIMEOUT,
            None,
            || async {
                nodes
                    .get_opt(&opts.name)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            },
        )
        .await?;
        self.node = Some(RealNode::start(&access, &opts, client).await?);
        Ok(started.elapsed())
    }
}

/// A CA and a client certificate signed by it (CN kube-apiserver-kubelet-client): the API
/// server shows the certificate to the kubelet, and the kubelet trusts only that CA, so only the
/// API server can use the kubelet API (logs, exec, port-forward). Returns (CA, cert, key).
async fn kubelet_client_cert(d: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let pki = d.join("kubelet-client");
    std::fs::create_dir_all(&pki).map_err(TestbedError::io("create kubelet-client dir"))?;
    let f = |n: &str| pki.join(n);
    let openssl = Path::new("openssl");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args: Vec<&OsStr> = vec![os("req"), os("-x509")];
    ca_args.extend(ec.iter().map(|a| os(a)));
    let (ca_key, ca, key, csr, cert) = (
        f("ca.key"),
        f("ca.crt"),
        f("client.key"),
        f("client.csr"),
        f("client.crt"),
    );
    ca_args.extend([
        os("-days"),
        os("2"),
        os("-subj"),
        os("/CN=testbed-kubelet-client-ca"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    crate::process::run(openssl, ca_args, &[]).await?;
    let mut req_args: Vec<&OsStr> = vec![os("req")];
    req_args.extend(ec.iter().map(|a| os(a)));
    req_args.extend([
        os("-subj"),
        os("/O=system:masters/CN=kube-apiserver-kubelet-client"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        csr.as_os_str(),
    ]);
    crate::process::run(openssl, req_args, &[]).await?;
    crate::process::run(
        openssl,
        [
            os("x509"),
            os("-req"),
            os("-in"),
            csr.as_os_str(),
            os("-CA"),
            ca.as_os_str(),
            os("-CAkey"),
            ca_key.as_os_str(),
            os("-CAcreateserial"),
            os("-days"),
            os("2"),
            os("-out"),
            cert.as_os_str(),
        ],
        &[],
    )
    .await?;
    Ok((ca, cert, key))
}

/// A kube-rs client from kubeconfig YAML (its current context).
pub async fn client_from_kubeconfig(yaml: &str) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::from_yaml(yaml)
        .map_err(|e| TestbedError::Unexpected(format!("kubeconfig: {e}")))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| TestbedError::Unexpected(format!("kubeconfig: {e}")))?;
    Ok(kube::Client::try_from(config)?)
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // Clients of the API server first, then the API server, and etcd last: an API server
        // whose etcd is gone can take more than 30 s to exit.
        // The real node first: its teardown cleans the machine and needs nothing else.
        drop(self.node.take());
        for p in [
            self.kwok.take(),
            self.scheduler.take(),
            self.controller_manager.take(),
            self.apiserver.take(),
            self.etcd.take(),
        ]
        .into_iter()
        .flatten()
        {
            drop(p);
        }
    }
}
