//! Smoke test of the real talosctl, client side: generate machine configs and validate them.

use guildnet_testbed::talos::{Talosctl, ValidateMode};
use guildnet_testbed::TestbedError;
use std::time::Instant;

#[tokio::test]
async fn talosctl_gen_config_and_validate_pass() {
    let started = Instant::now();
    let talosctl = Talosctl::new().expect("talosctl installed");
    assert_eq!(talosctl.version().await.expect("version"), "v1.11.5");

    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("acme");
    let generated = talosctl
        .gen_config(
            "acme",
            "https://10.0.0.2:6443",
            &out,
            &["--additional-sans", "10.0.0.2,acme.example.test"],
        )
        .await
        .expect("gen config");

    let controlplane = std::fs::read_to_string(&generated.controlplane).expect("controlplane");
    assert!(
        controlplane.contains("clusterName: acme"),
        "cluster name missing from controlplane.yaml"
    );
    assert!(
        controlplane.contains("endpoint: https://10.0.0.2:6443"),
        "endpoint missing from controlplane.yaml"
    );
    assert!(
        controlplane.contains("acme.example.test"),
        "additional SAN missing from controlplane.yaml"
    );
    assert!(controlplane.contains("type: controlplane"));
    let worker = std::fs::read_to_string(&generated.worker).expect("worker");
    assert!(worker.contains("type: worker"));
    let talosconfig = std::fs::read_to_string(&generated.talosconfig).expect("talosconfig");
    assert!(talosconfig.contains("context: acme"), "{talosconfig}");

    for file in [&generated.controlplane, &generated.worker] {
        let msg = talosctl
            .validate(file, ValidateMode::Metal)
            .await
            .unwrap_or_else(|e| panic!("validate {}: {e}", file.display()));
        assert!(msg.ends_with("is valid for metal mode"), "{msg}");
    }

    // A truncated config (the cluster section and the install disk are cut off) fails.
    let truncated = dir.path().join("truncated.yaml");
    std::fs::write(&truncated, &worker.as_bytes()[..3000]).expect("write truncated");
    match talosctl.validate(&truncated, ValidateMode::Metal).await {
        Err(TestbedError::Command { output, .. }) => {
            assert!(
                output.contains("install instructions are required"),
                "{output}"
            );
        }
        other => panic!("truncated config: expected a validation failure, got {other:?}"),
    }

    // So does a config with a wrong field value.
    let wrong = dir.path().join("wrong-type.yaml");
    std::fs::write(
        &wrong,
        controlplane.replacen("type: controlplane", "type: emperor", 1),
    )
    .expect("write wrong");
    match talosctl.validate(&wrong, ValidateMode::Metal).await {
        Err(TestbedError::Command { output, .. }) => {
            assert!(
                output.contains("unknown machine type \"emperor\""),
                "{output}"
            );
        }
        other => panic!("wrong machine type: expected a validation failure, got {other:?}"),
    }

    // gen config does not overwrite an existing config without --force.
    let again = talosctl
        .gen_config("acme", "https://10.0.0.2:6443", &out, &[])
        .await;
    assert!(again.is_err(), "gen config overwrote existing files");

    eprintln!("talosctl test took {:?}", started.elapsed());
}
