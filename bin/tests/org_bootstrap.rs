//! Org cluster bootstrap through the real orchestrator and CLI: `guildnet org bootstrap` starts
//! the job, follows its progress stream to the end and prints where the configs went; a second
//! start while one runs gets 409; bad requests get 422 naming the field; `org kubeconfig` runs
//! the last step alone. The orchestrator runs the testbed's real talosctl against emulated Talos
//! nodes (guildnet_testbed::talos_emulator), whose bootstrap starts a real control plane.

mod common;

use common::*;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::bootstrap::OrgBootstrapRequest;
use guildnet_testbed::talos_emulator::TalosEmulator;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn cli(orch: &Orchestrator, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_guildnet"))
        .args(["--url", &orch.url(), "--token", TOKEN])
        .args(args)
        .output()
        .expect("run guildnet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_bootstraps_an_org_cluster_through_the_orchestrator() {
    let dir = tempfile::tempdir().unwrap();
    let talosctl = guildnet_testbed::bin("talosctl").expect("testbed talosctl");
    let emu = TalosEmulator::start(2)
        .await
        .expect("talos emulator (scripts/testbed/install.sh talos-emulator)");
    let (cp, worker) = (emu.nodes()[0].clone(), emu.nodes()[1].clone());
    let state = dir.path().join("state");
    let orch = Orchestrator::start_with(
        &state,
        free_port(),
        &["--talosctl", talosctl.to_str().unwrap()],
        &[],
    );
    orch.wait_ready().await;
    let c = orch.client();

    let out = cli(
        &orch,
        &[
            "org",
            "bootstrap",
            "--org",
            "acme",
            "--cp",
            &cp,
            "--worker",
            &worker,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stderr}\n{stdout}\n{}",
        emu.diagnostics().await
    );
    // 1 gen-config + 2 apply-config + talosconfig + bootstrap + health + kubeconfig.
    assert!(stderr.contains("[####################] 7/7"), "{stderr}");
    for step in [
        "gen-config".to_owned(),
        format!("apply-config {cp}"),
        format!("apply-config {worker}"),
        "bootstrap".to_owned(),
        "health".to_owned(),
        "kubeconfig".to_owned(),
    ] {
        assert!(stderr.contains(&step), "{step} missing: {stderr}");
    }
    assert_eq!(
        emu.calls(),
        vec![
            format!("apply-config --insecure {cp}"),
            format!("apply-config --insecure {worker}"),
            format!("bootstrap {cp}"),
            format!("health {cp} control-plane={cp} workers={worker}"),
            format!("kubeconfig {cp}"),
        ]
    );
    // The kubeconfig reaches the real API server the bootstrap started; its bearer token
    // never reached the progress stream.
    let kubeconfig = state.join("kube").join("acme.config");
    let kc_text = std::fs::read_to_string(&kubeconfig).unwrap();
    let api = guildnet_testbed::kube::client_from_kubeconfig(&kc_text)
        .await
        .expect("org kubeconfig");
    api.apiserver_version().await.expect("API server answers");
    let token = {
        let slot = emu.control_plane().await;
        slot.cluster.as_ref().unwrap().admin_token().to_owned()
    };
    let leaks: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains(&token))
        .collect();
    assert!(leaks.is_empty(), "token leaked: {leaks:#?}");
    assert!(
        stdout.contains(&format!("kubeconfig: {}", kubeconfig.display())),
        "{stdout}"
    );
    for f in [&kubeconfig, &state.join("talos").join("acme.talosconfig")] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let acme = OrgName::new("acme").unwrap();
    let st = c.bootstrap_status(&acme).await.unwrap();
    assert_eq!(st.state, "succeeded", "{st:?}");

    // A slow run (health fails twice, transiently): a second start is refused while it runs.
    emu.fail("health", "transient 2").unwrap();
    let req = OrgBootstrapRequest {
        org: acme.clone(),
        cp_nodes: vec![cp.clone()],
        worker_nodes: vec![],
    };
    let first = c.start_bootstrap(&req).await.unwrap();
    assert_eq!(first.state, "running");
    let err = c.start_bootstrap(&req).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    // The re-run finds etcd already bootstrapped and goes on.
    let out = {
        use futures_util::StreamExt;
        let s = c.follow_bootstrap(&acme).await.unwrap();
        futures_util::pin_mut!(s);
        let mut last = None;
        while let Some(m) = s.next().await {
            let m = m.unwrap();
            assert!(!m.data.contains(&token), "{}", m.data);
            last = Some(m);
        }
        last.unwrap()
    };
    assert_eq!(out.event, "done", "{}", out.data);

    // Bad requests: 422 naming the field, nothing started.
    let bad = |cp: Vec<&str>, org: &str| OrgBootstrapRequest {
        org: OrgName::new(org).unwrap(),
        cp_nodes: cp.into_iter().map(str::to_owned).collect(),
        worker_nodes: vec![],
    };
    let e = c.start_bootstrap(&bad(vec![], "acme")).await.unwrap_err();
    assert_eq!((e.status(), e.field()), (Some(422), Some("cpNodes")), "{e}");
    let e = c
        .start_bootstrap(&bad(vec!["127.0.0.2; rm -rf /"], "acme"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
    let e = c
        .start_bootstrap(&bad(vec![&cp], "nobody"))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.field()), (Some(422), Some("org")), "{e}");

    // The kubeconfig step alone.
    std::fs::remove_file(&kubeconfig).unwrap();
    let out = cli(
        &orch,
        &["org", "kubeconfig", "--org", "acme", "--endpoint", &cp],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(kubeconfig.is_file());
    let e = c
        .generate_kubeconfig(&acme, "not a host")
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.field()),
        (Some(422), Some("endpoint")),
        "{e}"
    );
}
