//! nginx from Debian's package, on loopback, as an HTTP load balancer in front of several
//! orchestrator replicas.
//!
//! [`Nginx::start`] writes a config into a temp dir (its pid file, temp paths and config stay
//! there: nothing under `/etc` or `/var`), starts `nginx -p <dir> -c <dir>/nginx.conf` in the
//! foreground on a free 127.0.0.1 port, and waits until that port accepts connections. It is
//! stopped (SIGTERM to its process group, then SIGKILL) and its dir removed on drop.
//!
//! The proxy is set up the way the orchestrator needs it behind a load balancer:
//! - HTTP/1.1 to the upstreams with keep-alive, `proxy_buffering off` and hour-long read
//!   timeouts, so server-sent event streams (`/events`, task logs) flow line by line;
//! - `max_fails=1 fail_timeout=2s` per server and `proxy_next_upstream error timeout`: a refused
//!   connection (a replica that is down) sends the request to the next server. A request already
//!   sent to a replica that then dies is not retried elsewhere (nginx's default for POST), so
//!   the client sees a 502 and retries itself: no request is run twice behind its back.
//! - WebSocket upgrades pass through (`Upgrade` and `Connection: upgrade` forwarded when the
//!   client asks for one, `Connection: ""` otherwise to keep upstream keep-alive): the editor
//!   proxy's code-server connections;
//! - [`Upstream::Backup`] servers get requests only while every primary is down (a follower
//!   that should stay on one replica until it dies).
//!
//! Binary: `bin/nginx` from `scripts/testbed/install.sh nginx` (Debian's `nginx` package,
//! unpacked with `dpkg-deb -x`).

use crate::process::Proc;
use crate::{bin, free_port, wait_for, Result, TestbedError};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// How long nginx may take to accept connections after start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One upstream server of the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Takes requests in round-robin order with the other primaries.
    Primary(SocketAddr),
    /// Takes requests only while every primary is down.
    Backup(SocketAddr),
}

/// A running nginx. Dropping it stops nginx and removes its temp dir.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    /// Starts nginx balancing round-robin over `servers`.
    pub async fn round_robin(servers: &[SocketAddr]) -> Result<Nginx> {
        let ups: Vec<Upstream> = servers.iter().copied().map(Upstream::Primary).collect();
        Nginx::start(&ups).await
    }

    /// Starts nginx sending every request to `primary` while it is up, else to `backup`.
    pub async fn primary_backup(primary: SocketAddr, backup: SocketAddr) -> Result<Nginx> {
        Nginx::start(&[Upstream::Primary(primary), Upstream::Backup(backup)]).await
    }

    /// Starts nginx in front of `upstreams` (at least one primary) on a free loopback port.
    pub async fn start(upstreams: &[Upstream]) -> Result<Nginx> {
        if !upstreams.iter().any(|u| matches!(u, Upstream::Primary(_))) {
            return Err(TestbedError::Unexpected(
                "nginx: at least one primary upstream is needed".to_owned(),
            ));
        }
        let nginx = bin("nginx")?;
        let dir = tempfile::Builder::new()
            .prefix("guildnet-nginx-")
            .tempdir()
            .map_err(TestbedError::io("nginx temp dir"))?;
        // As root, nginx's workers run as `nobody`: they must reach the temp paths inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(TestbedError::io("chmod nginx temp dir"))?;
        let port = free_port()?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), port, upstreams))
            .map_err(TestbedError::io("write nginx.conf"))?;
        let log = dir.path().join("nginx.log");
        let mut proc = Proc::spawn(
            "nginx",
            &nginx,
            [
                std::ffi::OsStr::new("-p"),
                dir.path().as_os_str(),
                std::ffi::OsStr::new("-c"),
                conf.as_os_str(),
                std::ffi::OsStr::new("-e"),
                std::ffi::OsStr::new("stderr"),
            ],
            &[],
            &log,
        )?
        .with_stop_timeout(Duration::from_secs(5))
        .listening_on(port);
        wait_for(
            &format!("nginx on 127.0.0.1:{port}"),
            START_TIMEOUT,
            Some(&mut proc),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await?;
        tracing::debug!(port, ?upstreams, "testbed nginx ready");
        Ok(Nginx { proc, dir, port })
    }

    /// The listening port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// nginx's master process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The temp dir (config, pid file, temp paths, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tail of nginx's log (errors: upstream failures are logged there).
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }
}

/// The nginx.conf for `upstreams` behind port `port`, with every path inside `dir`.
fn config(dir: &Path, port: u16, upstreams: &[Upstream]) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for u in upstreams {
        let (addr, backup) = match u {
            Upstream::Primary(a) => (a, ""),
            Upstream::Backup(a) => (a, " backup"),
        };
        let _ = writeln!(
            servers,
            "        server {addr} max_fails=1 fail_timeout=2s{backup};"
        );
    }
    format!(
        r#"# Written by guildnet-testbed (testbed/src/nginx.rs).
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 70000;
pid {d}/nginx.pid;
error_log stderr warn;

events {{
    # Each proxied request holds two connections (client and upstream): 10,000 agents whose
    # requests queue for seconds need more than 8,192, or nginx drops connections (resets).
    worker_connections 32768;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 16m;

    # WebSocket upgrades (the editor proxy) pass through; other requests keep the upstream
    # connection alive.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}

    upstream orchestrators {{
{servers}        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://orchestrators;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_connect_timeout 2s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_primaries_and_backups_and_keeps_paths_in_the_dir() {
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let c = config(
            Path::new("/tmp/x"),
            9,
            &[Upstream::Primary(a), Upstream::Backup(b)],
        );
        assert!(c.contains("server 127.0.0.1:1001 max_fails=1 fail_timeout=2s;"));
        assert!(c.contains("server 127.0.0.1:1002 max_fails=1 fail_timeout=2s backup;"));
        assert!(c.contains("listen 127.0.0.1:9;"));
        assert!(c.contains("pid /tmp/x/nginx.pid;"));
        assert!(c.contains("proxy_buffering off;"));
        assert!(c.contains("proxy_set_header Connection $connection_upgrade;"));
    }
}
