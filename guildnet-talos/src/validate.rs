//! Checks of a bootstrap request and of the options before anything runs: node addresses are
//! IPs or DNS host names (nothing that could be a scheme, a flag or a shell word), at least one
//! control-plane node, no node twice.

use crate::options::TalosOptions;
use guildnet_core::names::validate_dns_label;
use guildnet_core::seams::{BootstrapError, BootstrapRequest};
use std::collections::HashSet;
use std::net::IpAddr;

/// Longest DNS name.
const MAX_HOST_LEN: usize = 253;

/// Checks that `value` is an IP address or a DNS host name; `field` names it in the error.
pub fn validate_address(field: &str, value: &str) -> Result<(), BootstrapError> {
    let invalid = |why: &str| BootstrapError::invalid(field, why);
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if value.contains("://") {
        return Err(invalid("must be an IP address or host name, not a URL"));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(invalid(&format!(
            "must be an IP address or DNS host name (found {bad:?})"
        )));
    }
    if value.len() > MAX_HOST_LEN {
        return Err(invalid("host name is longer than 253 characters"));
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("each host name label must have 1 to 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(
                "host name labels must start and end with a letter or digit",
            ));
        }
    }
    Ok(())
}

/// Checks the whole request (org, nodes) and the options that end up in talosctl's arguments.
pub fn validate_request(
    request: &BootstrapRequest,
    options: &TalosOptions,
) -> Result<(), BootstrapError> {
    validate_dns_label("org", request.org.as_str())?;
    if request.control_plane.is_empty() {
        return Err(BootstrapError::invalid(
            "control_plane",
            "at least one control-plane node is required",
        ));
    }
    let mut seen = HashSet::new();
    let nodes = request
        .control_plane
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("control_plane[{i}]"), n))
        .chain(
            request
                .workers
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("workers[{i}]"), n)),
        );
    for (field, node) in nodes {
        validate_address(&field, node)?;
        if !seen.insert(normalize(node)) {
            return Err(BootstrapError::invalid(
                field,
                format!("node {node} is listed more than once"),
            ));
        }
    }
    validate_options(options)
}

/// Checks the options that end up in talosctl's arguments.
pub fn validate_options(options: &TalosOptions) -> Result<(), BootstrapError> {
    for (i, san) in options.extra_sans.iter().enumerate() {
        validate_address(&format!("extra_sans[{i}]"), san)?;
    }
    if let Some(disk) = &options.install_disk {
        let ok = disk.starts_with("/dev/")
            && disk.len() > 5
            && disk
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-_.:".contains(c));
        if !ok {
            return Err(BootstrapError::invalid(
                "install_disk",
                "must be a device path like /dev/sda",
            ));
        }
    }
    Ok(())
}

fn normalize(node: &str) -> String {
    match node.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => node.trim_end_matches('.').to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guildnet_core::names::OrgName;
    use guildnet_core::state_dir::StatePaths;

    fn req(cp: &[&str], workers: &[&str]) -> BootstrapRequest {
        BootstrapRequest {
            org: OrgName::new("acme").unwrap(),
            control_plane: cp.iter().map(|s| s.to_string()).collect(),
            workers: workers.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn msg(r: Result<(), BootstrapError>) -> String {
        match r {
            Err(BootstrapError::Invalid { field, reason }) => format!("{field}: {reason}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "10.0.0.1",
            "fd00::1",
            "node-1.example.org",
            "cp1",
            "node.example.",
        ] {
            validate_address("n", ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("https://10.0.0.1", "URL"),
            ("10.0.0.1:50000", "':'"),
            ("a b", "' '"),
            ("a;rm -rf", "';'"),
            ("$(id)", "'$'"),
            ("-flag", "start and end"),
            ("a..b", "1 to 63"),
            ("`x`", "'`'"),
        ] {
            let m = msg(validate_address("workers[3]", bad));
            assert!(m.starts_with("workers[3]: "), "{m}");
            assert!(m.contains(why), "{bad}: {m}");
        }
    }

    #[test]
    fn requests() {
        let opts = TalosOptions::new(StatePaths::new("/s"));
        validate_request(&req(&["10.0.0.1"], &["10.0.0.2", "w.example"]), &opts).unwrap();
        assert!(msg(validate_request(&req(&[], &["10.0.0.2"]), &opts))
            .starts_with("control_plane: at least one"));
        let m = msg(validate_request(
            &req(&["10.0.0.1"], &["10.0.0.2", "10.0.0.1"]),
            &opts,
        ));
        assert!(m.starts_with("workers[1]: node 10.0.0.1 is listed more than once"));
        let m = msg(validate_request(
            &req(&["CP.example", "cp.example."], &[]),
            &opts,
        ));
        assert!(m.starts_with("control_plane[1]"), "{m}");
        let m = msg(validate_request(&req(&["10.0.0.1", "x y"], &[]), &opts));
        assert!(m.starts_with("control_plane[1]: "), "{m}");

        let mut opts2 = opts.clone();
        opts2.extra_sans = vec!["ok.example".into(), "bad san".into()];
        assert!(
            msg(validate_request(&req(&["10.0.0.1"], &[]), &opts2)).starts_with("extra_sans[1]")
        );
        let mut opts3 = opts.clone();
        opts3.install_disk = Some("/dev/sda; reboot".into());
        assert!(msg(validate_request(&req(&["10.0.0.1"], &[]), &opts3)).starts_with("install_disk"));
        opts3.install_disk = Some("/dev/nvme0n1".into());
        validate_request(&req(&["10.0.0.1"], &[]), &opts3).unwrap();
    }
}
