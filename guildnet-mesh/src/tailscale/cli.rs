//! The `tailscale` CLI against one daemon's LocalAPI socket.

use super::status::{NodeStatus, PeerInfo};
use super::TailscaleError;
use crate::binary::find_binary;
use crate::redact::{redact, tail};
use guildnet_core::token::Secret;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Extra time a CLI call gets beyond its own `--timeout`.
const SLACK: Duration = Duration::from_secs(10);

/// What [`TailscaleCli::join`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The node was already on that tailnet under that name; left as it was.
    Already,
    /// The node logged in now.
    Now,
}

/// A daemon's preferences, the parts GuildNet reads (`tailscale debug prefs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodePrefs {
    /// The control server (`--login-server`); empty before the first login.
    #[serde(rename = "ControlURL", default)]
    pub control_url: String,
    /// The requested host name.
    #[serde(default)]
    pub hostname: String,
    /// Whether the node should be connected.
    #[serde(default)]
    pub want_running: bool,
    /// Whether the user logged out.
    #[serde(default)]
    pub logged_out: bool,
}

/// The `tailscale` CLI bound to one tailscaled (`--socket`).
#[derive(Debug, Clone)]
pub struct TailscaleCli {
    bin: PathBuf,
    socket: PathBuf,
}

impl TailscaleCli {
    /// A CLI using binary `bin` and the LocalAPI socket `socket`.
    pub fn new(bin: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            socket: socket.into(),
        }
    }

    /// A CLI with the `tailscale` binary at `configured` or from `PATH`.
    pub fn find(
        configured: Option<&Path>,
        socket: impl Into<PathBuf>,
    ) -> Result<Self, TailscaleError> {
        Ok(Self::new(find_binary("tailscale", configured)?, socket))
    }

    /// The LocalAPI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Joins the tailnet of `login_server` as `hostname` with a pre-auth key, non-interactively:
    /// `tailscale up --reset --login-server URL --auth-key=file:<0600 temp file> --hostname NAME
    /// --timeout T`. The key never appears on a command line, in logs or in errors. A refused key
    /// is [`TailscaleError::Auth`].
    pub async fn up(
        &self,
        login_server: &str,
        auth_key: &Secret,
        hostname: &str,
        timeout: Duration,
    ) -> Result<(), TailscaleError> {
        crate::headscale::parse_base_url(login_server).map_err(|e| TailscaleError::Invalid {
            field: "login_server",
            reason: e.to_string(),
        })?;
        guildnet_core::names::validate_dns_label("hostname", hostname).map_err(|e| {
            TailscaleError::Invalid {
                field: "hostname",
                reason: e.reason,
            }
        })?;
        if auth_key.expose().is_empty() {
            return Err(TailscaleError::Invalid {
                field: "auth_key",
                reason: "must not be empty".into(),
            });
        }
        // tempfile creates the file with mode 0600 and removes it on drop.
        let mut file = tempfile::Builder::new()
            .prefix("guildnet-authkey-")
            .tempfile()
            .map_err(|e| TailscaleError::Io {
                what: "create the auth key file".into(),
                reason: e.to_string(),
            })?;
        file.write_all(auth_key.expose().as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| TailscaleError::Io {
                what: "write the auth key file".into(),
                reason: e.to_string(),
            })?;
        let secs = timeout.as_secs().max(1);
        let args = vec![
            "up".to_owned(),
            "--reset".to_owned(),
            format!("--login-server={login_server}"),
            format!("--auth-key=file:{}", file.path().display()),
            format!("--hostname={hostname}"),
            format!("--timeout={secs}s"),
        ];
        let out = self.run("up", &args, timeout + SLACK).await;
        drop(file);
        let (ok, status, text) = out?;
        let text = redact(&text, &[auth_key]);
        if ok {
            return Ok(());
        }
        let lower = text.to_lowercase();
        let auth = [
            "authkey",
            "auth key",
            "auth-key",
            "invalid key",
            "key expired",
            "unauthorized",
            "not valid",
        ]
        .iter()
        .any(|w| lower.contains(w));
        if auth {
            Err(TailscaleError::Auth {
                message: tail(&text, 1000),
            })
        } else {
            Err(TailscaleError::Command {
                op: "up",
                status,
                output: tail(&text, 2000),
            })
        }
    }

    /// Joins like [`up`](Self::up) unless this node already is on `login_server`'s tailnet as
    /// `hostname` and running: then nothing is touched (a second `up --reset` would re-register
    /// the node and drop its live connections) and the answer is [`Joined::Already`].
    pub async fn join(
        &self,
        login_server: &str,
        auth_key: &Secret,
        hostname: &str,
        timeout: Duration,
    ) -> Result<Joined, TailscaleError> {
        if self.is_joined(login_server, hostname).await {
            return Ok(Joined::Already);
        }
        self.up(login_server, auth_key, hostname, timeout).await?;
        Ok(Joined::Now)
    }

    /// Running, logged in to `login_server` (trailing `/` ignored), under host name `hostname`.
    async fn is_joined(&self, login_server: &str, hostname: &str) -> bool {
        let Ok(prefs) = self.prefs().await else {
            return false;
        };
        let same_server =
            prefs.control_url.trim_end_matches('/') == login_server.trim_end_matches('/');
        if !same_server || prefs.hostname != hostname || prefs.logged_out || !prefs.want_running {
            return false;
        }
        self.status().await.is_ok_and(|st| st.is_running())
    }

    /// The daemon's preferences (`tailscale debug prefs`), the parts GuildNet reads.
    pub async fn prefs(&self) -> Result<NodePrefs, TailscaleError> {
        let (ok, status, text) = self
            .run(
                "prefs",
                &["debug".into(), "prefs".into()],
                Duration::from_secs(15),
            )
            .await?;
        if !ok {
            return Err(TailscaleError::Command {
                op: "prefs",
                status,
                output: tail(&text, 2000),
            });
        }
        serde_json::from_str(&text).map_err(|e| TailscaleError::Parse {
            op: "debug prefs",
            reason: e.to_string(),
        })
    }

    /// `tailscale status --json`, parsed.
    pub async fn status(&self) -> Result<NodeStatus, TailscaleError> {
        let (ok, status, text) = self
            .run(
                "status",
                &["status".into(), "--json".into()],
                Duration::from_secs(15),
            )
            .await?;
        // `status --json` prints the JSON even when logged out (and exits 0).
        if !ok && !text.trim_start().starts_with('{') {
            return Err(TailscaleError::Command {
                op: "status",
                status,
                output: tail(&text, 2000),
            });
        }
        NodeStatus::from_json(&text).map_err(|e| TailscaleError::Parse {
            op: "status --json",
            reason: e.to_string(),
        })
    }

    /// `tailscale down`: disconnects, keeping the login.
    pub async fn down(&self) -> Result<(), TailscaleError> {
        self.simple("down", &["down".into()]).await
    }

    /// `tailscale logout`: disconnects and expires this node's key (an ephemeral node is removed).
    pub async fn logout(&self) -> Result<(), TailscaleError> {
        self.simple("logout", &["logout".into()]).await
    }

    /// Polls status until peer `hostname` is online with a path to it; returns it.
    pub async fn wait_for_peer(
        &self,
        hostname: &str,
        timeout: Duration,
    ) -> Result<PeerInfo, TailscaleError> {
        let start = Instant::now();
        let mut seen;
        loop {
            match self.status().await {
                Ok(st) => match st.peer(hostname) {
                    Some(p) if p.online && p.has_path() => return Ok(p.clone()),
                    Some(p) => {
                        seen = format!(
                            "listed, online={}, relay={:?}, {} endpoints",
                            p.online,
                            p.relay,
                            p.endpoints.len()
                        )
                    }
                    None => {
                        seen = format!(
                            "not in the peer list (state {}, {} peers)",
                            st.backend_state,
                            st.peers.len()
                        )
                    }
                },
                Err(e) => seen = format!("status failed: {e}"),
            }
            if start.elapsed() >= timeout {
                return Err(TailscaleError::Timeout {
                    what: format!("peer {hostname} to be online (last seen: {seen})"),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn simple(&self, op: &'static str, args: &[String]) -> Result<(), TailscaleError> {
        let (ok, status, text) = self.run(op, args, Duration::from_secs(30)).await?;
        if ok {
            Ok(())
        } else {
            Err(TailscaleError::Command {
                op,
                status,
                output: tail(&text, 2000),
            })
        }
    }

    /// Runs `tailscale --socket S ARGS`; returns success, status and stdout+stderr.
    async fn run(
        &self,
        op: &'static str,
        args: &[String],
        timeout: Duration,
    ) -> Result<(bool, String, String), TailscaleError> {
        let fut = tokio::process::Command::new(&self.bin)
            .arg(format!("--socket={}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| TailscaleError::Timeout {
                what: format!("tailscale {op}"),
                after: timeout,
            })?
            .map_err(|e| TailscaleError::Io {
                what: format!("run {} {op}", self.bin.display()),
                reason: e.to_string(),
            })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), out.status.to_string(), text))
    }
}

#[cfg(test)]
mod tests {
    use super::NodePrefs;

    #[test]
    fn parses_debug_prefs() {
        let p: NodePrefs = serde_json::from_str(
            r#"{"ControlURL":"http://127.0.0.1:8080","RouteAll":false,"WantRunning":true,
                "LoggedOut":false,"Hostname":"node-b","AutoUpdate":{"Check":true}}"#,
        )
        .expect("prefs");
        assert_eq!(p.control_url, "http://127.0.0.1:8080");
        assert_eq!(p.hostname, "node-b");
        assert!(p.want_running && !p.logged_out);
        let fresh: NodePrefs =
            serde_json::from_str(r#"{"ControlURL":"","LoggedOut":true}"#).expect("fresh");
        assert!(fresh.logged_out && fresh.hostname.is_empty());
    }
}
