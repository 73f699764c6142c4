//! The `opensearch` sink's YAML block and its pure validation (no network, no disk). Names follow
//! Firehose's `AmazonopensearchserviceDestinationConfiguration` where it has one.
//!
//! Must not: connect, or read files.

use serde::Deserialize;
use spillway_sink_api::{ConfigProblem, Secret};
pub use spillway_sink_s3::{BackupConfig, BackupMode};

use crate::index::IndexRotation;

/// `sink: { type: opensearch, … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSearchSinkConfig {
    /// The cluster's HTTP(S) endpoint, e.g. `https://search-domain.eu-west-1.es.amazonaws.com`
    /// (Firehose's `ClusterEndpoint`).
    pub url: String,
    /// Firehose's `IndexName` (1–80 characters); the rotation suffix is appended.
    pub index: String,
    /// Firehose's `IndexRotationPeriod`: `none`, `hour`, `day` (default), `week`, `month`.
    #[serde(default)]
    pub index_rotation: IndexRotation,
    /// Firehose's `TypeName`, for Elasticsearch 6.x only; leave unset for 7.x+ and OpenSearch.
    #[serde(default)]
    pub type_name: Option<String>,
    /// `firehose_default` (default: ids from stream and sequence, a replay overwrites),
    /// `none` (ids chosen by the cluster: at-least-once), or `from_field(<path>)`.
    #[serde(default)]
    pub document_id: DocumentId,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Largest `_bulk` request body; a batch larger than this is sent as several requests.
    #[serde(default = "default_bulk_max_mib")]
    pub bulk_max_mib: u64,
    /// Time limit of one `_bulk` request.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
    /// Firehose's `S3BackupMode` and `S3Configuration`: where failed documents go.
    pub backup: BackupConfig,
}

fn default_bulk_max_mib() -> u64 {
    10
}

fn default_request_timeout_seconds() -> u64 {
    60
}

/// Firehose's `DocumentIdOptions.DefaultDocumentIdFormat`, plus ids from a field of the record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum DocumentId {
    #[default]
    FirehoseDefault,
    None,
    /// A path of object keys, `.a.b` (or `a.b`).
    FromField(String),
}

impl TryFrom<String> for DocumentId {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "firehose_default" => Ok(DocumentId::FirehoseDefault),
            "none" => Ok(DocumentId::None),
            other => {
                let path = other
                    .strip_prefix("from_field(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .map(str::trim)
                    .filter(|path| !path.trim_start_matches('.').is_empty());
                match path {
                    Some(path) if path.trim_start_matches('.').split('.').all(|part| !part.is_empty()) => {
                        Ok(DocumentId::FromField(path.to_string()))
                    }
                    _ => Err(format!(
                        "unknown document_id {other:?} (expected firehose_default, none or from_field(.path.to.id))"
                    )),
                }
            }
        }
    }
}

/// How requests authenticate: `{ type: none }` (default), `{ type: basic, username, password }`,
/// or `{ type: aws_sigv4, region, service }` (Amazon OpenSearch Service / Serverless).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    #[default]
    None,
    Basic {
        username: String,
        password: Secret,
    },
    AwsSigv4 {
        /// The domain's region, e.g. `eu-west-1`.
        region: String,
        /// `es` (Amazon OpenSearch Service, default) or `aoss` (Serverless).
        #[serde(default = "default_sigv4_service")]
        service: String,
        /// Default: the standard AWS credential chain.
        #[serde(default)]
        access_key_id: Option<Secret>,
        #[serde(default)]
        secret_access_key: Option<Secret>,
        #[serde(default)]
        session_token: Option<Secret>,
    },
}

fn default_sigv4_service() -> String {
    "es".to_string()
}

impl OpenSearchSinkConfig {
    /// Every problem, each with its field path.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut push = |field: &str, message: String| problems.push(ConfigProblem { field: field.into(), message });
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => push("url", format!("{:?} must be an http:// or https:// url with a host", self.url)),
            Err(error) => push("url", format!("{:?} is not a url: {error}", self.url)),
        }
        if let Some(message) = index_name_problem(&self.index) {
            push("index", message);
        }
        if let Some(type_name) = &self.type_name
            && type_name.len() > 100
        {
            push("type_name", format!("must be at most 100 characters (got {})", type_name.len()));
        }
        if !(1..=100).contains(&self.bulk_max_mib) {
            push("bulk_max_mib", format!("must be between 1 and 100 (got {})", self.bulk_max_mib));
        }
        if !(1..=3600).contains(&self.request_timeout_seconds) {
            push(
                "request_timeout_seconds",
                format!("must be between 1 and 3600 (got {})", self.request_timeout_seconds),
            );
        }
        match &self.auth {
            AuthConfig::None => {}
            AuthConfig::Basic { username, .. } => {
                if username.is_empty() {
                    push("auth.username", "must not be empty".into());
                }
            }
            AuthConfig::AwsSigv4 { region, service, access_key_id, secret_access_key, .. } => {
                if region.is_empty() {
                    push("auth.region", "must not be empty".into());
                }
                if !matches!(service.as_str(), "es" | "aoss") {
                    push("auth.service", format!("must be es or aoss (got {service:?})"));
                }
                if access_key_id.is_some() != secret_access_key.is_some() {
                    push("auth.access_key_id", "access_key_id and secret_access_key go together".into());
                }
            }
        }
        problems.extend(self.backup.validate());
        problems
    }
}

/// OpenSearch's index name rules plus Firehose's 1–80 characters.
fn index_name_problem(index: &str) -> Option<String> {
    if index.is_empty() || index.len() > 80 {
        return Some(format!("must be 1-80 characters (got {})", index.len()));
    }
    if index.chars().any(|c| c.is_uppercase()) {
        return Some(format!("{index:?} must be lowercase"));
    }
    if let Some(bad) = index
        .chars()
        .find(|c| matches!(c, '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':') || c.is_control())
    {
        return Some(format!("{index:?} must not contain {bad:?}"));
    }
    if index.starts_with(['-', '_', '+']) || index == "." || index == ".." {
        return Some(format!("{index:?} must not start with -, _ or + nor be . or .."));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<OpenSearchSinkConfig, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn document_id_forms_parse() {
        let id = |text: &str| DocumentId::try_from(text.to_string());
        assert_eq!(id("firehose_default"), Ok(DocumentId::FirehoseDefault));
        assert_eq!(id("none"), Ok(DocumentId::None));
        assert_eq!(id("from_field(.event.id)"), Ok(DocumentId::FromField(".event.id".into())));
        assert!(id("from_field()").is_err());
        assert!(id("from_field(.a..b)").is_err());
        assert!(id("random").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let config = parse(
            "url: 'ftp://x'\nindex: 'Logs'\nbulk_max_mib: 0\nauth: { type: basic, username: '', password: p }\n\
             backup: { mode: all, sink: { url: 'nope://x' } }\n",
        )
        .unwrap();
        let fields: Vec<String> = config.validate().into_iter().map(|problem| problem.field).collect();
        assert_eq!(fields, ["url", "index", "bulk_max_mib", "auth.username", "backup.sink.url"]);
    }

    #[test]
    fn a_minimal_block_has_firehose_defaults() {
        let config =
            parse("url: 'http://127.0.0.1:9200'\nindex: logs\nbackup: { sink: { url: 'file://./backup' } }\n").unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert_eq!(config.index_rotation, IndexRotation::Day);
        assert_eq!(config.document_id, DocumentId::FirehoseDefault);
        assert_eq!(config.backup.mode, BackupMode::FailedOnly);
        assert!(parse("url: x\nindex: l\nbackup: { sink: { url: 'file://b' } }\nunknown: 1\n").is_err());
    }
}
