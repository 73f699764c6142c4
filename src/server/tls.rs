//! HTTPS for the front (`server.tls`): loads the PEM certificate chain and key once at start-up
//! into a rustls server configuration, and wraps the TCP listener in a [`TlsListener`] that
//! `axum::serve` drives like any other listener, so graceful shutdown and its deadline
//! (`App::shutdown`) work the same with and without TLS.
//!
//! Why tokio-rustls and not `axum-server`: tokio-rustls and rustls (with the aws-lc-rs provider)
//! are already in the binary through the AWS SDK's HTTPS client, and axum 0.8's
//! `serve::Listener` trait is the one seam needed; `axum-server` would bring a second server loop
//! with its own shutdown handle next to the `axum::serve` one the rest of the app relies on.
//!
//! Handshakes run in their own tasks, each bounded by [`HANDSHAKE_TIMEOUT`], so a client that
//! stalls its handshake cannot hold up other connections. A failed handshake (plain HTTP sent to
//! the TLS port, an untrusted certificate) closes that connection and is logged at debug level.
//!
//! Must not: read the files more than once, or block the runtime (the files are read with
//! `tokio::fs` before serving).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for `axum::serve` to pick them up.
const ACCEPTED_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls: cannot read {what} file {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: io::Error },
    #[error("server.tls: {what} file {path} is not valid PEM: {message}")]
    Pem { what: &'static str, path: PathBuf, message: String },
    #[error("server.tls: certificate file {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("server.tls: key file {path} holds no private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("server.tls: certificate {cert} and key {key} cannot be used together: {source}")]
    Rejected { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

/// Read and check `server.tls`'s files; the acceptor every connection's handshake uses.
pub async fn load_acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let cert_pem = read_file("certificate", &config.cert).await?;
    let key_pem = read_file("key", &config.key).await?;
    let certificates = parse_certificates(&config.cert, &cert_pem)?;
    let key = parse_key(&config.key, &key_pem)?;
    let rejected = |source| TlsError::Rejected { cert: config.cert.clone(), key: config.key.clone(), source };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(rejected)?;
    // The router speaks HTTP/1.1 only (axum's `http1` feature).
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server_config)))
}

async fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path).await.map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

fn parse_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem { what: "certificate", path: path.to_path_buf(), message: error.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certificates)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoKey { path: path.to_path_buf() }),
        Err(error) => Err(TlsError::Pem { what: "key", path: path.to_path_buf(), message: error.to_string() }),
    }
}

/// A TCP listener whose connections come out TLS-handshaken. Dropping it (when `axum::serve`
/// returns) stops accepting and closes the port.
pub struct TlsListener {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(listener, acceptor, sender));
        Ok(TlsListener { local_addr, accepted })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop only ends once this listener is gone; never resolve otherwise.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning (as axum does).
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // Fails only when the server is gone; the connection is dropped then.
                    let _ = sender.send((tls, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_foreign_pem_is_a_typed_error_naming_the_file() {
        let path = Path::new("/etc/spillway/cert.pem");
        let error = parse_certificates(path, b"").unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        assert!(error.to_string().contains("/etc/spillway/cert.pem"), "{error}");

        let error = parse_key(Path::new("/etc/spillway/key.pem"), b"not a key").unwrap_err();
        assert!(matches!(error, TlsError::NoKey { .. }), "{error}");
        assert!(error.to_string().contains("/etc/spillway/key.pem"), "{error}");
    }
}
