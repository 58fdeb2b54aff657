//! A managed userspace `tailscaled`: its own state dir and socket, no TUN device, SOCKS5 and
//! outbound HTTP proxies on loopback.

use super::{TailnetDialer, TailscaleCli, TailscaleError};
use crate::binary::find_binary;
use crate::process::ManagedProcess;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest LocalAPI socket path accepted (the kernel limit is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 100;

/// How to run a [`Tailscaled`].
#[derive(Debug, Clone)]
pub struct TailscaledConfig {
    /// Its own directory: `state/`, `logs/`, `tailscaled.sock`, `tailscaled.log` (mode 0700).
    /// Keep the path short: the socket path must fit in 100 bytes.
    pub dir: PathBuf,
    /// The `tailscaled` binary (default: from `PATH`).
    pub tailscaled_bin: Option<PathBuf>,
    /// The `tailscale` CLI (default: from `PATH`).
    pub tailscale_bin: Option<PathBuf>,
    /// SOCKS5 listener, on loopback (default: a free loopback port).
    pub socks5_addr: Option<SocketAddr>,
    /// Outbound HTTP proxy listener, on loopback (default: a free loopback port).
    pub http_proxy_addr: Option<SocketAddr>,
    /// Speak plain HTTP to DERP relays (`TS_DEBUG_USE_DERP_HTTP=1`). Needed when the control
    /// server is a plain-HTTP Headscale with its embedded DERP (the local create flow).
    pub plain_http_derp: bool,
    /// How long the LocalAPI may take to answer (default 20 s).
    pub ready_timeout: Duration,
}

impl TailscaledConfig {
    /// Defaults for the directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            tailscaled_bin: None,
            tailscale_bin: None,
            socks5_addr: None,
            http_proxy_addr: None,
            plain_http_derp: false,
            ready_timeout: Duration::from_secs(20),
        }
    }
}

/// A running userspace tailscaled. Incoming tailnet connections to its address are forwarded by
/// its netstack to the same port on the host's loopback; outgoing ones go through its proxies.
/// Dropping it stops it (its login state stays in its directory).
#[derive(Debug)]
pub struct Tailscaled {
    proc: ManagedProcess,
    cli: TailscaleCli,
    socks5: SocketAddr,
    http_proxy: SocketAddr,
}

fn loopback_or_free(
    field: &'static str,
    a: Option<SocketAddr>,
) -> Result<SocketAddr, TailscaleError> {
    match a {
        Some(a) if a.ip().is_loopback() => Ok(a),
        Some(a) => Err(TailscaleError::Invalid {
            field,
            reason: format!("{a} is not a loopback address (the proxy has no authentication)"),
        }),
        None => {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| {
                TailscaleError::Io {
                    what: format!("pick a free port for {field}"),
                    reason: e.to_string(),
                }
            })?;
            l.local_addr().map_err(|e| TailscaleError::Io {
                what: format!("pick a free port for {field}"),
                reason: e.to_string(),
            })
        }
    }
}

impl Tailscaled {
    /// Starts `tailscaled --tun=userspace-networking --statedir=DIR/state --socket=DIR/tailscaled.sock
    /// --port=0 --no-logs-no-support --socks5-server=… --outbound-http-proxy-listen=…` and waits
    /// until its LocalAPI answers. It is not logged in yet: see [`TailscaleCli::up`] (or it
    /// logs back in by itself from its saved state).
    pub async fn start(config: &TailscaledConfig) -> Result<Self, TailscaleError> {
        let socket = config.dir.join("tailscaled.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(TailscaleError::Invalid {
                field: "dir",
                reason: format!(
                    "{} is too long for a unix socket path; use a shorter directory",
                    socket.display()
                ),
            });
        }
        let socks5 = loopback_or_free("socks5_addr", config.socks5_addr)?;
        let http_proxy = loopback_or_free("http_proxy_addr", config.http_proxy_addr)?;
        let daemon = find_binary("tailscaled", config.tailscaled_bin.as_deref())?;
        let cli = TailscaleCli::find(config.tailscale_bin.as_deref(), &socket)?;
        let logs = config.dir.join("logs");
        for d in [&config.dir, &logs] {
            guildnet_core::state_dir::create_private_dir(d).map_err(|e| TailscaleError::Io {
                what: format!("create {}", d.display()),
                reason: e.to_string(),
            })?;
        }
        let mut env: Vec<(&str, &OsStr)> = vec![("TS_LOGS_DIR", logs.as_os_str())];
        if config.plain_http_derp {
            env.push(("TS_DEBUG_USE_DERP_HTTP", OsStr::new("1")));
        }
        let proc = ManagedProcess::spawn(
            "tailscaled",
            &daemon,
            [
                "--tun=userspace-networking".to_owned(),
                format!("--statedir={}", config.dir.join("state").display()),
                format!("--socket={}", socket.display()),
                "--port=0".to_owned(),
                "--no-logs-no-support".to_owned(),
                format!("--socks5-server={socks5}"),
                format!("--outbound-http-proxy-listen={http_proxy}"),
            ],
            &env,
            &config.dir.join("tailscaled.log"),
        )
        .map_err(|e| TailscaleError::Io {
            what: format!("start {}", daemon.display()),
            reason: e.to_string(),
        })?;
        let mut me = Self {
            proc,
            cli,
            socks5,
            http_proxy,
        };
        let start = Instant::now();
        loop {
            if me.cli.status().await.is_ok() {
                return Ok(me);
            }
            if let Some(status) = me.proc.exit_status() {
                return Err(TailscaleError::DaemonExited {
                    status,
                    log: me.proc.log_tail(),
                });
            }
            if start.elapsed() >= config.ready_timeout {
                return Err(TailscaleError::Timeout {
                    what: format!("tailscaled LocalAPI at {}", socket.display()),
                    after: config.ready_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The CLI bound to this daemon.
    pub fn cli(&self) -> &TailscaleCli {
        &self.cli
    }

    /// The LocalAPI socket.
    pub fn socket(&self) -> &Path {
        self.cli.socket()
    }

    /// The SOCKS5 server's address.
    pub fn socks5_addr(&self) -> SocketAddr {
        self.socks5
    }

    /// The outbound HTTP proxy's URL (`http://127.0.0.1:<port>`): plain HTTP requests and
    /// CONNECT tunnels through it reach tailnet addresses.
    pub fn http_proxy_url(&self) -> String {
        format!("http://{}", self.http_proxy)
    }

    /// A dialer through this node's SOCKS5 server.
    pub fn dialer(&self) -> TailnetDialer {
        TailnetDialer::new(self.socks5)
    }

    /// A TCP stream to `host:port` over the tailnet.
    pub async fn dial(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, TailscaleError> {
        self.dialer().connect(host, port).await
    }

    /// An HTTP client whose requests go through this node's HTTP proxy (tailnet URLs).
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, TailscaleError> {
        let invalid = |e: reqwest::Error| TailscaleError::Invalid {
            field: "http proxy",
            reason: e.without_url().to_string(),
        };
        let proxy = reqwest::Proxy::all(self.http_proxy_url()).map_err(invalid)?;
        reqwest::Client::builder()
            .proxy(proxy)
            .timeout(timeout)
            .build()
            .map_err(invalid)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The last few KB of its log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Stops it now (dropping it does the same).
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}
