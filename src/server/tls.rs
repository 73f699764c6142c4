//! HTTPS for the front (`server.tls`): loads the PEM certificate chain and key once at start-up
//! into a rustls server configuration. The handshake itself runs in each connection's task
//! ([`super::serve`]), within the connection cap and bounded by the header timeout, so a client
//! that stalls its handshake holds up nobody else. A failed handshake (plain HTTP sent to the TLS
//! port, an untrusted certificate) closes that connection and is logged at debug level.
//!
//! Why tokio-rustls and not `axum-server`: tokio-rustls and rustls (with the aws-lc-rs provider)
//! are already in the binary through the AWS SDK's HTTPS client; `axum-server` would bring a
//! second server loop next to the one in [`super::serve`] that plain HTTP uses.
//!
//! Must not: read the files more than once, or block the runtime (the files are read with
//! `tokio::fs` before serving).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

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
