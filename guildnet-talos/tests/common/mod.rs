//! Test bed for the talosctl driver: the stand-in talosctl (tests/fixtures/talosctl) first in
//! the configured PATH, delegating `gen`/`config` to the testbed's real talosctl.
#![allow(dead_code)]

use guildnet_core::names::OrgName;
use guildnet_core::seams::{BootstrapProgress, BootstrapRequest};
use guildnet_core::state_dir::StatePaths;
use guildnet_talos::{RetryPolicy, TalosOptions, TalosctlBootstrap};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fake secrets the stand-in prints.
pub const TOKEN: &str = "q1w2e3.r4t5y6u7i8o9p0a1";
pub const KEY: &str =
    "LS0tLS1CRUdJTiBFRDI1NTE5IFBSSVZBVEUgS0VZLS0tLS0KTUM0Q0FRQXdCUVlESzJWd0JDSUVJ";

pub struct Bed {
    pub dir: tempfile::TempDir,
    pub state: StatePaths,
    pub standin_dir: PathBuf,
    pub temp_root: PathBuf,
    pub bin_dir: PathBuf,
}

impl Bed {
    pub fn new() -> Bed {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/talosctl");
        let standin = bin_dir.join("talosctl");
        std::fs::copy(&script, &standin).expect("copy the stand-in talosctl");
        std::fs::set_permissions(&standin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let standin_dir = dir.path().join("standin");
        std::fs::create_dir_all(standin_dir.join("fail")).unwrap();
        let temp_root = dir.path().join("tmp");
        std::fs::create_dir_all(&temp_root).unwrap();
        Bed {
            state: StatePaths::new(dir.path().join("state")),
            standin_dir,
            temp_root,
            bin_dir,
            dir,
        }
    }

    pub fn options(&self) -> TalosOptions {
        let real = guildnet_testbed::talos::Talosctl::new()
            .expect("testbed talosctl (scripts/testbed/install.sh talosctl)");
        let mut path = OsString::from(&self.bin_dir);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut o = TalosOptions::new(self.state.clone());
        o.search_path = Some(path);
        o.extra_env = vec![
            ("STANDIN_DIR".into(), self.standin_dir.clone().into()),
            ("STANDIN_REAL_TALOSCTL".into(), real.path().into()),
            ("STANDIN_TOKEN".into(), TOKEN.into()),
            ("STANDIN_KEY".into(), KEY.into()),
        ];
        o.temp_root = Some(self.temp_root.clone());
        o.retry = RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        };
        o.command_timeout = Duration::from_secs(60);
        o.health_timeout = Duration::from_secs(30);
        o
    }

    pub fn bootstrapper(&self) -> TalosctlBootstrap {
        TalosctlBootstrap::new(self.options())
    }

    /// Makes the stand-in fail `control` (`apply-config@10.0.0.2`, `bootstrap`, ...).
    pub fn fail(&self, control: &str, how: &str) {
        std::fs::write(self.standin_dir.join("fail").join(control), how).unwrap();
    }

    pub fn clear_failures(&self) {
        for e in std::fs::read_dir(self.standin_dir.join("fail")).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }

    /// The stand-in's argv log, one invocation per line.
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.standin_dir.join("argv.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn clear_log(&self) {
        let _ = std::fs::remove_file(self.standin_dir.join("argv.log"));
    }

    /// Entries left in the temp root (the private run dirs must be gone).
    pub fn temp_leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.temp_root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

pub fn org(name: &str) -> OrgName {
    OrgName::new(name).unwrap()
}

pub fn request(cp: &[&str], workers: &[&str]) -> BootstrapRequest {
    BootstrapRequest {
        org: org("acme"),
        control_plane: cp.iter().map(|s| s.to_string()).collect(),
        workers: workers.iter().map(|s| s.to_string()).collect(),
    }
}

/// Runs a bootstrap through the trait, collecting its progress events.
pub async fn run(
    b: &TalosctlBootstrap,
    req: BootstrapRequest,
) -> (
    Result<guildnet_core::seams::BootstrapOutcome, guildnet_core::seams::BootstrapError>,
    Vec<BootstrapProgress>,
) {
    use guildnet_core::seams::ClusterBootstrap;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = b.bootstrap(req, tx).await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (result, events)
}

/// A short form of each logged invocation: the subcommand words and the node flags, without
/// file paths (which hold random temp dir names).
pub fn summarize(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        match w {
            "--talosconfig" | "--output" | "--with-secrets" | "--output-file"
            | "--wait-timeout" => i += 1,
            "--file" => {
                if let Some(f) = words.get(i + 1) {
                    out.push(format!(
                        "--file={}",
                        Path::new(f).file_name().unwrap().to_string_lossy()
                    ));
                }
                i += 1
            }
            w if w.starts_with('/') => out.push(
                Path::new(w)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            ),
            w if w.starts_with("--with-docs")
                || w.starts_with("--with-examples")
                || w == "--force" => {}
            w => out.push(w.to_owned()),
        }
        i += 1;
    }
    out.join(" ")
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub fn yaml(path: &Path) -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
