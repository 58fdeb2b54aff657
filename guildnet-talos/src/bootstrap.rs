//! The talosctl-driven bootstrap of an org's cluster: gen config, apply-config to every node,
//! save the talosconfig, bootstrap etcd once, wait for health, write the kubeconfig.

use crate::kubeconfig::rename_context;
use crate::options::TalosOptions;
use crate::progress::Reporter;
use crate::runner::{args, RunFailure, Talosctl};
use crate::validate::{validate_address, validate_options, validate_request};
use async_trait::async_trait;
use guildnet_core::names::{validate_dns_label, OrgName};
use guildnet_core::seams::{
    BootstrapError, BootstrapOutcome, BootstrapProgress, BootstrapRequest, ClusterBootstrap,
};
use guildnet_core::state_dir::{create_private_dir, write_private_file};
use std::ffi::OsString;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::sync::mpsc::UnboundedSender;

/// Step names, as they appear in progress events and errors. Per-node steps append the node
/// (`apply-config 10.0.0.2`).
pub mod steps {
    /// Request and options checks.
    pub const VALIDATE: &str = "validate";
    /// `talosctl gen secrets` (first run only) and `talosctl gen config`.
    pub const GEN_CONFIG: &str = "gen-config";
    /// `talosctl apply-config` to one node (the step name is followed by the node).
    pub const APPLY_CONFIG: &str = "apply-config";
    /// Saving the talosconfig and setting its endpoints and nodes.
    pub const TALOSCONFIG: &str = "talosconfig";
    /// `talosctl bootstrap` (etcd), once per cluster.
    pub const BOOTSTRAP: &str = "bootstrap";
    /// `talosctl health`.
    pub const HEALTH: &str = "health";
    /// `talosctl kubeconfig` and the context rename.
    pub const KUBECONFIG: &str = "kubeconfig";
}

/// Kubernetes API port of the control-plane endpoint.
const KUBE_API_PORT: u16 = 6443;
/// Extra time allowed to `talosctl health` beyond its own `--wait-timeout`.
const HEALTH_GRACE: Duration = Duration::from_secs(60);

/// The machine configs written by [`TalosctlBootstrap::generate_configs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedConfigs {
    /// `controlplane.yaml`.
    pub controlplane: PathBuf,
    /// `worker.yaml`.
    pub worker: PathBuf,
    /// `talosconfig` (holds the admin client key).
    pub talosconfig: PathBuf,
}

/// How a talosctl run may be retried.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// Local commands: one try.
    Never,
    /// Transient failures are retried per the policy, but never past the deadline.
    Transient { deadline: Option<Instant> },
}

/// [`ClusterBootstrap`] through the `talosctl` CLI.
#[derive(Debug, Clone)]
pub struct TalosctlBootstrap {
    options: TalosOptions,
    talosctl: Talosctl,
}

impl TalosctlBootstrap {
    /// A bootstrapper with these options.
    pub fn new(options: TalosOptions) -> Self {
        let talosctl = Talosctl::new(
            &options.talosctl,
            options.search_path.clone(),
            options.extra_env.clone(),
            options.command_timeout,
        );
        Self { options, talosctl }
    }

    /// The options in use.
    pub fn options(&self) -> &TalosOptions {
        &self.options
    }

    /// `${state}/talos/<org>.secrets.yaml` (mode 0600): the cluster's secrets bundle, made on
    /// the first run and reused after, so a re-run generates configs of the same cluster.
    pub fn secrets_path(&self, org: &OrgName) -> PathBuf {
        self.options
            .state
            .root()
            .join("talos")
            .join(format!("{org}.secrets.yaml"))
    }

    /// Runs the whole bootstrap, reporting on `progress` if given.
    pub async fn run(
        &self,
        request: &BootstrapRequest,
        progress: Option<UnboundedSender<BootstrapProgress>>,
    ) -> Result<BootstrapOutcome, BootstrapError> {
        let reporter = Reporter::new(progress);
        tracing::info!(org = %request.org, control_plane = request.control_plane.len(),
            workers = request.workers.len(), "talos bootstrap starting");
        let result = self.run_steps(request, &reporter).await;
        match &result {
            Ok(_) => tracing::info!(org = %request.org, "talos bootstrap succeeded"),
            Err(e) => tracing::warn!(org = %request.org, error = %e, "talos bootstrap failed"),
        }
        result
    }

    /// Generates `controlplane.yaml`, `worker.yaml` and `talosconfig` for `request` into
    /// `out_dir` (files there are overwritten), with the org's secrets bundle (made if missing)
    /// and the configured install disk, extra SANs and patches. The first step of a bootstrap,
    /// public so the configs can be checked (`talosctl validate`) or applied by other means.
    pub async fn generate_configs(
        &self,
        request: &BootstrapRequest,
        out_dir: &Path,
    ) -> Result<GeneratedConfigs, BootstrapError> {
        let reporter = Reporter::default();
        validate_request(request, &self.options)?;
        let scratch = self.scratch_dir(&request.org, &reporter, steps::GEN_CONFIG)?;
        self.gen_config(request, out_dir, scratch.path(), &reporter)
            .await
    }

    /// Fetches the org cluster's admin kubeconfig from `endpoint` (a control-plane node) with
    /// the saved talosconfig, names its context after the org and writes it to
    /// `${state}/kube/<org>.config` (0600). Returns that path.
    pub async fn generate_kubeconfig(
        &self,
        org: &OrgName,
        endpoint: &str,
    ) -> Result<PathBuf, BootstrapError> {
        self.generate_kubeconfig_with_progress(org, endpoint, None)
            .await
    }

    /// [`Self::generate_kubeconfig`], reporting on `progress` if given.
    pub async fn generate_kubeconfig_with_progress(
        &self,
        org: &OrgName,
        endpoint: &str,
        progress: Option<UnboundedSender<BootstrapProgress>>,
    ) -> Result<PathBuf, BootstrapError> {
        let reporter = Reporter::new(progress);
        let checked = validate_dns_label("org", org.as_str())
            .map_err(|e| BootstrapError::Invalid(e.to_string()))
            .and_then(|()| validate_address("endpoint", endpoint));
        if let Err(e) = checked {
            reporter.error(steps::VALIDATE, &e.to_string());
            return Err(e);
        }
        let talosconfig = self.options.state.talosconfig(org);
        if !talosconfig.is_file() {
            let reason = format!(
                "no talosconfig at {}: bootstrap the org first",
                talosconfig.display()
            );
            reporter.error(steps::KUBECONFIG, &reason);
            return Err(BootstrapError::NotBootstrapped {
                org: org.clone(),
                reason,
            });
        }
        let scratch = self.scratch_dir(org, &reporter, steps::KUBECONFIG)?;
        self.kubeconfig_step(org, endpoint, &talosconfig, scratch.path(), &reporter)
            .await
    }

    async fn run_steps(
        &self,
        request: &BootstrapRequest,
        reporter: &Reporter,
    ) -> Result<BootstrapOutcome, BootstrapError> {
        if let Err(e) = validate_request(request, &self.options) {
            reporter.error(steps::VALIDATE, &e.to_string());
            return Err(e);
        }
        let org = &request.org;
        let cp0 = request.control_plane[0].as_str();
        // Removed when this function returns, whichever way.
        let scratch = self.scratch_dir(org, reporter, steps::GEN_CONFIG)?;
        let out_dir = scratch.path().join("out");
        let configs = self
            .gen_config(request, &out_dir, scratch.path(), reporter)
            .await?;
        let talosconfig = self.options.state.talosconfig(org);
        let no_talosconfig = scratch.path().join("no-talosconfig");

        let nodes = request
            .control_plane
            .iter()
            .map(|n| (n, &configs.controlplane, "control-plane"))
            .chain(
                request
                    .workers
                    .iter()
                    .map(|n| (n, &configs.worker, "worker")),
            );
        for (node, file, role) in nodes {
            self.apply_config(
                org,
                node,
                file,
                role,
                &talosconfig,
                &no_talosconfig,
                reporter,
            )
            .await?;
        }

        self.save_talosconfig(request, &configs.talosconfig, &talosconfig, reporter)
            .await?;
        self.bootstrap_etcd(org, cp0, &talosconfig, reporter)
            .await?;
        self.health(request, &talosconfig, reporter).await?;
        let kubeconfig = self
            .kubeconfig_step(org, cp0, &talosconfig, scratch.path(), reporter)
            .await?;
        Ok(BootstrapOutcome {
            kubeconfig,
            talosconfig,
        })
    }

    /// A private (0700) temp dir for generated configs and patches.
    fn scratch_dir(
        &self,
        org: &OrgName,
        reporter: &Reporter,
        step: &str,
    ) -> Result<TempDir, BootstrapError> {
        let make = || -> std::io::Result<TempDir> {
            let mut builder = tempfile::Builder::new();
            builder.prefix("guildnet-talos-");
            let dir = match &self.options.temp_root {
                Some(root) => {
                    create_private_dir(root).map_err(std::io::Error::other)?;
                    builder.tempdir_in(root)?
                }
                None => builder.tempdir()?,
            };
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
            Ok(dir)
        };
        make().map_err(|e| {
            fail(
                org,
                reporter,
                step,
                format!("cannot create a private temp dir: {e}"),
            )
        })
    }

    async fn gen_config(
        &self,
        request: &BootstrapRequest,
        out_dir: &Path,
        scratch: &Path,
        reporter: &Reporter,
    ) -> Result<GeneratedConfigs, BootstrapError> {
        let org = &request.org;
        let step = steps::GEN_CONFIG;
        let endpoint = cluster_endpoint(&request.control_plane[0]);
        reporter.start(
            step,
            &format!("generating machine configs for cluster {org} (endpoint {endpoint})"),
        );
        let no_talosconfig = scratch.join("no-talosconfig");
        let secrets = self.secrets_path(org);
        if secrets.is_file() {
            reporter.output(step, "reusing the org's secrets bundle");
        } else {
            let fresh = scratch.join("secrets.yaml");
            let gen_secrets = args([
                OsString::from("gen"),
                "secrets".into(),
                "--output-file".into(),
                fresh.clone().into(),
            ]);
            self.run_retrying(
                step,
                &gen_secrets,
                &no_talosconfig,
                reporter,
                Retry::Never,
                None,
            )
            .await
            .map_err(|(f, _)| fail(org, reporter, step, f.reason()))?;
            let bytes = std::fs::read(&fresh).map_err(|e| {
                fail(
                    org,
                    reporter,
                    step,
                    format!("reading the secrets bundle: {e}"),
                )
            })?;
            write_private_file(&secrets, &bytes)
                .map_err(|e| fail(org, reporter, step, e.to_string()))?;
            let _ = std::fs::remove_file(&fresh);
            reporter.output(
                step,
                &format!("new secrets bundle saved to {}", secrets.display()),
            );
        }

        let mut gen: Vec<OsString> = args([
            "gen",
            "config",
            org.as_str(),
            endpoint.as_str(),
            "--with-docs=false",
            "--with-examples=false",
            "--force",
        ]);
        gen.extend(args([OsString::from("--output"), out_dir.into()]));
        gen.extend(args([OsString::from("--with-secrets"), secrets.into()]));
        if let Some(disk) = &self.options.install_disk {
            gen.extend(args(["--install-disk", disk]));
        }
        if !self.options.extra_sans.is_empty() {
            gen.extend(args([
                "--additional-sans".to_owned(),
                self.options.extra_sans.join(","),
            ]));
        }
        let patch_sets = [
            ("--config-patch", &self.options.config_patches),
            (
                "--config-patch-control-plane",
                &self.options.control_plane_patches,
            ),
            ("--config-patch-worker", &self.options.worker_patches),
        ];
        let mut n = 0;
        for (flag, patches) in patch_sets {
            for patch in patches {
                n += 1;
                let file = scratch.join(format!("patch-{n}.yaml"));
                write_private_file(&file, patch.as_bytes())
                    .map_err(|e| fail(org, reporter, step, e.to_string()))?;
                let mut at = OsString::from("@");
                at.push(&file);
                gen.extend([OsString::from(flag), at]);
            }
        }
        self.run_retrying(step, &gen, &no_talosconfig, reporter, Retry::Never, None)
            .await
            .map_err(|(f, _)| fail(org, reporter, step, f.reason()))?;
        let configs = GeneratedConfigs {
            controlplane: out_dir.join("controlplane.yaml"),
            worker: out_dir.join("worker.yaml"),
            talosconfig: out_dir.join("talosconfig"),
        };
        for file in [&configs.controlplane, &configs.worker, &configs.talosconfig] {
            if !file.is_file() {
                return Err(fail(
                    org,
                    reporter,
                    step,
                    format!("talosctl gen config did not write {}", file.display()),
                ));
            }
        }
        reporter.done(step, "wrote controlplane.yaml, worker.yaml and talosconfig");
        Ok(configs)
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_config(
        &self,
        org: &OrgName,
        node: &str,
        file: &Path,
        role: &str,
        talosconfig: &Path,
        no_talosconfig: &Path,
        reporter: &Reporter,
    ) -> Result<(), BootstrapError> {
        let step = format!("{} {node}", steps::APPLY_CONFIG);
        let file_name = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        reporter.start(
            &step,
            &format!("applying {file_name} to {role} node {node} (maintenance mode)"),
        );
        let mut insecure = args(["apply-config", "--insecure", "--nodes", node, "--file"]);
        insecure.push(file.into());
        let retry = Retry::Transient { deadline: None };
        match self
            .run_retrying(&step, &insecure, no_talosconfig, reporter, retry, None)
            .await
        {
            Ok(_) => {}
            // A configured node has left maintenance mode: its API wants a client certificate.
            // The org's talosconfig from an earlier run (same secrets bundle) has one.
            Err((f, _)) if refused_without_client_cert(f.output()) && talosconfig.is_file() => {
                reporter.output(
                    &step,
                    "node is already configured; applying with the org's talosconfig",
                );
                let mut secure = args([OsString::from("--talosconfig"), talosconfig.into()]);
                secure.extend(args([
                    "apply-config",
                    "--nodes",
                    node,
                    "--endpoints",
                    node,
                    "--file",
                ]));
                secure.push(file.into());
                self.run_retrying(&step, &secure, talosconfig, reporter, retry, None)
                    .await
                    .map_err(|(f, n)| fail(org, reporter, &step, attempts_reason(&f, n)))?;
            }
            Err((f, n)) => return Err(fail(org, reporter, &step, attempts_reason(&f, n))),
        }
        reporter.done(&step, &format!("{role} node {node} accepted its config"));
        Ok(())
    }

    async fn save_talosconfig(
        &self,
        request: &BootstrapRequest,
        generated: &Path,
        talosconfig: &Path,
        reporter: &Reporter,
    ) -> Result<(), BootstrapError> {
        let org = &request.org;
        let step = steps::TALOSCONFIG;
        reporter.start(
            step,
            &format!("saving talosconfig to {}", talosconfig.display()),
        );
        let bytes = std::fs::read(generated).map_err(|e| {
            fail(
                org,
                reporter,
                step,
                format!("reading the generated talosconfig: {e}"),
            )
        })?;
        write_private_file(talosconfig, &bytes)
            .map_err(|e| fail(org, reporter, step, e.to_string()))?;
        let with_config = |rest: Vec<OsString>| {
            let mut a = args([OsString::from("--talosconfig"), talosconfig.into()]);
            a.extend(rest);
            a
        };
        let mut endpoint = args(["config", "endpoint"]);
        endpoint.extend(args(&request.control_plane));
        let node = args(["config", "node", request.control_plane[0].as_str()]);
        for cmd in [with_config(endpoint), with_config(node)] {
            self.run_retrying(step, &cmd, talosconfig, reporter, Retry::Never, None)
                .await
                .map_err(|(f, _)| fail(org, reporter, step, f.reason()))?;
        }
        // talosctl rewrites the file; keep it private whatever its umask did.
        std::fs::set_permissions(talosconfig, std::fs::Permissions::from_mode(0o600)).map_err(
            |e| {
                fail(
                    org,
                    reporter,
                    step,
                    format!("chmod 0600 {}: {e}", talosconfig.display()),
                )
            },
        )?;
        reporter.done(
            step,
            &format!(
                "endpoints {}; node {}",
                request.control_plane.join(", "),
                request.control_plane[0]
            ),
        );
        Ok(())
    }

    async fn bootstrap_etcd(
        &self,
        org: &OrgName,
        cp0: &str,
        talosconfig: &Path,
        reporter: &Reporter,
    ) -> Result<(), BootstrapError> {
        let step = steps::BOOTSTRAP;
        reporter.start(step, &format!("bootstrapping etcd on {cp0}"));
        let mut cmd = args([OsString::from("--talosconfig"), talosconfig.into()]);
        cmd.extend(args(["bootstrap", "--nodes", cp0, "--endpoints", cp0]));
        let retry = Retry::Transient { deadline: None };
        match self
            .run_retrying(step, &cmd, talosconfig, reporter, retry, None)
            .await
        {
            Ok(_) => reporter.done(step, &format!("etcd bootstrapped on {cp0}")),
            Err((f, _)) if already_bootstrapped(f.output()) => reporter.done(
                step,
                &format!("etcd was already bootstrapped on {cp0}; continuing"),
            ),
            Err((f, n)) => return Err(fail(org, reporter, step, attempts_reason(&f, n))),
        }
        Ok(())
    }

    async fn health(
        &self,
        request: &BootstrapRequest,
        talosconfig: &Path,
        reporter: &Reporter,
    ) -> Result<(), BootstrapError> {
        let org = &request.org;
        let step = steps::HEALTH;
        let cp0 = request.control_plane[0].as_str();
        let wait = self.options.health_timeout;
        reporter.start(
            step,
            &format!(
                "waiting up to {}s for the cluster to be healthy",
                wait.as_secs()
            ),
        );
        let mut cmd = args([OsString::from("--talosconfig"), talosconfig.into()]);
        cmd.extend(args(["health", "--nodes", cp0, "--endpoints", cp0]));
        cmd.extend(args([
            "--wait-timeout".to_owned(),
            format!("{}s", wait.as_secs().max(1)),
        ]));
        // talosctl health wants IPs; with host names it finds the nodes itself.
        let all_ips = |nodes: &[String]| nodes.iter().all(|n| n.parse::<IpAddr>().is_ok());
        if all_ips(&request.control_plane) && all_ips(&request.workers) {
            cmd.extend(args([
                "--control-plane-nodes".to_owned(),
                request.control_plane.join(","),
            ]));
            if !request.workers.is_empty() {
                cmd.extend(args([
                    "--worker-nodes".to_owned(),
                    request.workers.join(","),
                ]));
            }
        }
        let retry = Retry::Transient {
            deadline: Some(Instant::now() + wait),
        };
        self.run_retrying(
            step,
            &cmd,
            talosconfig,
            reporter,
            retry,
            Some(wait + HEALTH_GRACE),
        )
        .await
        .map_err(|(f, n)| fail(org, reporter, step, attempts_reason(&f, n)))?;
        reporter.done(step, "cluster is healthy");
        Ok(())
    }

    async fn kubeconfig_step(
        &self,
        org: &OrgName,
        endpoint: &str,
        talosconfig: &Path,
        scratch: &Path,
        reporter: &Reporter,
    ) -> Result<PathBuf, BootstrapError> {
        let step = steps::KUBECONFIG;
        let target = self.options.state.kubeconfig(org);
        reporter.start(
            step,
            &format!("fetching the admin kubeconfig from {endpoint}"),
        );
        let fetched = scratch.join("kubeconfig");
        let mut cmd = args([OsString::from("--talosconfig"), talosconfig.into()]);
        cmd.extend(args([OsString::from("kubeconfig"), fetched.clone().into()]));
        cmd.extend(args([
            "--force",
            "--merge=false",
            "--nodes",
            endpoint,
            "--endpoints",
            endpoint,
        ]));
        let retry = Retry::Transient { deadline: None };
        self.run_retrying(step, &cmd, talosconfig, reporter, retry, None)
            .await
            .map_err(|(f, n)| fail(org, reporter, step, attempts_reason(&f, n)))?;
        let yaml = std::fs::read_to_string(&fetched).map_err(|e| {
            fail(
                org,
                reporter,
                step,
                format!("talosctl wrote no kubeconfig: {e}"),
            )
        })?;
        let _ = std::fs::remove_file(&fetched);
        let renamed = rename_context(&yaml, org.as_str())
            .map_err(|e| fail(org, reporter, step, e.to_string()))?;
        write_private_file(&target, renamed.as_bytes())
            .map_err(|e| fail(org, reporter, step, e.to_string()))?;
        reporter.done(
            step,
            &format!(
                "kubeconfig with context {org} written to {}",
                target.display()
            ),
        );
        Ok(target)
    }

    /// Runs talosctl, retrying transient failures per the policy. The error carries the last
    /// failure and the number of tries.
    async fn run_retrying(
        &self,
        step: &str,
        cmd: &[OsString],
        talosconfig: &Path,
        reporter: &Reporter,
        retry: Retry,
        timeout: Option<Duration>,
    ) -> Result<String, (RunFailure, u32)> {
        let policy = &self.options.retry;
        let max = match retry {
            Retry::Never => 1,
            Retry::Transient { .. } => policy.max_attempts.max(1),
        };
        let mut delays = match retry {
            Retry::Never => None,
            Retry::Transient { .. } => Some(policy.delays()),
        };
        let mut attempt = 1;
        loop {
            let failure = match self
                .talosctl
                .run(cmd, talosconfig, reporter, step, timeout)
                .await
            {
                Ok(out) => return Ok(out),
                Err(f) => f,
            };
            let next = delays.as_mut().and_then(Iterator::next);
            let Some(delay) = next.filter(|_| failure.is_transient()) else {
                return Err((failure, attempt));
            };
            if let Retry::Transient {
                deadline: Some(deadline),
            } = retry
            {
                if Instant::now() + delay >= deadline {
                    return Err((failure, attempt));
                }
            }
            tracing::warn!(
                step,
                attempt,
                max,
                ?delay,
                "transient talosctl failure; retrying"
            );
            reporter.output(
                step,
                &format!(
                    "attempt {attempt}/{max} failed with a transient error; retrying in {delay:?}"
                ),
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[async_trait]
impl ClusterBootstrap for TalosctlBootstrap {
    async fn bootstrap(
        &self,
        request: BootstrapRequest,
        progress: UnboundedSender<BootstrapProgress>,
    ) -> Result<BootstrapOutcome, BootstrapError> {
        self.run(&request, Some(progress)).await
    }

    fn validate(&self, request: &BootstrapRequest) -> Result<(), BootstrapError> {
        validate_request(request, &self.options)
    }

    async fn generate_kubeconfig(
        &self,
        org: &OrgName,
        endpoint: &str,
    ) -> Result<PathBuf, BootstrapError> {
        TalosctlBootstrap::generate_kubeconfig(self, org, endpoint).await
    }
}

/// Checks the options alone (for a frontend that builds them from flags).
pub fn check_options(options: &TalosOptions) -> Result<(), BootstrapError> {
    validate_options(options)
}

/// `https://<node>:6443`, with brackets around an IPv6 address.
pub fn cluster_endpoint(node: &str) -> String {
    match node.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("https://[{ip}]:{KUBE_API_PORT}"),
        _ => format!("https://{node}:{KUBE_API_PORT}"),
    }
}

/// Whether talosctl's output says etcd was bootstrapped before.
/// Whether a node refused an unauthenticated (`--insecure`) call because it has left
/// maintenance mode and wants a client certificate. Depending on timing, gRPC reports the TLS
/// alert itself or only the closed connection the request was written to (an earlier attempt
/// may have been applied although its answer was lost, e.g. under load).
fn refused_without_client_cert(output: &str) -> bool {
    let o = output.to_ascii_lowercase();
    o.contains("certificate required")
        || o.contains("broken pipe")
        || o.contains("connection reset by peer")
}

fn already_bootstrapped(output: &str) -> bool {
    output.contains("AlreadyExists") || output.contains("etcd data directory is not empty")
}

fn attempts_reason(failure: &RunFailure, attempts: u32) -> String {
    if attempts > 1 {
        format!("{} (after {attempts} attempts)", failure.reason())
    } else {
        failure.reason()
    }
}

/// Reports the failure of `step` and builds its error.
fn fail(org: &OrgName, reporter: &Reporter, step: &str, reason: String) -> BootstrapError {
    reporter.error(step, &reason);
    BootstrapError::Step {
        org: org.clone(),
        step: step.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(cluster_endpoint("10.0.0.1"), "https://10.0.0.1:6443");
        assert_eq!(cluster_endpoint("fd00::1"), "https://[fd00::1]:6443");
        assert_eq!(cluster_endpoint("cp.example"), "https://cp.example:6443");
    }

    #[test]
    fn a_configured_node_refusing_an_insecure_call_is_recognised() {
        assert!(refused_without_client_cert(
            "rpc error: code = Unavailable desc = connection error: remote error: tls: certificate required"
        ));
        assert!(refused_without_client_cert(
            "error applying new configuration: rpc error: code = Unavailable desc = write tcp 127.0.0.1:49730->127.143.71.11:50000: write: broken pipe"
        ));
        assert!(!refused_without_client_cert(
            "rpc error: code = Unavailable desc = connection refused"
        ));
    }

    #[test]
    fn already_bootstrapped_markers() {
        assert!(already_bootstrapped(
            "rpc error: code = AlreadyExists desc = etcd data directory is not empty"
        ));
        assert!(!already_bootstrapped("code = Unavailable"));
    }
}
