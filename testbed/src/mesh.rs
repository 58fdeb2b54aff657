//! A real Headscale control server and real tailscaled nodes in userspace-networking mode (no
//! root, no TUN device), all on loopback. Each node has its own state dir, LocalAPI socket and an
//! outbound HTTP proxy through which tests dial tailnet addresses.

use crate::process::{Proc, TestbedError};
use crate::{bin, free_port, probe_client, wait_for, Result};
use serde::Deserialize;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);

/// A Headscale user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Numeric id (as a string, as the CLI takes it).
    pub id: String,
    /// Name.
    pub name: String,
}

/// A node as Headscale's REST API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Given name.
    pub name: String,
    /// Tailnet addresses.
    pub ip_addresses: Vec<String>,
    /// Connected to the control server now.
    pub online: bool,
}

/// A running headscale with an API key. Stop its tailscaled nodes before dropping it.
#[derive(Debug)]
pub struct Headscale {
    proc: Proc,
    url: String,
    api_key: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

fn yaml_str(s: &Path) -> String {
    format!("\"{}\"", s.display())
}

impl Headscale {
    /// Starts headscale on a free loopback port with the embedded DERP server, waits for
    /// `/health`, and creates an API key.
    pub async fn start() -> Result<Headscale> {
        let exe = bin("headscale")?;
        let dir = tempfile::Builder::new()
            .prefix("hs")
            .tempdir_in("/tmp")
            .map_err(TestbedError::io("create temp dir"))?;
        let d = dir.path();
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let stun = {
            let s =
                std::net::UdpSocket::bind("127.0.0.1:0").map_err(TestbedError::io("bind udp"))?;
            s.local_addr().map_err(TestbedError::io("udp addr"))?.port()
        };
        let config = d.join("config.yaml");
        let yaml = format!(
            r#"server_url: {url}
listen_addr: 127.0.0.1:{port}
metrics_listen_addr: 127.0.0.1:{metrics}
grpc_listen_addr: 127.0.0.1:{grpc}
grpc_allow_insecure: false
noise:
  private_key_path: {noise}
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: testbed
    region_name: Testbed DERP
    stun_listen_addr: 127.0.0.1:{stun}
    private_key_path: {derp}
    automatically_add_embedded_derp_region: true
    ipv4: 127.0.0.1
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: {db}
    write_ahead_log: true
log:
  level: info
dns:
  magic_dns: false
  base_domain: tb.example
  override_local_dns: false
  nameservers:
    global: []
unix_socket: {sock}
unix_socket_permission: "0770"
logtail:
  enabled: false
"#,
            metrics = free_port()?,
            grpc = free_port()?,
            noise = yaml_str(&d.join("noise.key")),
            derp = yaml_str(&d.join("derp.key")),
            db = yaml_str(&d.join("db.sqlite")),
            sock = yaml_str(&d.join("hs.sock")),
        );
        std::fs::write(&config, yaml).map_err(TestbedError::io("write headscale config"))?;
        let mut proc = Proc::spawn(
            "headscale",
            &exe,
            [OsStr::new("-c"), config.as_os_str(), OsStr::new("serve")],
            &[],
            &d.join("headscale.log"),
        )?;
        let http = probe_client();
        let health = format!("{url}/health");
        wait_for("headscale /health", READY, Some(&mut proc), || async {
            let r = http.get(&health).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await?;
        let mut hs = Headscale {
            proc,
            url,
            api_key: String::new(),
            config,
            _dir: dir,
        };
        let out = hs.cli(&["apikeys", "create", "--expiration", "1d"]).await?;
        hs.api_key = out
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_owned();
        if hs.api_key.is_empty() {
            return Err(TestbedError::Unexpected(
                "headscale apikeys create printed no key".into(),
            ));
        }
        Ok(hs)
    }

    /// Runs a headscale CLI command against this server (over its unix socket).
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let exe = bin("headscale")?;
        let mut all = vec![OsStr::new("-c"), self.config.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        crate::process::run(&exe, all, &[]).await
    }

    /// Base URL (`http://127.0.0.1:<port>`), the login server for tailscale.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The API key for `/api/v1` (`Authorization: Bearer <key>`).
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The last lines of headscale's log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Creates a user.
    pub async fn create_user(&self, name: &str) -> Result<User> {
        let out = self.cli(&["users", "create", name, "-o", "json"]).await?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|e| TestbedError::Unexpected(format!("users create output: {e}: {out}")))?;
        let id = match &v["id"] {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            _ => return Err(TestbedError::Unexpected(format!("user without id: {out}"))),
        };
        Ok(User {
            id,
            name: v["name"].as_str().unwrap_or(name).to_owned(),
        })
    }

    /// Creates a pre-auth key for a user (valid for one hour).
    pub async fn create_preauth_key(
        &self,
        user_id: &str,
        reusable: bool,
        ephemeral: bool,
    ) -> Result<String> {
        let mut args = vec![
            "preauthkeys",
            "create",
            "--user",
            user_id,
            "--expiration",
            "1h",
            "-o",
            "json",
        ];
        if reusable {
            args.push("--reusable");
        }
        if ephemeral {
            args.push("--ephemeral");
        }
        let out = self.cli(&args).await?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|e| TestbedError::Unexpected(format!("preauthkeys output: {e}")))?;
        v["key"]
            .as_str()
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| TestbedError::Unexpected("preauthkeys create gave no key".into()))
    }

    /// GET on the REST API with the API key; returns the status and JSON body.
    pub async fn api_get(&self, path: &str, key: &str) -> Result<(u16, serde_json::Value)> {
        let r = probe_client()
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or_default()))
    }

    /// Nodes, from the REST API (proves the API key works).
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let (status, v) = self.api_get("/api/v1/node", &self.api_key).await?;
        if status != 200 {
            return Err(TestbedError::Unexpected(format!(
                "GET /api/v1/node: {status} {v}"
            )));
        }
        Ok(v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| Node {
                        name: n["givenName"]
                            .as_str()
                            .or(n["name"].as_str())
                            .unwrap_or_default()
                            .to_owned(),
                        ip_addresses: n["ipAddresses"]
                            .as_array()
                            .map(|ips| {
                                ips.iter()
                                    .filter_map(|i| i.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        online: n["online"].as_bool().unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// `tailscale status --json`, the parts tests use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    /// Backend state (`Running`, `NeedsLogin`, ...).
    pub backend_state: String,
    /// This node.
    #[serde(rename = "Self")]
    pub self_node: Option<PeerStatus>,
    /// Peers by key.
    #[serde(default)]
    pub peer: Option<std::collections::BTreeMap<String, PeerStatus>>,
}

/// A node in `tailscale status --json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerStatus {
    /// Host name.
    pub host_name: String,
    /// Tailnet addresses.
    #[serde(rename = "TailscaleIPs", default)]
    pub tailscale_ips: Option<Vec<String>>,
    /// Online as the control server sees it.
    #[serde(default)]
    pub online: bool,
}

impl Status {
    /// The peers (empty when none).
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peer
            .as_ref()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// A tailscaled in userspace-networking mode with its own state dir, socket and HTTP proxy.
#[derive(Debug)]
pub struct Tailscaled {
    proc: Proc,
    socket: PathBuf,
    proxy: String,
    _dir: tempfile::TempDir,
}

impl Tailscaled {
    /// Starts tailscaled and waits until its LocalAPI answers.
    pub async fn start(name: &str) -> Result<Tailscaled> {
        let exe = bin("tailscaled")?;
        let dir = tempfile::Builder::new()
            .prefix("ts")
            .tempdir_in("/tmp")
            .map_err(TestbedError::io("create temp dir"))?;
        let d = dir.path();
        let socket = d.join("s");
        let proxy_port = free_port()?;
        let proc = Proc::spawn(
            &format!("tailscaled {name}"),
            &exe,
            [
                "--tun=userspace-networking".to_owned(),
                format!("--statedir={}", d.join("state").display()),
                format!("--socket={}", socket.display()),
                "--port=0".to_owned(),
                format!("--outbound-http-proxy-listen=127.0.0.1:{proxy_port}"),
            ],
            &[],
            &d.join("tailscaled.log"),
        )?
        .with_stop_timeout(Duration::from_secs(5));
        let mut ts = Tailscaled {
            proc,
            socket,
            proxy: format!("http://127.0.0.1:{proxy_port}"),
            _dir: dir,
        };
        let sock = ts.socket.clone();
        wait_for("tailscaled LocalAPI", READY, Some(&mut ts.proc), || {
            let sock = sock.clone();
            async move {
                tailscale_cli(&sock, &["status", "--json"])
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await?;
        Ok(ts)
    }

    /// Joins the tailnet of `login_server` with a pre-auth key. Errors never contain the key.
    pub async fn up(&self, login_server: &str, authkey: &str, hostname: &str) -> Result<()> {
        let args = [
            "up",
            "--login-server",
            login_server,
            "--authkey",
            authkey,
            "--hostname",
            hostname,
            "--timeout=60s",
        ];
        tailscale_cli(&self.socket, &args)
            .await
            .map(|_| ())
            .map_err(|e| {
                let redact = |s: String| s.replace(authkey, "<redacted>");
                match e {
                    TestbedError::Command {
                        command,
                        status,
                        output,
                    } => TestbedError::Command {
                        command: redact(command),
                        status,
                        output: redact(output),
                    },
                    other => TestbedError::Unexpected(redact(other.to_string())),
                }
            })
    }

    /// `tailscale status --json`.
    pub async fn status(&self) -> Result<Status> {
        let out = tailscale_cli(&self.socket, &["status", "--json"]).await?;
        serde_json::from_str(&out)
            .map_err(|e| TestbedError::Unexpected(format!("tailscale status --json: {e}")))
    }

    /// This node's tailnet IPv4 address, once joined.
    pub async fn ipv4(&self) -> Result<String> {
        let st = self.status().await?;
        st.self_node
            .and_then(|s| s.tailscale_ips)
            .unwrap_or_default()
            .into_iter()
            .find(|ip| ip.contains('.'))
            .ok_or_else(|| TestbedError::Unexpected("no tailnet IPv4 address yet".into()))
    }

    /// URL of this node's outbound HTTP proxy: requests through it reach tailnet addresses.
    pub fn http_proxy_url(&self) -> &str {
        &self.proxy
    }

    /// The LocalAPI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The last lines of tailscaled's log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }
}

async fn tailscale_cli(socket: &Path, args: &[&str]) -> Result<String> {
    let exe = bin("tailscale")?;
    let mut all = vec![OsStr::new("--socket"), socket.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    crate::process::run(&exe, all, &[]).await
}
