//! Org cluster bootstrap through the real orchestrator and CLI: `guildnet org bootstrap` starts
//! the job, follows its progress stream to the end and prints where the configs went; a second
//! start while one runs gets 409; bad requests get 422 naming the field; `org kubeconfig` runs
//! the last step alone. Node operations go to guildnet-talos's stand-in talosctl (no Talos nodes
//! here); `gen` and `config` run the real testbed talosctl.

mod common;

use common::*;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::bootstrap::OrgBootstrapRequest;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const STANDIN_TOKEN: &str = "standin-secret-token-9c1d";

fn standin(dir: &Path) -> std::path::PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../guildnet-talos/tests/fixtures/talosctl");
    let dst = dir.join("talosctl");
    std::fs::copy(&src, &dst).expect("copy the stand-in talosctl");
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

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
    let talosctl = standin(dir.path());
    let standin_dir = dir.path().join("standin");
    std::fs::create_dir_all(standin_dir.join("fail")).unwrap();
    let real = guildnet_testbed::bin("talosctl").expect("testbed talosctl");
    let state = dir.path().join("state");
    let orch = Orchestrator::start_with(
        &state,
        free_port(),
        &["--talosctl", talosctl.to_str().unwrap()],
        &[
            ("STANDIN_DIR", standin_dir.to_str().unwrap()),
            ("STANDIN_REAL_TALOSCTL", real.to_str().unwrap()),
            ("STANDIN_TOKEN", STANDIN_TOKEN),
            (
                "STANDIN_KEY",
                "c3RhbmRpbi1rZXktbWF0ZXJpYWwtMDEyMzQ1Njc4OQ==",
            ),
        ],
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
            "10.0.0.2",
            "--worker",
            "10.0.0.3",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    // 1 gen-config + 2 apply-config + talosconfig + bootstrap + health + kubeconfig.
    assert!(stderr.contains("[####################] 7/7"), "{stderr}");
    for step in [
        "gen-config",
        "apply-config 10.0.0.2",
        "apply-config 10.0.0.3",
        "bootstrap",
        "health",
        "kubeconfig",
    ] {
        assert!(stderr.contains(step), "{step} missing: {stderr}");
    }
    let leaks: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains(STANDIN_TOKEN))
        .collect();
    assert!(leaks.is_empty(), "token leaked: {leaks:#?}");
    let kubeconfig = state.join("kube").join("acme.config");
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
    std::fs::write(standin_dir.join("fail").join("health"), "transient 2\n").unwrap();
    let req = OrgBootstrapRequest {
        org: acme.clone(),
        cp_nodes: vec!["10.0.0.2".into()],
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
            assert!(!m.data.contains(STANDIN_TOKEN), "{}", m.data);
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
        .start_bootstrap(&bad(vec!["10.0.0.2; rm -rf /"], "acme"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
    let e = c
        .start_bootstrap(&bad(vec!["10.0.0.2"], "nobody"))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.field()), (Some(422), Some("org")), "{e}");

    // The kubeconfig step alone.
    std::fs::remove_file(&kubeconfig).unwrap();
    let out = cli(
        &orch,
        &[
            "org",
            "kubeconfig",
            "--org",
            "acme",
            "--endpoint",
            "10.0.0.2",
        ],
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
