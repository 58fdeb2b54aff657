//! Opening TCP connections to tailnet hosts through a node's SOCKS5 proxy.

use super::TailscaleError;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Dials `host:port` on the tailnet (a tailnet IP or a MagicDNS name) through a tailscaled's
/// SOCKS5 server (no authentication, on loopback). Cheap to clone; hand it to whatever needs
/// tailnet connections (the orchestrator's editor proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailnetDialer {
    socks5: SocketAddr,
    timeout: Duration,
}

impl TailnetDialer {
    /// A dialer through the SOCKS5 server at `socks5`, with a 10 s connect timeout.
    pub fn new(socks5: SocketAddr) -> Self {
        Self {
            socks5,
            timeout: Duration::from_secs(10),
        }
    }

    /// The same with another connect timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The SOCKS5 server.
    pub fn socks5_addr(&self) -> SocketAddr {
        self.socks5
    }

    /// A TCP stream to `host:port` over the tailnet.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, TailscaleError> {
        let target = format!("{host}:{port}");
        let err = |reason: String| TailscaleError::Dial {
            target: target.clone(),
            via: self.socks5.to_string(),
            reason,
        };
        match tokio::time::timeout(self.timeout, self.handshake(host, port)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(reason)) => Err(err(reason)),
            Err(_) => Err(err(format!("timed out after {:?}", self.timeout))),
        }
    }

    async fn handshake(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
        let mut s = TcpStream::connect(self.socks5)
            .await
            .map_err(io("connect to the proxy"))?;
        s.write_all(&[5, 1, 0]).await.map_err(io("greeting"))?;
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply)
            .await
            .map_err(io("greeting reply"))?;
        if reply != [5, 0] {
            return Err(format!("proxy refused no-auth (reply {reply:?})"));
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
                let len = u8::try_from(host.len())
                    .ok()
                    .filter(|l| *l > 0)
                    .ok_or_else(|| "host name must be 1-255 bytes".to_owned())?;
                req.push(3);
                req.push(len);
                req.extend_from_slice(host.as_bytes());
            }
        }
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req).await.map_err(io("CONNECT"))?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.map_err(io("CONNECT reply"))?;
        if head[0] != 5 {
            return Err(format!("not a SOCKS5 reply (version {})", head[0]));
        }
        if head[1] != 0 {
            return Err(format!("proxy answered {}", reply_text(head[1])));
        }
        let rest = match head[3] {
            1 => 4 + 2,
            4 => 16 + 2,
            3 => {
                let mut len = [0u8; 1];
                s.read_exact(&mut len).await.map_err(io("CONNECT reply"))?;
                usize::from(len[0]) + 2
            }
            other => return Err(format!("reply with address type {other}")),
        };
        let mut skip = vec![0u8; rest];
        s.read_exact(&mut skip).await.map_err(io("CONNECT reply"))?;
        Ok(s)
    }
}

/// The orchestrator's editor proxy dials agents' advertised (tailnet) editor addresses with this.
#[async_trait::async_trait]
impl guildnet_core::proxy::Dialer for TailnetDialer {
    async fn dial(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        self.connect(host, port)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e.to_string()))
    }
}

fn reply_text(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "connection not allowed",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "an unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot SOCKS5 server answering CONNECT with `code`, then echoing.
    async fn fake_socks(code: u8) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut g = [0u8; 3];
            let _ = s.read_exact(&mut g).await;
            let _ = s.write_all(&[5, 0]).await;
            let mut h = [0u8; 4];
            let _ = s.read_exact(&mut h).await;
            let mut len = [0u8; 1];
            let _ = s.read_exact(&mut len).await;
            let mut rest = vec![0u8; usize::from(len[0]) + 2];
            let _ = s.read_exact(&mut rest).await;
            let _ = s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await;
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).await.is_ok() {
                let _ = s.write_all(&buf).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn connects_through_socks5_and_reports_refusals() {
        let ok = fake_socks(0).await;
        let mut s = TailnetDialer::new(ok)
            .connect("node-b", 8443)
            .await
            .expect("connect");
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ping");

        let refused = fake_socks(5).await;
        let e = TailnetDialer::new(refused)
            .connect("node-b", 8443)
            .await
            .expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains("node-b:8443") && text.contains("connection refused"),
            "{text}"
        );
    }
}
