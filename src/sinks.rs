//! The sink registry: the one list that maps a YAML `sink.type` to a sink crate. Each crate
//! implements [`SinkDescriptor`] for its configuration block (Firehose's ranges and defaults,
//! validation, build, description), so adding a sink is its crate plus one line in
//! [`sink_registry!`]'s list below. An unknown type is a parse error that lists the valid ones.

use serde::Deserialize;
pub use spillway_sink_api::{BuiltSink, DESTINATION_ID, DescribeContext, PartitionKeySource, SinkDescriptor};

/// Declares [`SinkConfig`] (a YAML `sink:` block, tagged by `type`) with one variant per line and
/// [`SinkConfig::descriptor`], so no other code matches on sink types.
macro_rules! sink_registry {
    ($($(#[cfg($cfg:meta)])? $variant:ident($config:ty) = $type_name:literal,)+) => {
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type")]
        pub enum SinkConfig {
            $($(#[cfg($cfg)])? #[serde(rename = $type_name)] $variant($config),)+
        }

        impl SinkConfig {
            /// What this sink type says about itself.
            pub fn descriptor(&self) -> &dyn SinkDescriptor {
                match self {
                    $($(#[cfg($cfg)])? SinkConfig::$variant(config) => config,)+
                }
            }
        }
    };
}

sink_registry! {
    // Objects in a local folder (`file://`) or an S3-compatible bucket (`s3://`).
    S3(spillway_sink_s3::S3SinkConfig) = "s3",
    // Rows in a PostgreSQL table loaded with COPY, or Redshift through S3 manifests.
    Postgres(spillway_sink_postgres::PostgresSinkConfig) = "postgres",
    // Documents into OpenSearch / Elasticsearch through `_bulk`, failed ones to an S3 backup.
    Opensearch(spillway_sink_opensearch::OpenSearchSinkConfig) = "opensearch",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_by_its_name_and_names_itself() {
        let blocks = [
            ("s3", "type: s3\nurl: file://./out\n"),
            ("postgres", "type: postgres\nurl: postgres://u@localhost/db\ntable: t\ns3_backup: {url: file://./b}\n"),
            (
                "opensearch",
                "type: opensearch\nurl: http://localhost:9200\nindex: i\nbackup: {sink: {url: file://./b}}\n",
            ),
        ];
        for (name, yaml) in blocks {
            let config: SinkConfig = serde_yaml_ng::from_str(yaml).unwrap_or_else(|error| panic!("{name}: {error}"));
            assert_eq!(config.descriptor().type_name(), name);
        }
        let unknown = serde_yaml_ng::from_str::<SinkConfig>("type: kafka\n").expect_err("unknown type");
        assert!(unknown.to_string().contains("expected one of `s3`, `postgres`, `opensearch`"), "{unknown}");
    }
}
