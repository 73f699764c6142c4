//! The Firehose control plane: `CreateDeliveryStream`, `DescribeDeliveryStream`,
//! `ListDeliveryStreams`, `UpdateDestination`, `DeleteDeliveryStream`, the tag operations and
//! `Start/StopDeliveryStreamEncryption`, with Firehose's request and response shapes (botocore
//! `firehose/2015-08-04/service-2.json`) and error types, answered in the wire protocol of
//! [`crate::sources::direct_put::wire`] (the Firehose endpoint hands these operations here).
//! [`destinations`] lists the destination types the API creates, each with the module that turns
//! its shapes into a `StreamConfig` ([`s3_destination`], [`http_endpoint_destination`], [`iceberg_destination`]); [`processors`] renders a stream's
//! processing back into Firehose's `ProcessingConfiguration`; [`catalog`]
//! keeps each stream's record behind the [`catalog::Catalog`] trait; in cluster mode [`follow`]
//! applies other nodes' changes of the shared catalog here. The app builds [`Control`]
//! (the stream lifecycle and the catalog) and plugs it into the Firehose endpoint as its
//! [`ControlPlane`] port, so the data plane never imports this module.
//!
//! - Streams created here are built by [`crate::streams::Lifecycle`], the code YAML streams run
//!   through, and persisted in the catalog, so they survive a restart. YAML streams are read-only
//!   here (`ResourceInUseException`).
//! - Changes run one at a time (the lifecycle's control lock) in a spawned task: a client that
//!   disconnects, or the request deadline, cannot leave a change half done.
//! - Delete: the stream stops taking records at once (`DELETING`), delivers everything it
//!   accepted, then its files and catalog entry are removed and describe answers
//!   `ResourceNotFoundException`; its numbering is kept, so a stream created again under the
//!   name never repeats a batch id. With `AllowForceDelete` it stops without delivering; a WAL that
//!   still holds undelivered records (forced, or a put racing the delete) is moved to
//!   `data_dir/deleted-streams/` instead of being removed, so nothing vanishes silently.
//! - Encryption: status transitions are recorded and reported; the WAL is not encrypted (data at
//!   rest is the disk's business) — out of scope.
//!
//! Must not: append records or deliver; import the app.

pub mod catalog;
pub mod destinations;
pub mod follow;
pub mod http_endpoint_destination;
pub mod iceberg_destination;
pub mod msk_source;
pub mod processors;
pub mod s3_destination;

use std::sync::Arc;

use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Config, StreamConfig};
use crate::sinks::{DESTINATION_ID, DescribeContext};
use crate::sources::direct_put::ControlPlane;
use crate::sources::direct_put::validation::Violations;
use crate::sources::direct_put::wire::{ApiError, ok_json, parse};
use crate::sources::{Ingest, SourceDescribeContext, StreamIngest};
use crate::streams::{Lifecycle, StopMode, StreamError};
use catalog::{Catalog, EncryptionRecord, StreamOrigin, StreamRecord, StreamStatus};

/// Operations answered here.
pub const OPERATIONS: &[&str] = &[
    "CreateDeliveryStream",
    "DeleteDeliveryStream",
    "DescribeDeliveryStream",
    "ListDeliveryStreams",
    "UpdateDestination",
    "ListTagsForDeliveryStream",
    "TagDeliveryStream",
    "UntagDeliveryStream",
    "StartDeliveryStreamEncryption",
    "StopDeliveryStreamEncryption",
];

/// Firehose's tag limit per stream.
const MAX_TAGS: usize = 50;
const DELIVERY_STREAM_TYPES: &[&str] = &["DirectPut", "KinesisStreamAsSource", "MSKAsSource", "DatabaseAsSource"];
const KEY_TYPES: &[&str] = &["AWS_OWNED_CMK", "CUSTOMER_MANAGED_CMK"];
/// The control plane as the Firehose endpoint calls it: the stream lifecycle it starts, restarts
/// and stops streams through, and the catalog it keeps their records in.
#[derive(Clone)]
pub struct Control {
    pub lifecycle: Arc<Lifecycle>,
    pub catalog: Arc<dyn Catalog>,
}

#[async_trait::async_trait]
impl ControlPlane for Control {
    fn answers(&self, operation: &str) -> bool {
        OPERATIONS.contains(&operation)
    }

    async fn call(&self, ingest: &Arc<Ingest>, operation: &str, body: &[u8]) -> Result<Response, ApiError> {
        match operation {
            "DescribeDeliveryStream" => describe(ingest, body),
            "ListDeliveryStreams" => list(ingest, body),
            "ListTagsForDeliveryStream" => list_tags(ingest, body),
            // Changes: serialised, and run to completion even if the client goes away.
            _ => {
                let (control, ingest) = (self.clone(), ingest.clone());
                let operation = operation.to_string();
                let body = body.to_vec();
                tokio::spawn(async move { control.change(&ingest, &operation, &body).await })
                    .await
                    .map_err(|join| ApiError::internal(format!("the {join} control task failed")))?
            }
        }
    }
}

impl Control {
    async fn change(&self, ingest: &Arc<Ingest>, operation: &str, body: &[u8]) -> Result<Response, ApiError> {
        let _one_at_a_time = self.lifecycle.control.lock().await;
        // Cluster mode: start from the catalog as it is now, not as this node last followed it.
        if self.catalog.shared() {
            follow::sync(self, ingest).await.map_err(catalog_error)?;
        }
        match operation {
            "CreateDeliveryStream" => create(self, ingest, body).await,
            "DeleteDeliveryStream" => delete(self, ingest, body).await,
            "UpdateDestination" => update_destination(self, ingest, body).await,
            "TagDeliveryStream" => tag(self, ingest, body).await,
            "UntagDeliveryStream" => untag(self, ingest, body).await,
            "StartDeliveryStreamEncryption" => set_encryption(self, ingest, body, true).await,
            "StopDeliveryStreamEncryption" => set_encryption(self, ingest, body, false).await,
            other => Err(ApiError::internal(format!("operation {other} has no handler"))),
        }
    }

    /// Replace `current` (the record this change started from) by `new` in the catalog, or
    /// `ConcurrentModificationException` if it changed meanwhile (through another node).
    async fn save(&self, current: &StreamRecord, new: &StreamRecord) -> Result<(), ApiError> {
        let replaced = self.catalog.replace_api_record(current, new).await.map_err(catalog_error)?;
        if !replaced {
            return Err(ApiError::concurrent_modification(format!(
                "Firehose {} was changed through another node meanwhile; describe it and try again",
                new.name
            )));
        }
        Ok(())
    }
}

/// A catalog that cannot be reached is an outage the client retries; anything else is ours.
fn catalog_error(error: catalog::CatalogError) -> ApiError {
    match error {
        catalog::CatalogError::Coordinator(_) => ApiError::service_unavailable(error.to_string()),
        catalog::CatalogError::Rejected(_) => ApiError::invalid_argument(error.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

/// The stream configuration of an API-created stream's catalog record (at start-up).
pub fn stream_config_for(config: &Config, record: &StreamRecord) -> Result<StreamConfig, String> {
    let destination = record.destination.as_ref().ok_or("the catalog record has no destination")?;
    let kind = destinations::by_name(record.destination_type.as_deref())
        .ok_or_else(|| format!("the catalog record's destination type {:?} is unknown", record.destination_type))?;
    let describe_error = |error: ApiError| format!("{}: {}", error.code(), error.message());
    let source = stream_source(config, record.source.as_ref()).map_err(describe_error)?;
    let member = destinations::member_path(kind.create_members[0]);
    (kind.stream_config)(config, &record.name, destination, &member, source).map_err(describe_error)
}

/// The source of an API-created stream from what its request said: Direct PUT, a Kinesis stream
/// (`KinesisStreamSourceConfiguration`) or an MSK topic (`MSKSourceConfiguration`).
fn stream_source(config: &Config, given: Option<&Value>) -> Result<crate::sources::SourceConfig, ApiError> {
    match given {
        Some(msk) if msk.get("MSKClusterARN").is_some() => msk_source::source_config(config, msk),
        kinesis => s3_destination::source_config(kinesis),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Persist an API stream's record in the catalog.
fn stream_name_of(body: &Value) -> Result<String, ApiError> {
    let name = body.get("DeliveryStreamName").and_then(Value::as_str);
    let mut violations = Violations::new();
    violations.required(name, "deliveryStreamName");
    if let Some(name) = name {
        violations.stream_name(name, "deliveryStreamName");
    }
    violations.finish()?;
    Ok(name.unwrap_or_default().to_string())
}

/// The stream, or `ResourceNotFoundException`.
fn existing(ingest: &Ingest, name: &str) -> Result<Arc<StreamIngest>, ApiError> {
    ingest.stream(name).ok_or_else(|| ApiError::not_found(name, ingest))
}

/// An API-created stream that may be changed, or the reason it may not.
fn changeable(ingest: &Ingest, name: &str) -> Result<Arc<StreamIngest>, ApiError> {
    let stream = existing(ingest, name)?;
    if stream.record.origin == StreamOrigin::Yaml {
        return Err(ApiError::resource_in_use(format!(
            "Firehose {name} is defined in spillway's configuration file and is read-only to the API; change it there."
        )));
    }
    if stream.record.status != StreamStatus::Active {
        return Err(ApiError::resource_in_use(format!(
            "Firehose {name} under account {} is in the {} state.",
            ingest.config.server.account_id,
            stream.record.status.as_str()
        )));
    }
    Ok(stream)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagIn {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

fn parse_tags(value: Option<&Value>, member: &str, required: bool) -> Result<Vec<(String, String)>, ApiError> {
    let Some(value) = value else {
        if required {
            let mut violations = Violations::new();
            violations.required(None::<&()>, member);
            violations.finish()?;
        }
        return Ok(Vec::new());
    };
    let tags: Vec<TagIn> = serde_json::from_value(value.clone())
        .map_err(|error| ApiError::serialization(format!("malformed {member}: {error}")))?;
    let mut violations = Violations::new();
    violations.list_length(tags.len(), member, 1, MAX_TAGS);
    for (index, tag) in tags.iter().enumerate() {
        let at = format!("{member}.{}.member", index + 1);
        violations.length(&tag.key, &format!("{at}.key"), 1, 128);
        violations.pattern(
            &tag.key,
            &format!("{at}.key"),
            "^(?!aws:)[\\p{L}\\p{Z}\\p{N}_.:\\/=+\\-@%]*$",
            valid_tag_text(&tag.key) && !tag.key.starts_with("aws:"),
        );
        if let Some(value) = &tag.value {
            violations.length(value, &format!("{at}.value"), 0, 256);
            violations.pattern(
                value,
                &format!("{at}.value"),
                "^[\\p{L}\\p{Z}\\p{N}_.:\\/=+\\-@%]*$",
                valid_tag_text(value),
            );
        }
    }
    violations.finish()?;
    Ok(tags.into_iter().map(|tag| (tag.key, tag.value.unwrap_or_default())).collect())
}

/// Letters, separators, numbers and `_.:/=+-@%`, as the model's tag patterns allow.
fn valid_tag_text(text: &str) -> bool {
    text.chars().all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@%".contains(c))
}

async fn create(control: &Control, ingest: &Arc<Ingest>, body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = parse(body)?;
    let name = stream_name_of(&request)?;
    let stream_type = request.get("DeliveryStreamType").and_then(Value::as_str).unwrap_or("DirectPut");
    let mut violations = Violations::new();
    violations.one_of(stream_type, "deliveryStreamType", DELIVERY_STREAM_TYPES);
    violations.finish()?;
    let tags = parse_tags(request.get("Tags"), "tags", false)?;
    let encryption = match request.get("DeliveryStreamEncryptionConfigurationInput") {
        Some(input) => Some(encryption_input(input)?),
        None => None,
    };
    let kinesis_source = request.get("KinesisStreamSourceConfiguration").cloned();
    let msk_source = request.get("MSKSourceConfiguration").cloned();
    match (stream_type, &kinesis_source, &msk_source) {
        ("DirectPut", None, None) | ("KinesisStreamAsSource", Some(_), None) | ("MSKAsSource", None, Some(_)) => {}
        ("DirectPut" | "MSKAsSource", Some(_), _) => {
            return Err(ApiError::invalid_argument(
                "KinesisStreamSourceConfiguration is only allowed with DeliveryStreamType KinesisStreamAsSource",
            ));
        }
        ("DirectPut" | "KinesisStreamAsSource", _, Some(_)) => {
            return Err(ApiError::invalid_argument(
                "MSKSourceConfiguration is only allowed with DeliveryStreamType MSKAsSource",
            ));
        }
        ("KinesisStreamAsSource", None, None) => {
            return Err(ApiError::invalid_argument(
                "KinesisStreamSourceConfiguration is required with DeliveryStreamType KinesisStreamAsSource",
            ));
        }
        ("MSKAsSource", None, None) => {
            return Err(ApiError::invalid_argument(
                "MSKSourceConfiguration is required with DeliveryStreamType MSKAsSource",
            ));
        }
        (other, _, _) => {
            return Err(ApiError::invalid_argument(format!(
                "DeliveryStreamType {other} is not supported by spillway (DirectPut, KinesisStreamAsSource and MSKAsSource are)"
            )));
        }
    }
    if stream_type == "KinesisStreamAsSource" && encryption.is_some() {
        return Err(refuse_encryption_for_kinesis_source());
    }
    let given_source = kinesis_source.or(msk_source);
    let source = stream_source(&ingest.config, given_source.as_ref())?;
    let given: Vec<&str> = request
        .as_object()
        .map(|members| {
            members.keys().filter(|key| key.ends_with("DestinationConfiguration")).map(String::as_str).collect()
        })
        .unwrap_or_default();
    let (destination_key, kind) = match given.as_slice() {
        [] => {
            return Err(ApiError::invalid_argument(format!(
                "a destination configuration is required ({})",
                destinations::create_members()
            )));
        }
        [one] => match destinations::by_create_member(one) {
            Some(kind) => (*one, kind),
            None => {
                return Err(ApiError::invalid_argument(format!(
                    "{one} is not supported by spillway; supported: {}",
                    destinations::create_members()
                )));
            }
        },
        several => {
            return Err(ApiError::invalid_argument(format!(
                "only one destination configuration may be given (got {})",
                several.join(", ")
            )));
        }
    };
    let destination = request.get(destination_key).cloned().unwrap_or(Value::Null);
    if let Some(existing) = ingest.stream(&name) {
        return Err(ApiError::resource_in_use(format!(
            "Firehose {name} under account {} already exists with status {}.",
            ingest.config.server.account_id,
            existing.record.status.as_str()
        )));
    }
    let stream_config =
        (kind.stream_config)(&ingest.config, &name, &destination, &destinations::member_path(destination_key), source)?;

    let mut record = StreamRecord::new(&name, StreamOrigin::Api, now_ms());
    record.source = given_source;
    record.tags = tags.into_iter().collect();
    record.encryption = encryption.unwrap_or_default();
    record.destination = Some(destination);
    record.destination_type = Some(kind.name.to_string());
    // Described as CREATING until the build below is done. Inserted, not saved: in cluster mode
    // another node may have created the name a moment ago and not be running it here yet.
    record.status = StreamStatus::Creating;
    let inserted = control.catalog.insert_api_record(&record).await.map_err(catalog_error)?;
    if !inserted {
        return Err(ApiError::resource_in_use(format!(
            "Firehose {name} under account {} already exists.",
            ingest.config.server.account_id
        )));
    }
    let mut started = match control.lifecycle.start(&stream_config, record.clone()).await {
        Ok(started) => started,
        Err(error) => {
            let _ = control.catalog.remove_api_record(&record).await;
            return Err(ApiError::invalid_argument(format!("cannot create {name}: {error}")));
        }
    };
    // Saved without comparing: the only other writer of a CREATING record is a node promoting it
    // at start-up, which writes this very record.
    record.status = StreamStatus::Active;
    if let Err(error) = control.catalog.save_api_record(&record).await {
        // Not created after all: nothing may keep running for it.
        let _ = control.lifecycle.remove(&name, StopMode::Abort).await;
        let _ = control.catalog.remove_api_record(&record).await;
        return Err(catalog_error(error));
    }
    started.record = Arc::new(record.clone());
    ingest.put_stream(&name, started);
    tracing::info!(stream = %name, "delivery stream created through the api");
    Ok(ok_json(json!({ "DeliveryStreamARN": stream_arn(ingest, &name) })))
}

fn stream_arn(ingest: &Ingest, name: &str) -> String {
    let server = &ingest.config.server;
    format!("arn:aws:firehose:{}:{}:deliverystream/{name}", server.region, server.account_id)
}

fn encryption_input(input: &Value) -> Result<EncryptionRecord, ApiError> {
    let key_type = input.get("KeyType").and_then(Value::as_str);
    let key_arn = input.get("KeyARN").and_then(Value::as_str);
    let mut violations = Violations::new();
    violations.required(key_type, "deliveryStreamEncryptionConfigurationInput.keyType");
    if let Some(key_type) = key_type {
        violations.one_of(key_type, "deliveryStreamEncryptionConfigurationInput.keyType", KEY_TYPES);
    }
    violations.finish()?;
    let key_type = key_type.unwrap_or_default();
    match (key_type, key_arn) {
        ("CUSTOMER_MANAGED_CMK", None) => {
            Err(ApiError::invalid_argument("KeyARN is required when KeyType is CUSTOMER_MANAGED_CMK"))
        }
        ("AWS_OWNED_CMK", Some(_)) => {
            Err(ApiError::invalid_argument("KeyARN must not be given when KeyType is AWS_OWNED_CMK"))
        }
        _ => Ok(EncryptionRecord {
            status: "ENABLED".to_string(),
            key_type: Some(key_type.to_string()),
            key_arn: key_arn.map(str::to_string),
        }),
    }
}

fn describe(ingest: &Ingest, body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = parse(body)?;
    let name = stream_name_of(&request)?;
    if let Some(limit) = request.get("Limit").and_then(Value::as_i64) {
        let mut violations = Violations::new();
        violations.range(limit, "limit", 1, 10_000);
        violations.finish()?;
    }
    let stream = existing(ingest, &name)?;
    Ok(ok_json(json!({ "DeliveryStreamDescription": description(ingest, &stream) })))
}

/// `DeliveryStreamDescription` as Firehose returns it.
fn description(ingest: &Ingest, stream: &StreamIngest) -> Value {
    let record = &stream.record;
    let destination = record.destination.as_ref();
    let member = |key: &str| destination.and_then(|destination| destination.get(key));
    let config = &stream.config;
    let context = DescribeContext {
        account_id: &ingest.config.server.account_id,
        role_arn: member("RoleARN").and_then(Value::as_str),
        bucket_arn: member("BucketARN").and_then(Value::as_str),
        cloud_watch_logging_options: member("CloudWatchLoggingOptions"),
        buffer_size_mib: config.buffering.size_mib,
        buffer_interval_seconds: config.buffering.interval_seconds,
        retry_duration_seconds: config.retry_duration_seconds(),
        processing_configuration: processors::processing_configuration(config),
        dynamic_partitioning_configuration: config.processing.dynamic_partitioning.as_ref().map(|dynamic| {
            json!({
                "Enabled": dynamic.enabled,
                "RetryOptions": { "DurationInSeconds": dynamic.retry_duration_seconds },
            })
        }),
    };
    let mut encryption = json!({ "Status": record.encryption.status });
    if let Some(key_type) = &record.encryption.key_type {
        encryption["KeyType"] = json!(key_type);
    }
    if let Some(key_arn) = &record.encryption.key_arn {
        encryption["KeyARN"] = json!(key_arn);
    }
    let mut description = json!({
        "DeliveryStreamName": record.name,
        "DeliveryStreamARN": stream_arn(ingest, &record.name),
        "DeliveryStreamStatus": record.status.as_str(),
        "DeliveryStreamEncryptionConfiguration": encryption,
        "DeliveryStreamType": stream.config.source.descriptor().delivery_stream_type(),
        "VersionId": record.version_id.to_string(),
        "CreateTimestamp": record.create_timestamp_ms as f64 / 1000.0,
        "LastUpdateTimestamp": record.last_update_timestamp_ms as f64 / 1000.0,
        "Destinations": [config.sink.descriptor().describe_destination(&context)],
        "HasMoreDestinations": false,
    });
    if let Some(members) = description.as_object_mut() {
        let given = |member: &str| record.source.as_ref().and_then(|source| source.get(member)).and_then(Value::as_str);
        let role_arn = given("RoleARN");
        members.extend(config.source.descriptor().describe_source(&SourceDescribeContext {
            account_id: &ingest.config.server.account_id,
            region: &ingest.config.server.region,
            role_arn,
            delivery_start_ms: record.create_timestamp_ms,
        }));
        // An API-created Kinesis-sourced stream is described with the ARN it was given.
        if let (Some(stream_arn), Some(source)) = (
            given("KinesisStreamARN"),
            members.get_mut("Source").and_then(|source| source.get_mut("KinesisStreamSourceDescription")),
        ) {
            source["KinesisStreamARN"] = json!(stream_arn);
        }
        // An MSK-sourced one with the authentication configuration it was given (its role).
        if let (Some(authentication), Some(source)) = (
            record.source.as_ref().and_then(|source| source.get("AuthenticationConfiguration")),
            members.get_mut("Source").and_then(|source| source.get_mut("MSKSourceDescription")),
        ) {
            source["AuthenticationConfiguration"] = authentication.clone();
        }
    }
    // An API stream's processors come back as they were sent: spillway's own rendering of a
    // `MetadataExtractionQuery` (key order, spacing) would show Terraform a change on every plan.
    if let Some(sent) = member("ProcessingConfiguration")
        && let Some(destination) = description.pointer_mut("/Destinations/0").and_then(Value::as_object_mut)
    {
        for described in destination.values_mut().filter_map(Value::as_object_mut) {
            if described.contains_key("ProcessingConfiguration") {
                described.insert("ProcessingConfiguration".to_string(), sent.clone());
            }
        }
    }
    description
}

/// AWS refuses server-side encryption for a stream that reads a Kinesis data stream (the data
/// stream's own encryption applies).
fn refuse_encryption_for_kinesis_source() -> ApiError {
    ApiError::invalid_argument(
        "Server-side encryption is not supported for delivery streams with DeliveryStreamType KinesisStreamAsSource; \
         encrypt the Kinesis data stream instead",
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ListRequest {
    limit: Option<i64>,
    delivery_stream_type: Option<String>,
    exclusive_start_delivery_stream_name: Option<String>,
}

fn list(ingest: &Ingest, body: &[u8]) -> Result<Response, ApiError> {
    let request: ListRequest = parse(body)?;
    let limit = request.limit.unwrap_or(10);
    let mut violations = Violations::new();
    violations.range(limit, "limit", 1, 10_000);
    if let Some(kind) = &request.delivery_stream_type {
        violations.one_of(kind, "deliveryStreamType", DELIVERY_STREAM_TYPES);
    }
    if let Some(start) = &request.exclusive_start_delivery_stream_name {
        violations.stream_name(start, "exclusiveStartDeliveryStreamName");
    }
    violations.finish()?;
    let type_matches = |name: &String| {
        let Some(wanted) = request.delivery_stream_type.as_deref() else {
            return true;
        };
        ingest.stream(name).is_some_and(|stream| stream.config.source.descriptor().delivery_stream_type() == wanted)
    };
    let names: Vec<String> = ingest
        .stream_names()
        .into_iter()
        .filter(type_matches)
        .filter(|name| request.exclusive_start_delivery_stream_name.as_ref().is_none_or(|start| name > start))
        .collect();
    let limit = limit as usize;
    let has_more = names.len() > limit;
    let page: Vec<String> = names.into_iter().take(limit).collect();
    Ok(ok_json(json!({ "DeliveryStreamNames": page, "HasMoreDeliveryStreams": has_more })))
}

async fn update_destination(control: &Control, ingest: &Arc<Ingest>, body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = parse(body)?;
    let name = stream_name_of(&request)?;
    let version = request.get("CurrentDeliveryStreamVersionId").and_then(Value::as_str);
    let destination_id = request.get("DestinationId").and_then(Value::as_str);
    let mut violations = Violations::new();
    violations.required(version, "currentDeliveryStreamVersionId");
    violations.required(destination_id, "destinationId");
    if let Some(version) = version {
        violations.length(version, "currentDeliveryStreamVersionId", 1, 50);
        violations.pattern(
            version,
            "currentDeliveryStreamVersionId",
            "[0-9]+",
            version.chars().all(|c| c.is_ascii_digit()),
        );
    }
    violations.finish()?;
    let (version, destination_id) = (version.unwrap_or_default(), destination_id.unwrap_or_default());
    let stream = changeable(ingest, &name)?;
    let current = stream.record.version_id.to_string();
    if version != current {
        return Err(ApiError::concurrent_modification(format!(
            "Cannot update firehose: {name} since the current version id: {current} and specified version id: {version} do not match"
        )));
    }
    if destination_id != DESTINATION_ID {
        return Err(ApiError::invalid_argument(format!(
            "Destination Id {destination_id} not found for Firehose {name}; its destination is {DESTINATION_ID}"
        )));
    }
    let updates: Vec<&str> = request
        .as_object()
        .map(|members| members.keys().filter(|key| key.ends_with("DestinationUpdate")).map(String::as_str).collect())
        .unwrap_or_default();
    let kind = destinations::by_name(stream.record.destination_type.as_deref())
        .ok_or_else(|| ApiError::internal(format!("{name}'s destination type is unknown")))?;
    let (update, update_member) = match updates.as_slice() {
        [] => (Value::Object(serde_json::Map::new()), kind.update_members[0]),
        [key] if kind.update_members.contains(key) => (request.get(*key).cloned().unwrap_or(Value::Null), *key),
        [other] => {
            return Err(ApiError::invalid_argument(format!(
                "{other} is not supported by spillway: this stream's destination is {} ({})",
                kind.name,
                kind.update_members.join(", ")
            )));
        }
        several => {
            return Err(ApiError::invalid_argument(format!(
                "only one destination update may be given (got {})",
                several.join(", ")
            )));
        }
    };
    let stored = stream.record.destination.clone().unwrap_or(Value::Null);
    let merged = s3_destination::merge_update(&stored, &update);
    let source = stream_source(&ingest.config, stream.record.source.as_ref())?;
    let member = destinations::member_path(update_member);
    let stream_config = (kind.stream_config)(&ingest.config, &name, &merged, &member, source)?;
    let record = StreamRecord {
        version_id: stream.record.version_id + 1,
        last_update_timestamp_ms: now_ms(),
        destination: Some(merged),
        ..StreamRecord::clone(&stream.record)
    };
    control.save(&stream.record, &record).await?;
    // The old loop delivers what it holds under the old destination; the new one takes over.
    let restarted = match control.lifecycle.restart(&stream_config, record.clone()).await {
        Ok(restarted) => restarted,
        Err(error) => {
            // Back to the definition that runs: in the catalog (so the next change compares with
            // what is described) and in the delivery loop.
            let _ = control.catalog.replace_api_record(&record, &stream.record).await;
            match control.lifecycle.restart(&stream.config, StreamRecord::clone(&stream.record)).await {
                Ok(previous) => ingest.put_stream(&name, previous),
                Err(again) => {
                    tracing::error!(stream = %name, error = %again, "the previous destination does not start again either")
                }
            }
            return Err(ApiError::internal(format!(
                "cannot restart {name} with its new destination: {error}; it keeps its previous one"
            )));
        }
    };
    ingest.put_stream(&name, restarted);
    tracing::info!(stream = %name, version_id = stream.record.version_id + 1, "destination updated through the api");
    Ok(ok_json(json!({})))
}

async fn delete(control: &Control, ingest: &Arc<Ingest>, body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = parse(body)?;
    let name = stream_name_of(&request)?;
    let force = request.get("AllowForceDelete").and_then(Value::as_bool).unwrap_or(false);
    let stream = existing(ingest, &name)?;
    if stream.record.origin == StreamOrigin::Yaml {
        return Err(ApiError::resource_in_use(format!(
            "Firehose {name} is defined in spillway's configuration file and is read-only to the API; remove it there."
        )));
    }
    if stream.record.status == StreamStatus::Deleting {
        return Ok(ok_json(json!({})));
    }
    let record = StreamRecord { status: StreamStatus::Deleting, ..StreamRecord::clone(&stream.record) };
    control.save(&stream.record, &record).await?;
    ingest.update_record(&name, record);
    spawn_delete(control.clone(), ingest.clone(), name, if force { StopMode::Abort } else { StopMode::Drain }, true);
    Ok(ok_json(json!({})))
}

/// Finish a delete that a restart interrupted (the catalog says `DELETING`).
pub fn resume_delete(control: Control, ingest: Arc<Ingest>, name: String) {
    spawn_delete(control, ingest, name, StopMode::Drain, true);
}

/// Delete a stream here because another node deleted it (cluster mode): deliver what this node
/// accepted for it, remove its files; the catalog record is the deleting node's to remove.
pub fn follow_delete(control: Control, ingest: Arc<Ingest>, name: String) {
    spawn_delete(control, ingest, name, StopMode::Drain, false);
}

/// `forget_record`: remove the catalog record once done (the node that was asked to delete).
fn spawn_delete(control: Control, ingest: Arc<Ingest>, name: String, mode: StopMode, forget_record: bool) {
    tokio::spawn(async move {
        if let Err(error) = finish_delete(&control, &ingest, &name, mode, forget_record).await {
            tracing::error!(stream = %name, %error, "delete did not finish; the stream stays DELETING and is retried at the next start");
        }
    });
}

#[derive(Debug, thiserror::Error)]
enum DeleteError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("cannot remove {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("cannot keep the stream's numbering: {0}")]
    Numbering(#[from] crate::checkpoint::CheckpointError),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("refusing to remove files of {0:?}: the name does not stay inside data_dir/streams")]
    OutsideOwnFolder(String),
}

async fn finish_delete(
    control: &Control,
    ingest: &Arc<Ingest>,
    name: &str,
    mode: StopMode,
    forget_record: bool,
) -> Result<(), DeleteError> {
    let (lifecycle, catalog) = (&control.lifecycle, &control.catalog);
    let record = ingest.stream(name).map(|stream| StreamRecord::clone(&stream.record));
    let removed = lifecycle.remove(name, mode).await?;
    let _one_at_a_time = lifecycle.control.lock().await;
    let data_dir = ingest.config.data_dir.clone();
    let stream_dir = crate::streams::owned_stream_dir(&data_dir, name)
        .ok_or_else(|| DeleteError::OutsideOwnFolder(name.to_string()))?;
    let kept = removed.has_undelivered();
    // Written before the files go: a stream created again under this name continues the numbering.
    let (numbering, next_sequence) = (crate::streams::numbering(&data_dir, name), removed.committed);
    let numbering_dir = crate::streams::numbering_dir(&data_dir, name);
    tokio::task::spawn_blocking(move || -> Result<(), DeleteError> {
        std::fs::create_dir_all(&numbering_dir).map_err(|source| DeleteError::Io { path: numbering_dir, source })?;
        Ok(numbering.store(next_sequence)?)
    })
    .await??;
    let set_aside = data_dir.join("deleted-streams").join(format!("{name}-{}", now_ms()));
    let (files, aside) = (stream_dir.clone(), set_aside.clone());
    tokio::task::spawn_blocking(move || -> Result<(), DeleteError> {
        if kept {
            let parent = aside.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            std::fs::create_dir_all(&parent).map_err(|source| DeleteError::Io { path: parent, source })?;
            std::fs::rename(&files, &aside).map_err(|source| DeleteError::Io { path: files.clone(), source })?;
        } else {
            match std::fs::remove_dir_all(&files) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(DeleteError::Io { path: files.clone(), source }),
            }
        }
        Ok(())
    })
    .await??;
    if forget_record && let Some(record) = &record {
        catalog.remove_api_record(record).await?;
    }
    if kept {
        tracing::warn!(
            stream = %name,
            undelivered_records = removed.committed - removed.delivered,
            kept_at = %set_aside.display(),
            "deleted stream still held undelivered records; its wal is kept"
        );
    }
    ingest.remove_stream(name);
    tracing::info!(stream = %name, "delivery stream deleted");
    Ok(())
}

fn list_tags(ingest: &Ingest, body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = parse(body)?;
    let name = stream_name_of(&request)?;
    let limit = request.get("Limit").and_then(Value::as_i64);
    let start = request.get("ExclusiveStartTagKey").and_then(Value::as_str);
    let mut violations = Violations::new();
    if let Some(limit) = limit {
        violations.range(limit, "limit", 1, MAX_TAGS as i64);
    }
    if let Some(start) = start {
        violations.length(start, "exclusiveStartTagKey", 1, 128);
    }
    violations.finish()?;
    let stream = existing(ingest, &name)?;
    let limit = limit.map_or(MAX_TAGS, |limit| limit as usize);
    let after: Vec<(&String, &String)> =
        stream.record.tags.iter().filter(|(key, _)| start.is_none_or(|start| key.as_str() > start)).collect();
    let has_more = after.len() > limit;
    let tags: Vec<Value> =
        after.into_iter().take(limit).map(|(key, value)| json!({ "Key": key, "Value": value })).collect();
    Ok(ok_json(json!({ "Tags": tags, "HasMoreTags": has_more })))
}

async fn tag(control: &Control, ingest: &Arc<Ingest>, body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = parse(body)?;
    let name = stream_name_of(&request)?;
    let tags = parse_tags(request.get("Tags"), "tags", true)?;
    let stream = changeable(ingest, &name)?;
    let mut record = StreamRecord::clone(&stream.record);
    for (key, value) in tags {
        record.tags.insert(key, value);
    }
    if record.tags.len() > MAX_TAGS {
        return Err(ApiError::limit_exceeded(format!(
            "Firehose {name} would have {} tags; the limit is {MAX_TAGS}.",
            record.tags.len()
        )));
    }
    control.save(&stream.record, &record).await?;
    ingest.update_record(&name, record);
    Ok(ok_json(json!({})))
}

async fn untag(control: &Control, ingest: &Arc<Ingest>, body: &[u8]) -> Result<Response, ApiError> {
    let request: Value = parse(body)?;
    let name = stream_name_of(&request)?;
    let keys: Option<Vec<String>> = match request.get("TagKeys") {
        Some(value) => Some(
            serde_json::from_value(value.clone())
                .map_err(|error| ApiError::serialization(format!("malformed tagKeys: {error}")))?,
        ),
        None => None,
    };
    let mut violations = Violations::new();
    violations.required(keys.as_ref(), "tagKeys");
    if let Some(keys) = &keys {
        violations.list_length(keys.len(), "tagKeys", 1, MAX_TAGS);
    }
    violations.finish()?;
    let stream = changeable(ingest, &name)?;
    let mut record = StreamRecord::clone(&stream.record);
    for key in keys.unwrap_or_default() {
        record.tags.remove(&key);
    }
    control.save(&stream.record, &record).await?;
    ingest.update_record(&name, record);
    Ok(ok_json(json!({})))
}

async fn set_encryption(
    control: &Control,
    ingest: &Arc<Ingest>,
    body: &[u8],
    enable: bool,
) -> Result<Response, ApiError> {
    let request: Value = parse(body)?;
    let name = stream_name_of(&request)?;
    let encryption = if enable {
        match request.get("DeliveryStreamEncryptionConfigurationInput") {
            Some(input) => encryption_input(input)?,
            None => EncryptionRecord {
                status: "ENABLED".to_string(),
                key_type: Some("AWS_OWNED_CMK".to_string()),
                key_arn: None,
            },
        }
    } else {
        EncryptionRecord::default()
    };
    let stream = changeable(ingest, &name)?;
    if enable && stream.config.source.descriptor().delivery_stream_type() == "KinesisStreamAsSource" {
        return Err(refuse_encryption_for_kinesis_source());
    }
    // Recorded only: spillway's WAL is not encrypted (out of scope); ENABLING / DISABLING are
    // passed through at once.
    let record = StreamRecord { encryption, ..StreamRecord::clone(&stream.record) };
    control.save(&stream.record, &record).await?;
    ingest.update_record(&name, record);
    Ok(ok_json(json!({})))
}
