//! The real talosctl (v1.11.5) against the Talos node emulator: maintenance mode, mutual TLS
//! with the generated talosconfig, bootstrap once, the server-side health check against the
//! testbed's real control plane, and the kubeconfig it returns.

use guildnet_testbed::talos::Talosctl;
use guildnet_testbed::talos_emulator::TalosEmulator;
use std::path::Path;

/// Runs talosctl; returns whether it succeeded and its stdout + stderr.
async fn talosctl(bin: &Path, talosconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(bin)
        .arg("--talosconfig")
        .arg(talosconfig)
        .args(args)
        .env("TALOSCONFIG", "/nonexistent/guildnet-testbed/talosconfig")
        .output()
        .await
        .expect("run talosctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A talosconfig whose client certificate and key come from `other` (another cluster's CA)
/// while it still trusts `base`'s CA.
fn foreign_client(base: &Path, other: &Path, out: &Path) {
    let field = |text: &str, key: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in talosconfig"))
            .to_owned()
    };
    let base_text = std::fs::read_to_string(base).unwrap();
    let other_text = std::fs::read_to_string(other).unwrap();
    let mut text = base_text.clone();
    for key in ["crt", "key"] {
        text = text.replace(&field(&base_text, key), &field(&other_text, key));
    }
    assert_ne!(text, base_text);
    std::fs::write(out, text).unwrap();
}

/// Asserts that the node's TLS refuses the call with `alert`. Under TLS 1.3 the client's
/// handshake ends before the server checks its certificate, so talosctl may first report the
/// closed connection (`broken pipe`, `connection reset by peer`), as with a real apid: retry
/// until the alert itself shows.
async fn refused_by_tls(bin: &Path, talosconfig: &Path, args: &[&str], alert: &str) {
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (ok, out) = talosctl(bin, talosconfig, args).await;
        assert!(!ok, "{out}");
        assert!(
            [alert, "broken pipe", "connection reset by peer"]
                .iter()
                .any(|m| out.contains(m)),
            "{out}"
        );
        let done = out.contains(alert);
        seen.push(out);
        if done {
            return;
        }
    }
    panic!("never saw {alert}: {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_talosctl_drives_the_emulated_nodes() {
    let bin = Talosctl::new()
        .expect("talosctl installed")
        .path()
        .to_owned();
    let emu = TalosEmulator::start(2).await.expect("start the emulator");
    let (cp, worker) = (emu.nodes()[0].clone(), emu.nodes()[1].clone());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("acme");
    let gen = Talosctl::new()
        .unwrap()
        .gen_config(
            "acme",
            &format!("https://{cp}:6443"),
            &cfg,
            &["--install-disk", "/dev/vda"],
        )
        .await
        .expect("gen config");
    let tc = gen.talosconfig.clone();
    let cp_yaml = gen.controlplane.to_str().unwrap().to_owned();
    let worker_yaml = gen.worker.to_str().unwrap().to_owned();

    // Maintenance mode: only what Talos' maintenance service allows.
    let (ok, out) = talosctl(&bin, &tc, &["version", "--insecure", "--nodes", &cp]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("API is not implemented in maintenance mode"),
        "{out}"
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: v1alpha1\nmachine: {type: controlplane}\n").unwrap();
    let (ok, out) = talosctl(
        &bin,
        &tc,
        &[
            "apply-config",
            "--insecure",
            "--nodes",
            &cp,
            "--file",
            bad.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("configuration validation failed"), "{out}");
    for (node, file) in [(&cp, &cp_yaml), (&worker, &worker_yaml)] {
        let (ok, out) = talosctl(
            &bin,
            &tc,
            &[
                "apply-config",
                "--insecure",
                "--nodes",
                node,
                "--file",
                file,
            ],
        )
        .await;
        assert!(ok, "apply-config --insecure {node}: {out}");
    }
    // Configured: the maintenance API is gone (no client certificate: TLS refuses it).
    refused_by_tls(
        &bin,
        &tc,
        &[
            "apply-config",
            "--insecure",
            "--nodes",
            &cp,
            "--file",
            &cp_yaml,
        ],
        "tls: certificate required",
    )
    .await;

    // Mutual TLS: the generated talosconfig works; a client certificate from another
    // cluster's CA does not.
    for args in [vec!["config", "endpoint", &cp], vec!["config", "node", &cp]] {
        let (ok, out) = talosctl(&bin, &tc, &args).await;
        assert!(ok, "{out}");
    }
    let (ok, out) = talosctl(&bin, &tc, &["version"]).await;
    assert!(ok && out.contains("Tag:         v1.11.5"), "{out}");
    let other = Talosctl::new()
        .unwrap()
        .gen_config(
            "other",
            "https://10.9.9.9:6443",
            &dir.path().join("other"),
            &[],
        )
        .await
        .unwrap();
    let foreign = dir.path().join("foreign.talosconfig");
    foreign_client(&tc, &other.talosconfig, &foreign);
    refused_by_tls(
        &bin,
        &foreign,
        &["version"],
        "tls: unknown certificate authority",
    )
    .await;
    // The worker's apid certificate is signed with the control plane's CA (trustd).
    let (ok, out) = talosctl(
        &bin,
        &tc,
        &["version", "--nodes", &worker, "--endpoints", &worker],
    )
    .await;
    assert!(ok, "{out}");

    // Bootstrap: never on a worker, once on the control plane, never twice.
    let (ok, out) = talosctl(&bin, &tc, &["bootstrap", "--nodes", &worker]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("bootstrap can only be performed on a control plane node"),
        "{out}"
    );
    assert!(emu.bootstrap_record().is_none());
    let (ok, out) = talosctl(&bin, &tc, &["bootstrap"]).await;
    assert!(ok, "{out}");
    let record = emu.bootstrap_record().expect("bootstrap.json");
    assert_eq!(
        (record.node.as_str(), record.cluster.as_str()),
        (cp.as_str(), "acme")
    );
    assert_eq!(record.worker_nodes, vec![worker.clone()]);
    let (ok, out) = talosctl(&bin, &tc, &["bootstrap"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("code = AlreadyExists desc = etcd data directory is not empty"),
        "{out}"
    );

    // Health (server side) waits for the real control plane the bootstrap started.
    let (ok, out) = talosctl(
        &bin,
        &tc,
        &[
            "health",
            "--wait-timeout",
            "120s",
            "--control-plane-nodes",
            &cp,
            "--worker-nodes",
            &worker,
        ],
    )
    .await;
    assert!(ok, "{out}\n{}", emu.log_tail());
    for line in [
        format!("discovered nodes: [\"{cp}\" \"{worker}\"]"),
        "waiting for etcd to be healthy: OK".to_owned(),
        "waiting for all k8s nodes to report: OK".to_owned(),
        "waiting for all k8s nodes to report ready: OK".to_owned(),
        "waiting for kube-proxy to report ready: SKIP".to_owned(),
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} missing:\n{out}");
    }
    let (ok, out) = talosctl(&bin, &tc, &["services"]).await;
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(" etcd ") && l.contains("Running")),
        "{out}"
    );

    // Kubeconfig: control plane only; the testbed's admin kubeconfig, which works.
    let kc = dir.path().join("kubeconfig");
    let (ok, out) = talosctl(
        &bin,
        &tc,
        &["kubeconfig", "--nodes", &worker, kc.to_str().unwrap()],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("kubeconfig is only available on control plane nodes"),
        "{out}"
    );
    let (ok, out) = talosctl(
        &bin,
        &tc,
        &[
            "kubeconfig",
            "--force",
            "--merge=false",
            kc.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    let yaml = std::fs::read_to_string(&kc).unwrap();
    let client = guildnet_testbed::kube::client_from_kubeconfig(&yaml)
        .await
        .expect("kubeconfig client");
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let names: Vec<String> = nodes
        .list(&Default::default())
        .await
        .expect("list nodes")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(
        names.len(),
        2,
        "one registered node per Talos node: {names:?}"
    );
    let slot = emu.control_plane().await;
    let cluster = slot.cluster.as_ref().expect("control plane running");
    assert!(yaml.contains(cluster.server_url()), "{yaml}");
    drop(slot);

    // Injected faults (a test control): transient then permanent.
    emu.fail("kubeconfig", "transient 1").unwrap();
    let (ok, out) = talosctl(
        &bin,
        &tc,
        &[
            "kubeconfig",
            "--force",
            "--merge=false",
            kc.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok && out.contains("code = Unavailable"), "{out}");
    let (ok, out) = talosctl(
        &bin,
        &tc,
        &[
            "kubeconfig",
            "--force",
            "--merge=false",
            kc.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}");
}
