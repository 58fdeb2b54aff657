//! The whole bootstrap with the real talosctl against emulated Talos nodes
//! (guildnet_testbed::talos_emulator): maintenance-mode apply, mutual TLS with the org's
//! talosconfig, bootstrap once, health against the real control plane the bootstrap started,
//! and its kubeconfig. Step order, retries (the emulator's fault injection), permanent
//! failures, re-runs, files and modes, temp dir cleanup, secrets kept out of events,
//! validation.

mod common;

use common::*;
use guildnet_core::seams::BootstrapError;
use guildnet_talos::progress::{DONE, ERROR, START};

/// Secrets of the run that must never reach an event: the talosconfig's client key and the
/// kubeconfig's bearer token.
fn secrets(bed: &Bed) -> Vec<String> {
    let tc = yaml(&bed.state.talosconfig(&org("acme")));
    let key = tc["contexts"]["acme"]["key"].as_str().unwrap().to_owned();
    let mut out = vec![key];
    if let Ok(text) = std::fs::read_to_string(bed.state.kubeconfig(&org("acme"))) {
        let kc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        out.push(kc["users"][0]["user"]["token"].as_str().unwrap().to_owned());
    }
    out
}

fn assert_no_secrets(bed: &Bed, events: &[guildnet_core::seams::BootstrapProgress]) {
    let secrets = secrets(bed);
    for e in events {
        for s in &secrets {
            assert!(
                !e.message.contains(s.as_str()) && !e.step.contains(s.as_str()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_run_orders_steps_writes_private_files_and_keeps_secrets_out() {
    let bed = Bed::with_nodes(4).await;
    let n: Vec<String> = (0..4).map(|i| bed.node(i)).collect();
    let b = bed.bootstrapper();
    let req = request(&[&n[0], &n[1]], &[&n[2], &n[3]]);
    let (result, events) = run(&b, req).await;
    let outcome = match result {
        Ok(o) => o,
        Err(e) => panic!("bootstrap: {e}\n{}", bed.diagnostics().await),
    };

    assert_eq!(
        bed.calls(),
        vec![
            format!("apply-config --insecure {}", n[0]),
            format!("apply-config --insecure {}", n[1]),
            format!("apply-config --insecure {}", n[2]),
            format!("apply-config --insecure {}", n[3]),
            format!("bootstrap {}", n[0]),
            format!(
                "health {} control-plane={},{} workers={},{}",
                n[0], n[0], n[1], n[2], n[3]
            ),
            format!("kubeconfig {}", n[0]),
        ],
        "calls the emulated nodes served"
    );
    let mut expected = Vec::new();
    let apply: Vec<String> = n.iter().map(|a| format!("apply-config {a}")).collect();
    let mut steps = vec!["gen-config"];
    steps.extend(apply.iter().map(String::as_str));
    steps.extend(["talosconfig", "bootstrap", "health", "kubeconfig"]);
    for step in steps {
        expected.push(format!("start {step}"));
        expected.push(format!("done {step}"));
    }
    assert_eq!(starts_and_dones(&events), expected);

    // Files, paths, modes.
    let tc = bed.state.talosconfig(&org("acme"));
    assert_eq!(outcome.talosconfig, tc);
    assert_eq!(outcome.kubeconfig, bed.state.kubeconfig(&org("acme")));
    assert!(outcome.kubeconfig.ends_with("kube/acme.config"));
    assert!(outcome.talosconfig.ends_with("talos/acme.talosconfig"));
    assert_eq!(mode(&outcome.kubeconfig), 0o600);
    assert_eq!(mode(&outcome.talosconfig), 0o600);
    assert_eq!(mode(&b.secrets_path(&org("acme"))), 0o600);

    // The talosconfig (edited by the real talosctl) points at the control plane.
    let t = yaml(&outcome.talosconfig);
    assert_eq!(t["context"], "acme");
    assert_eq!(
        t["contexts"]["acme"]["endpoints"],
        serde_json::json!([n[0], n[1]])
    );
    assert_eq!(t["contexts"]["acme"]["nodes"], serde_json::json!([n[0]]));
    // The kubeconfig's context is named after the org, and it reaches the real API server
    // that the bootstrap started, which lists one node per Talos node.
    let k = yaml(&outcome.kubeconfig);
    assert_eq!(k["current-context"], "acme");
    assert_eq!(k["contexts"][0]["name"], "acme");
    assert_eq!(k["contexts"][0]["context"]["cluster"], "acme");
    let text = std::fs::read_to_string(&outcome.kubeconfig).unwrap();
    let client = guildnet_testbed::kube::client_from_kubeconfig(&text)
        .await
        .expect("client from the org kubeconfig");
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let listed = nodes.list(&Default::default()).await.expect("list nodes");
    assert_eq!(listed.items.len(), 4);

    // The private temp dir is gone; no secret reached an event, but talosctl's output did.
    assert_eq!(bed.temp_leftovers(), Vec::<std::path::PathBuf>::new());
    assert_no_secrets(&bed, &events);
    let outputs: Vec<&str> = events
        .iter()
        .filter(|e| e.phase == "output")
        .map(|e| e.message.as_str())
        .collect();
    for line in [
        "waiting for etcd to be healthy: OK",
        "waiting for all k8s nodes to report ready: OK",
    ] {
        assert!(outputs.contains(&line), "{line} missing: {outputs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_backoff_then_succeed() {
    let bed = Bed::with_nodes(2).await;
    let (cp, worker) = (bed.node(0), bed.node(1));
    bed.fail(&format!("apply-config@{worker}"), "transient 2");
    bed.fail("bootstrap", "transient 3");
    bed.fail("kubeconfig", "transient 1");
    let (result, events) = run(&bed.bootstrapper(), request(&[&cp], &[&worker])).await;
    if let Err(e) = result {
        panic!("bootstrap after retries: {e}\n{}", bed.diagnostics().await);
    }
    let calls = bed.calls();
    let count = |line: String| calls.iter().filter(|l| **l == line).count();
    assert_eq!(count(format!("apply-config --insecure {cp}")), 1);
    assert_eq!(count(format!("apply-config --insecure {worker}")), 3);
    assert_eq!(
        count(format!("bootstrap {cp}")),
        4,
        "3 failures + 1 success = max_attempts"
    );
    assert_eq!(count(format!("kubeconfig {cp}")), 2);
    let retries: Vec<&str> = events
        .iter()
        .filter(|e| e.step == "bootstrap" && e.message.starts_with("attempt "))
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
    assert_no_secrets(&bed, &events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_names_step_and_node_and_stops() {
    let bed = Bed::with_nodes(3).await;
    let n: Vec<String> = (0..3).map(|i| bed.node(i)).collect();
    bed.fail(&format!("apply-config@{}", n[1]), "permanent");
    let (result, events) = run(&bed.bootstrapper(), request(&[&n[0], &n[1]], &[&n[2]])).await;
    let Err(BootstrapError::Step { org, step, reason }) = result else {
        panic!("expected a step error, got {result:?}");
    };
    assert_eq!(org.as_str(), "acme");
    assert_eq!(step, format!("apply-config {}", n[1]));
    assert!(
        reason.contains(&format!(
            "injected permanent failure of apply-config on {}",
            n[1]
        )),
        "{reason}"
    );
    assert!(
        !reason.contains("attempts"),
        "no retry of a permanent failure: {reason}"
    );
    assert_eq!(
        bed.calls(),
        vec![
            format!("apply-config --insecure {}", n[0]),
            format!("apply-config --insecure {}", n[1]),
        ],
        "tried once, nothing after it"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last.step.as_str(), last.phase.as_str()),
        (format!("apply-config {}", n[1]).as_str(), ERROR)
    );
    assert!(!bed.state.kubeconfig(&org).exists());
    assert!(!bed.state.talosconfig(&org).exists());
    assert!(bed.temp_leftovers().is_empty());
    assert!(bed.emu().bootstrap_record().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_that_never_passes_gives_up_after_max_attempts() {
    let bed = Bed::with_nodes(1).await;
    bed.fail("health", "transient 100");
    let (result, _) = run(&bed.bootstrapper(), request(&[&bed.node(0)], &[])).await;
    let Err(BootstrapError::Step { step, reason, .. }) = result else {
        panic!("expected a step error, got {result:?}");
    };
    assert_eq!(step, "health");
    assert!(reason.contains("code = Unavailable"), "{reason}");
    assert!(reason.ends_with("(after 4 attempts)"), "{reason}");
    let health = bed
        .calls()
        .iter()
        .filter(|l| l.starts_with("health "))
        .count();
    assert_eq!(health, 4);
    assert!(bed.temp_leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_after_success_detects_bootstrapped_etcd_and_succeeds() {
    let bed = Bed::with_nodes(2).await;
    let (cp, worker) = (bed.node(0), bed.node(1));
    let b = bed.bootstrapper();
    let req = request(&[&cp], &[&worker]);
    if let Err(e) = run(&b, req.clone()).await.0 {
        panic!("first run: {e}\n{}", bed.diagnostics().await);
    }
    let secrets_bundle = std::fs::read(b.secrets_path(&org("acme"))).unwrap();
    let ca_before = yaml(&bed.state.talosconfig(&org("acme")))["contexts"]["acme"]["ca"].clone();
    bed.clear_calls();

    let (result, events) = run(&b, req).await;
    result.expect("second run");
    let bootstrap_done = events
        .iter()
        .find(|e| e.step == "bootstrap" && e.phase == DONE)
        .unwrap();
    assert_eq!(
        bootstrap_done.message,
        format!("etcd was already bootstrapped on {cp}; continuing")
    );
    // The secrets bundle is reused, so the cluster identity is unchanged; the configured
    // nodes refuse the maintenance API (no client certificate) and get the config over mTLS.
    assert_eq!(
        std::fs::read(b.secrets_path(&org("acme"))).unwrap(),
        secrets_bundle
    );
    assert_eq!(
        yaml(&bed.state.talosconfig(&org("acme")))["contexts"]["acme"]["ca"],
        ca_before
    );
    assert_eq!(
        bed.calls(),
        vec![
            format!("apply-config {cp}"),
            format!("apply-config {worker}"),
            format!("bootstrap {cp}"),
            format!("health {cp} control-plane={cp} workers={worker}"),
            format!("kubeconfig {cp}"),
        ],
        "the --insecure attempts fail in the TLS handshake, before any call"
    );
    assert!(events.iter().any(|e| e.step == format!("apply-config {cp}")
        && e.message == "node is already configured; applying with the org's talosconfig"));
    assert_no_secrets(&bed, &events);
    assert!(bed.temp_leftovers().is_empty());
}

#[tokio::test]
async fn validation_errors_name_the_field_and_run_nothing() {
    let bed = Bed::with_nodes(1).await;
    let node = bed.node(0);
    let b = bed.bootstrapper();
    let cases: [(&[&str], &[&str], &str); 5] = [
        (&[], &[&node], "control_plane: at least one"),
        (&[&node, "https://10.0.0.2"], &[], "control_plane[1]: "),
        (&[&node], &["10.0.0.3; reboot"], "workers[0]: "),
        (&[&node], &["node 2"], "workers[0]: "),
        (&[&node], &["10.0.0.3", &node], "workers[1]: node "),
    ];
    for (cp, workers, want) in cases {
        let (result, events) = run(&b, request(cp, workers)).await;
        match result {
            Err(BootstrapError::Invalid { field, reason }) => {
                let m = format!("{field}: {reason}");
                assert!(m.starts_with(want), "{m} vs {want}")
            }
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
        request(&[&node], &[]),
    )
    .await;
    assert!(
        matches!(result, Err(BootstrapError::Invalid { field, .. }) if field == "extra_sans[0]")
    );
    assert!(bed.calls().is_empty(), "no node was called");
    assert!(bed.temp_leftovers().is_empty(), "talosctl never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_kubeconfig_alone() {
    let bed = Bed::with_nodes(2).await;
    let (cp1, cp2) = (bed.node(0), bed.node(1));
    let b = bed.bootstrapper();
    let acme = org("acme");
    // No talosconfig yet.
    match b.generate_kubeconfig(&acme, &cp1).await {
        Err(BootstrapError::NotBootstrapped { org, reason }) => {
            assert_eq!(org, acme);
            assert!(reason.contains("bootstrap the org first"), "{reason}");
        }
        other => panic!("expected NotBootstrapped, got {other:?}"),
    }
    match b
        .generate_kubeconfig(&acme, &format!("{cp1} --insecure"))
        .await
    {
        Err(BootstrapError::Invalid { field, reason }) => assert_eq!(field, "endpoint", "{reason}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    if let Err(e) = run(&b, request(&[&cp1, &cp2], &[])).await.0 {
        panic!("bootstrap: {e}\n{}", bed.diagnostics().await);
    }
    std::fs::remove_file(bed.state.kubeconfig(&acme)).unwrap();
    bed.clear_calls();
    bed.fail("kubeconfig", "transient 1");
    let path = b
        .generate_kubeconfig(&acme, &cp2)
        .await
        .expect("kubeconfig");
    assert_eq!(path, bed.state.kubeconfig(&acme));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(yaml(&path)["current-context"], "acme");
    assert_eq!(bed.calls(), vec![format!("kubeconfig {cp2}"); 2]);
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
