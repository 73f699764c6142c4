//! The S3 sink against a real S3-compatible server (MinIO started by `scripts/services.sh`).
//! These tests are ignored in plain `cargo test`; `scripts/test.sh` starts the services, exports
//! `SPILLWAY_TEST_S3_*` and runs them. A missing variable is a failure, never a silent skip.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use spillway_sink_api::testkit::{ReadBack, check_conformance, encode_batch, sample_batch};
use spillway_sink_api::{Batch, ErrorClass, ErrorOutput, PartitionKeys, Record, Sink};
use spillway_sink_s3::{S3Sink, S3SinkConfig, is_destination_state};
use uuid::Uuid;

struct Service {
    endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
}

fn service() -> Service {
    Service {
        endpoint: std::env::var("SPILLWAY_TEST_S3_ENDPOINT")
            .expect("SPILLWAY_TEST_S3_ENDPOINT not set: run scripts/test.sh"),
        access_key: std::env::var("SPILLWAY_TEST_S3_ACCESS_KEY")
            .expect("SPILLWAY_TEST_S3_ACCESS_KEY not set: run scripts/test.sh"),
        secret_key: std::env::var("SPILLWAY_TEST_S3_SECRET_KEY")
            .expect("SPILLWAY_TEST_S3_SECRET_KEY not set: run scripts/test.sh"),
        region: std::env::var("SPILLWAY_TEST_S3_REGION").expect("SPILLWAY_TEST_S3_REGION not set: run scripts/test.sh"),
    }
}

fn client(service: &Service) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&service.endpoint)
        .region(Region::new(service.region.clone()))
        .credentials_provider(Credentials::new(&service.access_key, &service.secret_key, None, None, "spillway-test"))
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

fn unique_bucket(label: &str) -> String {
    let suffix = Uuid::new_v4().simple().to_string();
    format!("spillway-{label}-{}", &suffix[..12])
}

/// A bucket created for one test and emptied and deleted when it ends (best effort).
struct TestBucket {
    client: Client,
    name: String,
}

impl TestBucket {
    async fn create(service: &Service, label: &str) -> Self {
        let client = client(service);
        let name = unique_bucket(label);
        client.create_bucket().bucket(&name).send().await.expect("create test bucket");
        Self { client, name }
    }

    async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.name).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.expect("list objects");
            keys.extend(page.contents().iter().filter_map(|object| object.key().map(str::to_string)));
        }
        keys
    }

    async fn get(&self, key: &str) -> (Vec<u8>, Option<String>) {
        let object = self.client.get_object().bucket(&self.name).key(key).send().await.expect("get object");
        let content_type = object.content_type().map(str::to_string);
        let body = object.body.collect().await.expect("read object body").into_bytes().to_vec();
        (body, content_type)
    }

    async fn delete(self) {
        for key in self.keys().await {
            let _ = self.client.delete_object().bucket(&self.name).key(key).send().await;
        }
        let _ = self.client.delete_bucket().bucket(&self.name).send().await;
    }
}

#[async_trait]
impl ReadBack for TestBucket {
    async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>> {
        let id = batch.id.hyphenated().to_string();
        let mut copies = Vec::new();
        for key in self.keys().await.into_iter().filter(|key| key.contains(&id) && !key.contains("failed/")) {
            copies.push(self.get(&key).await.0);
        }
        copies
    }

    async fn read_error_output(&self, batch: &Batch, error_output_type: &str) -> Vec<Vec<u8>> {
        let id = batch.id.hyphenated().to_string();
        let mut copies = Vec::new();
        for key in self.keys().await.into_iter().filter(|key| key.contains(&id) && key.starts_with(error_output_type)) {
            copies.push(self.get(&key).await.0);
        }
        copies
    }
}

fn sink_for(service: &Service, bucket: &str, extra: serde_json::Value) -> S3Sink {
    let mut value = serde_json::json!({
        "url": format!("s3://{bucket}"),
        "endpoint": service.endpoint,
        "region": service.region,
        "access_key_id": service.access_key,
        "secret_access_key": service.secret_key,
    });
    if let (Some(object), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    let config: S3SinkConfig = serde_json::from_value(value).expect("config deserializes");
    assert_eq!(config.validate(), Vec::new());
    config.build("stream").expect("sink builds")
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn minio_sink_passes_conformance() {
    let service = service();
    let bucket = TestBucket::create(&service, "conformance").await;
    let sink = sink_for(&service, &bucket.name, serde_json::json!({}));
    let factory = sink.encoder_factory();
    check_conformance(&sink, &sink, &*factory, &bucket, "stream", PartitionKeys::new()).await;

    // The same checks for a partitioned prefix: partition values land in the key.
    let partitioned = sink_for(
        &service,
        &bucket.name,
        serde_json::json!({
            "prefix": "service=!{partitionKeyFromQuery:service}/",
            "error_output_prefix": "!{firehose:error-output-type}/",
            "compression": "gzip",
        }),
    );
    let keys = PartitionKeys::from([("service".to_string(), "api".to_string())]);
    let factory = partitioned.encoder_factory();
    struct Gunzip<'a>(&'a TestBucket);
    #[async_trait]
    impl ReadBack for Gunzip<'_> {
        async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>> {
            let mut decoded = Vec::new();
            for body in self.0.read_back(batch).await {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out).expect("gunzip");
                decoded.push(out);
            }
            decoded
        }
        async fn read_error_output(&self, batch: &Batch, error_output_type: &str) -> Vec<Vec<u8>> {
            self.0.read_error_output(batch, error_output_type).await
        }
    }
    check_conformance(&partitioned, &partitioned, &*factory, &Gunzip(&bucket), "stream", keys).await;
    assert!(bucket.keys().await.iter().any(|key| key.starts_with("service=api/stream-1-")));

    let batch = sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 3);
    sink.write(&batch).await.expect("write");
    let key = sink.object_key(&batch).expect("key");
    let (_, content_type) = bucket.get(&key).await;
    assert_eq!(content_type.as_deref(), Some("application/octet-stream"));
    bucket.delete().await;
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn minio_multipart_upload_above_the_threshold() {
    let service = service();
    let bucket = TestBucket::create(&service, "multipart").await;
    let sink =
        sink_for(&service, &bucket.name, serde_json::json!({ "multipart_threshold_mib": 1, "part_size_mib": 5 }));
    // 11 MiB: parts of 5, 5 and 1 MiB.
    let records: Vec<Record> = (0..176u64)
        .map(|sequence| Record {
            data: Bytes::from(vec![b'a' + (sequence % 26) as u8; 64 * 1024]),
            arrival_ms: 1_764_000_000_000,
            sequence,
            output: 0,
        })
        .collect();
    let batch = encode_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), PartitionKeys::new(), &records);
    let expected: Vec<u8> = records.iter().flat_map(|record| record.data.to_vec()).collect();

    sink.write(&batch).await.expect("multipart write");
    sink.write(&batch).await.expect("multipart replay");

    let key = sink.object_key(&batch).expect("key");
    assert_eq!(bucket.keys().await, vec![key.clone()]);
    let (body, content_type) = bucket.get(&key).await;
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "multipart object differs from the records");
    assert_eq!(content_type.as_deref(), Some("application/octet-stream"));
    let head = bucket.client.head_object().bucket(&bucket.name).key(&key).send().await.expect("head object");
    assert!(head.e_tag().is_some_and(|etag| etag.ends_with("-3\"")), "three parts: {:?}", head.e_tag());
    bucket.delete().await;
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn minio_error_output_is_written_uncompressed() {
    let service = service();
    let bucket = TestBucket::create(&service, "errors").await;
    let sink = sink_for(&service, &bucket.name, serde_json::json!({ "compression": "gzip" }));
    let batch = sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 2);
    let lines = b"{\"errorCode\":\"Lambda.FunctionError\"}\n".to_vec();
    sink.write_error_records(&batch, "processing-failed", lines.clone()).await.expect("error output");

    let expected_key = format!("processing-failed/2025/11/24/16/stream-1-2025-11-24-16-00-00-{}", batch.id);
    assert_eq!(bucket.keys().await, vec![expected_key.clone()]);
    assert_eq!(bucket.get(&expected_key).await.0, lines);
    bucket.delete().await;
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn minio_missing_bucket_is_retriable_no_such_bucket() {
    let service = service();
    let missing = unique_bucket("missing");
    let sink = sink_for(&service, &missing, serde_json::json!({}));

    let write_error = sink
        .write(&sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 2))
        .await
        .expect_err("bucket is missing");
    assert_eq!(
        (write_error.class, write_error.code.as_str()),
        (ErrorClass::Retriable, "S3.NoSuchBucket"),
        "{write_error}"
    );
    assert!(is_destination_state(&write_error));

    let health_error = sink.healthcheck().await.expect_err("bucket is missing");
    assert_eq!(
        (health_error.class, health_error.code.as_str()),
        (ErrorClass::Retriable, "S3.NoSuchBucket"),
        "{health_error}"
    );
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn minio_bad_credentials_are_retriable() {
    let service = service();
    let bucket = TestBucket::create(&service, "creds").await;
    let wrong = Service { secret_key: "not-the-secret".to_string(), ..service };
    let sink = sink_for(&wrong, &bucket.name, serde_json::json!({}));

    let error = sink
        .write(&sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 2))
        .await
        .expect_err("wrong secret");
    assert_eq!((error.class, error.code.as_str()), (ErrorClass::Retriable, "S3.SignatureDoesNotMatch"), "{error}");
    assert!(is_destination_state(&error));
    bucket.delete().await;
}
