//! Opening TCP connections to tailnet hosts through a node's SOCKS5 proxy.

use super::TailscaleError;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
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

    /// The SOCKS5 handshake (RFC 1928, no authentication) through `tokio-socks`.
    async fn handshake(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let target: tokio_socks::TargetAddr<'_> = match host.parse::<IpAddr>() {
            Ok(ip) => tokio_socks::TargetAddr::Ip(SocketAddr::new(ip, port)),
            Err(_) => tokio_socks::TargetAddr::Domain(host.into(), port),
        };
        tokio_socks::tcp::Socks5Stream::connect(self.socks5, target)
            .await
            .map(tokio_socks::tcp::Socks5Stream::into_inner)
            .map_err(|e| match e {
                tokio_socks::Error::Io(e) => format!("proxy connection: {e}"),
                other => format!("proxy answered: {other}"),
            })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
            text.contains("node-b:8443") && text.to_lowercase().contains("refused"),
            "{text}"
        );
    }
}
