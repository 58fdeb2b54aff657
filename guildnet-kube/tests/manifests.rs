//! The checked-in manifests under deploy/ are exactly what the code generates.
//! Regenerate with `GUILDNET_BLESS=1 cargo test -p guildnet-kube --test manifests`.

use guildnet_kube::install::{crd_yaml, operator_yaml, InstallOptions};
use std::path::PathBuf;

fn check(file: &str, generated: String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    if std::env::var_os("GUILDNET_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write manifest");
    }
    let on_disk = std::fs::read_to_string(&path).expect("read checked-in manifest");
    assert!(
        on_disk == generated,
        "deploy/{file} is out of date: run GUILDNET_BLESS=1 cargo test -p guildnet-kube --test manifests"
    );
}

#[test]
fn deploy_crd_matches_the_rust_type() {
    check("crd.yaml", crd_yaml().expect("crd yaml"));
}

#[test]
fn deploy_operator_manifests_match_the_installer() {
    check(
        "operator.yaml",
        operator_yaml(&InstallOptions::default()).expect("operator yaml"),
    );
}

#[test]
fn crd_has_status_subresource_short_name_and_printer_columns() {
    let crd = guildnet_kube::crd::crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["atask".to_owned()]));
    let v = &crd.spec.versions[0];
    assert!(v
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .is_some());
    let cols: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Phase", "Org", "Agent", "Age"]);
}
