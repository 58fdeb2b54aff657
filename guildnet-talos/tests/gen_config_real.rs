//! The gen-config step with the testbed's real talosctl (v1.11.5): the machine configs pass
//! `talosctl validate --mode metal`, carry the SANs, install disk and patches, and a second
//! generation reuses the org's secrets bundle.

mod common;

use common::*;
use guildnet_talos::TalosctlBootstrap;
use guildnet_testbed::talos::{Talosctl, ValidateMode};

#[tokio::test]
async fn generated_configs_validate_for_metal_with_sans_disk_and_patches() {
    let bed = Bed::new();
    let real = Talosctl::new().expect("testbed talosctl");
    let mut opts = bed.options();
    opts.talosctl = real.path().to_owned();
    opts.search_path = None;
    opts.extra_env.clear();
    opts.install_disk = Some("/dev/vda".into());
    opts.extra_sans = vec!["10.9.8.7".into(), "api.acme.example".into()];
    opts.config_patches = vec!["machine:\n  sysctls:\n    net.ipv4.ip_forward: \"1\"\n".into()];
    opts.control_plane_patches =
        vec!["machine:\n  nodeLabels:\n    guildnet.dev/role: control-plane\n".into()];
    opts.worker_patches =
        vec![r#"{"machine": {"nodeLabels": {"guildnet.dev/role": "worker"}}}"#.into()];
    let b = TalosctlBootstrap::new(opts);
    let out = bed.dir.path().join("configs");
    let req = request(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"]);
    let configs = b.generate_configs(&req, &out).await.expect("gen config");

    for file in [&configs.controlplane, &configs.worker] {
        let msg = real
            .validate(file, ValidateMode::Metal)
            .await
            .expect("valid for metal");
        assert!(msg.contains("is valid for metal mode"), "{msg}");
    }
    let cp = yaml(&configs.controlplane);
    let worker = yaml(&configs.worker);
    for doc in [&cp, &worker] {
        assert_eq!(doc["cluster"]["clusterName"], "acme");
        assert_eq!(
            doc["cluster"]["controlPlane"]["endpoint"],
            "https://10.0.0.1:6443"
        );
        assert_eq!(doc["machine"]["install"]["disk"], "/dev/vda");
        assert_eq!(doc["machine"]["sysctls"]["net.ipv4.ip_forward"], "1");
    }
    let sans = &cp["cluster"]["apiServer"]["certSANs"];
    for san in ["10.9.8.7", "api.acme.example"] {
        assert!(
            sans.as_array().unwrap().iter().any(|s| s == san),
            "{san} missing from {sans}"
        );
    }
    assert_eq!(
        cp["machine"]["nodeLabels"]["guildnet.dev/role"],
        "control-plane"
    );
    assert_eq!(
        worker["machine"]["nodeLabels"]["guildnet.dev/role"],
        "worker"
    );
    assert_eq!(cp["machine"]["type"], "controlplane");
    assert_eq!(worker["machine"]["type"], "worker");

    // The secrets bundle is private and reused: a second generation is the same cluster.
    let secrets = b.secrets_path(&org("acme"));
    assert_eq!(mode(&secrets), 0o600);
    let again = b
        .generate_configs(&req, &bed.dir.path().join("again"))
        .await
        .expect("gen config again");
    let cp2 = yaml(&again.controlplane);
    assert_eq!(cp2["machine"]["ca"]["crt"], cp["machine"]["ca"]["crt"]);
    assert_eq!(cp2["cluster"]["ca"]["crt"], cp["cluster"]["ca"]["crt"]);
    assert_eq!(cp2["machine"]["token"], cp["machine"]["token"]);
    assert!(
        bed.temp_leftovers().is_empty(),
        "patch scratch dirs removed"
    );
}

#[tokio::test]
async fn a_bad_patch_fails_gen_config_with_talosctl_reason() {
    let bed = Bed::new();
    let real = Talosctl::new().expect("testbed talosctl");
    let mut opts = bed.options();
    opts.talosctl = real.path().to_owned();
    opts.config_patches = vec!["machine: [not, a, map".into()];
    let b = TalosctlBootstrap::new(opts);
    let err = b
        .generate_configs(&request(&["10.0.0.1"], &[]), &bed.dir.path().join("c"))
        .await
        .unwrap_err();
    match err {
        guildnet_core::seams::BootstrapError::Step { step, reason, .. } => {
            assert_eq!(step, "gen-config");
            assert!(reason.starts_with("talosctl exited with 1"), "{reason}");
        }
        other => panic!("expected a step error, got {other:?}"),
    }
    assert!(bed.temp_leftovers().is_empty());
}
