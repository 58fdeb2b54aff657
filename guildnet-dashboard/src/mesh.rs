//! The dashboard's mesh setup over `guildnet-mesh`: "create" runs a local Headscale (its
//! config, SQLite and API key under `${state}/headscale`), mints a user and a pre-auth key and
//! joins this machine; "connect" validates and probes an existing Headscale and joins this
//! machine with the given pre-auth key. This machine's node is a userspace `tailscaled` in
//! `${state}/tailscale` (no root, no TUN device).
//!
//! The processes live as long as this value (the dashboard): both flows are idempotent, so a
//! re-run after a restart reuses the stored settings, API key and node state.
//!
//! Both flows end by handing the mesh to the orchestrator (`PUT /mesh`, step `orchestrator`)
//! when [`MeshSetup::with_orchestrator`] gave one: its host joins the tailnet and its
//! Kubernetes agents go on it, with no restart and no flags. "connect" hands it over only
//! with a Headscale API key (the orchestrator mints a key per agent).

use crate::flows::{FlowFailure, FlowResult, Progress, ProgressSender, SetupFlow, SetupRequest};
use async_trait::async_trait;
use guildnet_core::client::OrchestratorClient;
use guildnet_core::token::Secret;
use guildnet_mesh::headscale::{HeadscaleProcess, HeadscaleSettings};
use guildnet_mesh::setup::{self, ConnectRequest, CreateOptions};
use guildnet_mesh::tailscale::{Tailscaled, TailscaledConfig};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};

/// Where the binaries are (each default: from `PATH`).
#[derive(Debug, Clone, Default)]
pub struct MeshBinaries {
    /// `headscale`.
    pub headscale: Option<PathBuf>,
    /// `tailscaled`.
    pub tailscaled: Option<PathBuf>,
    /// `tailscale`.
    pub tailscale: Option<PathBuf>,
}

#[derive(Default)]
struct Running {
    headscale: Option<HeadscaleProcess>,
    node: Option<Tailscaled>,
}

/// [`SetupFlow`] over `guildnet-mesh`.
pub struct MeshSetup {
    state_dir: PathBuf,
    bins: MeshBinaries,
    join_timeout: Duration,
    running: Mutex<Running>,
    orchestrator: Option<OrchestratorClient>,
}

impl MeshSetup {
    /// Mesh setup keeping its files under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, bins: MeshBinaries) -> Self {
        Self {
            state_dir: state_dir.into(),
            bins,
            join_timeout: Duration::from_secs(60),
            running: Mutex::new(Running::default()),
            orchestrator: None,
        }
    }

    /// Hands each mesh set up to this orchestrator (`PUT /mesh`, admin token inside).
    pub fn with_orchestrator(mut self, client: OrchestratorClient) -> Self {
        self.orchestrator = Some(client);
        self
    }

    /// The flow's last step: `PUT /mesh` on the orchestrator. A 503 (an orchestrator whose
    /// agents run on its own machine) and a 409 (its start-up flags set the mesh) are reported
    /// and skipped; any other refusal fails the step.
    async fn hand_over(
        &self,
        headscale_url: &str,
        api_key: Option<&Secret>,
        events: &ProgressSender,
    ) -> Result<Value, FlowFailure> {
        const STEP: &str = "orchestrator";
        events.step(STEP, "Hand the mesh to the orchestrator").await;
        let Some(client) = &self.orchestrator else {
            events
                .step_done(STEP, Some("no orchestrator to hand it to".into()))
                .await;
            return Ok(json!({"handedOver": false}));
        };
        let Some(api_key) = api_key else {
            events
                .hint("Give a Headscale API key (headscale apikeys create) to put agents on this mesh.")
                .await;
            events
                .step_done(STEP, Some("skipped: no Headscale API key given".into()))
                .await;
            return Ok(json!({"handedOver": false}));
        };
        let req = guildnet_core::api::MeshRequest {
            headscale_url: headscale_url.to_owned(),
            login_server: None,
            api_key: api_key.expose().to_owned(),
            user: None,
            tags: Vec::new(),
            hostname: None,
        };
        match client.set_mesh(&req).await {
            Ok(st) => {
                let detail = format!(
                    "the orchestrator is on the tailnet as {} at {}",
                    st.hostname.as_deref().unwrap_or("?"),
                    st.tailnet_ips.join(", ")
                );
                events.step_done(STEP, Some(detail)).await;
                Ok(json!({
                    "handedOver": true,
                    "hostname": st.hostname,
                    "tailnetIps": st.tailnet_ips,
                    "orchestratorUrl": st.orchestrator_url,
                }))
            }
            Err(e) if matches!(e.status(), Some(503) | Some(409)) => {
                events.log(Some(STEP), e.to_string()).await;
                events
                    .step_done(
                        STEP,
                        Some("skipped: the orchestrator keeps its own mesh setting".into()),
                    )
                    .await;
                Ok(json!({"handedOver": false}))
            }
            Err(e) => {
                events
                    .hint("The mesh works on this machine; set it on the orchestrator later with PUT /mesh, or run the setup again.")
                    .await;
                Err(FlowFailure::at(
                    STEP,
                    format!("the orchestrator refused the mesh: {e}"),
                ))
            }
        }
    }

    /// The SOCKS5 proxy of this machine's node, once joined (for dialing agents' editors).
    pub async fn socks5_addr(&self) -> Option<SocketAddr> {
        self.running
            .lock()
            .await
            .node
            .as_ref()
            .map(|n| n.socks5_addr())
    }

    /// Starts (or keeps) this machine's userspace tailscaled and joins it.
    async fn join(
        &self,
        running: &mut Running,
        login_server: &str,
        key: &Secret,
        hostname: &str,
        events: &ProgressSender,
    ) -> Result<Value, FlowFailure> {
        events
            .step("join", "Join this machine to the tailnet")
            .await;
        if running.node.is_none() {
            let mut cfg = TailscaledConfig::new(self.state_dir.join("tailscale"));
            cfg.tailscaled_bin = self.bins.tailscaled.clone();
            cfg.tailscale_bin = self.bins.tailscale.clone();
            // A plain-http control server (a local Headscale) serves its DERP over plain http.
            cfg.plain_http_derp = login_server.starts_with("http://");
            let node = Tailscaled::start(&cfg)
                .await
                .map_err(|e| FlowFailure::at("join", e.to_string()))?;
            events
                .log(
                    Some("join"),
                    format!("tailscaled (userspace) pid {} started", node.pid()),
                )
                .await;
            running.node = Some(node);
        }
        let node = running
            .node
            .as_ref()
            .ok_or_else(|| FlowFailure::at("join", "tailscaled is not running"))?;
        let joined = node
            .cli()
            .join(login_server, key, hostname, self.join_timeout)
            .await;
        if matches!(joined, Ok(guildnet_mesh::tailscale::Joined::Already)) {
            events
                .log(
                    Some("join"),
                    format!("already on this tailnet as {hostname}: left as it is"),
                )
                .await;
        }
        if let Err(e) = joined {
            if matches!(e, guildnet_mesh::tailscale::TailscaleError::Auth { .. }) {
                events
                    .hint("The pre-auth key was refused: create a new one (headscale preauthkeys create) and try again.")
                    .await;
            }
            return Err(FlowFailure::at("join", e.to_string()));
        }
        let st = node
            .cli()
            .status()
            .await
            .map_err(|e| FlowFailure::at("join", e.to_string()))?;
        events
            .step_done(
                "join",
                Some(format!("{} at {}", st.hostname, st.addresses.join(", "))),
            )
            .await;
        Ok(json!({
            "hostname": st.hostname,
            "addresses": st.addresses,
            "backendState": st.backend_state,
            "socks5": node.socks5_addr().to_string(),
        }))
    }
}

/// Relays guildnet-mesh's events as flow events and returns the step that failed, if one did.
/// `begin`, `stepError` and `done` are left out: this flow sends its own `begin`, and the
/// dashboard sends `stepError` and `done` from the returned failure.
async fn relay(mut rx: mpsc::Receiver<Progress>, events: ProgressSender) -> Option<String> {
    let mut failed = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Progress::StepError { step, .. } => failed = Some(step),
            Progress::Begin { .. } | Progress::Done { .. } => {}
            other => events.send(other).await,
        }
    }
    failed
}

/// A UDP port free on every interface (so on the one STUN will listen on).
fn free_udp_port() -> Result<u16, FlowFailure> {
    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| FlowFailure::at("config", format!("no free UDP port: {e}")))
}

fn free_port() -> Result<u16, FlowFailure> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| FlowFailure::at("config", format!("no free loopback port: {e}")))
}

/// Headscale settings for `server_url`: it listens on loopback when the URL's host is a
/// loopback address or `localhost`, on all interfaces otherwise (or on `listen_addr`); metrics
/// and gRPC take free loopback ports. Off loopback, the embedded DERP relay is announced at the
/// URL's IPv4 address (or the listen address's; a host name is left to the nodes to resolve)
/// and its STUN listener takes a free UDP port on the listen address.
pub fn settings_for(
    server_url: &str,
    listen_addr: Option<SocketAddr>,
) -> Result<HeadscaleSettings, FlowFailure> {
    let url = reqwest::Url::parse(server_url)
        .map_err(|e| FlowFailure::at("config", format!("serverUrl: {e}")))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| FlowFailure::at("config", "serverUrl has no port"))?;
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mut s = HeadscaleSettings::on_loopback(port, free_port()?, free_port()?, free_port()?);
    s.server_url = server_url.trim_end_matches('/').to_owned();
    if let Some(a) = listen_addr {
        s.listen_addr = a;
    } else if !loopback {
        s.listen_addr = SocketAddr::from(([0, 0, 0, 0], port));
    }
    if !loopback {
        // Nodes on other hosts (agent pods) reach the embedded DERP relay and its STUN
        // listener at the server's address: loopback in the DERP map sends them to themselves.
        let listen_v4 = match s.listen_addr.ip() {
            IpAddr::V4(v4) if !v4.is_unspecified() && !v4.is_loopback() => Some(v4),
            _ => None,
        };
        s.derp_ipv4 = host
            .parse::<Ipv4Addr>()
            .ok()
            .or(listen_v4)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let stun_ip = match s.listen_addr.ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        s.stun_listen_addr = SocketAddr::from((stun_ip, free_udp_port()?));
    }
    s.validate()
        .map_err(|e| FlowFailure::at("config", format!("{}: {}", e.field, e.reason)))?;
    Ok(s)
}

#[async_trait]
impl SetupFlow for MeshSetup {
    async fn run(&self, req: SetupRequest, events: ProgressSender) -> FlowResult {
        let mut running = self.running.lock().await;
        match req {
            SetupRequest::Create {
                hostname,
                server_url,
                listen_addr,
            } => {
                events
                    .begin(
                        "setup",
                        &[
                            "config",
                            "start",
                            "apiKey",
                            "user",
                            "preauthKey",
                            "join",
                            "orchestrator",
                        ],
                    )
                    .await;
                let mut opts = CreateOptions::new(&self.state_dir);
                opts.headscale_bin = self.bins.headscale.clone();
                opts.settings = settings_for(&server_url, listen_addr)?;
                let (tx, rx) = mpsc::channel(64);
                let relayed = tokio::spawn(relay(rx, events.clone()));
                let created = setup::create(&opts, Some(tx)).await;
                let failed = relayed.await.ok().flatten();
                let created = created.map_err(|e| {
                    FlowFailure::at(failed.as_deref().unwrap_or("start"), e.to_string())
                })?;
                let url = created.url().to_owned();
                let key = created.preauth_key.key.clone();
                let api_key = created.client.api_key().clone();
                if let Some(server) = created.server {
                    running.headscale = Some(server);
                }
                let node = self
                    .join(&mut running, &url, &key, &hostname, &events)
                    .await?;
                events
                    .hint("Headscale runs as long as the dashboard; mint keys for more nodes with `headscale preauthkeys create`.")
                    .await;
                drop(running);
                let orchestrator = self.hand_over(&url, Some(&api_key), &events).await?;
                Ok(
                    json!({"mode": "create", "headscaleUrl": url, "node": node, "orchestrator": orchestrator}),
                )
            }
            SetupRequest::Connect {
                hostname,
                login_server,
                auth_key,
                api_key,
            } => {
                events
                    .begin("setup", &["validate", "probe", "join", "orchestrator"])
                    .await;
                let creq = ConnectRequest {
                    headscale_url: login_server,
                    auth_key,
                    hostname,
                };
                // Validate and probe through guildnet-mesh; the join is ours (our node).
                let (tx, rx) = mpsc::channel(64);
                let relayed = tokio::spawn(relay(rx, events.clone()));
                let probed = setup::connect(&creq, None, self.join_timeout, Some(tx)).await;
                let failed = relayed.await.ok().flatten();
                let probed = probed.map_err(|e| {
                    FlowFailure::at(failed.as_deref().unwrap_or("probe"), e.to_string())
                })?;
                let valid = probed.request;
                let node = self
                    .join(
                        &mut running,
                        &valid.headscale_url,
                        &valid.auth_key,
                        &valid.hostname,
                        &events,
                    )
                    .await?;
                drop(running);
                let orchestrator = self
                    .hand_over(&valid.headscale_url, api_key.as_ref(), &events)
                    .await?;
                Ok(json!({
                    "mode": "connect",
                    "headscaleUrl": valid.headscale_url,
                    "serverVersion": probed.server_version,
                    "node": node,
                    "orchestrator": orchestrator,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headscale_listens_on_loopback_unless_the_url_says_otherwise() {
        let s = settings_for("http://10.0.0.5:41000", Some(([10, 0, 0, 5], 41000).into())).unwrap();
        assert_eq!(s.listen_addr, SocketAddr::from(([10, 0, 0, 5], 41000)));
        assert_eq!(s.server_url, "http://10.0.0.5:41000");
        // Pods on other hosts reach the DERP relay and STUN at the server's address.
        assert_eq!(s.derp_ipv4, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(s.stun_listen_addr.ip(), IpAddr::from([10, 0, 0, 5]));
        let s = settings_for("http://10.0.0.5:41000", None).unwrap();
        assert_eq!(s.derp_ipv4, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(s.stun_listen_addr.ip(), IpAddr::from([0, 0, 0, 0]));
        let s = settings_for("http://127.0.0.1:41000", None).unwrap();
        assert_eq!(s.listen_addr, SocketAddr::from(([127, 0, 0, 1], 41000)));
        assert_eq!(s.server_url, "http://127.0.0.1:41000");
        assert_eq!(s.derp_ipv4, Ipv4Addr::LOCALHOST);
        let s = settings_for("https://hs.example.com/", None).unwrap();
        assert_eq!(s.listen_addr, SocketAddr::from(([0, 0, 0, 0], 443)));
        assert_eq!(s.server_url, "https://hs.example.com");
        // A host name: the nodes resolve it (no address in the DERP map).
        assert!(s.derp_ipv4.is_unspecified());
        assert!(settings_for("not a url", None).is_err());
    }
}
