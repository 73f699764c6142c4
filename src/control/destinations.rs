//! The Firehose destination types the control plane can create: one entry each, naming its
//! `CreateDeliveryStream` / `UpdateDestination` members and the function that turns the
//! destination as received (updates merged in) into a stream configuration. A destination the
//! API should create is its conversion module plus one entry in [`API_DESTINATIONS`]; every
//! other `…DestinationConfiguration` is refused by name.

use serde_json::Value;

use super::{http_endpoint_destination, iceberg_destination, s3_destination};
use crate::config::{Config, SourceConfig, StreamConfig};
use crate::sources::direct_put::wire::ApiError;

/// Turns a destination object into the stream's configuration: `(config, stream name,
/// destination, member path for messages, source)`.
pub type ToStreamConfig = fn(&Config, &str, &Value, &str, SourceConfig) -> Result<StreamConfig, ApiError>;

pub struct ApiDestination {
    /// Kept in the catalog record (`destination_type`), so a restart reads the destination back
    /// with the same conversion.
    pub name: &'static str,
    /// `CreateDeliveryStream` members of this type.
    pub create_members: &'static [&'static str],
    /// `UpdateDestination` members of this type.
    pub update_members: &'static [&'static str],
    pub stream_config: ToStreamConfig,
}

pub const API_DESTINATIONS: &[ApiDestination] = &[
    ApiDestination {
        name: "ExtendedS3",
        create_members: &["ExtendedS3DestinationConfiguration", "S3DestinationConfiguration"],
        update_members: &["ExtendedS3DestinationUpdate", "S3DestinationUpdate"],
        stream_config: s3_destination::stream_config,
    },
    // Built only with the `http_endpoint` sink (`sink-http-endpoint`); without it the stream
    // configuration names the missing feature.
    ApiDestination {
        name: "HttpEndpoint",
        create_members: &["HttpEndpointDestinationConfiguration"],
        update_members: &["HttpEndpointDestinationUpdate"],
        stream_config: http_endpoint_destination::stream_config,
    },
    // Built only with the `iceberg` sink (`sink-iceberg`), as above.
    ApiDestination {
        name: "Iceberg",
        create_members: &["IcebergDestinationConfiguration"],
        update_members: &["IcebergDestinationUpdate"],
        stream_config: iceberg_destination::stream_config,
    },
];

/// The type a catalog record names; records written before the field existed are S3.
pub fn by_name(name: Option<&str>) -> Option<&'static ApiDestination> {
    let name = name.unwrap_or("ExtendedS3");
    API_DESTINATIONS.iter().find(|destination| destination.name == name)
}

pub fn by_create_member(member: &str) -> Option<&'static ApiDestination> {
    API_DESTINATIONS.iter().find(|destination| destination.create_members.contains(&member))
}

/// Every `CreateDeliveryStream` destination member spillway accepts, for messages.
pub fn create_members() -> String {
    API_DESTINATIONS
        .iter()
        .flat_map(|destination| destination.create_members.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A member's path in validation messages, as AWS writes it (`extendedS3DestinationConfiguration`).
pub fn member_path(member: &str) -> String {
    let mut chars = member.chars();
    chars.next().map(|first| first.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_find_their_type_and_paths_read_as_aws_writes_them() {
        assert_eq!(by_create_member("S3DestinationConfiguration").map(|d| d.name), Some("ExtendedS3"));
        assert_eq!(by_create_member("HttpEndpointDestinationConfiguration").map(|d| d.name), Some("HttpEndpoint"));
        assert!(by_create_member("RedshiftDestinationConfiguration").is_none());
        assert_eq!(by_name(None).map(|d| d.name), Some("ExtendedS3"));
        assert_eq!(member_path("ExtendedS3DestinationUpdate"), "extendedS3DestinationUpdate");
    }
}
