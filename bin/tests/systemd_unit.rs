//! deploy/systemd/guildnet.service: `systemd-analyze verify` accepts it without a warning
//! (with ExecStart pointing at the binary just built), and its `guildnet up` command line parses
//! with the real CLI definitions. Skipped, saying so, where systemd-analyze is not installed.

use clap::Parser;
use guildnet_bin::cli_args::{Cli, Cmd};
use std::process::Command;

const UNIT: &str = include_str!("../../deploy/systemd/guildnet.service");

fn exec_start() -> Vec<String> {
    let line = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_unit_runs_guildnet_up_with_flags_the_cli_accepts() {
    let args = exec_start();
    assert_eq!(args[0], "/usr/local/bin/guildnet");
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{e}"));
    let Cmd::Up { args, dashboard } = cli.cmd else {
        panic!("ExecStart is not `guildnet up`");
    };
    assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(dashboard.dashboard_listen.to_string(), "127.0.0.1:8090");
    for key in [
        "GUILDNET_STATE_DIR=/var/lib/guildnet/state",
        "StateDirectory=guildnet",
        "UMask=0077",
    ] {
        assert!(UNIT.contains(key), "{key} missing");
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("guildnet.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/guildnet", env!("CARGO_BIN_EXE_guildnet")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown or misspelt keys are only warnings (exit 0): none is allowed.
    assert!(stderr.trim().is_empty(), "systemd-analyze warned: {stderr}");
    // The check itself can fail: a misspelt key is reported.
    std::fs::write(&unit, UNIT.replace("ProtectHome=", "ProtectHomme=")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectHomme"));
}
