//! TLS to PostgreSQL with rustls (the TLS stack the rest of GuildNet already uses), for
//! [`super::PostgresStore`].
//!
//! The URL decides, with libpq's parameter names:
//! - `sslmode=require`, `sslmode=verify-ca` or `sslmode=verify-full`: TLS, and the server's
//!   certificate is always verified, host name included (stricter than libpq's `require`, which
//!   skips verification without a root certificate): against `sslrootcert=<PEM file>` when
//!   given, else the Mozilla roots (webpki-roots). A failed verification fails the connection.
//! - no `sslmode`, `disable` or `prefer`: no TLS (as before TLS was supported; `prefer` does not
//!   try TLS first). Keep such a database on a private network.
//!
//! `sslrootcert` is taken out of the URL here (tokio-postgres does not know it), and
//! `verify-ca`/`verify-full` are given to tokio-postgres as `require`. The same holds for
//! `key=value` connection strings.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// What the URL asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// The URL for tokio-postgres (without `sslrootcert`, `verify-*` as `require`).
    pub(crate) url: String,
    /// TLS wanted (`require`, `verify-ca`, `verify-full`).
    pub(crate) tls: bool,
    /// `sslrootcert`: a PEM file of CA certificates.
    pub(crate) root_cert: Option<String>,
}

/// Reads `sslmode` and `sslrootcert` from a `postgres://` URL's query or a `key=value`
/// connection string, and rewrites it for tokio-postgres.
pub(crate) fn settings(url: &str) -> TlsSettings {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (base, rest, sep) = if is_url {
        match url.split_once('?') {
            Some((b, q)) => (format!("{b}?"), q.to_owned(), "&"),
            None => (url.to_owned(), String::new(), "&"),
        }
    } else {
        (String::new(), url.to_owned(), " ")
    };
    let mut kept = Vec::new();
    let mut tls = false;
    let mut root_cert = None;
    let parts: Vec<&str> = if is_url {
        rest.split('&').filter(|p| !p.is_empty()).collect()
    } else {
        rest.split_whitespace().collect()
    };
    for pair in parts {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k.trim(), v.trim()) {
            ("sslrootcert", v) => {
                root_cert = Some(if is_url {
                    percent_decode(v)
                } else {
                    v.to_owned()
                })
            }
            ("sslmode", "require" | "verify-ca" | "verify-full") => {
                tls = true;
                kept.push("sslmode=require".to_owned());
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    let url = if !is_url {
        kept.join(sep)
    } else if kept.is_empty() {
        base.trim_end_matches('?').to_owned()
    } else if base.ends_with('?') {
        format!("{base}{}", kept.join(sep))
    } else {
        base
    };
    TlsSettings {
        url,
        tls,
        root_cert,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    /// The root certificate file could not be read or holds no certificate.
    #[error("sslrootcert {path}: {reason}")]
    RootCert {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// A rustls client config that verifies the server against `root_cert` (a PEM file) or the
/// Mozilla roots.
pub(crate) fn client_config(
    root_cert: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let err = |reason: String| TlsSetupError::RootCert {
                path: path.to_owned(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let mut n = 0;
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| err(format!("not PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(err("no certificate in the file".to_owned()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::RootCert {
            path: root_cert.unwrap_or("(webpki roots)").to_owned(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// tokio-postgres's TLS connector over rustls.
#[derive(Clone)]
pub(crate) struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl RustlsConnect {
    pub(crate) fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectOne;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectOne, io::Error> {
        let name = rustls_pki_types::ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnectOne {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One TLS handshake to a named server.
pub(crate) struct RustlsConnectOne {
    connector: tokio_rustls::TlsConnector,
    name: rustls_pki_types::ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS stream to the server.
pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (SCRAM-SHA-256, not -PLUS): the certificate was
        // verified above.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_read_and_rewritten() {
        let s = settings("postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x");
        assert!(s.tls);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            s.url,
            "postgres://u:p@h:5432/db?sslmode=require&application_name=x"
        );
        let s = settings("postgres://u:p@h/db?sslmode=require");
        assert!(s.tls && s.root_cert.is_none());
        for plain in [
            "postgres://u:p@h/db",
            "postgres://u:p@h/db?sslmode=disable",
            "postgres://u:p@h/db?sslmode=prefer",
            "host=h user=u sslmode=disable",
        ] {
            let s = settings(plain);
            assert!(!s.tls, "{plain}");
            assert_eq!(s.url, plain);
        }
        let s = settings("postgres://u:p@h/db?sslrootcert=/ca.pem");
        assert_eq!(s.url, "postgres://u:p@h/db");
        let s = settings("host=h user=u sslmode=verify-full sslrootcert=/ca.pem");
        assert!(s.tls);
        assert_eq!(s.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(s.url, "host=h user=u sslmode=require");
    }

    #[test]
    fn a_missing_or_empty_root_cert_is_a_clear_error() {
        let e = client_config(Some("/nonexistent/ca.pem")).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(empty.to_str()).err().unwrap();
        assert!(e.to_string().contains("no certificate"), "{e}");
        assert!(client_config(None).is_ok());
    }
}
