//! A real Headscale control server and real tailscaled nodes in userspace-networking mode (no
//! root, no TUN device), all on loopback.
//!
//! - [`Headscale`] serves the control plane and the embedded DERP relay over plain HTTP on a free
//!   loopback port, with an API key for its REST API (`/api/v1`).
//! - [`Tailscaled`] is one tailnet node with its own state dir, LocalAPI socket, log dir, an
//!   outbound HTTP proxy and a SOCKS5 server. Tests reach tailnet addresses through those two,
//!   and an incoming tailnet TCP connection to a node is forwarded by its netstack to the same
//!   port on the host's `127.0.0.1`.
//!
//! Stop the tailscaled nodes before their headscale: declare the [`Headscale`] first so it is
//! dropped last, or call [`Tailscaled::stop`].

use crate::process::{Proc, TestbedError};
use crate::{bin, free_port, probe_client, wait_for, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a server may take to become ready.
const READY: Duration = Duration::from_secs(60);

/// A Headscale user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Numeric id, as a string (the form the REST API uses and the CLI accepts).
    pub id: String,
    /// Name.
    pub name: String,
}

/// A pre-auth key as Headscale's REST API lists it. The key itself is masked there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthKeyInfo {
    /// Numeric id, as a string.
    pub id: String,
    /// The masked key: its public prefix followed by `***` (e.g. `hskey-auth-AbCdEfGhIjKl-***`).
    pub masked_key: String,
    /// Name of the user the key belongs to.
    pub user: String,
    /// Whether the key can register more than one node.
    pub reusable: bool,
    /// Whether nodes registered with it are ephemeral.
    pub ephemeral: bool,
    /// Whether it has been used.
    pub used: bool,
}

impl PreAuthKeyInfo {
    /// Whether `key` (a full key, as [`Headscale::create_preauth_key`] returns it) is this one.
    pub fn matches(&self, key: &str) -> bool {
        let prefix = self.masked_key.trim_end_matches('*');
        !prefix.is_empty() && key.starts_with(prefix)
    }
}

/// A node as Headscale's REST API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Numeric id, as a string.
    pub id: String,
    /// Given name (the MagicDNS label), else the host name the node registered with.
    pub name: String,
    /// Name of the owning user.
    pub user: String,
    /// Tailnet addresses (IPv4 and IPv6).
    pub ip_addresses: Vec<String>,
    /// Connected to the control server now.
    pub online: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiUser {
    id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiUsers {
    #[serde(default)]
    users: Vec<ApiUser>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiPreAuthKey {
    id: String,
    #[serde(default)]
    key: String,
    user: Option<ApiUser>,
    #[serde(default)]
    reusable: bool,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    used: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiPreAuthKeys {
    #[serde(default)]
    pre_auth_keys: Vec<ApiPreAuthKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiNode {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    given_name: String,
    user: Option<ApiUser>,
    #[serde(default)]
    ip_addresses: Vec<String>,
    #[serde(default)]
    online: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiNodes {
    #[serde(default)]
    nodes: Vec<ApiNode>,
}

/// The CLI's `-o json` output of `users create` (snake_case, numeric id).
#[derive(Deserialize)]
struct CliUser {
    id: serde_json::Value,
    name: String,
}

/// The CLI's `-o json` output of `preauthkeys create`.
#[derive(Deserialize)]
struct CliPreAuthKey {
    key: String,
}

/// A running headscale (control server and embedded DERP relay, plain HTTP on loopback) with an
/// API key. Dropping it stops the server; stop its tailscaled nodes first.
#[derive(Debug)]
pub struct Headscale {
    proc: Proc,
    url: String,
    api_key: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

/// A path as a double-quoted YAML scalar.
fn yaml_path(path: &Path) -> String {
    let s = path.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A loopback UDP port that was free a moment ago.
fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(TestbedError::io("bind udp :0"))?;
    Ok(s.local_addr()
        .map_err(TestbedError::io("udp local_addr"))?
        .port())
}

impl Headscale {
    /// Starts headscale on free loopback ports (HTTP, metrics, gRPC, STUN) with a generated
    /// config in a temp dir: sqlite, the embedded DERP server as the only DERP region, no DERP
    /// map download, no update checks. Waits until `GET /health` answers 200, then creates an
    /// API key with the CLI.
    pub async fn start() -> Result<Headscale> {
        let exe = bin("headscale")?;
        // Short paths: the unix socket must stay under ~100 characters.
        let dir = tempfile::Builder::new()
            .prefix("hs")
            .tempdir_in("/tmp")
            .map_err(TestbedError::io("create headscale temp dir"))?;
        let d = dir.path();
        let (port, metrics, grpc) = (free_port()?, free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{port}");
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
  magic_dns: true
  base_domain: tb.example
  override_local_dns: false
  nameservers:
    global: []
unix_socket: {sock}
unix_socket_permission: "0770"
logtail:
  enabled: false
"#,
            stun = free_udp_port()?,
            noise = yaml_path(&d.join("noise.key")),
            derp = yaml_path(&d.join("derp.key")),
            db = yaml_path(&d.join("db.sqlite")),
            sock = yaml_path(&d.join("hs.sock")),
        );
        std::fs::write(&config, yaml).map_err(TestbedError::io(format!(
            "write headscale config {}",
            config.display()
        )))?;
        let mut proc = Proc::spawn(
            "headscale",
            &exe,
            [OsStr::new("-c"), config.as_os_str(), OsStr::new("serve")],
            &[],
            &d.join("headscale.log"),
        )?
        // The HTTP port only: headscale opens its remote gRPC port only with TLS (or
        // grpc_allow_insecure), neither of which is set here.
        .listening_on(port);
        let http = probe_client();
        let health = format!("{url}/health");
        wait_for("headscale GET /health", READY, Some(&mut proc), || async {
            let r = http.get(&health).send().await.ok()?;
            (r.status() == reqwest::StatusCode::OK).then_some(())
        })
        .await?;
        let mut hs = Headscale {
            proc,
            url,
            api_key: String::new(),
            config,
            _dir: dir,
        };
        // `-o json` prints the key as a JSON string: "hskey-api-…".
        let out = hs
            .cli(&["apikeys", "create", "--expiration", "1d", "-o", "json"])
            .await?;
        let key: String = serde_json::from_str(out.trim()).map_err(|e| {
            TestbedError::Unexpected(format!(
                "headscale apikeys create -o json: expected a JSON string: {e}"
            ))
        })?;
        if key.is_empty() {
            return Err(TestbedError::Unexpected(
                "headscale apikeys create printed an empty key".into(),
            ));
        }
        hs.api_key = key;
        Ok(hs)
    }

    /// Runs a headscale CLI command against this server (it talks to the server over the unix
    /// socket named in the config); returns stdout.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let exe = bin("headscale")?;
        let mut all = vec![OsStr::new("-c"), self.config.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        crate::process::run(&exe, all, &[]).await
    }

    /// Base URL (`http://127.0.0.1:<port>`): the `--login-server` for tailscale, and the root of
    /// the REST API (`/api/v1`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The API key for the REST API: `Authorization: Bearer <key>`.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The generated config file (for `headscale -c`).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The last few KB of headscale's log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Stops headscale now (dropping it does the same). Stop its tailscaled nodes first.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Creates a user (`headscale users create NAME -o json`).
    pub async fn create_user(&self, name: &str) -> Result<User> {
        let out = self.cli(&["users", "create", name, "-o", "json"]).await?;
        let u: CliUser = serde_json::from_str(out.trim()).map_err(|e| {
            TestbedError::Unexpected(format!("headscale users create -o json: {e}: {out}"))
        })?;
        let id = match u.id {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) if !s.is_empty() => s,
            other => {
                return Err(TestbedError::Unexpected(format!(
                    "headscale users create: unexpected id {other}: {out}"
                )))
            }
        };
        Ok(User { id, name: u.name })
    }

    /// Creates a pre-auth key for the user with id `user_id`, valid for 24 hours
    /// (`headscale preauthkeys create --user ID -o json`). Returns the full key.
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
            "24h",
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
        // The output holds the key, so errors quote only the parse failure.
        let k: CliPreAuthKey = serde_json::from_str(out.trim()).map_err(|e| {
            TestbedError::Unexpected(format!("headscale preauthkeys create -o json: {e}"))
        })?;
        if k.key.is_empty() {
            return Err(TestbedError::Unexpected(
                "headscale preauthkeys create gave an empty key".into(),
            ));
        }
        Ok(k.key)
    }

    /// `GET {url}{path}` with `Authorization: Bearer {key}`. Returns the status and the body as
    /// JSON, or as a JSON string when the body is not JSON (headscale answers a bad key with a
    /// plain-text `Unauthorized`).
    pub async fn api_get(&self, path: &str, key: &str) -> Result<(u16, serde_json::Value)> {
        let r = probe_client()
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, body))
    }

    /// GET on the REST API with this server's API key, decoded as `T`; any status but 200 is an
    /// error quoting the body.
    async fn api_get_ok<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (status, body) = self.api_get(path, &self.api_key).await?;
        if status != 200 {
            return Err(TestbedError::Unexpected(format!(
                "headscale GET {path}: {status}: {body}"
            )));
        }
        serde_json::from_value(body.clone())
            .map_err(|e| TestbedError::Unexpected(format!("headscale GET {path}: {e}: {body}")))
    }

    /// Users, from the REST API (`GET /api/v1/user`).
    pub async fn users(&self) -> Result<Vec<User>> {
        let r: ApiUsers = self.api_get_ok("/api/v1/user").await?;
        Ok(r.users
            .into_iter()
            .map(|u| User {
                id: u.id,
                name: u.name,
            })
            .collect())
    }

    /// Pre-auth keys of all users, from the REST API (`GET /api/v1/preauthkey`). The keys are
    /// masked; use [`PreAuthKeyInfo::matches`].
    pub async fn preauth_keys(&self) -> Result<Vec<PreAuthKeyInfo>> {
        let r: ApiPreAuthKeys = self.api_get_ok("/api/v1/preauthkey").await?;
        Ok(r.pre_auth_keys
            .into_iter()
            .map(|k| PreAuthKeyInfo {
                id: k.id,
                masked_key: k.key,
                user: k.user.map(|u| u.name).unwrap_or_default(),
                reusable: k.reusable,
                ephemeral: k.ephemeral,
                used: k.used,
            })
            .collect())
    }

    /// Nodes, from the REST API (`GET /api/v1/node`).
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let r: ApiNodes = self.api_get_ok("/api/v1/node").await?;
        Ok(r.nodes
            .into_iter()
            .map(|n| Node {
                id: n.id,
                name: if n.given_name.is_empty() {
                    n.name
                } else {
                    n.given_name
                },
                user: n.user.map(|u| u.name).unwrap_or_default(),
                ip_addresses: n.ip_addresses,
                online: n.online,
            })
            .collect())
    }
}

/// `tailscale status --json`, the parts tests use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    /// Backend state: `NoState`, `NeedsLogin`, `Starting`, `Running`, ...
    pub backend_state: String,
    /// This node's tailnet addresses (empty before login).
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "null_as_default")]
    pub tailscale_ips: Vec<String>,
    /// This node.
    #[serde(rename = "Self")]
    pub self_node: Option<PeerStatus>,
    /// Peers, keyed by node public key (empty when there are none).
    #[serde(default, deserialize_with = "null_as_default")]
    pub peer: BTreeMap<String, PeerStatus>,
}

/// A node in `tailscale status --json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerStatus {
    /// Host name.
    pub host_name: String,
    /// MagicDNS name (`host.tb.example.`), empty when unknown.
    #[serde(rename = "DNSName", default)]
    pub dns_name: String,
    /// Tailnet addresses.
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "null_as_default")]
    pub tailscale_ips: Vec<String>,
    /// Online as the control server sees it (for `Self`: connected to the control server).
    #[serde(default)]
    pub online: bool,
    /// Region code of the node's home DERP relay, empty until the node has reported one.
    #[serde(default)]
    pub relay: String,
    /// The node's known UDP endpoints (`ip:port`), empty until it has reported them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub addrs: Vec<String>,
}

impl PeerStatus {
    /// The node's tailnet IPv4 address, if it has one.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.tailscale_ips.iter().find_map(|ip| ip.parse().ok())
    }

    /// Whether a packet to this node has somewhere to go: a home DERP relay or a UDP endpoint.
    /// Until then WireGuard drops the first handshake ("no UDP or DERP addr") and retries only
    /// after its 5 s rekey timeout.
    pub fn has_path(&self) -> bool {
        !self.relay.is_empty() || !self.addrs.is_empty()
    }
}

impl Status {
    /// The peers (any order).
    pub fn peers(&self) -> impl Iterator<Item = &PeerStatus> {
        self.peer.values()
    }

    /// The peer with this host name.
    pub fn peer_named(&self, host_name: &str) -> Option<&PeerStatus> {
        self.peers().find(|p| p.host_name == host_name)
    }
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A tailscaled in userspace-networking mode (no root, no TUN) with its own state dir, LocalAPI
/// socket, log dir, outbound HTTP proxy and SOCKS5 server on loopback. Dropping it stops it.
#[derive(Debug)]
pub struct Tailscaled {
    proc: Proc,
    name: String,
    socket: PathBuf,
    http_proxy: String,
    socks5: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Tailscaled {
    /// Starts tailscaled (`--tun=userspace-networking --port=0`, an outbound HTTP proxy and a
    /// SOCKS5 server on free loopback ports) and waits until its LocalAPI answers
    /// `tailscale status`. `name` labels its log and errors. It is not logged in yet: see
    /// [`Tailscaled::up`].
    ///
    /// Environment given to tailscaled: `TS_LOGS_DIR` (its own dir; otherwise every instance
    /// shares `/var/lib/tailscale/tailscaled.log*.txt` and replays the others' buffered logs),
    /// `--no-logs-no-support` (no upload attempts to log.tailscale.com), and
    /// `TS_DEBUG_USE_DERP_HTTP=1` (headscale's embedded DERP is plain HTTP here; without it the
    /// client speaks TLS to it and every DERP connection fails).
    pub async fn start(name: &str) -> Result<Tailscaled> {
        let exe = bin("tailscaled")?;
        // Short paths: the LocalAPI socket path must stay well under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ts")
            .tempdir_in("/tmp")
            .map_err(TestbedError::io("create tailscaled temp dir"))?;
        let d = dir.path();
        let socket = d.join("s");
        let logs = d.join("logs");
        std::fs::create_dir(&logs)
            .map_err(TestbedError::io(format!("create {}", logs.display())))?;
        let proxy_port = free_port()?;
        let socks5 = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let proc = Proc::spawn(
            &format!("tailscaled {name}"),
            &exe,
            [
                "--tun=userspace-networking".to_owned(),
                format!("--statedir={}", d.join("state").display()),
                format!("--socket={}", socket.display()),
                "--port=0".to_owned(),
                "--no-logs-no-support".to_owned(),
                format!("--outbound-http-proxy-listen=127.0.0.1:{proxy_port}"),
                format!("--socks5-server={socks5}"),
            ],
            &[
                ("TS_LOGS_DIR", logs.as_os_str()),
                ("TS_DEBUG_USE_DERP_HTTP", OsStr::new("1")),
            ],
            &d.join("tailscaled.log"),
        )?
        .with_stop_timeout(Duration::from_secs(5))
        .listening_on(proxy_port)
        .listening_on(socks5.port());
        let mut ts = Tailscaled {
            proc,
            name: name.to_owned(),
            socket,
            http_proxy: format!("http://127.0.0.1:{proxy_port}"),
            socks5,
            _dir: dir,
        };
        let sock = ts.socket.clone();
        wait_for(
            &format!("tailscaled {name} LocalAPI"),
            READY,
            Some(&mut ts.proc),
            || {
                let sock = sock.clone();
                async move { tailscale_cli(&sock, &["status", "--json"]).await.ok() }
            },
        )
        .await?;
        Ok(ts)
    }

    /// Joins the tailnet of `login_server` with a pre-auth key, as `hostname`
    /// (`tailscale up --login-server … --authkey … --hostname … --timeout=60s`); returns once the
    /// node is running. Errors never contain the key: it is replaced by `<redacted>` in the
    /// quoted command line and output.
    pub async fn up(&self, login_server: &str, authkey: &str, hostname: &str) -> Result<()> {
        let exe = bin("tailscale")?;
        let args = [
            "--socket",
            &self.socket.to_string_lossy(),
            "up",
            "--login-server",
            login_server,
            "--authkey",
            authkey,
            "--hostname",
            hostname,
            "--timeout=60s",
        ]
        .map(|a: &str| a.to_owned());
        let redact = |s: &str| {
            if authkey.is_empty() {
                s.to_owned()
            } else {
                s.replace(authkey, "<redacted>")
            }
        };
        let command = redact(&format!("{} {}", exe.display(), args.join(" ")));
        let out = tokio::process::Command::new(&exe)
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                TestbedError::Unexpected(format!("run `{command}`: {}", redact(&e.to_string())))
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(TestbedError::Command {
            command,
            status: out.status.to_string(),
            output: redact(&format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        })
    }

    /// `tailscale status --json`.
    pub async fn status(&self) -> Result<Status> {
        let out = tailscale_cli(&self.socket, &["status", "--json"]).await?;
        serde_json::from_str(&out).map_err(|e| {
            TestbedError::Unexpected(format!("tailscale status --json of {}: {e}", self.name))
        })
    }

    /// This node's tailnet IPv4 address; an error before it has joined.
    pub async fn ipv4(&self) -> Result<Ipv4Addr> {
        let st = self.status().await?;
        st.tailscale_ips
            .iter()
            .find_map(|ip| ip.parse().ok())
            .ok_or_else(|| {
                TestbedError::Unexpected(format!(
                    "tailscaled {} has no tailnet IPv4 address (state {})",
                    self.name, st.backend_state
                ))
            })
    }

    /// Waits until this node's status lists the peer `host_name` as online and with a path to
    /// it ([`PeerStatus::has_path`]), so a first connection to it does not stall; returns it.
    /// Fails early, with the log, if tailscaled exits.
    pub async fn wait_for_peer(
        &mut self,
        host_name: &str,
        timeout: Duration,
    ) -> Result<PeerStatus> {
        let socket = self.socket.clone();
        wait_for(
            &format!("tailscaled {} to see {host_name} online", self.name),
            timeout,
            Some(&mut self.proc),
            || {
                let socket = socket.clone();
                async move {
                    let out = tailscale_cli(&socket, &["status", "--json"]).await.ok()?;
                    let st: Status = serde_json::from_str(&out).ok()?;
                    st.peer_named(host_name)
                        .filter(|p| p.online && p.has_path())
                        .cloned()
                }
            },
        )
        .await
    }

    /// URL of this node's outbound HTTP proxy (`http://127.0.0.1:<port>`): plain-HTTP requests
    /// and CONNECT tunnels through it reach tailnet addresses and names.
    pub fn http_proxy_url(&self) -> &str {
        &self.http_proxy
    }

    /// Address of this node's SOCKS5 server (no authentication): connections through it reach
    /// tailnet addresses. See [`Tailscaled::dial`].
    pub fn socks5_addr(&self) -> SocketAddr {
        self.socks5
    }

    /// Opens a TCP connection from this node to `host:port` on the tailnet (a tailnet IP or a
    /// node name) through its SOCKS5 server.
    pub async fn dial(&self, host: &str, port: u16) -> Result<TcpStream> {
        let target = format!("{host}:{port}");
        let ctx = |what: &str| format!("SOCKS5 {what} to {target} via tailscaled {}", self.name);
        let mut s = TcpStream::connect(self.socks5)
            .await
            .map_err(TestbedError::io(ctx("connect")))?;
        // Greeting: version 5, one method, "no authentication".
        s.write_all(&[5, 1, 0])
            .await
            .map_err(TestbedError::io(ctx("greeting")))?;
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply)
            .await
            .map_err(TestbedError::io(ctx("greeting reply")))?;
        if reply != [5, 0] {
            return Err(TestbedError::Unexpected(format!(
                "{}: server chose {reply:?}",
                ctx("greeting")
            )));
        }
        let mut req = vec![5, 1, 0];
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                req.push(1);
                req.extend_from_slice(&ip.octets());
            }
            Ok(IpAddr::V6(ip)) => {
                req.push(4);
                req.extend_from_slice(&ip.octets());
            }
            Err(_) => {
                let name = u8::try_from(host.len()).map_err(|_| {
                    TestbedError::Unexpected(format!("{}: host name too long", ctx("CONNECT")))
                })?;
                req.push(3);
                req.push(name);
                req.extend_from_slice(host.as_bytes());
            }
        }
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req)
            .await
            .map_err(TestbedError::io(ctx("CONNECT")))?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head)
            .await
            .map_err(TestbedError::io(ctx("CONNECT reply")))?;
        if head[0] != 5 || head[1] != 0 {
            let why = match head[1] {
                1 => "general failure",
                2 => "not allowed",
                3 => "network unreachable",
                4 => "host unreachable",
                5 => "connection refused",
                6 => "TTL expired",
                7 => "command not supported",
                8 => "address type not supported",
                _ => "unknown reply",
            };
            return Err(TestbedError::Unexpected(format!(
                "{}: reply {} ({why})",
                ctx("CONNECT"),
                head[1]
            )));
        }
        // The bound address, then the port.
        let rest = match head[3] {
            1 => 4 + 2,
            4 => 16 + 2,
            3 => {
                let mut len = [0u8; 1];
                s.read_exact(&mut len)
                    .await
                    .map_err(TestbedError::io(ctx("CONNECT reply")))?;
                usize::from(len[0]) + 2
            }
            other => {
                return Err(TestbedError::Unexpected(format!(
                    "{}: reply with address type {other}",
                    ctx("CONNECT")
                )))
            }
        };
        let mut skip = vec![0u8; rest];
        s.read_exact(&mut skip)
            .await
            .map_err(TestbedError::io(ctx("CONNECT reply")))?;
        Ok(s)
    }

    /// The LocalAPI socket (for `tailscale --socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The last few KB of tailscaled's log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Stops tailscaled now (dropping it does the same).
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

/// `tailscale --socket SOCKET ARGS…`; returns stdout.
async fn tailscale_cli(socket: &Path, args: &[&str]) -> Result<String> {
    let exe = bin("tailscale")?;
    let mut all = vec![OsStr::new("--socket"), socket.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    crate::process::run(&exe, all, &[]).await
}
