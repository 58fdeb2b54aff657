//! Optional HTTPS: a self-signed certificate generated on first run into `${state}/tls/`
//! (`dashboard.crt`, and `dashboard.key` with mode 0600; reused afterwards), served with rustls
//! (ring provider). Replace the two files with a real certificate to use one.

use crate::error::DashboardError;
use guildnet_core::state_dir::{write_private_file, StatePaths};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Certificate and key files in the state dir.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (0600).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files under `${state}/tls/`.
    pub fn in_state(paths: &StatePaths) -> Self {
        let dir = paths.root().join("tls");
        Self {
            cert: dir.join("dashboard.crt"),
            key: dir.join("dashboard.key"),
        }
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> DashboardError {
    DashboardError::Tls(format!("{what}: {e}"))
}

/// Returns the certificate files, generating a self-signed pair (for `localhost`, `127.0.0.1`,
/// `::1` and this host's name) if either is missing.
pub fn ensure_certificate(paths: &StatePaths) -> Result<TlsFiles, DashboardError> {
    let files = TlsFiles::in_state(paths);
    if files.cert.is_file() && files.key.is_file() {
        return Ok(files);
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_owned());
        }
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| tls_err("generate a self-signed certificate", e))?;
    write_private_file(&files.key, ck.key_pair.serialize_pem().as_bytes())?;
    write_private_file(&files.cert, ck.cert.pem().as_bytes())?;
    tracing::info!(cert = %files.cert.display(), "generated a self-signed TLS certificate");
    Ok(files)
}

/// The rustls server configuration from the files (HTTP/1.1).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, DashboardError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_err(&format!("read {}", files.cert.display()), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&format!("parse {}", files.cert.display()), e))?;
    if certs.is_empty() {
        return Err(DashboardError::Tls(format!(
            "{} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls_err(&format!("read the key {}", files.key.display()), e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("certificate and key", e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A listener yielding TLS streams; handshakes run concurrently, off the accept loop.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Wraps `listener` with `cfg`.
    pub fn new(listener: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(cfg);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, addr, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (only on abort): wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves `app` over TLS until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    files: &TlsFiles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DashboardError> {
    let cfg = server_config(files)?;
    let tls = TlsListener::new(listener, cfg).map_err(DashboardError::Serve)?;
    guildnet_core::http_server::serve(
        tls,
        app,
        &guildnet_core::http_server::ServerOptions::default(),
        shutdown,
    )
    .await
    .map_err(DashboardError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn certificate_is_generated_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path());
        let f = ensure_certificate(&paths).unwrap();
        let mode = std::fs::metadata(&f.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = std::fs::read(&f.cert).unwrap();
        let f2 = ensure_certificate(&paths).unwrap();
        assert_eq!(
            std::fs::read(&f2.cert).unwrap(),
            first,
            "reused, not regenerated"
        );
        assert!(server_config(&f2).is_ok());
    }
}
