//! The `http_endpoint` sink's YAML block and its pure validation (no network, no disk). Names
//! follow Firehose's `HttpEndpointDestinationConfiguration` where it has one.
//!
//! Must not: connect, or read files.

use std::collections::BTreeMap;

use serde::Deserialize;
use spillway_sink_api::{ConfigProblem, Secret};
pub use spillway_sink_s3::{BackupConfig, BackupMode};

/// Headers spillway writes itself: a `headers:` entry may not replace them.
pub const RESERVED_HEADERS: [&str; 9] = [
    "content-type",
    "content-encoding",
    "content-length",
    "host",
    "x-amz-firehose-protocol-version",
    "x-amz-firehose-request-id",
    "x-amz-firehose-source-arn",
    "x-amz-firehose-access-key",
    "x-amz-firehose-common-attributes",
];

/// `sink: { type: http_endpoint, … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEndpointSinkConfig {
    /// Where requests are POSTed, as given (`EndpointConfiguration.Url`, ≤ 1,000 characters).
    /// Firehose allows only `https://`; spillway takes `http://` too (a loopback receiver, a
    /// sidecar).
    pub url: String,
    /// `EndpointConfiguration.Name`: a name for people (status page, Describe).
    #[serde(default)]
    pub name: Option<String>,
    /// `EndpointConfiguration.AccessKey`, sent as `X-Amz-Firehose-Access-Key` (only when set);
    /// use `${ENV_VAR}`. Never logged, never echoed by `DescribeDeliveryStream`.
    #[serde(default)]
    pub access_key: Option<Secret>,
    /// `RequestConfiguration.CommonAttributes`, sent as `X-Amz-Firehose-Common-Attributes`.
    #[serde(default)]
    pub common_attributes: BTreeMap<String, String>,
    /// `RequestConfiguration.ContentEncoding`: `none` (default) or `gzip` (the body).
    #[serde(default)]
    pub content_encoding: ContentEncoding,
    /// Time limit of one request (Firehose: 3 minutes).
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
    /// Largest request body before compression; a batch larger than this (or of more than
    /// 10,000 records) is sent as several requests, each with its own request id.
    #[serde(default = "default_max_body_mib")]
    pub max_body_mib: u64,
    /// Extra headers for a receiver behind a proxy that wants them (not Firehose's: it has none).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Firehose's `S3BackupMode` (`FailedDataOnly` = `failed_only`, `AllData` = `all`) and
    /// `S3Configuration`: where records the endpoint did not take go.
    pub backup: BackupConfig,
}

fn default_request_timeout_seconds() -> u64 {
    180
}

fn default_max_body_mib() -> u64 {
    64
}

/// `RequestConfiguration.ContentEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentEncoding {
    #[default]
    None,
    Gzip,
}

impl ContentEncoding {
    /// Firehose's name: `NONE` or `GZIP`.
    pub fn firehose_name(self) -> &'static str {
        match self {
            ContentEncoding::None => "NONE",
            ContentEncoding::Gzip => "GZIP",
        }
    }
}

impl HttpEndpointSinkConfig {
    /// Every problem, each with its field path.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => problems.push(ConfigProblem::new(
                "url",
                format!("{:?} must be an https:// (or http://) url with a host", self.url),
            )),
            Err(error) => problems.push(ConfigProblem::new("url", format!("{:?} is not a url: {error}", self.url))),
        }
        if self.url.len() > 1000 {
            problems
                .push(ConfigProblem::new("url", format!("must be at most 1000 characters (got {})", self.url.len())));
        }
        if let Some(name) = &self.name
            && !(1..=256).contains(&name.len())
        {
            problems.push(ConfigProblem::new("name", format!("must be 1-256 characters (got {})", name.len())));
        }
        if let Some(key) = &self.access_key {
            let key = key.expose();
            if key.len() > 4096 {
                problems
                    .push(ConfigProblem::new("access_key", format!("must be at most 4096 bytes (got {})", key.len())));
            } else if reqwest::header::HeaderValue::from_str(key).is_err() {
                problems.push(ConfigProblem::new("access_key", "must be visible ASCII (it is sent as a header)"));
            }
        }
        if self.common_attributes.len() > 50 {
            problems.push(ConfigProblem::new(
                "common_attributes",
                format!("must have at most 50 entries (got {})", self.common_attributes.len()),
            ));
        }
        for (name, value) in &self.common_attributes {
            if !(1..=256).contains(&name.len()) {
                problems.push(ConfigProblem::new(
                    &format!("common_attributes.{name}"),
                    format!("names must be 1-256 characters (got {})", name.len()),
                ));
            }
            if value.len() > 1024 {
                problems.push(ConfigProblem::new(
                    &format!("common_attributes.{name}"),
                    format!("values must be at most 1024 characters (got {})", value.len()),
                ));
            }
        }
        if !(1..=3600).contains(&self.request_timeout_seconds) {
            problems.push(ConfigProblem::new(
                "request_timeout_seconds",
                format!("must be between 1 and 3600 (got {})", self.request_timeout_seconds),
            ));
        }
        if !(1..=64).contains(&self.max_body_mib) {
            problems.push(ConfigProblem::new(
                "max_body_mib",
                format!("must be between 1 and 64 (got {})", self.max_body_mib),
            ));
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(ConfigProblem::new(&field, "is not a valid header name"));
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                problems
                    .push(ConfigProblem::new(&field, "is written by spillway (Firehose's protocol) and cannot be set"));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                problems.push(ConfigProblem::new(&field, "the value must be visible ASCII"));
            }
        }
        problems.extend(self.backup.validate());
        problems
    }

    /// `X-Amz-Firehose-Common-Attributes`: `{"commonAttributes":{…}}` (also when empty).
    pub fn common_attributes_header(&self) -> String {
        serde_json::json!({ "commonAttributes": self.common_attributes }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<HttpEndpointSinkConfig, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn a_minimal_block_has_firehose_defaults() {
        let config = parse("url: https://intake.example/v1\nbackup: { sink: { url: 'file://./backup' } }\n").unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert_eq!(config.request_timeout_seconds, 180);
        assert_eq!(config.max_body_mib, 64);
        assert_eq!(config.content_encoding, ContentEncoding::None);
        assert_eq!(config.backup.mode, BackupMode::FailedOnly);
        assert_eq!(config.common_attributes_header(), r#"{"commonAttributes":{}}"#);
        assert!(parse("url: x\nbackup: { sink: { url: 'file://b' } }\nunknown: 1\n").is_err());
        assert!(parse("url: x\nbackup: { sink: { url: 'file://b' } }\ncontent_encoding: br\n").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let long = "v".repeat(1025);
        let config = parse(&format!(
            "url: 'ftp://x'\nname: ''\naccess_key: \"bad\\nkey\"\ncommon_attributes: {{ env: {long} }}\n\
             request_timeout_seconds: 0\nmax_body_mib: 65\nheaders: {{ X-Amz-Firehose-Request-Id: x, 'bad name': y }}\n\
             backup: {{ mode: all, sink: {{ url: 'nope://x' }} }}\n",
        ))
        .unwrap();
        let fields: Vec<String> = config.validate().into_iter().map(|problem| problem.field).collect();
        assert_eq!(
            fields,
            [
                "url",
                "name",
                "access_key",
                "common_attributes.env",
                "request_timeout_seconds",
                "max_body_mib",
                "headers.X-Amz-Firehose-Request-Id",
                "headers.bad name",
                "backup.sink.url"
            ]
        );
    }

    #[test]
    fn the_access_key_never_shows_in_a_dump() {
        let config = parse("url: https://h\naccess_key: hunter2\nbackup: { sink: { url: 'file://b' } }\n").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
