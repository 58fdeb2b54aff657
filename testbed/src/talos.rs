//! talosctl, client side only: generating and validating machine configs.
//!
//! No Talos node can run on the test machine, so only the commands that work offline are
//! wrapped here (`gen config`, `validate`, `version --client`); node commands go to emulated
//! nodes ([`crate::talos_emulator`]). Each one is a one-shot
//! [`crate::process::run`], whose error quotes talosctl's stdout and stderr.

use crate::process::run;
use crate::{bin, Result, TestbedError};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The talosctl binary of the testbed (`bin/talosctl`, v1.11.5).
#[derive(Debug, Clone)]
pub struct Talosctl {
    path: PathBuf,
}

/// The files written by [`Talosctl::gen_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedConfig {
    /// The machine config for control-plane nodes (`controlplane.yaml`).
    pub controlplane: PathBuf,
    /// The machine config for worker nodes (`worker.yaml`).
    pub worker: PathBuf,
    /// The client config with the admin certificate (`talosconfig`).
    pub talosconfig: PathBuf,
}

/// Which platform `talosctl validate --mode` checks a machine config against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateMode {
    /// Bare metal: an install disk is required.
    Metal,
    /// A cloud platform.
    Cloud,
    /// Talos in a container.
    Container,
}

impl ValidateMode {
    /// The `--mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidateMode::Metal => "metal",
            ValidateMode::Cloud => "cloud",
            ValidateMode::Container => "container",
        }
    }
}

impl Talosctl {
    /// Finds the installed talosctl (an error names `install.sh talosctl` if it is missing).
    pub fn new() -> Result<Talosctl> {
        Ok(Talosctl {
            path: bin("talosctl")?,
        })
    }

    /// Path of the binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs talosctl with `args`; returns its stdout, or an error quoting its output.
    ///
    /// `TALOSCONFIG` is pointed at a path that does not exist, so a developer's
    /// `~/.talos/config` is never read.
    pub async fn run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let no_config = OsStr::new("/nonexistent/guildnet-testbed/talosconfig");
        run(&self.path, args, &[("TALOSCONFIG", no_config)]).await
    }

    /// The client version tag, e.g. `v1.11.5` (from `talosctl version --client --short`,
    /// which prints `Client:` and then `Talos v1.11.5`).
    pub async fn version(&self) -> Result<String> {
        let out = self.run(["version", "--client", "--short"]).await?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Talos "))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| {
                TestbedError::Unexpected(format!("no `Talos vX` line in talosctl version: {out}"))
            })
    }

    /// `talosctl gen config <cluster_name> <endpoint> --output <out_dir> [extra_args…]`.
    ///
    /// `out_dir` is created if needed; existing files in it are not overwritten (talosctl
    /// fails instead) unless `extra_args` contains `--force`. Typical extra arguments are
    /// `--additional-sans 10.0.0.2`, `--kubernetes-version …` or `--config-patch @file`.
    /// Returns the paths of the three generated files, after checking that they exist.
    pub async fn gen_config(
        &self,
        cluster_name: &str,
        endpoint: &str,
        out_dir: &Path,
        extra_args: &[&str],
    ) -> Result<GeneratedConfig> {
        std::fs::create_dir_all(out_dir)
            .map_err(TestbedError::io(format!("create {}", out_dir.display())))?;
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("gen"),
            OsStr::new("config"),
            OsStr::new(cluster_name),
            OsStr::new(endpoint),
            OsStr::new("--output"),
            out_dir.as_os_str(),
        ];
        args.extend(extra_args.iter().map(OsStr::new));
        self.run(args).await?;
        let generated = GeneratedConfig {
            controlplane: out_dir.join("controlplane.yaml"),
            worker: out_dir.join("worker.yaml"),
            talosconfig: out_dir.join("talosconfig"),
        };
        for file in [
            &generated.controlplane,
            &generated.worker,
            &generated.talosconfig,
        ] {
            if !file.is_file() {
                return Err(TestbedError::Unexpected(format!(
                    "talosctl gen config succeeded but did not write {}",
                    file.display()
                )));
            }
        }
        Ok(generated)
    }

    /// `talosctl validate --config <config> --mode <mode>`: Ok with talosctl's message
    /// (`… is valid for metal mode`), or a [`TestbedError::Command`] listing the problems.
    pub async fn validate(&self, config: &Path, mode: ValidateMode) -> Result<String> {
        let out = self
            .run([
                OsStr::new("validate"),
                OsStr::new("--config"),
                config.as_os_str(),
                OsStr::new("--mode"),
                OsStr::new(mode.as_str()),
            ])
            .await?;
        Ok(out.trim().to_owned())
    }
}
