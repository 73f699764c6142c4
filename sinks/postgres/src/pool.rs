//! A small connection pool: at most `max_connections` clients (one per batch in flight), idle
//! ones reused, a client that saw an error dropped rather than reused. TLS through rustls when
//! the url asks for it (`sslmode=require` / `prefer`), verified against the system trust store or
//! `ca_file`.
//!
//! Must not: retry; a failed connect is the caller's (classified) error.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use crate::error::PgError;

pub struct Pool {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A client taken from the pool; give it back with [`PooledClient::release`].
pub struct PooledClient<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: OwnedSemaphorePermit,
}

impl PooledClient<'_> {
    pub fn client(&mut self) -> &mut Client {
        // Only `release` takes it, and it consumes self.
        self.client.as_mut().expect("a pooled client until released")
    }

    /// Back to the pool if `healthy` (the last use ended cleanly), else closed.
    pub fn release(mut self, healthy: bool) {
        if let Some(client) = self.client.take()
            && healthy
            && !client.is_closed()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(client);
        }
    }
}

impl Pool {
    pub fn new(config: tokio_postgres::Config, ca_file: Option<&str>, max_connections: usize) -> Result<Self, PgError> {
        let tls = match (config.get_ssl_mode(), ca_file) {
            (SslMode::Disable, _) => None,
            // libpq's default: TLS when the server offers it. Without any trusted certificate
            // (a minimal container) it can only mean clear text, so say so rather than fail.
            (SslMode::Prefer, None) => match tls_config(None) {
                Ok(tls) => Some(MakeRustlsConnect::new(tls)),
                Err(error) => {
                    tracing::warn!(%error, "sslmode=prefer without a trust store: connecting without tls");
                    None
                }
            },
            _ => Some(MakeRustlsConnect::new(tls_config(ca_file)?)),
        };
        Ok(Self {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
        })
    }

    /// An idle client, or a new connection; waits while `max_connections` are in use.
    pub async fn get(&self) -> Result<PooledClient<'_>, PgError> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| PgError::Protocol("pool closed".into()))?;
        let reused = {
            let mut idle = self.idle.lock().map_err(|_| PgError::Protocol("pool lock poisoned".into()))?;
            let mut found = None;
            while let Some(client) = idle.pop() {
                if !client.is_closed() {
                    found = Some(client);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(client) => client,
            None => self.connect().await?,
        };
        Ok(PooledClient { client: Some(client), pool: self, _permit: permit })
    }

    async fn connect(&self) -> Result<Client, PgError> {
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "postgres connection ended");
                    }
                });
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "postgres connection ended");
                    }
                });
                Ok(client)
            }
        }
    }

    /// Drop every idle connection (on close).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// rustls with aws-lc-rs, trusting `ca_file` if given, else the system's certificates.
fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|error| PgError::Tls(format!("cannot read ca_file {path}: {error}")))?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate =
                    certificate.map_err(|error| PgError::Tls(format!("ca_file {path} is not PEM: {error}")))?;
                roots.add(certificate).map_err(|error| PgError::Tls(format!("ca_file {path}: {error}")))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for certificate in native.certs {
                let _ = roots.add(certificate);
            }
        }
    }
    if roots.is_empty() {
        return Err(PgError::Tls("no trusted certificates (set ca_file)".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| PgError::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
