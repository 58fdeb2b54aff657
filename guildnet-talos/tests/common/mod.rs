//! Test bed for the talosctl driver: the testbed's real talosctl, and, for node operations,
//! the Talos node emulator (guildnet_testbed::talos_emulator) on loopback, whose bootstrap
//! starts a real control plane (etcd + kube-apiserver).
#![allow(dead_code)]

use guildnet_core::names::OrgName;
use guildnet_core::seams::{BootstrapProgress, BootstrapRequest};
use guildnet_core::state_dir::StatePaths;
use guildnet_talos::{RetryPolicy, TalosOptions, TalosctlBootstrap};
use guildnet_testbed::talos_emulator::TalosEmulator;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// At most two beds with nodes at a time in this test binary: each bootstrap starts a real
/// control plane, and the machine has 2 cores.
static NODE_BEDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub struct Bed {
    pub emu: Option<TalosEmulator>,
    pub dir: tempfile::TempDir,
    pub state: StatePaths,
    pub temp_root: PathBuf,
    _slot: Option<tokio::sync::SemaphorePermit<'static>>,
}

impl Bed {
    /// A bed without nodes (the offline gen/config steps only).
    pub fn new() -> Bed {
        let dir = tempfile::tempdir().expect("tempdir");
        let temp_root = dir.path().join("tmp");
        std::fs::create_dir_all(&temp_root).unwrap();
        Bed {
            state: StatePaths::new(dir.path().join("state")),
            temp_root,
            emu: None,
            dir,
            _slot: None,
        }
    }

    /// A bed with `count` emulated Talos nodes in maintenance mode.
    pub async fn with_nodes(count: usize) -> Bed {
        let mut bed = Bed::new();
        bed._slot = Some(NODE_BEDS.acquire().await.expect("semaphore"));
        bed.emu = Some(
            TalosEmulator::start(count)
                .await
                .expect("talos emulator (scripts/testbed/install.sh talos-emulator)"),
        );
        bed
    }

    /// For failure messages: the emulator's log and the control plane's state.
    pub async fn diagnostics(&self) -> String {
        match &self.emu {
            Some(e) => e.diagnostics().await,
            None => String::new(),
        }
    }

    pub fn emu(&self) -> &TalosEmulator {
        self.emu.as_ref().expect("a bed with nodes")
    }

    /// The address of emulated node `i`.
    pub fn node(&self, i: usize) -> String {
        self.emu().nodes()[i].clone()
    }

    pub fn options(&self) -> TalosOptions {
        let real = guildnet_testbed::talos::Talosctl::new()
            .expect("testbed talosctl (scripts/testbed/install.sh talosctl)");
        let mut o = TalosOptions::new(self.state.clone());
        o.talosctl = real.path().to_owned();
        o.install_disk = Some("/dev/vda".into());
        o.temp_root = Some(self.temp_root.clone());
        o.retry = RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        };
        o.command_timeout = Duration::from_secs(60);
        o.health_timeout = Duration::from_secs(120);
        o
    }

    pub fn bootstrapper(&self) -> TalosctlBootstrap {
        TalosctlBootstrap::new(self.options())
    }

    /// Makes the emulator fail `control` (`apply-config@<node>`, `bootstrap`, ...).
    pub fn fail(&self, control: &str, how: &str) {
        self.emu().fail(control, how).unwrap();
    }

    /// The calls the emulated nodes served, one line per node and attempt.
    pub fn calls(&self) -> Vec<String> {
        self.emu.as_ref().map(|e| e.calls()).unwrap_or_default()
    }

    pub fn clear_calls(&self) {
        self.emu().clear_calls();
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

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub fn yaml(path: &Path) -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
