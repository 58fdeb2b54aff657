#![warn(missing_docs)]
//! Per-organization Talos cluster bootstrap for GuildNet, behind guildnet-core's
//! [`ClusterBootstrap`](guildnet_core::seams::ClusterBootstrap) trait (issue #8).
//!
//! [`TalosctlBootstrap`] drives the `talosctl` CLI; a native Talos API client can replace it
//! behind the same trait. A run, each step reported as `start` / `output` / `done` / `error`
//! progress events (talosctl output redacted, see [`redact`]):
//!
//! 1. `gen-config`: `talosctl gen secrets` on the first run (kept at
//!    `${state}/talos/<org>.secrets.yaml`, 0600, so re-runs make configs of the same cluster),
//!    then `talosctl gen config <org> https://<first control plane>:6443` with the install
//!    disk, extra SANs and patches, into a private 0700 temp dir that is always removed;
//! 2. `apply-config <node>`: `controlplane.yaml` to each control-plane node, `worker.yaml` to
//!    each worker, in maintenance mode (`--insecure`); a node configured by an earlier run is
//!    given its config again with the org's talosconfig;
//! 3. `talosconfig`: saved to `${state}/talos/<org>.talosconfig` (0600), endpoints = the
//!    control-plane nodes, node = the first one;
//! 4. `bootstrap`: etcd, once (an already-bootstrapped cluster is detected and accepted);
//! 5. `health`: `talosctl health` with a timeout;
//! 6. `kubeconfig`: written to `${state}/kube/<org>.config` (0600) with the context named after
//!    the org ([`TalosctlBootstrap::generate_kubeconfig`] runs this step alone).
//!
//! Transient failures (connection refused / reset, timeouts, `Unavailable`) are retried with
//! capped exponential backoff ([`RetryPolicy`]); other failures stop the run at once with a
//! [`BootstrapError::Step`](guildnet_core::seams::BootstrapError::Step) naming the step (and
//! the node).

pub mod bootstrap;
pub mod kubeconfig;
pub mod options;
pub mod progress;
pub mod redact;
mod runner;
pub mod validate;

pub use bootstrap::{check_options, cluster_endpoint, steps, GeneratedConfigs, TalosctlBootstrap};
pub use options::{RetryPolicy, TalosOptions};
