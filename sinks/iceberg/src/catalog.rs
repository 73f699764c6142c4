//! The catalog a sink commits through, chosen by `catalog: {type: …}` and connected at first
//! use: iceberg-rust's SQL catalog (PostgreSQL) or its REST catalog client, either way one
//! `Arc<dyn Catalog>`, so loading, the committed-batch check and the commit are the same code
//! for both. For REST it also makes the HTTP client (timeouts, HTTPS with rustls and aws-lc-rs
//! trusting the system's certificates, as the rest of the binary; [`rest_client`]) and turns the
//! `catalog:` fields into iceberg-rust's properties.
//!
//! Must not: log or put in an error the uri of a SQL catalog, a credential, a token or a header
//! value (`RestCatalog`'s own `Debug` shows its properties: it is never formatted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use iceberg::io::StorageFactory;
use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_rest::{REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE, RestCatalog, RestCatalogBuilder};
use iceberg_catalog_sql::SqlCatalogBuilder;
use spillway_sink_api::SinkError;

use crate::config::CatalogConfig;
use crate::error::{CATALOG_UNAVAILABLE, INVALID_CONFIGURATION};

/// How long a REST catalog's TCP (and TLS) connection may take to open.
const REST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected catalog.
pub struct Connected {
    pub catalog: Arc<dyn Catalog>,
    /// The REST catalog again, to renew its OAuth2 token; `None` for SQL, or a REST catalog
    /// without a `credential` (a fixed token cannot be renewed).
    renewable: Option<Arc<RestCatalog>>,
}

impl Connected {
    /// After the catalog refused the token: the next request exchanges the credential for a
    /// new one (iceberg-rust 0.10 does not renew tokens itself).
    pub async fn forget_token(&self) {
        if let Some(rest) = &self.renewable
            && let Err(error) = rest.invalidate_token().await
        {
            tracing::debug!(error = %error, "cannot forget the rest catalog's token");
        }
    }
}

/// Connects `config`'s catalog; files go through `storage`. `timeout` bounds each REST request.
pub async fn connect(
    config: &CatalogConfig,
    storage: Arc<dyn StorageFactory>,
    timeout: Duration,
) -> Result<Connected, SinkError> {
    match config {
        CatalogConfig::Sql { uri, warehouse, name } => {
            let props = HashMap::from([
                (iceberg_catalog_sql::SQL_CATALOG_PROP_URI.to_string(), uri.expose().to_string()),
                (iceberg_catalog_sql::SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse.clone()),
                ("pool.max-connections".to_string(), "4".to_string()),
            ]);
            let catalog = SqlCatalogBuilder::default()
                .with_storage_factory(storage)
                .load(name.clone(), props)
                .await
                .map_err(|error| {
                    SinkError::retriable(CATALOG_UNAVAILABLE, "cannot connect to the sql catalog").with_source(error)
                })?;
            Ok(Connected { catalog: Arc::new(catalog), renewable: None })
        }
        CatalogConfig::Rest { credential, .. } => {
            // Nothing is sent here: the server's configuration (and a token) are fetched by the
            // first request, and again after a failed one.
            let client = rest_client(timeout)?;
            let catalog = RestCatalogBuilder::default()
                .with_client(client)
                .with_storage_factory(storage)
                .load("rest", rest_properties(config))
                .await
                .map_err(|error| {
                    SinkError::permanent(INVALID_CONFIGURATION, "cannot configure the rest catalog").with_source(error)
                })?;
            let catalog = Arc::new(catalog);
            let renewable = credential.is_some().then(|| catalog.clone());
            Ok(Connected { catalog, renewable })
        }
    }
}

/// iceberg-rust's REST catalog properties for a `type: rest` block.
pub fn rest_properties(config: &CatalogConfig) -> HashMap<String, String> {
    let CatalogConfig::Rest { uri, warehouse, credential, token, oauth2_server_uri, scope, headers, properties } =
        config
    else {
        return HashMap::new();
    };
    // iceberg-rust joins `<uri>/v1/…`: a trailing slash would double.
    let mut props = HashMap::from([(REST_CATALOG_PROP_URI.to_string(), uri.trim_end_matches('/').to_string())]);
    let optional = [
        (REST_CATALOG_PROP_WAREHOUSE, warehouse.clone()),
        ("credential", credential.as_ref().map(|credential| credential.expose().to_string())),
        ("token", token.as_ref().map(|token| token.expose().to_string())),
        ("oauth2-server-uri", oauth2_server_uri.clone()),
        ("scope", scope.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            props.insert(key.to_string(), value);
        }
    }
    for (name, value) in headers {
        props.insert(format!("header.{name}"), value.expose().to_string());
    }
    for (key, value) in properties {
        props.insert(key.clone(), value.clone());
    }
    props
}

/// The REST catalog's HTTP client: bounded connection and request times, HTTPS through rustls
/// with aws-lc-rs and the system's certificates. Every REST catalog must be given this one
/// (`RestCatalogBuilder::with_client`): reqwest 0.12 is built with rustls but without a crypto
/// provider of its own, so a client it makes itself panics ("No provider set").
pub fn rest_client(timeout: Duration) -> Result<reqwest_012::Client, SinkError> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for certificate in rustls_native_certs::load_native_certs().certs {
        // A certificate rustls cannot read is skipped, as in every other TLS client of spillway.
        let _ = roots.add(certificate);
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| SinkError::permanent(INVALID_CONFIGURATION, "cannot set up tls").with_source(error))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest_012::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(REST_CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()
        .map_err(|error| {
            SinkError::permanent(INVALID_CONFIGURATION, "cannot make the rest catalog's http client").with_source(error)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_fields_become_iceberg_properties() {
        let config: CatalogConfig = serde_yaml_ng::from_str(
            "{type: rest, uri: 'https://cat.example/api/', warehouse: lake, credential: 'id:s3cret', \
             scope: 'PRINCIPAL_ROLE:ALL', headers: {X-Iceberg-Access-Delegation: vended-credentials}, \
             properties: {prefix: p1}}",
        )
        .expect("yaml");
        let props = rest_properties(&config);
        assert_eq!(props["uri"], "https://cat.example/api");
        assert_eq!(props["warehouse"], "lake");
        assert_eq!(props["credential"], "id:s3cret");
        assert_eq!(props["scope"], "PRINCIPAL_ROLE:ALL");
        assert_eq!(props["header.X-Iceberg-Access-Delegation"], "vended-credentials");
        assert_eq!(props["prefix"], "p1");
        assert!(!props.contains_key("token"));
        assert!(!format!("{config:?}").contains("s3cret"), "{config:?}");
    }
}
