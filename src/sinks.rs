//! The sink registry: the one list that maps a YAML `sink.type` to a sink crate. Each crate
//! implements [`SinkDescriptor`] for its configuration block (Firehose's ranges and defaults,
//! validation, build, description), so adding a sink is its crate plus one line in
//! [`sink_registry!`]'s list below. An unknown type is a parse error that lists the valid ones; a
//! known type whose cargo feature was left out of this build names that feature.

use serde::Deserialize;
pub use spillway_sink_api::{BuiltSink, DESTINATION_ID, DescribeContext, PartitionKeySource, SinkDescriptor};

/// Declares [`SinkConfig`] (a YAML `sink:` block, tagged by `type`) with one variant per line and
/// [`SinkConfig::descriptor`], so no other code matches on sink types. A line may name the cargo
/// feature that builds it: without that feature its type still parses, into a `not_built` value
/// that refuses it by name and feature rather than serde's bare "unknown variant".
macro_rules! sink_registry {
    ($($(#[cfg(feature = $feature:literal)])? $variant:ident($config:ty) = $type_name:literal,)+) => {
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type")]
        // A left-out type's variant is empty and never built: no size to even out by boxing.
        #[allow(clippy::large_enum_variant)]
        pub enum SinkConfig {
            $(
                $(#[cfg(feature = $feature)])? #[serde(rename = $type_name)] $variant($config),
                $(#[cfg(not(feature = $feature))] #[serde(rename = $type_name)] $variant(not_built::$variant),)?
            )+
        }

        impl SinkConfig {
            /// What this sink type says about itself.
            pub fn descriptor(&self) -> &dyn SinkDescriptor {
                match self {
                    $(
                        $(#[cfg(feature = $feature)])? SinkConfig::$variant(config) => config,
                        $(#[cfg(not(feature = $feature))] SinkConfig::$variant(never) => match never.0 {},)?
                    )+
                }
            }
        }

        /// The sink types this binary was built without: each parses only to refuse itself.
        mod not_built {
            $($(
                #[cfg(not(feature = $feature))]
                #[derive(Debug, Clone)]
                pub struct $variant(pub std::convert::Infallible);

                #[cfg(not(feature = $feature))]
                impl<'de> serde::Deserialize<'de> for $variant {
                    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                        Err(serde::de::Error::custom(concat!(
                            "sink type `", $type_name, "` is not built into this binary (cargo feature `", $feature, "`)"
                        )))
                    }
                }
            )?)+
        }
    };
}

sink_registry! {
    // Objects in a local folder (`file://`) or an S3-compatible bucket (`s3://`).
    S3(spillway_sink_s3::S3SinkConfig) = "s3",
    // Rows in a PostgreSQL table loaded with COPY, or Redshift through S3 manifests.
    #[cfg(feature = "sink-postgres")]
    Postgres(spillway_sink_postgres::PostgresSinkConfig) = "postgres",
    // Documents into OpenSearch / Elasticsearch through `_bulk`, failed ones to an S3 backup.
    #[cfg(feature = "sink-opensearch")]
    Opensearch(spillway_sink_opensearch::OpenSearchSinkConfig) = "opensearch",
    // Firehose's HTTP endpoint delivery protocol (Datadog, New Relic, any receiver of it).
    #[cfg(feature = "sink-http-endpoint")]
    HttpEndpoint(spillway_sink_http_endpoint::HttpEndpointSinkConfig) = "http_endpoint",
    // Appends to an existing Apache Iceberg table (SQL catalog), effectively once per batch.
    #[cfg(feature = "sink-iceberg")]
    Iceberg(spillway_sink_iceberg::IcebergSinkConfig) = "iceberg",
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered type parses by its name; one whose feature this build left out is refused
    /// by name and feature (the subset build in scripts/test.sh runs the refusals).
    #[test]
    fn every_type_parses_by_its_name_or_names_the_feature_it_needs() {
        let blocks = [
            ("s3", "type: s3\nurl: file://./out\n", true, ""),
            (
                "postgres",
                "type: postgres\nurl: postgres://u@localhost/db\ntable: t\nbackup: {sink: {url: file://./b}}\n",
                cfg!(feature = "sink-postgres"),
                "sink-postgres",
            ),
            (
                "opensearch",
                "type: opensearch\nurl: http://localhost:9200\nindex: i\nbackup: {sink: {url: file://./b}}\n",
                cfg!(feature = "sink-opensearch"),
                "sink-opensearch",
            ),
            (
                "http_endpoint",
                "type: http_endpoint\nurl: https://intake.example\nbackup: {sink: {url: file://./b}}\n",
                cfg!(feature = "sink-http-endpoint"),
                "sink-http-endpoint",
            ),
            (
                "iceberg",
                "type: iceberg\ncatalog: {type: sql, uri: 'postgres://u@localhost/db', warehouse: 'file:///tmp/wh'}\ntable: db.t\nbackup: {sink: {url: file://./b}}\n",
                cfg!(feature = "sink-iceberg"),
                "sink-iceberg",
            ),
        ];
        for (name, yaml, built, feature) in blocks {
            let parsed = serde_yaml_ng::from_str::<SinkConfig>(yaml);
            if built {
                let config = parsed.unwrap_or_else(|error| panic!("{name}: {error}"));
                assert_eq!(config.descriptor().type_name(), name);
            } else {
                let error = parsed.expect_err(name).to_string();
                let expected = format!("sink type `{name}` is not built into this binary (cargo feature `{feature}`)");
                assert!(error.contains(&expected), "{error}");
            }
        }
        let unknown = serde_yaml_ng::from_str::<SinkConfig>("type: kafka\n").expect_err("unknown type");
        assert!(
            unknown.to_string().contains("expected one of `s3`, `postgres`, `opensearch`, `http_endpoint`, `iceberg`"),
            "{unknown}"
        );
    }
}
