//! A local `headscale serve` process with its files under `${state}/headscale`.

use super::client::probe_health;
use super::config::{render_config, HeadscaleSettings};
use crate::process::ManagedProcess;
use crate::setup::SetupError;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest unix socket path we use as is (the kernel limit is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 100;

/// Where a local Headscale keeps its files: `${state}/headscale/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// `${state}/headscale` (mode 0700).
    pub dir: PathBuf,
    /// `settings.json`: the [`HeadscaleSettings`] of the first run, reused by later runs.
    pub settings: PathBuf,
    /// `config.yaml`: rendered from the settings on every start.
    pub config: PathBuf,
    /// `db.sqlite`.
    pub database: PathBuf,
    /// `noise_private.key`.
    pub noise_key: PathBuf,
    /// `derp_server_private.key`.
    pub derp_key: PathBuf,
    /// `headscale.sock` (the CLI talks to the server over it); under the temp dir when the state
    /// path is too long for a unix socket.
    pub socket: PathBuf,
    /// `api.key`: the API key (mode 0600), reused by later runs.
    pub api_key: PathBuf,
    /// `headscale.log`: the server's output.
    pub log: PathBuf,
}

impl ServerFiles {
    /// The files under the state dir `state`.
    pub fn under(state: &Path) -> Self {
        let dir = state.join("headscale");
        let mut socket = dir.join("headscale.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            dir.hash(&mut h);
            socket = std::env::temp_dir().join(format!("guildnet-hs-{:016x}.sock", h.finish()));
        }
        Self {
            settings: dir.join("settings.json"),
            config: dir.join("config.yaml"),
            database: dir.join("db.sqlite"),
            noise_key: dir.join("noise_private.key"),
            derp_key: dir.join("derp_server_private.key"),
            api_key: dir.join("api.key"),
            log: dir.join("headscale.log"),
            socket,
            dir,
        }
    }
}

/// The loopback URL at which a server listening on `listen` is probed locally.
pub(crate) fn local_probe_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// The loopback URL at which the server of `settings` is probed and managed locally.
pub(crate) fn server_probe_url(settings: &HeadscaleSettings) -> String {
    local_probe_url(settings.listen_addr)
}

/// A running `headscale serve`. Dropping it stops the server unless it was
/// [detached](HeadscaleProcess::detach).
#[derive(Debug)]
pub struct HeadscaleProcess {
    proc: ManagedProcess,
    url: String,
    files: ServerFiles,
}

impl HeadscaleProcess {
    /// Writes `config.yaml` from `settings` and starts `headscale -c config.yaml serve`, output
    /// appended to `headscale.log`, then waits (up to `ready_timeout`) until `GET /health`
    /// answers 200 on the listen address. Fails early, quoting the log, if it exits.
    pub async fn start(
        bin: &Path,
        files: &ServerFiles,
        settings: &HeadscaleSettings,
        ready_timeout: Duration,
    ) -> Result<Self, SetupError> {
        settings.validate()?;
        guildnet_core::state_dir::create_private_dir(&files.dir).map_err(|e| SetupError::Io {
            what: format!("create {}", files.dir.display()),
            reason: e.to_string(),
        })?;
        let yaml = render_config(settings, files);
        guildnet_core::state_dir::write_private_file(&files.config, yaml.as_bytes()).map_err(
            |e| SetupError::Io {
                what: format!("write {}", files.config.display()),
                reason: e.to_string(),
            },
        )?;
        let proc = ManagedProcess::spawn(
            "headscale",
            bin,
            [
                OsStr::new("-c"),
                files.config.as_os_str(),
                OsStr::new("serve"),
            ],
            &[],
            &files.log,
        )
        .map_err(|e| SetupError::Io {
            what: format!("start {}", bin.display()),
            reason: e.to_string(),
        })?;
        let mut me = Self {
            proc,
            url: settings.server_url.clone(),
            files: files.clone(),
        };
        me.wait_ready(local_probe_url(settings.listen_addr), ready_timeout)
            .await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, probe: String, timeout: Duration) -> Result<(), SetupError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(|e| SetupError::Io {
                what: "build an HTTP client".into(),
                reason: e.without_url().to_string(),
            })?;
        let base = reqwest::Url::parse(&probe).map_err(|e| SetupError::Invalid {
            field: "listenAddr",
            reason: e.to_string(),
        })?;
        let start = Instant::now();
        loop {
            let last = match probe_health(&http, &base).await {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if let Some(status) = self.proc.exit_status() {
                return Err(SetupError::ServerExited {
                    name: "headscale".into(),
                    status,
                    log: self.proc.log_tail(),
                });
            }
            if start.elapsed() >= timeout {
                return Err(SetupError::NotReady {
                    what: format!("headscale at {probe}"),
                    after: timeout,
                    last,
                    log: self.proc.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server URL (`--login-server` for nodes, base of the REST API).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its files.
    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc.exit_status().is_none()
    }

    /// The last few KB of its log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// Stops it now (SIGTERM, SIGKILL after 5 s). Dropping it does the same.
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }

    /// Leaves it running after this handle is dropped (e.g. a CLI that sets up and exits);
    /// returns its pid. A later [`crate::setup::create`] finds it serving and reuses it.
    pub fn detach(mut self) -> u32 {
        self.proc.detach();
        self.proc.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_state_paths_get_a_short_socket() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let f = ServerFiles::under(&long);
        assert!(
            f.socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            f.socket.display()
        );
        assert_eq!(f.socket, ServerFiles::under(&long).socket, "stable");
        assert_eq!(f.database, long.join("headscale/db.sqlite"));
        assert_eq!(
            local_probe_url("0.0.0.0:8080".parse().expect("addr")),
            "http://127.0.0.1:8080"
        );
    }
}
