//! The whole bootstrap against the stand-in talosctl (tests/fixtures/talosctl): step order,
//! retries, permanent failures, re-runs, files and modes, temp dir cleanup, redaction,
//! validation. `gen` and `config` commands go to the testbed's real talosctl.

mod common;

use common::*;
use guildnet_core::seams::BootstrapError;
use guildnet_talos::progress::{DONE, ERROR, START};

fn assert_no_secrets(events: &[guildnet_core::seams::BootstrapProgress]) {
    for e in events {
        for s in [TOKEN, KEY] {
            assert!(
                !e.message.contains(s) && !e.step.contains(s),
                "secret leaked in {e:?}"
            );
        }
    }
}

fn starts_and_dones(events: &[guildnet_core::seams::BootstrapProgress]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.phase == START || e.phase == DONE || e.phase == ERROR)
        .map(|e| format!("{} {}", e.phase, e.step))
        .collect()
}

#[tokio::test]
async fn full_run_orders_steps_writes_private_files_and_redacts() {
    let bed = Bed::new();
    let b = bed.bootstrapper();
    let req = request(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3", "fd00::4"]);
    let (result, events) = run(&b, req).await;
    let outcome = result.expect("bootstrap");

    let log: Vec<String> = bed.log().iter().map(|l| summarize(l)).collect();
    assert_eq!(
        log,
        vec![
            "gen secrets".to_owned(),
            "gen config acme https://10.0.0.1:6443".to_owned(),
            "apply-config --insecure --nodes 10.0.0.1 --file=controlplane.yaml".to_owned(),
            "apply-config --insecure --nodes 10.0.0.2 --file=controlplane.yaml".to_owned(),
            "apply-config --insecure --nodes 10.0.0.3 --file=worker.yaml".to_owned(),
            "apply-config --insecure --nodes fd00::4 --file=worker.yaml".to_owned(),
            "config endpoint 10.0.0.1 10.0.0.2".to_owned(),
            "config node 10.0.0.1".to_owned(),
            "bootstrap --nodes 10.0.0.1 --endpoints 10.0.0.1".to_owned(),
            "health --nodes 10.0.0.1 --endpoints 10.0.0.1 --control-plane-nodes 10.0.0.1,10.0.0.2 --worker-nodes 10.0.0.3,fd00::4".to_owned(),
            "kubeconfig kubeconfig --merge=false --nodes 10.0.0.1 --endpoints 10.0.0.1".to_owned(),
        ],
        "talosctl invocations"
    );
    // The saved talosconfig is the one every node command used.
    let tc = bed.state.talosconfig(&org("acme"));
    for line in bed.log().iter().filter(|l| {
        l.contains(" bootstrap ") || l.contains(" health ") || l.contains(" kubeconfig ")
    }) {
        assert!(
            line.starts_with(&format!("--talosconfig {} ", tc.display())),
            "{line}"
        );
    }

    let mut expected = Vec::new();
    for step in [
        "gen-config",
        "apply-config 10.0.0.1",
        "apply-config 10.0.0.2",
        "apply-config 10.0.0.3",
        "apply-config fd00::4",
        "talosconfig",
        "bootstrap",
        "health",
        "kubeconfig",
    ] {
        expected.push(format!("start {step}"));
        expected.push(format!("done {step}"));
    }
    assert_eq!(starts_and_dones(&events), expected);

    // Files, paths, modes.
    assert_eq!(outcome.talosconfig, tc);
    assert_eq!(outcome.kubeconfig, bed.state.kubeconfig(&org("acme")));
    assert!(outcome.kubeconfig.ends_with("kube/acme.config"));
    assert!(outcome.talosconfig.ends_with("talos/acme.talosconfig"));
    assert_eq!(mode(&outcome.kubeconfig), 0o600);
    assert_eq!(mode(&outcome.talosconfig), 0o600);
    let secrets = b.secrets_path(&org("acme"));
    assert_eq!(mode(&secrets), 0o600);

    // The talosconfig (edited by the real talosctl) points at the control plane.
    let t = yaml(&outcome.talosconfig);
    assert_eq!(t["context"], "acme");
    assert_eq!(
        t["contexts"]["acme"]["endpoints"],
        serde_json::json!(["10.0.0.1", "10.0.0.2"])
    );
    assert_eq!(
        t["contexts"]["acme"]["nodes"],
        serde_json::json!(["10.0.0.1"])
    );
    // The kubeconfig's context is named after the org.
    let k = yaml(&outcome.kubeconfig);
    assert_eq!(k["current-context"], "acme");
    assert_eq!(k["contexts"][0]["name"], "acme");
    assert_eq!(k["contexts"][0]["context"]["cluster"], "acme");

    // The private temp dir is gone; no secret reached an event, but output did flow.
    assert_eq!(bed.temp_leftovers(), Vec::<std::path::PathBuf>::new());
    assert_no_secrets(&events);
    let outputs: Vec<&str> = events
        .iter()
        .filter(|e| e.phase == "output")
        .map(|e| e.message.as_str())
        .collect();
    assert!(
        outputs.contains(&"waiting for etcd to be healthy: OK"),
        "{outputs:?}"
    );
    assert!(outputs.contains(&"    token: <redacted>"), "{outputs:?}");
    assert!(outputs.contains(&"  crt: <redacted>"), "{outputs:?}");
    assert!(
        outputs.contains(&"Authorization: Bearer <redacted>"),
        "{outputs:?}"
    );
    assert!(
        outputs.contains(&"bootstrap requested; join token <redacted>"),
        "{outputs:?}"
    );
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_then_succeed() {
    let bed = Bed::new();
    bed.fail("apply-config@10.0.0.3", "transient 2");
    bed.fail("bootstrap", "transient 3");
    bed.fail("kubeconfig", "transient 1");
    let (result, events) = run(&bed.bootstrapper(), request(&["10.0.0.1"], &["10.0.0.3"])).await;
    result.expect("bootstrap after retries");
    let log: Vec<String> = bed.log().iter().map(|l| summarize(l)).collect();
    let count = |prefix: &str| log.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("apply-config --insecure --nodes 10.0.0.1 "), 1);
    assert_eq!(count("apply-config --insecure --nodes 10.0.0.3 "), 3);
    assert_eq!(
        count("bootstrap "),
        4,
        "3 failures + 1 success = max_attempts"
    );
    assert_eq!(count("kubeconfig "), 2);
    let retries: Vec<&str> = events
        .iter()
        .filter(|e| e.step == "bootstrap" && e.message.contains("transient"))
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(
        retries,
        vec![
            "attempt 1/4 failed with a transient error; retrying in 1ms",
            "attempt 2/4 failed with a transient error; retrying in 2ms",
            "attempt 3/4 failed with a transient error; retrying in 4ms",
        ]
    );
    assert!(!events.iter().any(|e| e.phase == ERROR));
    assert_no_secrets(&events);
}

#[tokio::test]
async fn permanent_failure_names_step_and_node_and_stops() {
    let bed = Bed::new();
    bed.fail("apply-config@10.0.0.2", "permanent");
    let (result, events) = run(
        &bed.bootstrapper(),
        request(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"]),
    )
    .await;
    let Err(BootstrapError::Step { org, step, reason }) = result else {
        panic!("expected a step error, got {result:?}");
    };
    assert_eq!(org.as_str(), "acme");
    assert_eq!(step, "apply-config 10.0.0.2");
    assert!(
        reason.contains("stand-in permanent failure of apply-config on 10.0.0.2"),
        "{reason}"
    );
    assert!(
        !reason.contains("attempts"),
        "no retry of a permanent failure: {reason}"
    );
    let log: Vec<String> = bed.log().iter().map(|l| summarize(l)).collect();
    assert_eq!(
        log.iter().filter(|l| l.contains("10.0.0.2")).count(),
        1,
        "tried once"
    );
    for later in [
        "10.0.0.3",
        "config endpoint",
        "config node",
        "bootstrap",
        "health",
        "kubeconfig",
    ] {
        assert!(
            !log.iter().any(|l| l.contains(later)),
            "{later} ran: {log:?}"
        );
    }
    let last = events.last().unwrap();
    assert_eq!(
        (last.step.as_str(), last.phase.as_str()),
        ("apply-config 10.0.0.2", ERROR)
    );
    assert!(!bed.state.kubeconfig(&org).exists());
    assert!(!bed.state.talosconfig(&org).exists());
    assert!(bed.temp_leftovers().is_empty());

    // Transient failures that never end give up after max_attempts, naming the step.
    let bed = Bed::new();
    bed.fail("health", "transient 100");
    let (result, _) = run(&bed.bootstrapper(), request(&["10.0.0.1"], &[])).await;
    let Err(BootstrapError::Step { step, reason, .. }) = result else {
        panic!("expected a step error, got {result:?}");
    };
    assert_eq!(step, "health");
    assert!(reason.contains("connection refused"), "{reason}");
    assert!(reason.ends_with("(after 4 attempts)"), "{reason}");
    assert!(bed.temp_leftovers().is_empty());
}

#[tokio::test]
async fn rerun_after_success_detects_bootstrapped_etcd_and_succeeds() {
    let bed = Bed::new();
    let b = bed.bootstrapper();
    let req = request(&["10.0.0.1"], &["10.0.0.3"]);
    run(&b, req.clone()).await.0.expect("first run");
    let secrets = std::fs::read(b.secrets_path(&org("acme"))).unwrap();
    let ca_before = yaml(&bed.state.talosconfig(&org("acme")))["contexts"]["acme"]["ca"].clone();
    bed.clear_log();

    let (result, events) = run(&b, req).await;
    result.expect("second run");
    let bootstrap_done = events
        .iter()
        .find(|e| e.step == "bootstrap" && e.phase == DONE)
        .unwrap();
    assert_eq!(
        bootstrap_done.message,
        "etcd was already bootstrapped on 10.0.0.1; continuing"
    );
    let log: Vec<String> = bed.log().iter().map(|l| summarize(l)).collect();
    // The secrets bundle is reused (no `gen secrets`), so the cluster identity is unchanged;
    // configured nodes refuse maintenance-mode apply and get the config with the talosconfig.
    assert!(!log.iter().any(|l| l.starts_with("gen secrets")), "{log:?}");
    assert_eq!(
        std::fs::read(b.secrets_path(&org("acme"))).unwrap(),
        secrets
    );
    assert_eq!(
        yaml(&bed.state.talosconfig(&org("acme")))["contexts"]["acme"]["ca"],
        ca_before
    );
    assert!(log.contains(
        &"apply-config --nodes 10.0.0.3 --endpoints 10.0.0.3 --file=worker.yaml".to_owned()
    ));
    assert!(events.iter().any(|e| e.step == "apply-config 10.0.0.1"
        && e.message == "node is already configured; applying with the org's talosconfig"));
    assert!(log.iter().any(|l| l.starts_with("kubeconfig ")));
    assert_no_secrets(&events);
    assert!(bed.temp_leftovers().is_empty());
}

#[tokio::test]
async fn validation_errors_name_the_field_and_run_nothing() {
    let bed = Bed::new();
    let b = bed.bootstrapper();
    let cases: [(&[&str], &[&str], &str); 5] = [
        (&[], &["10.0.0.3"], "control_plane: at least one"),
        (&["10.0.0.1", "https://10.0.0.2"], &[], "control_plane[1]: "),
        (&["10.0.0.1"], &["10.0.0.3; reboot"], "workers[0]: "),
        (&["10.0.0.1"], &["node 2"], "workers[0]: "),
        (
            &["10.0.0.1"],
            &["10.0.0.3", "10.0.0.1"],
            "workers[1]: node 10.0.0.1 is listed more than once",
        ),
    ];
    for (cp, workers, want) in cases {
        let (result, events) = run(&b, request(cp, workers)).await;
        match result {
            Err(BootstrapError::Invalid(m)) => assert!(m.starts_with(want), "{m} vs {want}"),
            other => panic!("expected Invalid for {cp:?} {workers:?}, got {other:?}"),
        }
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].step.as_str(), events[0].phase.as_str()),
            ("validate", ERROR)
        );
    }
    let mut opts = bed.options();
    opts.extra_sans = vec!["$(reboot)".into()];
    let (result, _) = run(
        &guildnet_talos::TalosctlBootstrap::new(opts),
        request(&["10.0.0.1"], &[]),
    )
    .await;
    assert!(matches!(result, Err(BootstrapError::Invalid(m)) if m.starts_with("extra_sans[0]: ")));
    assert!(bed.log().is_empty(), "talosctl never ran");
}

#[tokio::test]
async fn generate_kubeconfig_alone() {
    let bed = Bed::new();
    let b = bed.bootstrapper();
    let acme = org("acme");
    // No talosconfig yet.
    match b.generate_kubeconfig(&acme, "10.0.0.1").await {
        Err(BootstrapError::NotBootstrapped { org, reason }) => {
            assert_eq!(org, acme);
            assert!(reason.contains("bootstrap the org first"), "{reason}");
        }
        other => panic!("expected NotBootstrapped, got {other:?}"),
    }
    match b.generate_kubeconfig(&acme, "10.0.0.1 --insecure").await {
        Err(BootstrapError::Invalid(m)) => assert!(m.starts_with("endpoint: "), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    run(&b, request(&["10.0.0.1", "10.0.0.2"], &[]))
        .await
        .0
        .expect("bootstrap");
    std::fs::remove_file(bed.state.kubeconfig(&acme)).unwrap();
    bed.clear_log();
    bed.fail("kubeconfig", "transient 1");
    let path = b
        .generate_kubeconfig(&acme, "10.0.0.2")
        .await
        .expect("kubeconfig");
    assert_eq!(path, bed.state.kubeconfig(&acme));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(yaml(&path)["current-context"], "acme");
    let log: Vec<String> = bed.log().iter().map(|l| summarize(l)).collect();
    assert_eq!(
        log,
        vec!["kubeconfig kubeconfig --merge=false --nodes 10.0.0.2 --endpoints 10.0.0.2"; 2]
    );
    assert!(bed.temp_leftovers().is_empty());
}

#[tokio::test]
async fn missing_talosctl_is_reported_at_the_first_step() {
    let bed = Bed::new();
    let mut opts = bed.options();
    opts.talosctl = "talosctl-does-not-exist".into();
    let (result, events) = run(
        &guildnet_talos::TalosctlBootstrap::new(opts),
        request(&["10.0.0.1"], &[]),
    )
    .await;
    match result {
        Err(BootstrapError::Step { step, reason, .. }) => {
            assert_eq!(step, "gen-config");
            assert!(
                reason.contains("talosctl-does-not-exist not found in PATH"),
                "{reason}"
            );
        }
        other => panic!("expected a step error, got {other:?}"),
    }
    assert_eq!(events.last().unwrap().phase, ERROR);
    assert!(bed.temp_leftovers().is_empty());
}
