//! The `kafka` source: reads Kafka (Apache Kafka, Amazon MSK, Redpanda, …) topics with librdkafka
//! (`rdkafka`) and appends their records to the delivery stream's WAL, each frame carrying its
//! partition's position. The configuration block and its validation live here; the consumer
//! thread and the appender in [`reader`], the per-record metadata in [`metadata`], the Amazon MSK
//! IAM tokens in [`msk_iam`].
//!
//! - **Assignment**: spillway assigns every partition of the topics itself (`assign`, no consumer
//!   group membership, no rebalancing): the WAL's positions are the truth, not a group's committed
//!   offsets. A metadata refresh every `metadata_refresh_interval_ms` picks up partitions added to
//!   a topic and topics that start matching `topic_pattern`.
//! - **Positions** (the WAL's shard → position map): key `kafka:<topic>:<partition>`, value
//!   `next:<offset>`, the offset of the next record to read. A partition read for the first time
//!   gets its start offset (from `start`) recorded before any record, so a restart neither skips
//!   nor repeats. Key `kafka` holds `started:<epoch ms>` once the first assignment is recorded:
//!   from then on a partition without a position is new (added after reading began) and is read
//!   from its beginning, whatever `start` says.
//! - **`commit_offsets_to_group`**: offsets whose records are delivered (the WAL trimmed past
//!   them) are committed to that group, for lag tools only; spillway never reads them back. In
//!   cluster mode each partition's owner commits them (`shards::KafkaPartitions::delivered`).
//! - **Authentication**: SASL PLAIN / SCRAM with the configured user, or `msk_iam` (SASL
//!   OAUTHBEARER with a SigV4-presigned token, always over TLS); TLS with the system's or a given
//!   CA, optionally mutual.
//!
//! Must not: subscribe with a group (two rebalancing readers would each skip what the other
//! read), move a position before the WAL append that carries it, or log a credential.

pub mod metadata;
mod msk_iam;
mod reader;
mod shards;
mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

pub use reader::run;

/// The source type: positions are keyed `kafka:<topic>:<partition>`.
pub(crate) const KIND: &str = "kafka";

/// The `source:` block of a stream whose `type` is `kafka`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port…]`: where the client first looks for the cluster.
    pub bootstrap_servers: String,
    /// The topics read (or `topic_pattern`; exactly one of the two).
    pub topics: Option<Vec<String>>,
    /// A regular expression (Rust `regex`, anchored at both ends): every topic whose whole name
    /// matches, including topics created later. Internal topics (`__…`) never match.
    pub topic_pattern: Option<String>,
    /// Where a partition is read from when the WAL holds no position for it (first start).
    #[serde(default)]
    pub start: StartFrom,
    /// SASL authentication; none when absent.
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS to the brokers; plaintext when absent.
    pub tls: Option<TlsConfig>,
    /// The MSK cluster's ARN when the Firehose API created the stream (`MSKClusterARN`): only
    /// described, `bootstrap_servers` is what is connected to.
    pub cluster_arn: Option<String>,
    /// Commit delivered offsets to this consumer group (for lag tools only; off by default).
    pub commit_offsets_to_group: Option<String>,
    /// How often the cluster's metadata is read again (new partitions, new matching topics,
    /// deleted topics).
    #[serde(default = "default_metadata_refresh_interval_ms")]
    pub metadata_refresh_interval_ms: u64,
    /// The client id the brokers see (quotas, logs).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Fetched records librdkafka may hold in memory before spillway has taken them, in MiB
    /// (`queued.max.messages.kbytes`): the source's memory bound besides one frame per partition.
    #[serde(default = "default_max_buffered_mib")]
    pub max_buffered_mib: u64,
    /// Further librdkafka properties (`fetch.wait.max.ms`, `socket.keepalive.enable`, …), set
    /// last. Properties that decide correctness (`enable.auto.commit`, `group.id`, …) are refused.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
}

/// `start`: `earliest`, `latest` or `{ at_timestamp: <RFC 3339> }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record each partition retains.
    Earliest,
    /// Only records written after the first start (Firehose's default: from when the stream
    /// became active).
    #[default]
    Latest,
    /// The first record whose timestamp is at or after this time (Firehose `ReadFromTimestamp`).
    AtTimestamp(String),
}

impl<'de> Deserialize<'de> for StartFrom {
    /// A bare word or a one-key map, from YAML and from the control plane's JSON alike (YAML's
    /// own enum syntax would want a `!tag`).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Word(String),
            Map(BTreeMap<String, String>),
        }
        let expected = "`earliest`, `latest` or `{ at_timestamp: <RFC 3339 time> }`";
        match Either::deserialize(deserializer)? {
            Either::Word(word) if word == "earliest" => Ok(StartFrom::Earliest),
            Either::Word(word) if word == "latest" => Ok(StartFrom::Latest),
            Either::Map(map) if map.len() == 1 && map.contains_key("at_timestamp") => {
                Ok(StartFrom::AtTimestamp(map.into_values().next().unwrap_or_default()))
            }
            _ => Err(serde::de::Error::custom(format!("start must be {expected}"))),
        }
    }
}

/// `auth`: `none` (the default) or `{ type: sasl_plain | sasl_scram | msk_iam, … }`.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum AuthConfig {
    #[default]
    None,
    SaslPlain {
        username: String,
        password: String,
    },
    SaslScram {
        username: String,
        password: String,
        mechanism: ScramMechanism,
    },
    /// Amazon MSK IAM access control: SASL OAUTHBEARER with a token signed by the AWS credential
    /// chain's credentials, over TLS (MSK's port 9098, or 9198 for public access).
    MskIam {
        /// The cluster's region; default: the AWS chain's (`AWS_REGION`, the profile's).
        region: Option<String>,
    },
}

/// Never prints a password.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthConfig::None => f.write_str("None"),
            AuthConfig::SaslPlain { username, .. } => {
                f.debug_struct("SaslPlain").field("username", username).field("password", &"<redacted>").finish()
            }
            AuthConfig::SaslScram { username, mechanism, .. } => f
                .debug_struct("SaslScram")
                .field("username", username)
                .field("password", &"<redacted>")
                .field("mechanism", mechanism)
                .finish(),
            AuthConfig::MskIam { region } => f.debug_struct("MskIam").field("region", region).finish(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    /// Amazon MSK's SCRAM mechanism.
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

/// The tagged form of `auth`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum TaggedAuth {
    None,
    SaslPlain {
        username: String,
        password: String,
    },
    SaslScram {
        username: String,
        password: String,
        #[serde(default)]
        mechanism: ScramMechanism,
    },
    MskIam {
        region: Option<String>,
    },
}

impl<'de> Deserialize<'de> for AuthConfig {
    /// `auth: none` as a bare word, or the tagged map.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Word(String),
            Map(serde_json::Map<String, serde_json::Value>),
        }
        let tagged = match Either::deserialize(deserializer)? {
            Either::Word(word) if word == "none" => TaggedAuth::None,
            Either::Word(word) => {
                return Err(serde::de::Error::custom(format!(
                    "auth `{word}` needs its settings: write `auth: {{ type: {word}, … }}` (or `auth: none`)"
                )));
            }
            Either::Map(map) => {
                TaggedAuth::deserialize(serde_json::Value::Object(map)).map_err(serde::de::Error::custom)?
            }
        };
        Ok(match tagged {
            TaggedAuth::None => AuthConfig::None,
            TaggedAuth::SaslPlain { username, password } => AuthConfig::SaslPlain { username, password },
            TaggedAuth::SaslScram { username, password, mechanism } => {
                AuthConfig::SaslScram { username, password, mechanism }
            }
            TaggedAuth::MskIam { region } => AuthConfig::MskIam { region },
        })
    }
}

/// `tls`: encrypt the connection to the brokers.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the brokers' certificates; default: the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub key_password: Option<String>,
    /// Check that a broker's certificate names the host connected to.
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("key_password", &self.key_password.as_ref().map(|_| "<redacted>"))
            .field("verify_hostname", &self.verify_hostname)
            .finish()
    }
}

fn default_metadata_refresh_interval_ms() -> u64 {
    30_000
}
fn default_client_id() -> String {
    "spillway".to_string()
}
fn default_max_buffered_mib() -> u64 {
    64
}
fn default_true() -> bool {
    true
}

/// librdkafka properties spillway sets itself: what it reads and when a position moves depend
/// on them, so `librdkafka_options` may not change them (nor any `ssl.` property, nor the
/// OAUTHBEARER ones [`RESERVED_PREFIXES`] name: `msk_iam` makes its own tokens).
const RESERVED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "isolation.level",
];
const RESERVED_PREFIXES: &[&str] = &["ssl.", "sasl.oauthbearer.", "enable.sasl.oauthbearer."];

/// Most characters Kafka allows in a topic name.
const MAX_TOPIC_LEN: usize = 249;

impl KafkaSourceConfig {
    /// Problems as (field under `source`, message). Pure.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| problems.push((field.to_string(), message));
        let servers: Vec<&str> = self.bootstrap_servers.split(',').map(str::trim).collect();
        if self.bootstrap_servers.trim().is_empty() {
            problem("bootstrap_servers", "must name at least one broker as host:port".into());
        } else {
            for server in servers {
                let port = server.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
                if port.and_then(|port| port.parse::<u16>().ok()).is_none() {
                    problem("bootstrap_servers", format!("{server:?} is not host:port"));
                }
            }
        }
        match (&self.topics, &self.topic_pattern) {
            (None, None) => problem("topics", "set topics or topic_pattern".into()),
            (Some(_), Some(_)) => problem("topic_pattern", "set only one of topics and topic_pattern".into()),
            (Some(topics), None) => {
                if topics.is_empty() {
                    problem("topics", "must name at least one topic".into());
                }
                for (index, topic) in topics.iter().enumerate() {
                    if let Some(reason) = topic_name_problem(topic) {
                        problem(&format!("topics[{index}]"), reason);
                    }
                }
            }
            (None, Some(pattern)) => {
                if let Err(error) = regex::Regex::new(&format!("^(?:{pattern})$")) {
                    problem("topic_pattern", format!("is not a regular expression: {error}"));
                }
            }
        }
        if let StartFrom::AtTimestamp(text) = &self.start
            && parse_timestamp(text).is_none()
        {
            problem("start.at_timestamp", format!("not an RFC 3339 time: {text:?}"));
        }
        match &self.auth {
            AuthConfig::None => {}
            AuthConfig::SaslPlain { username, password } | AuthConfig::SaslScram { username, password, .. } => {
                if username.is_empty() {
                    problem("auth.username", "must not be empty (is its ${VAR} set?)".into());
                }
                if password.is_empty() {
                    problem("auth.password", "must not be empty (is its ${VAR} set?)".into());
                }
            }
            AuthConfig::MskIam { region: Some(region) } => {
                let valid = !region.is_empty() && region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !valid {
                    problem("auth.region", format!("{region:?} is not an AWS region (like eu-west-1)"));
                }
            }
            AuthConfig::MskIam { region: None } => {}
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            problem("tls.key_file", "cert_file and key_file go together (mutual TLS)".into());
        }
        if let Some(group) = &self.commit_offsets_to_group
            && (group.is_empty() || group.len() > 255)
        {
            problem("commit_offsets_to_group", format!("must be 1-255 characters (got {})", group.len()));
        }
        if !(1_000..=3_600_000).contains(&self.metadata_refresh_interval_ms) {
            problem(
                "metadata_refresh_interval_ms",
                format!("must be 1000-3600000 (got {})", self.metadata_refresh_interval_ms),
            );
        }
        if self.client_id.is_empty() {
            problem("client_id", "must not be empty".into());
        }
        if !(1..=2048).contains(&self.max_buffered_mib) {
            problem("max_buffered_mib", format!("must be 1-2048 (got {})", self.max_buffered_mib));
        }
        for key in self.librdkafka_options.keys() {
            if RESERVED_OPTIONS.contains(&key.as_str())
                || RESERVED_PREFIXES.iter().any(|prefix| key.starts_with(prefix))
            {
                problem(
                    &format!("librdkafka_options.{key}"),
                    "is set by spillway (positions, auth and TLS have their own settings)".into(),
                );
            }
        }
        problems
    }

    /// The topic filter: a name list or an anchored pattern. Validated before use.
    pub(crate) fn topic_filter(&self) -> TopicFilter {
        match (&self.topics, &self.topic_pattern) {
            (_, Some(pattern)) => match regex::Regex::new(&format!("^(?:{pattern})$")) {
                Ok(regex) => TopicFilter::Pattern(regex),
                // Validation refuses a bad pattern before a reader starts; match nothing.
                Err(_) => TopicFilter::Names(Vec::new()),
            },
            (topics, None) => TopicFilter::Names(topics.clone().unwrap_or_default()),
        }
    }

    /// The topics as logs and status name them.
    fn display_topics(&self) -> String {
        match (&self.topics, &self.topic_pattern) {
            (_, Some(pattern)) => format!("topics matching {pattern:?}"),
            (Some(topics), None) => topics.join(", "),
            (None, None) => String::new(),
        }
    }

    /// TLS as configured; `msk_iam` without a `tls` block gets the defaults (the system's CAs, the
    /// host name checked): MSK's IAM listeners only speak TLS.
    fn effective_tls(&self) -> Option<TlsConfig> {
        match (&self.tls, &self.auth) {
            (Some(tls), _) => Some(tls.clone()),
            (None, AuthConfig::MskIam { .. }) => Some(TlsConfig {
                ca_file: None,
                cert_file: None,
                key_file: None,
                key_password: None,
                verify_hostname: true,
            }),
            (None, _) => None,
        }
    }

    /// The token maker of an `msk_iam` source, which all its consumers share.
    pub(crate) fn msk_iam(&self) -> Option<Arc<msk_iam::MskIamAuth>> {
        match &self.auth {
            AuthConfig::MskIam { region } => Some(msk_iam::MskIamAuth::new(region.clone())),
            _ => None,
        }
    }

    /// librdkafka's configuration for the reader: everything but the callbacks.
    fn client_properties(&self) -> BTreeMap<String, String> {
        let mut properties: BTreeMap<String, String> = BTreeMap::new();
        let mut set = |key: &str, value: String| {
            properties.insert(key.to_string(), value);
        };
        set("bootstrap.servers", self.bootstrap_servers.clone());
        set("client.id", self.client_id.clone());
        // A group id is needed for commits only; the consumer never joins the group (`assign`).
        set("group.id", self.commit_offsets_to_group.clone().unwrap_or_else(|| "spillway-unused".to_string()));
        set("enable.auto.commit", "false".into());
        set("enable.auto.offset.store", "false".into());
        // A position older than the retention: the oldest record left (what was between is gone).
        set("auto.offset.reset", "earliest".into());
        set("enable.partition.eof", "false".into());
        // Records of aborted transactions are never read.
        set("isolation.level", "read_committed".into());
        set("queued.max.messages.kbytes", (self.max_buffered_mib * 1024).to_string());
        set("topic.metadata.refresh.interval.ms", self.metadata_refresh_interval_ms.to_string());
        let sasl = !matches!(self.auth, AuthConfig::None);
        let tls = self.effective_tls();
        let protocol = match (sasl, tls.is_some()) {
            (false, false) => "plaintext",
            (false, true) => "ssl",
            (true, false) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        set("security.protocol", protocol.into());
        match &self.auth {
            AuthConfig::None => {}
            // The token comes from the client context's `generate_oauth_token` (`msk_iam`).
            AuthConfig::MskIam { .. } => set("sasl.mechanism", "OAUTHBEARER".into()),
            AuthConfig::SaslPlain { username, password } => {
                set("sasl.mechanism", "PLAIN".into());
                set("sasl.username", username.clone());
                set("sasl.password", password.clone());
            }
            AuthConfig::SaslScram { username, password, mechanism } => {
                let name = match mechanism {
                    ScramMechanism::Sha256 => "SCRAM-SHA-256",
                    ScramMechanism::Sha512 => "SCRAM-SHA-512",
                };
                set("sasl.mechanism", name.into());
                set("sasl.username", username.clone());
                set("sasl.password", password.clone());
            }
        }
        if let Some(tls) = &tls {
            // OpenSSL is built into the binary: `probe` finds the system's CA bundle.
            let ca = tls.ca_file.as_ref().map_or_else(|| "probe".to_string(), |path| path.display().to_string());
            set("ssl.ca.location", ca);
            if let Some(cert) = &tls.cert_file {
                set("ssl.certificate.location", cert.display().to_string());
            }
            if let Some(key) = &tls.key_file {
                set("ssl.key.location", key.display().to_string());
            }
            if let Some(password) = &tls.key_password {
                set("ssl.key.password", password.clone());
            }
            let identification = if tls.verify_hostname { "https" } else { "none" };
            set("ssl.endpoint.identification.algorithm", identification.into());
        }
        for (key, value) in &self.librdkafka_options {
            set(key, value.clone());
        }
        properties
    }
}

/// Why `topic` is not a Kafka topic name, if it is not one.
fn topic_name_problem(topic: &str) -> Option<String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Some(format!("must be 1-{MAX_TOPIC_LEN} characters (got {})", topic.len()));
    }
    if topic == "." || topic == ".." {
        return Some(format!("{topic:?} is not a topic name"));
    }
    if !topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Some(format!("{topic:?} has characters Kafka does not allow (letters, digits, '.', '_', '-')"));
    }
    None
}

/// Which topics are read.
#[derive(Debug, Clone)]
pub(crate) enum TopicFilter {
    Names(Vec<String>),
    Pattern(regex::Regex),
}

/// Epoch milliseconds of an RFC 3339 time.
fn parse_timestamp(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> KafkaSourceConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn fields(config: &KafkaSourceConfig) -> Vec<String> {
        config.validate().into_iter().map(|(field, _)| field).collect()
    }

    #[test]
    fn validation_names_every_problem() {
        assert!(fields(&config("{ bootstrap_servers: 'b1:9092,b2:9092', topics: [orders] }")).is_empty());
        assert_eq!(
            fields(&config(
                "{ bootstrap_servers: 'nope', topics: ['', 'a b'], start: { at_timestamp: yesterday }, \
                 metadata_refresh_interval_ms: 5, max_buffered_mib: 0, librdkafka_options: { group.id: g } }"
            )),
            [
                "bootstrap_servers",
                "topics[0]",
                "topics[1]",
                "start.at_timestamp",
                "metadata_refresh_interval_ms",
                "max_buffered_mib",
                "librdkafka_options.group.id"
            ]
        );
        assert_eq!(fields(&config("{ bootstrap_servers: 'b:1' }")), ["topics"]);
        assert_eq!(
            fields(&config("{ bootstrap_servers: 'b:1', topics: [a], topic_pattern: 'a.*' }")),
            ["topic_pattern"]
        );
        assert_eq!(fields(&config("{ bootstrap_servers: 'b:1', topic_pattern: '(' }")), ["topic_pattern"]);
        assert!(fields(&config("{ bootstrap_servers: 'b:9098', topics: [a], auth: { type: msk_iam } }")).is_empty());
        assert_eq!(
            fields(&config(
                "{ bootstrap_servers: 'b:9098', topics: [a], auth: { type: msk_iam, region: 'eu west' }, \
                 librdkafka_options: { sasl.oauthbearer.config: x, enable.sasl.oauthbearer.unsecure.jwt: 'true' } }"
            )),
            [
                "auth.region",
                "librdkafka_options.enable.sasl.oauthbearer.unsecure.jwt",
                "librdkafka_options.sasl.oauthbearer.config"
            ]
        );
        assert_eq!(
            fields(&config(
                "{ bootstrap_servers: 'b:1', topics: [a], auth: { type: sasl_plain, username: u, password: '' } }"
            )),
            ["auth.password"]
        );
    }

    #[test]
    fn start_and_auth_read_their_short_and_long_forms() {
        assert_eq!(config("{ bootstrap_servers: 'b:1', topics: [a] }").start, StartFrom::Latest);
        assert_eq!(config("{ bootstrap_servers: 'b:1', topics: [a], start: earliest }").start, StartFrom::Earliest);
        assert_eq!(
            config("{ bootstrap_servers: 'b:1', topics: [a], start: { at_timestamp: '2026-12-01T00:00:00Z' } }").start,
            StartFrom::AtTimestamp("2026-12-01T00:00:00Z".into())
        );
        assert_eq!(config("{ bootstrap_servers: 'b:1', topics: [a], auth: none }").auth, AuthConfig::None);
        let scram = config(
            "{ bootstrap_servers: 'b:1', topics: [a], auth: { type: sasl_scram, username: u, password: s3cr3t } }",
        );
        assert_eq!(
            scram.auth,
            AuthConfig::SaslScram {
                username: "u".into(),
                password: "s3cr3t".into(),
                mechanism: ScramMechanism::Sha512
            }
        );
        assert!(!format!("{scram:?}").contains("s3cr3t"), "Debug hides the password");
        let properties = scram.client_properties();
        assert_eq!(properties["security.protocol"], "sasl_plaintext");
        assert_eq!(properties["sasl.mechanism"], "SCRAM-SHA-512");
        let bare =
            serde_yaml_ng::from_str::<KafkaSourceConfig>("{ bootstrap_servers: 'b:1', topics: [a], auth: sasl_plain }");
        assert!(bare.unwrap_err().to_string().contains("needs its settings"));
        let unknown = serde_yaml_ng::from_str::<KafkaSourceConfig>(
            "{ bootstrap_servers: 'b:1', topics: [a], auth: { type: kerberos } }",
        );
        assert!(unknown.unwrap_err().to_string().contains("unknown variant `kerberos`"));
        let tls =
            config("{ bootstrap_servers: 'b:1', topics: [a], tls: { ca_file: /etc/ca.pem } }").client_properties();
        assert_eq!(tls["security.protocol"], "ssl");
        assert_eq!(tls["ssl.ca.location"], "/etc/ca.pem");
    }

    /// `msk_iam` is SASL OAUTHBEARER, always over TLS: the system's CAs and the host name checked
    /// unless a `tls` block says otherwise.
    #[test]
    fn msk_iam_is_oauthbearer_over_tls() {
        let iam = config(
            "{ bootstrap_servers: 'b-1.c.kafka.eu-west-1.amazonaws.com:9098', topics: [a], auth: { type: msk_iam, region: eu-west-1 } }",
        );
        assert_eq!(iam.auth, AuthConfig::MskIam { region: Some("eu-west-1".into()) });
        assert!(iam.msk_iam().is_some());
        let properties = iam.client_properties();
        assert_eq!(properties["security.protocol"], "sasl_ssl");
        assert_eq!(properties["sasl.mechanism"], "OAUTHBEARER");
        assert_eq!(properties["ssl.ca.location"], "probe");
        assert_eq!(properties["ssl.endpoint.identification.algorithm"], "https");
        assert!(!properties.contains_key("sasl.username"));
        let with_ca = config(
            "{ bootstrap_servers: 'b:9098', topics: [a], auth: { type: msk_iam }, tls: { ca_file: /etc/ca.pem } }",
        )
        .client_properties();
        assert_eq!(with_ca["security.protocol"], "sasl_ssl");
        assert_eq!(with_ca["ssl.ca.location"], "/etc/ca.pem");
        assert!(config("{ bootstrap_servers: 'b:1', topics: [a] }").msk_iam().is_none());
    }

    #[test]
    fn a_pattern_matches_whole_names() {
        let TopicFilter::Pattern(regex) =
            config("{ bootstrap_servers: 'b:1', topic_pattern: 'logs-.*' }").topic_filter()
        else {
            panic!("a pattern")
        };
        assert!(regex.is_match("logs-web"));
        assert!(!regex.is_match("old-logs-web"));
    }
}
