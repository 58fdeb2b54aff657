//! `guildnet-operator`: prints the AgentTask CRD, installs the operator into a cluster, or runs
//! the reconciler (with /metrics and /healthz).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use guildnet_kube::install::{install, InstallOptions};
use guildnet_kube::leader::LeaseConfig;
use guildnet_kube::operator::{self, Operator, OperatorConfig};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "guildnet-operator",
    version,
    about = "GuildNet's AgentTask operator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the AgentTask CustomResourceDefinition as YAML.
    Crd,
    /// Print every install manifest (CRD, namespace, RBAC, operator Deployment) as YAML.
    Manifests(InstallArgs),
    /// Apply the CRD, namespace, ServiceAccount, Role/RoleBinding and operator Deployment.
    Install {
        /// Kubeconfig of the target cluster (default: $KUBECONFIG, then ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[command(flatten)]
        args: InstallArgs,
    },
    /// Run the reconciler.
    Run {
        /// Namespace to watch.
        #[arg(long, env = "GUILDNET_NAMESPACE", default_value = guildnet_kube::DEFAULT_NAMESPACE)]
        namespace: String,
        /// Kubeconfig (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// URL agents use to reach the orchestrator (overrides spec.orchestratorUrl).
        #[arg(long, env = "PUBLIC_ORCHESTRATOR_URL")]
        public_orchestrator_url: Option<String>,
        /// Address of /metrics and /healthz.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_addr: String,
        /// Reconcile only while holding the Lease `guildnet-operator` (run several replicas).
        #[arg(long)]
        leader_elect: bool,
        /// A Secret in the namespace that agent pods pull their image with (a private
        /// registry's dockerconfigjson); repeat or comma-separate.
        #[arg(
            long = "image-pull-secret",
            env = "GUILDNET_IMAGE_PULL_SECRETS",
            value_delimiter = ','
        )]
        image_pull_secrets: Vec<String>,
        /// Image of the tailscale sidecar added to agents on the tailnet (AgentTasks with
        /// spec.mesh): tailscale/tailscale or an image with the same containerboot.
        #[arg(long, env = "GUILDNET_MESH_SIDECAR_IMAGE", default_value = guildnet_kube::mesh_sidecar::DEFAULT_SIDECAR_IMAGE)]
        mesh_sidecar_image: String,
        /// The sidecar speaks plain HTTP to DERP relays: only for a plain-HTTP Headscale with
        /// its embedded DERP (a local or test setup).
        #[arg(long, env = "GUILDNET_MESH_PLAIN_HTTP_DERP")]
        mesh_plain_http_derp: bool,
    },
}

#[derive(clap::Args)]
struct InstallArgs {
    /// Namespace the operator runs in and watches.
    #[arg(long, default_value = guildnet_kube::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Operator image.
    #[arg(long)]
    image: Option<String>,
    /// URL agents use to reach the orchestrator.
    #[arg(long, env = "PUBLIC_ORCHESTRATOR_URL")]
    public_orchestrator_url: Option<String>,
    /// A Secret in the namespace for a private registry (dockerconfigjson): the operator's pod
    /// and every agent pod pull with it. Repeat or comma-separate. Create it first, e.g.
    /// `kubectl -n mvp-agents create secret docker-registry regcred --docker-server=...`.
    #[arg(long = "image-pull-secret", value_delimiter = ',')]
    image_pull_secrets: Vec<String>,
    /// Image of the tailscale sidecar the operator adds to agents on the tailnet (default: the
    /// operator's, tailscale/tailscale).
    #[arg(long)]
    mesh_sidecar_image: Option<String>,
    /// The sidecar speaks plain HTTP to DERP relays: only for a plain-HTTP Headscale with its
    /// embedded DERP (a local or test setup).
    #[arg(long)]
    mesh_plain_http_derp: bool,
}

impl InstallArgs {
    fn options(self) -> InstallOptions {
        let d = InstallOptions::default();
        InstallOptions {
            namespace: self.namespace,
            image: self.image.unwrap_or(d.image),
            public_orchestrator_url: self.public_orchestrator_url,
            image_pull_secrets: self.image_pull_secrets,
            mesh_sidecar_image: self.mesh_sidecar_image,
            mesh_plain_http_derp: self.mesh_plain_http_derp,
        }
    }
}

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    match kubeconfig {
        Some(p) => guildnet_kube::backend::client_from_path(&p)
            .await
            .with_context(|| format!("kubeconfig {}", p.display())),
        None => kube::Client::try_default()
            .await
            .context("no in-cluster config and no usable kubeconfig"),
    }
}

// One thread: reconciles are I/O-bound, and fewer threads mean fewer allocator arenas (RSS).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    guildnet_bin::init_tracing();
    match Cli::parse().cmd {
        Cmd::Crd => print!("{}", guildnet_kube::crd::crd_yaml()?),
        Cmd::Manifests(args) => {
            print!("{}", guildnet_kube::crd::crd_yaml()?);
            print!(
                "{}",
                guildnet_kube::install::operator_yaml(&args.options())?
            );
        }
        Cmd::Install { kubeconfig, args } => {
            let opts = args.options();
            install(&client(kubeconfig).await?, &opts).await?;
            println!(
                "installed the GuildNet operator into namespace {}",
                opts.namespace
            );
        }
        Cmd::Run {
            namespace,
            kubeconfig,
            public_orchestrator_url,
            metrics_addr,
            leader_elect,
            image_pull_secrets,
            mesh_sidecar_image,
            mesh_plain_http_derp,
        } => {
            let mut cfg = OperatorConfig::new(namespace.clone());
            cfg.public_orchestrator_url = public_orchestrator_url;
            cfg.image_pull_secrets = image_pull_secrets;
            cfg.mesh_sidecar.image = mesh_sidecar_image;
            cfg.mesh_sidecar.plain_http_derp = mesh_plain_http_derp;
            cfg.instance = std::env::var("POD_NAME").ok();
            if leader_elect {
                let identity = cfg
                    .instance
                    .clone()
                    .unwrap_or_else(|| format!("guildnet-operator-{}", std::process::id()));
                cfg.leader_election = Some(LeaseConfig::new(namespace, identity));
            }
            let ctx = Arc::new(Operator::new(client(kubeconfig).await?, cfg));
            let listener = tokio::net::TcpListener::bind(&metrics_addr)
                .await
                .with_context(|| format!("bind {metrics_addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "metrics and health listening");
            let (tx, rx) = tokio::sync::watch::channel(false);
            let mut rx2 = rx.clone();
            let metrics = tokio::spawn(operator::serve_metrics(
                listener,
                ctx.metrics.clone(),
                async move {
                    let _ = rx2.wait_for(|v| *v).await;
                },
            ));
            let mut rx3 = rx;
            let stop = async move {
                let _ = rx3.wait_for(|v| *v).await;
            };
            let mut run = tokio::spawn(operator::run(ctx, stop));
            let outcome = tokio::select! {
                r = &mut run => r.ok(),
                _ = guildnet_bin::shutdown_signal() => {
                    tracing::info!("shutting down");
                    let _ = tx.send(true);
                    run.await.ok()
                }
            };
            let _ = tx.send(true);
            let _ = metrics.await;
            if outcome == Some(operator::RunOutcome::LostLeadership) {
                anyhow::bail!(
                    "lost leadership to another replica; exiting so a restart can rejoin"
                );
            }
        }
    }
    Ok(())
}
