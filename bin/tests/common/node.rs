//! Helpers of the real-node tests (testbed control plane + kubelet/containerd on this machine):
//! a temp dir kept on failure, what a namespace's pods say, `kubectl exec`, and a Talos
//! emulator whose bootstrap brings up the real node.

use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::node::NodeOptions;
use guildnet_testbed::talos_emulator::{register_talos_nodes, TalosEmulator};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams, LogParams};
use std::path::Path;
use tokio::io::AsyncReadExt;

/// A temp dir that is kept (and named on stderr) when the test panics.
pub struct KeepOnPanic(Option<tempfile::TempDir>);

impl KeepOnPanic {
    /// A new temp dir named `<prefix>XXXX`.
    pub fn new(prefix: &str) -> Self {
        Self(Some(
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("tempdir"),
        ))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.as_ref().map(|d| d.path()).expect("dir")
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("logs kept in {}", d.keep().display());
            }
        }
    }
}

/// What the namespace's pods say (phase, waiting reasons, warning events, the last log lines),
/// for a failure message.
pub async fn pods_report(admin: &kube::Client, ns: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let mut out = String::new();
    for p in pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let name = p.metadata.name.clone().unwrap_or_default();
        out.push_str(&format!(
            "pod {}\n",
            guildnet_kube::backend::describe_pod(&p)
        ));
        let log = pods
            .logs(
                &name,
                &LogParams {
                    tail_lines: Some(30),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap_or_else(|e| format!("(no log: {e})"));
        out.push_str(&format!("--- log of {name}:\n{log}\n"));
    }
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for e in events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
    {
        out.push_str(&format!(
            "event {} {}: {}\n",
            e.involved_object.name.clone().unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
            e.message.clone().unwrap_or_default()
        ));
    }
    out
}

/// Runs `cmd` in the pod's (first) container and returns its standard output.
pub async fn exec_stdout(pods: &Api<Pod>, pod: &str, cmd: &[&str]) -> String {
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

/// A Talos emulator with `count` nodes whose `talosctl bootstrap` starts the testbed's control
/// plane with the real node (pulling over plain HTTP from `insecure_registry`), and registers
/// the emulated nodes with a NoSchedule taint (no kubelet backs them), so pods land on the real
/// node. The node waits for the machine-wide node lock during that bootstrap.
pub async fn talos_emulator_on_real_node(count: usize, insecure_registry: &str) -> TalosEmulator {
    let insecure = insecure_registry.to_owned();
    TalosEmulator::start_with(
        count,
        Box::new(move |record| {
            Box::pin(async move {
                let cluster = KubeCluster::start_with_node(NodeOptions {
                    insecure_registries: vec![insecure],
                    ..NodeOptions::default()
                })
                .await?;
                register_talos_nodes(&cluster, &record, true).await?;
                Ok(cluster)
            })
        }),
    )
    .await
    .expect("talos emulator (scripts/testbed/install.sh talos-emulator)")
}
