//! `IcebergSinkConfig`: the YAML `sink:` block of `type: iceberg` (a SQL or a REST catalog), its
//! pure validation, and `build`, which sends nothing: the catalog is reached at the first write
//! (or `validate --connect`), so a stream starts while its table does not exist yet and its
//! records wait in the WAL until it does.
//!
//! Must not: touch the network or disk in `validate` or `build`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::io::{LocalFsStorageFactory, StorageFactory};
use serde::Deserialize;
use spillway_sink_api::{BuiltSink, ConfigProblem, Secret, SinkError};
use spillway_sink_s3::parquet::FORMAT_CONVERSION_FAILED;
use spillway_sink_s3::{BackupConfig, BackupMode, S3Connection};

use crate::convert::KeyMatching;
use crate::encode::LengthPrefixedEncoderFactory;
use crate::error::INVALID_CONFIGURATION;
use crate::route::TableTemplate;
use crate::sink::{IcebergSink, SinkParts};
use crate::storage::BucketStorageFactory;

/// `sink: {type: iceberg, …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergSinkConfig {
    pub catalog: CatalogConfig,
    /// The table, `namespace.name` (nested namespaces: `a.b.name`). It must exist (as Firehose
    /// requires); its current schema decides the columns. May name dynamic partition keys
    /// (`analytics.!{partitionKeyFromQuery:table}`): each batch goes to the table its keys name.
    pub table: String,
    /// How to reach an `s3://` warehouse: the S3 sink's `endpoint`, `region`, `path_style`,
    /// credentials and `allow_http`.
    #[serde(default)]
    pub s3: S3Connection,
    /// OpenX `CaseInsensitive` (default true): JSON keys match column names ignoring case.
    #[serde(default = "default_true")]
    pub case_insensitive: bool,
    /// OpenX `ColumnToJsonKeyMappings`: column name → the JSON key it is read from.
    #[serde(default)]
    pub column_to_json_key_mappings: BTreeMap<String, String>,
    /// OpenX `ConvertDotsInJsonKeysToUnderscores` (default false).
    #[serde(default)]
    pub convert_dots_in_json_keys_to_underscores: bool,
    /// Data files roll at this size (MiB, 1-4096); default: the table's
    /// `write.target-file-size-bytes` (Iceberg's default 512 MiB). A batch is at most 128 MiB
    /// of records, so a batch makes one file per partition unless this is set lower.
    #[serde(default)]
    pub target_file_size_mib: Option<u64>,
    /// Longest one batch's write (files and commit) may take before it is abandoned and
    /// retried; a retry never appends a batch twice.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// The Firehose `CatalogARN` this catalog stands for, described back by
    /// `DescribeDeliveryStream` (set by `CreateDeliveryStream`); default the account's Glue catalog.
    #[serde(default)]
    pub catalog_arn: Option<String>,
    /// Where records that do not fit the table go (Firehose error JSON under
    /// `error_output_prefix`): `backup: { sink: { url: file://… | s3://…, error_output_prefix } }`,
    /// the block every non-S3 sink has. Required; only `mode: failed_only`.
    #[serde(default)]
    pub backup: Option<BackupConfig>,
}

/// `catalog:`: where the table's metadata pointer lives. Secrets are `Secret`s (their `Debug`
/// shows `***`), so neither a logged configuration nor an error names them.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CatalogConfig {
    /// Iceberg's SQL (JDBC) catalog in PostgreSQL: the `iceberg_tables` table pyiceberg's
    /// `SqlCatalog` and Java's `JdbcCatalog` keep.
    Sql {
        /// `postgres://user:password@host:port/database`, or a SQLite file:
        /// `sqlite:///abs/path/catalog.db` (`?mode=rwc` creates it when missing).
        uri: Secret,
        /// `s3://bucket/path` or `file:///path`: where the catalog's tables keep their files.
        warehouse: String,
        /// The catalog's name in `iceberg_tables.catalog_name` (pyiceberg: the name given to
        /// `load_catalog`); default `default`.
        #[serde(default = "default_catalog_name")]
        name: String,
    },
    /// An Iceberg REST catalog (Iceberg's REST server, Apache Polaris, Lakekeeper, Nessie,
    /// Gravitino, …) through iceberg-rust's REST client. The server decides where each table
    /// keeps its files; spillway reaches `s3://` locations with the `s3:` options.
    Rest {
        /// `http(s)://host:port[/path]`: requests go to `<uri>/v1/…`.
        uri: String,
        /// Sent to the server at connection (`GET /v1/config?warehouse=…`): a location or the
        /// name the server knows a warehouse by. Optional.
        #[serde(default)]
        warehouse: Option<String>,
        /// OAuth2 client credentials, `client_id:client_secret` (or a secret alone), exchanged
        /// at the token endpoint for a bearer token, again after the catalog refuses one.
        #[serde(default)]
        credential: Option<Secret>,
        /// A bearer token sent as is (takes precedence over `credential` until refused).
        #[serde(default)]
        token: Option<Secret>,
        /// The OAuth2 token endpoint; default `<uri>/v1/oauth/tokens`.
        #[serde(default)]
        oauth2_server_uri: Option<String>,
        /// The OAuth2 scope asked for; default `catalog`.
        #[serde(default)]
        scope: Option<String>,
        /// Extra HTTP headers on every request (values are secrets: they may carry keys).
        #[serde(default)]
        headers: BTreeMap<String, Secret>,
        /// Further iceberg-rust REST properties: `prefix`, `audience`, `resource`.
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
}

/// The REST catalog properties `properties:` may set; the others have fields of their own (or,
/// for the warehouse's files, the `s3:` block).
pub const REST_PROPERTIES: [&str; 3] = ["prefix", "audience", "resource"];

impl CatalogConfig {
    /// The catalog in messages: its type and where it is, never a secret.
    pub fn label(&self) -> String {
        match self {
            CatalogConfig::Sql { name, .. } => format!("sql catalog `{name}`"),
            CatalogConfig::Rest { uri, .. } => format!("rest catalog {}", uri.trim_end_matches('/')),
        }
    }

    /// The warehouse location, where the configuration names one.
    pub fn warehouse(&self) -> Option<&str> {
        match self {
            CatalogConfig::Sql { warehouse, .. } => Some(warehouse),
            CatalogConfig::Rest { warehouse, .. } => warehouse.as_deref(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_timeout_seconds() -> u64 {
    300
}

fn default_catalog_name() -> String {
    "default".to_string()
}

/// `namespace.name` as iceberg's identifier.
pub fn table_ident(name: &str) -> Result<TableIdent, String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|part| part.trim().is_empty()) {
        return Err(format!("`{name}` must be namespace.name"));
    }
    TableIdent::from_strs(parts).map_err(|error| error.to_string())
}

/// Where a warehouse keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warehouse {
    Bucket(String),
    Local,
}

impl Warehouse {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or_default();
            if bucket.is_empty() {
                return Err(format!("`{url}` names no bucket"));
            }
            return Ok(Warehouse::Bucket(bucket.to_string()));
        }
        if url.starts_with("file://") {
            return Ok(Warehouse::Local);
        }
        Err(format!("`{url}` must be an s3:// or file:// url"))
    }
}

impl IcebergSinkConfig {
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        match TableTemplate::parse(&self.table) {
            Ok(template) => {
                if let Some(literal) = template.literal()
                    && let Err(message) = table_ident(&literal)
                {
                    problems.push(ConfigProblem::new("table", message));
                }
            }
            Err(message) => problems.push(ConfigProblem::new("table", message)),
        }
        match &self.catalog {
            CatalogConfig::Rest { .. } => problems.extend(validate_rest(&self.catalog)),
            CatalogConfig::Sql { uri, warehouse, name } => {
                let uri = uri.expose();
                if !["postgres://", "postgresql://", "sqlite:"].iter().any(|scheme| uri.starts_with(scheme)) {
                    problems.push(ConfigProblem::new("catalog.uri", "must be a postgres:// or sqlite: url"));
                }
                match Warehouse::parse(warehouse) {
                    Ok(Warehouse::Local) if self.s3_set() => {
                        problems.push(ConfigProblem::new("s3", "only applies to an s3:// warehouse"));
                    }
                    Ok(_) => {}
                    Err(message) => problems.push(ConfigProblem::new("catalog.warehouse", message)),
                }
                if name.trim().is_empty() {
                    problems.push(ConfigProblem::new("catalog.name", "must not be empty"));
                }
            }
        }
        problems.extend(
            self.s3
                .validate()
                .into_iter()
                .map(|problem| ConfigProblem { field: format!("s3.{}", problem.field), message: problem.message }),
        );
        if let Some(size) = self.target_file_size_mib
            && !(1..=4096).contains(&size)
        {
            problems.push(ConfigProblem::new("target_file_size_mib", "must be 1-4096"));
        }
        if !(1..=3600).contains(&self.timeout_seconds) {
            problems.push(ConfigProblem::new("timeout_seconds", "must be 1-3600"));
        }
        match &self.backup {
            None => problems.push(ConfigProblem::new(
                "backup",
                "required: records that do not fit the table go to its error output (backup: {sink: {url: …}})",
            )),
            Some(backup) => {
                if backup.mode != BackupMode::FailedOnly {
                    problems.push(ConfigProblem::new("backup.mode", "only failed_only is supported"));
                }
                problems.extend(backup.validate());
            }
        }
        problems
    }

    pub(crate) fn s3_set(&self) -> bool {
        let s3 = &self.s3;
        s3.endpoint.is_some()
            || s3.region.is_some()
            || s3.path_style.is_some()
            || s3.access_key_id.is_some()
            || s3.allow_http.is_some()
    }

    fn invalid(message: String) -> SinkError {
        SinkError::permanent(INVALID_CONFIGURATION, message)
    }

    /// The sink, its encoder and error output. Nothing is sent: the catalog is connected at the
    /// first write.
    pub fn build_sink(&self, stream: &str, version_id: u64) -> Result<BuiltSink, SinkError> {
        let sink = Arc::new(self.build(stream, version_id)?);
        let error_output = sink.error_output();
        Ok(BuiltSink {
            sink,
            encoders: Arc::new(LengthPrefixedEncoderFactory),
            error_output,
            failure_output_type: FORMAT_CONVERSION_FAILED,
        })
    }

    pub fn build(&self, stream: &str, version_id: u64) -> Result<IcebergSink, SinkError> {
        let problems = self.validate();
        if !problems.is_empty() {
            let listed: Vec<String> =
                problems.iter().map(|problem| format!("{}: {}", problem.field, problem.message)).collect();
            return Err(Self::invalid(listed.join("; ")));
        }
        let table = TableTemplate::parse(&self.table).map_err(Self::invalid)?;
        let storage: Arc<dyn StorageFactory> = match &self.catalog {
            CatalogConfig::Sql { warehouse, .. } => match Warehouse::parse(warehouse).map_err(Self::invalid)? {
                Warehouse::Bucket(bucket) => {
                    let store = self.s3.build_store(&bucket)?;
                    Arc::new(BucketStorageFactory::new(bucket, Arc::new(store)))
                }
                Warehouse::Local => Arc::new(LocalFsStorageFactory),
            },
            // The server decides where tables live: clients for the buckets they name.
            CatalogConfig::Rest { .. } => Arc::new(BucketStorageFactory::any_bucket(self.s3.clone())),
        };
        let backup = self.backup.as_ref().ok_or_else(|| Self::invalid("backup is required".to_string()))?;
        let error_output = Arc::new(backup.sink.build_versioned(stream, version_id)?);
        let matching = KeyMatching {
            case_insensitive: self.case_insensitive,
            dots_to_underscores: self.convert_dots_in_json_keys_to_underscores,
            renames: self.column_to_json_key_mappings.clone().into_iter().collect::<HashMap<_, _>>(),
        };
        Ok(IcebergSink::new(SinkParts {
            stream: stream.to_string(),
            catalog: self.catalog.clone(),
            storage,
            table,
            matching: Arc::new(matching),
            target_file_size: self.target_file_size_mib.map(|mib| (mib << 20) as usize),
            timeout: Duration::from_secs(self.timeout_seconds),
            error_output,
        }))
    }
}

/// A `type: rest` catalog block's problems, with fields under `catalog.`.
fn validate_rest(catalog: &CatalogConfig) -> Vec<ConfigProblem> {
    let CatalogConfig::Rest { uri, warehouse, credential, token, oauth2_server_uri, scope, headers, properties } =
        catalog
    else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if let Err(message) = check_http_url(uri) {
        problems.push(ConfigProblem::new("catalog.uri", message));
    }
    if warehouse.as_ref().is_some_and(|warehouse| warehouse.trim().is_empty()) {
        problems.push(ConfigProblem::new("catalog.warehouse", "must not be empty (or leave it out)"));
    }
    if let Some(credential) = credential {
        let credential = credential.expose();
        let (client_id, secret) = credential.split_once(':').unwrap_or(("", credential));
        if secret.is_empty() || (credential.contains(':') && client_id.is_empty()) {
            problems
                .push(ConfigProblem::new("catalog.credential", "must be client_id:client_secret (or a secret alone)"));
        }
    }
    if token.as_ref().is_some_and(|token| token.expose().trim().is_empty()) {
        problems.push(ConfigProblem::new("catalog.token", "must not be empty (or leave it out)"));
    }
    if let Some(endpoint) = oauth2_server_uri {
        if credential.is_none() {
            problems.push(ConfigProblem::new("catalog.oauth2_server_uri", "only applies with a credential"));
        }
        if let Err(message) = check_http_url(endpoint) {
            problems.push(ConfigProblem::new("catalog.oauth2_server_uri", message));
        }
    }
    if scope.is_some() && credential.is_none() {
        problems.push(ConfigProblem::new("catalog.scope", "only applies with a credential"));
    }
    for (name, value) in headers {
        let field = format!("catalog.headers.{name}");
        if name.is_empty() || !name.bytes().all(is_header_name_byte) {
            problems.push(ConfigProblem::new(&field, "is not an HTTP header name"));
        }
        if value.expose().bytes().any(|byte| (byte < 0x20 && byte != b'\t') || byte == 0x7f) {
            problems.push(ConfigProblem::new(&field, "the value holds control characters"));
        }
    }
    for key in properties.keys() {
        if !REST_PROPERTIES.contains(&key.as_str()) {
            problems.push(ConfigProblem::new(
                &format!("catalog.properties.{key}"),
                format!(
                    "not one spillway passes ({}); credentials, token, scope and headers have fields of their own, and the warehouse's files are reached with the `s3:` options",
                    REST_PROPERTIES.join(", ")
                ),
            ));
        }
    }
    problems
}

/// An `http://` or `https://` url without credentials, query or fragment.
fn check_http_url(text: &str) -> Result<(), String> {
    // Nothing is echoed before the url is known to hold no credentials.
    let url = url::Url::parse(text).map_err(|error| format!("is not a url: {error}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials: use `credential` or `token`".to_string());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` must be an http:// or https:// url"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}` must have no query or fragment"));
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_header_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> IcebergSinkConfig {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    #[test]
    fn a_complete_block_validates_and_every_problem_is_named() {
        let good = parse(
            "catalog: {type: sql, uri: 'postgres://u:p@127.0.0.1/db', warehouse: 's3://wh/path'}\n\
             table: db.events\ns3: {endpoint: 'http://127.0.0.1:9000'}\nbackup: {sink: {url: 'file:///tmp/b'}}\n",
        );
        assert_eq!(good.validate(), vec![]);
        assert_eq!(table_ident(&good.table).expect("ident").name(), "events");

        let bad = parse(
            "catalog: {type: sql, uri: 'mysql://x', warehouse: 'gs://wh'}\ntable: events\n\
             timeout_seconds: 0\ntarget_file_size_mib: 0\n",
        );
        let fields: Vec<String> = bad.validate().into_iter().map(|problem| problem.field).collect();
        assert_eq!(
            fields,
            vec!["table", "catalog.uri", "catalog.warehouse", "target_file_size_mib", "timeout_seconds", "backup"]
        );
    }

    #[test]
    fn a_table_may_name_partition_keys() {
        let routed = parse(
            "catalog: {type: sql, uri: 'postgres://u@h/db', warehouse: 'file:///wh'}\n\
             table: 'db.!{partitionKeyFromQuery:t}'\nbackup: {sink: {url: 'file:///tmp/b'}}\n",
        );
        assert_eq!(routed.validate(), vec![]);
        let broken = parse(
            "catalog: {type: sql, uri: 'postgres://u@h/db', warehouse: 'file:///wh'}\n\
             table: 'db.!{nope}'\nbackup: {sink: {url: 'file:///tmp/b'}}\n",
        );
        assert_eq!(broken.validate()[0].field, "table");
    }

    #[test]
    fn a_rest_catalog_block_validates_and_hides_its_secrets() {
        let good = parse(
            "catalog: {type: rest, uri: 'https://catalog.example/api', warehouse: lake, credential: 'spillway:s3cret', \
             scope: catalog, oauth2_server_uri: 'https://idp.example/token', headers: {X-Tenant: t1}, \
             properties: {audience: lake}}\n\
             table: db.events\ns3: {region: eu-west-1}\nbackup: {sink: {url: 'file:///tmp/b'}}\n",
        );
        assert_eq!(good.validate(), vec![]);
        assert_eq!(good.catalog.label(), "rest catalog https://catalog.example/api");
        let shown = format!("{good:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("t1"), "{shown}");
        let token = parse(
            "catalog: {type: rest, uri: 'http://127.0.0.1:8181/', token: abc}\ntable: db.t\n\
             backup: {sink: {url: 'file:///tmp/b'}}\n",
        );
        assert_eq!(token.validate(), vec![]);

        let bad = parse(
            "catalog: {type: rest, uri: 'http://user:pw@127.0.0.1:8181', warehouse: '', credential: ':x', token: '', \
             oauth2_server_uri: 'ftp://idp', headers: {'bad header': v, X-Ok: \"a\\u0001\"}, properties: {token: t, prefix: p}}\n\
             table: db.t\nbackup: {sink: {url: 'file:///tmp/b'}}\n",
        );
        let problems = bad.validate();
        let fields: Vec<&str> = problems.iter().map(|problem| problem.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "catalog.uri",
                "catalog.warehouse",
                "catalog.credential",
                "catalog.token",
                "catalog.oauth2_server_uri",
                "catalog.headers.X-Ok",
                "catalog.headers.bad header",
                "catalog.properties.token"
            ]
        );
        let messages = format!("{problems:?}");
        assert!(!messages.contains("pw"), "{messages}");
        let scoped = parse(
            "catalog: {type: rest, uri: 'http://h', scope: s, oauth2_server_uri: 'http://idp'}\ntable: db.t\n\
             backup: {sink: {url: 'file:///tmp/b'}}\n",
        );
        let fields: Vec<String> = scoped.validate().into_iter().map(|problem| problem.field).collect();
        assert_eq!(fields, vec!["catalog.oauth2_server_uri", "catalog.scope"]);
    }

    #[test]
    fn warehouses_are_a_bucket_or_a_folder() {
        assert_eq!(Warehouse::parse("s3://wh/a/b"), Ok(Warehouse::Bucket("wh".into())));
        assert_eq!(Warehouse::parse("file:///tmp/wh"), Ok(Warehouse::Local));
        assert!(Warehouse::parse("s3:///x").is_err());
    }
}
