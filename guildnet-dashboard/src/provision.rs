//! The real [`ProvisionFlow`]: asks the orchestrator to bootstrap the org's Talos cluster
//! (`POST /orgs/bootstrap`), relays its progress (`GET /orgs/{org}/bootstrap/stream`), then
//! installs the GuildNet operator with the org's kubeconfig (`guildnet_kube::install`), one
//! progress step per install step (`operator/crd`, `operator/rbac`, `operator/deployment`).

use crate::flows::{
    FlowFailure, FlowResult, Progress, ProgressSender, ProvisionFlow, ProvisionRequest,
};
use async_trait::async_trait;
use futures_util::StreamExt;
use guildnet_core::api::BootstrapProgress;
use guildnet_core::client::OrchestratorClient;
use guildnet_core::state_dir::StatePaths;
use guildnet_core::token::Secret;
use serde_json::{json, Value};
use std::time::Duration;

/// Step names, in order.
pub const STEPS: [&str; 3] = ["bootstrap", "kubeconfig", "operator"];

/// Provisioning through the orchestrator's bootstrap API.
pub struct OrchestratorProvision {
    client: OrchestratorClient,
    base: String,
    token: Secret,
    http: reqwest::Client,
    paths: StatePaths,
    install: guildnet_kube::install::InstallOptions,
}

impl OrchestratorProvision {
    /// A flow talking to the orchestrator at `base` with `token`; kubeconfigs are looked up
    /// under `paths`.
    pub fn new(base: &str, token: Secret, paths: StatePaths) -> Result<Self, FlowFailure> {
        let client = OrchestratorClient::new(base, token.clone())
            .map_err(|e| FlowFailure::at("bootstrap", e.to_string()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| FlowFailure::at("bootstrap", e.to_string()))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
            paths,
            install: Default::default(),
        })
    }

    /// Installs the operator with `opts` (image, namespace, tailnet sidecar settings); a
    /// request's `publicOrchestratorUrl` overrides `opts.public_orchestrator_url`.
    pub fn with_install_options(mut self, opts: guildnet_kube::install::InstallOptions) -> Self {
        self.install = opts;
        self
    }

    /// Installs the operator into the org's cluster, each install step its own progress step
    /// (`operator/crd`, `operator/rbac`, `operator/deployment`) naming what it applied.
    async fn install_operator(
        &self,
        req: &ProvisionRequest,
        kubeconfig: &std::path::Path,
        events: &ProgressSender,
    ) -> Result<String, FlowFailure> {
        use guildnet_kube::install::InstallStep;
        let client = guildnet_kube::backend::client_from_path(kubeconfig)
            .await
            .map_err(|e| FlowFailure::at("operator", e.to_string()))?;
        let mut opts = self.install.clone();
        if let Some(u) = &req.public_orchestrator_url {
            opts.public_orchestrator_url = Some(u.clone());
        }
        for step in InstallStep::ALL {
            let name = format!("operator/{}", step.name());
            let what = match step {
                InstallStep::Crd => "applying the AgentTask and AgentPool CRDs".to_owned(),
                InstallStep::Rbac => format!(
                    "applying the namespace {}, the operator's ServiceAccount, Role and RoleBinding",
                    opts.namespace
                ),
                InstallStep::Deployment => {
                    format!("applying the operator's Deployment (image {})", opts.image)
                }
            };
            events.step(&name, what).await;
            let applied = step
                .run(&client, &opts)
                .await
                .map_err(|e| FlowFailure::at(&name, e.to_string()))?;
            events.step_done(&name, Some(applied.join(", "))).await;
        }
        Ok(opts.namespace)
    }

    async fn start_bootstrap(&self, req: &ProvisionRequest) -> Result<(), FlowFailure> {
        let fail = |m: String| FlowFailure::at("bootstrap", m);
        let resp = self
            .http
            .post(format!("{}/orgs/bootstrap", self.base))
            .bearer_auth(self.token.expose())
            .json(&json!({
                "org": req.org,
                "cpNodes": req.cp_nodes,
                "workerNodes": req.worker_nodes,
            }))
            .send()
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot reach the orchestrator: {}",
                    e.without_url()
                ))
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let msg = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(fail(format!(
            "the orchestrator refused the bootstrap: {msg}"
        )))
    }

    async fn relay_bootstrap(
        &self,
        req: &ProvisionRequest,
        events: &ProgressSender,
    ) -> Result<Value, FlowFailure> {
        let fail = |m: String| FlowFailure::at("bootstrap", m);
        let path = format!("/orgs/{}/bootstrap/stream", req.org);
        // The stream replays every progress event on each connection (it has no ids): after a
        // reconnect, skip the ones already relayed.
        let mut relayed = 0usize;
        let mut reconnects = 0;
        loop {
            let stream = self
                .client
                .open_sse(&path, None)
                .await
                .map_err(|e| fail(format!("cannot follow the bootstrap: {e}")))?;
            let mut stream = Box::pin(stream);
            let mut index = 0usize;
            while let Some(item) = stream.next().await {
                let msg = match item {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(org = %req.org, error = %e, "bootstrap stream broke");
                        break;
                    }
                };
                let data: Value = serde_json::from_str(&msg.data).unwrap_or(Value::Null);
                match msg.event.as_str() {
                    "done" => return Ok(data),
                    "error" => {
                        let m = ["error", "message"]
                            .iter()
                            .find_map(|k| data.get(*k).and_then(Value::as_str))
                            .map(str::to_owned)
                            .unwrap_or_else(|| msg.data.chars().take(300).collect());
                        return Err(fail(format!("the bootstrap failed: {m}")));
                    }
                    _ => {
                        index += 1;
                        if index > relayed {
                            relayed = index;
                            relay_progress(&data, events).await;
                        }
                    }
                }
            }
            reconnects += 1;
            if reconnects > 5 {
                return Err(fail(
                    "the bootstrap stream kept breaking before the bootstrap ended".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// When the orchestrator wrote the configs elsewhere (its own state dir), copies them into
    /// the dashboard's (validated, 0600) unless the dashboard already has valid ones.
    async fn adopt_configs(
        &self,
        req: &ProvisionRequest,
        outcome: &Value,
        events: &ProgressSender,
    ) {
        use crate::configs::{status, store, ConfigKind};
        for (key, kind) in [
            ("kubeconfig", ConfigKind::Kubeconfig),
            ("talosconfig", ConfigKind::Talosconfig),
        ] {
            let Some(src) = outcome
                .pointer(&format!("/result/{key}"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let dest = kind.path(&self.paths, &req.org);
            if std::path::Path::new(src) == dest || status(kind, &self.paths, &req.org).valid {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(src) else {
                continue;
            };
            match store(kind, &self.paths, &req.org, &text) {
                Ok(Ok(_)) => {
                    events
                        .log(
                            Some("kubeconfig"),
                            format!("copied the {key} into {}", dest.display()),
                        )
                        .await
                }
                Ok(Err(e)) => events.log(Some("kubeconfig"), e.to_string()).await,
                Err(e) => events.log(Some("kubeconfig"), e.to_string()).await,
            }
        }
    }
}

/// Relays one orchestrator bootstrap event (`{step, phase, message}`) as a flow event, its
/// step under `bootstrap/`.
async fn relay_progress(data: &Value, events: &ProgressSender) {
    let Ok(p) = serde_json::from_value::<BootstrapProgress>(data.clone()) else {
        return;
    };
    let ev = match Progress::from(p) {
        Progress::Step { step, message } => Progress::Step {
            step: format!("bootstrap/{step}"),
            message,
        },
        Progress::StepDone { step, message } => Progress::StepDone {
            step: format!("bootstrap/{step}"),
            message,
        },
        Progress::StepError { step, message } => Progress::StepError {
            step: format!("bootstrap/{step}"),
            message,
        },
        Progress::Log { step, line } => Progress::Log {
            step: Some(format!("bootstrap/{}", step.unwrap_or_default())),
            line,
        },
        other => other,
    };
    events.send(ev).await;
}

#[async_trait]
impl ProvisionFlow for OrchestratorProvision {
    async fn run(&self, req: ProvisionRequest, events: ProgressSender) -> FlowResult {
        let steps: Vec<&str> = if req.install_operator {
            STEPS.to_vec()
        } else {
            STEPS[..2].to_vec()
        };
        events.begin("provision", &steps).await;

        events
            .step(
                "bootstrap",
                format!(
                    "bootstrapping {} with {} control-plane and {} worker node(s)",
                    req.org,
                    req.cp_nodes.len(),
                    req.worker_nodes.len()
                ),
            )
            .await;
        self.start_bootstrap(&req).await?;
        let outcome = self.relay_bootstrap(&req, &events).await?;
        events
            .step_done("bootstrap", Some("cluster bootstrapped".into()))
            .await;

        events
            .step("kubeconfig", "checking the org's kubeconfig")
            .await;
        self.adopt_configs(&req, &outcome, &events).await;
        let path = self.paths.kubeconfig(&req.org);
        let status = crate::configs::status(
            crate::configs::ConfigKind::Kubeconfig,
            &self.paths,
            &req.org,
        );
        if !status.valid {
            return Err(FlowFailure::at(
                "kubeconfig",
                match status.error {
                    Some(e) => format!("the org's kubeconfig is not usable: {e}"),
                    None => format!(
                        "no kubeconfig for {} at {} after the bootstrap; upload it on the org page",
                        req.org,
                        path.display()
                    ),
                },
            ));
        }
        events.step_done("kubeconfig", status.server.clone()).await;

        if req.install_operator {
            events
                .step("operator", "installing the GuildNet operator")
                .await;
            let ns = self.install_operator(&req, &path, &events).await?;
            events
                .step_done("operator", Some(format!("installed into namespace {ns}")))
                .await;
        }
        Ok(json!({"org": req.org, "bootstrap": outcome, "server": status.server}))
    }
}
