//! How the talosctl driver runs: which binary, machine-config choices, retries and timeouts.

use guildnet_core::state_dir::StatePaths;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Retries of transient failures (connection refused, timeouts, resets): capped exponential
/// backoff, at most `max_attempts` tries per command (the first try included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per command, at least 1.
    pub max_attempts: u32,
    /// Wait after the first failed try; doubled after each further one.
    pub initial_delay: Duration,
    /// Longest wait between two tries.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 10 tries, 2 s doubling up to 30 s: a node that reboots into its new config (a minute or
    /// two) is waited for.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The waits between tries: `initial_delay` doubling up to `max_delay`, one fewer than
    /// `max_attempts` (backon's exponential backoff, no jitter).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_attempts.max(1) as usize - 1)
            .build()
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn the_default_waits_double_from_2_s_up_to_30_s_nine_times() {
        let waits: Vec<u64> = RetryPolicy::default()
            .delays()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30, 30, 30]);
        let once = RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        };
        assert_eq!(once.delays().count(), 0, "one try: no wait");
    }
}

/// Settings of [`crate::TalosctlBootstrap`].
#[derive(Debug, Clone)]
pub struct TalosOptions {
    /// Where the talosconfig, kubeconfig and secrets bundle of each org are written.
    pub state: StatePaths,
    /// The talosctl binary: a path, or a bare name looked up in `search_path` (default
    /// `talosctl`).
    pub talosctl: PathBuf,
    /// `PATH` used to find a bare `talosctl` name and given to talosctl; `None` uses this
    /// process's `PATH`.
    pub search_path: Option<OsString>,
    /// Extra environment for talosctl (proxy settings, say). Never put secrets here: they
    /// would not be logged, but talosctl's children could see them.
    pub extra_env: Vec<(OsString, OsString)>,
    /// Where the private per-run temp dir is made (default: the system temp dir).
    pub temp_root: Option<PathBuf>,
    /// `--install-disk` of the generated configs (talosctl's default is `/dev/sda`).
    pub install_disk: Option<String>,
    /// Extra Subject-Alt-Names of the API server certificate (IPs or DNS names).
    pub extra_sans: Vec<String>,
    /// Config patches (YAML or JSON strategic-merge / JSON6902 text) for every node.
    pub config_patches: Vec<String>,
    /// Config patches for control-plane nodes only.
    pub control_plane_patches: Vec<String>,
    /// Config patches for worker nodes only.
    pub worker_patches: Vec<String>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Longest run of one talosctl command (killed after it).
    pub command_timeout: Duration,
    /// How long `talosctl health` waits for the cluster (`--wait-timeout`).
    pub health_timeout: Duration,
}

impl TalosOptions {
    /// Defaults for `state`: `talosctl` from `PATH`, talosctl's own machine-config defaults,
    /// [`RetryPolicy::default`], 2 min per command, 10 min for health.
    pub fn new(state: StatePaths) -> Self {
        Self {
            state,
            talosctl: PathBuf::from("talosctl"),
            search_path: None,
            extra_env: Vec::new(),
            temp_root: None,
            install_disk: None,
            extra_sans: Vec::new(),
            config_patches: Vec::new(),
            control_plane_patches: Vec::new(),
            worker_patches: Vec::new(),
            retry: RetryPolicy::default(),
            command_timeout: Duration::from_secs(120),
            health_timeout: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let d: Vec<u128> = p.delays().map(|d| d.as_millis()).collect();
        assert_eq!(d, vec![100, 200, 350, 350], "one wait fewer than tries");
    }
}
