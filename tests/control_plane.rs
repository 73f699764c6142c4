//! The Firehose control plane end to end: the real `spillway` binary, the real
//! `aws-sdk-firehose` client. Streams created through the API deliver to a local folder through
//! the `api_defaults` block, survive a restart and are gone after delete; YAML streams refuse
//! changes; bad requests get AWS's error types.

mod common;

use std::time::Duration;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{
    BufferingHints, CloudWatchLoggingOptions, CompressionFormat, DeliveryStreamStatus, DeliveryStreamType,
    ExtendedS3DestinationConfiguration, ExtendedS3DestinationUpdate, ProcessingConfiguration, Processor, ProcessorType,
    Record, S3BackupMode, Tag,
};
use common::{Spillway, WAIT, eventually, local_objects};

const ROLE_ARN: &str = "arn:aws:iam::000000000000:role/firehose";

fn yaml() -> String {
    "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
     data_dir: ./data\n\
     api_defaults:\n  s3:\n    url: file://./buckets/{bucket}\n\
     streams:\n\
     \x20 - name: yaml-logs\n\
     \x20   sink: { type: s3, url: file://./yaml-out }\n"
        .to_string()
}

/// What Terraform's `extended_s3_configuration` block sends with its defaults filled in
/// (`expandExtendedS3DestinationConfiguration`): disabled logging, disabled processing, backup
/// `Disabled`, time zone `UTC`.
fn terraform_destination(bucket: &str, prefix: &str) -> ExtendedS3DestinationConfiguration {
    ExtendedS3DestinationConfiguration::builder()
        .role_arn(ROLE_ARN)
        .bucket_arn(format!("arn:aws:s3:::{bucket}"))
        .prefix(prefix)
        .buffering_hints(BufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build())
        .compression_format(CompressionFormat::Uncompressed)
        .cloud_watch_logging_options(CloudWatchLoggingOptions::builder().enabled(false).build())
        .processing_configuration(
            ProcessingConfiguration::builder()
                .enabled(true)
                .processors(
                    Processor::builder().r#type(ProcessorType::AppendDelimiterToRecord).build().expect("processor"),
                )
                .build(),
        )
        .s3_backup_mode(S3BackupMode::Disabled)
        .custom_time_zone("UTC")
        .build()
        .expect("destination")
}

async fn describe_status(client: &Client, name: &str) -> Result<DeliveryStreamStatus, String> {
    match client.describe_delivery_stream().delivery_stream_name(name).send().await {
        Ok(output) => Ok(output.delivery_stream_description().expect("description").delivery_stream_status().clone()),
        Err(error) => Err(error.into_service_error().code().unwrap_or("unknown").to_string()),
    }
}

/// Poll describe (bounded) until `done` says so; Terraform's waiters poll the same way.
async fn wait_for(
    client: &Client,
    name: &str,
    what: &str,
    done: impl Fn(&Result<DeliveryStreamStatus, String>) -> bool,
) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = describe_status(client, name).await;
        if done(&status) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: last {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put_lines(client: &Client, name: &str, lines: &[&str]) {
    let records: Vec<Record> =
        lines.iter().map(|line| Record::builder().data(Blob::new(line.as_bytes())).build().expect("record")).collect();
    let output = client
        .put_record_batch()
        .delivery_stream_name(name)
        .set_records(Some(records))
        .send()
        .await
        .expect("batch accepted");
    assert_eq!(output.failed_put_count(), 0);
}

/// All lines delivered under `folder` (newline-delimited objects), sorted.
fn delivered_lines(folder: &std::path::Path) -> Vec<String> {
    let mut lines: Vec<String> = local_objects(folder)
        .into_iter()
        .flat_map(|(_, bytes)| String::from_utf8_lossy(&bytes).lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    lines.sort();
    lines
}

/// The call sequence of Terraform's AWS provider for `aws_kinesis_firehose_delivery_stream`
/// (hashicorp/terraform-provider-aws `internal/service/firehose/delivery_stream.go`:
/// `resourceDeliveryStreamCreate` → `CreateDeliveryStream` then `waitDeliveryStreamCreated`
/// (describe until ACTIVE); `resourceDeliveryStreamRead` → `DescribeDeliveryStream` and, through
/// transparent tagging, `ListTagsForDeliveryStream`; `resourceDeliveryStreamUpdate` →
/// `UpdateDestination` with `CurrentDeliveryStreamVersionId` and `DestinationId` from the last
/// read, then `TagDeliveryStream` / `UntagDeliveryStream`; `resourceDeliveryStreamDelete` →
/// `DeleteDeliveryStream` then `waitDeliveryStreamDeleted` (describe until
/// `ResourceNotFoundException`)), with records put and delivered in between.
#[tokio::test]
async fn terraform_sequence_with_the_rust_sdk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    let name = "tf-stream";

    // Create.
    let created = client
        .create_delivery_stream()
        .delivery_stream_name(name)
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(terraform_destination("tf-bucket", "v1/"))
        .tags(Tag::builder().key("team").value("data").build().expect("tag"))
        .send()
        .await
        .expect("created");
    assert_eq!(created.delivery_stream_arn(), Some("arn:aws:firehose:us-east-1:000000000000:deliverystream/tf-stream"));
    wait_for(&client, name, "ACTIVE", |status| status.as_ref().is_ok_and(|s| *s == DeliveryStreamStatus::Active)).await;

    // Read.
    let described = client.describe_delivery_stream().delivery_stream_name(name).send().await.expect("described");
    let description = described.delivery_stream_description().expect("description");
    assert_eq!(description.version_id(), "1");
    let created_at = description.create_timestamp().expect("create timestamp").secs();
    let destination = &description.destinations()[0];
    let destination_id = destination.destination_id().to_string();
    let extended = destination.extended_s3_destination_description().expect("extended s3");
    assert_eq!(extended.bucket_arn(), "arn:aws:s3:::tf-bucket");
    assert_eq!(extended.role_arn(), ROLE_ARN);
    assert_eq!(extended.prefix(), Some("v1/"));
    assert_eq!(extended.compression_format(), &CompressionFormat::Uncompressed);
    assert_eq!(extended.s3_backup_mode(), Some(&S3BackupMode::Disabled));
    let processors = extended.processing_configuration().expect("processing").processors();
    assert_eq!(processors[0].r#type(), &ProcessorType::AppendDelimiterToRecord);
    assert!(destination.s3_destination_description().is_some(), "both descriptions, as AWS returns them");
    let tags = client.list_tags_for_delivery_stream().delivery_stream_name(name).send().await.expect("tags");
    assert_eq!(tags.tags().iter().map(|tag| (tag.key(), tag.value())).collect::<Vec<_>>(), [("team", Some("data"))]);
    assert!(!tags.has_more_tags());

    // Records flow through the API-created stream into the defaults block's folder.
    put_lines(&client, name, &["{\"n\":1}", "{\"n\":2}"]).await;
    let bucket = dir.path().join("buckets/tf-bucket");
    eventually(WAIT, "the first records delivered", || (delivered_lines(&bucket).len() == 2).then_some(())).await;
    let keys: Vec<String> = local_objects(&bucket).into_iter().map(|(key, _)| key).collect();
    assert!(keys.iter().all(|key| key.starts_with("v1/") && key.contains("/tf-stream-1-")), "{keys:?}");

    // Update with a stale version: refused.
    let stale = client
        .update_destination()
        .delivery_stream_name(name)
        .current_delivery_stream_version_id("7")
        .destination_id(&destination_id)
        .extended_s3_destination_update(ExtendedS3DestinationUpdate::builder().prefix("v2/").build())
        .send()
        .await
        .expect_err("stale version");
    assert_eq!(stale.into_service_error().code(), Some("ConcurrentModificationException"));

    // Update (Terraform sends the whole block again; only the prefix changed).
    client
        .update_destination()
        .delivery_stream_name(name)
        .current_delivery_stream_version_id("1")
        .destination_id(&destination_id)
        .extended_s3_destination_update(
            ExtendedS3DestinationUpdate::builder()
                .role_arn(ROLE_ARN)
                .bucket_arn("arn:aws:s3:::tf-bucket")
                .prefix("v2/")
                .buffering_hints(BufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build())
                .compression_format(CompressionFormat::Uncompressed)
                .s3_backup_mode(S3BackupMode::Disabled)
                .build(),
        )
        .send()
        .await
        .expect("updated");
    client
        .tag_delivery_stream()
        .delivery_stream_name(name)
        .tags(Tag::builder().key("env").value("test").build().expect("tag"))
        .send()
        .await
        .expect("tagged");
    client.untag_delivery_stream().delivery_stream_name(name).tag_keys("team").send().await.expect("untagged");

    let described = client.describe_delivery_stream().delivery_stream_name(name).send().await.expect("described");
    let description = described.delivery_stream_description().expect("description");
    assert_eq!(description.version_id(), "2", "VersionId grows with the destination");
    assert_eq!(description.create_timestamp().expect("create timestamp").secs(), created_at, "stable CreateTimestamp");
    let extended = description.destinations()[0].extended_s3_destination_description().expect("extended s3");
    assert_eq!(extended.prefix(), Some("v2/"));
    let tags = client.list_tags_for_delivery_stream().delivery_stream_name(name).send().await.expect("tags");
    assert_eq!(tags.tags().iter().map(|tag| (tag.key(), tag.value())).collect::<Vec<_>>(), [("env", Some("test"))]);

    // New objects carry the new prefix and version.
    put_lines(&client, name, &["{\"n\":3}"]).await;
    eventually(WAIT, "records after the update delivered", || (delivered_lines(&bucket).len() == 3).then_some(()))
        .await;
    let keys: Vec<String> = local_objects(&bucket).into_iter().map(|(key, _)| key).collect();
    assert!(keys.iter().any(|key| key.starts_with("v2/") && key.contains("/tf-stream-2-")), "{keys:?}");

    // Delete.
    client.delete_delivery_stream().delivery_stream_name(name).send().await.expect("deleted");
    wait_for(&client, name, "ResourceNotFoundException", |status| {
        status.as_ref().is_err_and(|code| code == "ResourceNotFoundException")
    })
    .await;
    let names = client.list_delivery_streams().send().await.expect("listed");
    assert_eq!(names.delivery_stream_names(), ["yaml-logs"]);
    assert!(!dir.path().join("data/streams/tf-stream").exists(), "the stream's files are removed");
    assert_eq!(delivered_lines(&bucket), ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"], "everything accepted was delivered");
}

#[tokio::test]
async fn an_api_stream_survives_a_restart_and_keeps_delivering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    client
        .create_delivery_stream()
        .delivery_stream_name("kept")
        .extended_s3_destination_configuration(terraform_destination("kept-bucket", "p/"))
        .send()
        .await
        .expect("created");
    put_lines(&client, "kept", &["a"]).await;
    let bucket = dir.path().join("buckets/kept-bucket");
    eventually(WAIT, "delivery before the restart", || (delivered_lines(&bucket).len() == 1).then_some(())).await;
    let before = client.describe_delivery_stream().delivery_stream_name("kept").send().await.expect("described");
    assert_eq!(spillway.terminate(), 0);

    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    let after = client.describe_delivery_stream().delivery_stream_name("kept").send().await.expect("still described");
    let (before, after) =
        (before.delivery_stream_description().expect("d"), after.delivery_stream_description().expect("d"));
    assert_eq!(after.delivery_stream_status(), &DeliveryStreamStatus::Active);
    assert_eq!(after.create_timestamp(), before.create_timestamp(), "CreateTimestamp is persisted");
    assert_eq!(after.version_id(), before.version_id());
    put_lines(&client, "kept", &["b"]).await;
    eventually(WAIT, "delivery after the restart", || (delivered_lines(&bucket).len() == 2).then_some(())).await;
    assert_eq!(delivered_lines(&bucket), ["a", "b"]);

    client.delete_delivery_stream().delivery_stream_name("kept").send().await.expect("deleted");
    wait_for(&client, "kept", "ResourceNotFoundException", |status| {
        status.as_ref().is_err_and(|code| code == "ResourceNotFoundException")
    })
    .await;
    assert_eq!(spillway.terminate(), 0);
    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    let gone = describe_status(&client, "kept").await;
    assert_eq!(gone, Err("ResourceNotFoundException".to_string()), "still gone after a restart");
}

/// A stream deleted and created again under its name continues its numbering: batch ids, object
/// names and document ids derive from WAL sequences, and a repeat would be skipped as already
/// loaded (PostgreSQL) or overwrite an old document (OpenSearch).
#[tokio::test]
async fn a_stream_created_again_continues_its_numbering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    let bucket = dir.path().join("buckets/again-bucket");
    let delivered_sequence = || {
        let text = std::fs::read_to_string(dir.path().join("data/streams/again/checkpoint.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["delivered"].as_u64()
    };
    for (round, lines) in [["a", "b", "c"].as_slice(), ["d", "e"].as_slice()].into_iter().enumerate() {
        client
            .create_delivery_stream()
            .delivery_stream_name("again")
            .extended_s3_destination_configuration(terraform_destination("again-bucket", &format!("round{round}/")))
            .send()
            .await
            .expect("created");
        put_lines(&client, "again", lines).await;
        let total = if round == 0 { 3 } else { 5 };
        eventually(WAIT, "delivery", || (delivered_lines(&bucket).len() == total).then_some(())).await;
        eventually(WAIT, "the checkpoint", || (delivered_sequence() == Some(total as u64)).then_some(())).await;
        if round == 0 {
            client.delete_delivery_stream().delivery_stream_name("again").send().await.expect("deleted");
            wait_for(&client, "again", "ResourceNotFoundException", |status| {
                status.as_ref().is_err_and(|code| code == "ResourceNotFoundException")
            })
            .await;
        }
    }
    assert_eq!(spillway.terminate(), 0);
}

/// A stream's name and a bucket ARN's name become folders: a name made only of dots (which would
/// name every stream's folder, or `data_dir`) and a bucket that leaves `buckets/` are refused,
/// and the records another stream acknowledged meanwhile are still delivered.
#[tokio::test]
async fn names_that_would_leave_their_folder_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    put_lines(&client, "yaml-logs", &["kept-1\n"]).await;
    for name in [".", "..", "..."] {
        let refused = client
            .create_delivery_stream()
            .delivery_stream_name(name)
            .extended_s3_destination_configuration(terraform_destination("dots-bucket", "p/"))
            .send()
            .await
            .expect_err(name);
        let refused: aws_sdk_firehose::Error = refused.into();
        assert_eq!(refused.code(), Some("ValidationException"), "{name}");
        assert!(refused.message().unwrap_or_default().contains("only of dots"), "{name}: {refused:?}");
        let delete = client.delete_delivery_stream().delivery_stream_name(name).send().await.expect_err(name);
        let delete: aws_sdk_firehose::Error = delete.into();
        assert_eq!(delete.code(), Some("ValidationException"), "{name}");
    }
    for bucket in ["..", "a/../../b", "%2e%2e"] {
        let refused = client
            .create_delivery_stream()
            .delivery_stream_name("escaping-bucket")
            .extended_s3_destination_configuration(terraform_destination(bucket, "p/"))
            .send()
            .await
            .expect_err(bucket);
        let refused: aws_sdk_firehose::Error = refused.into();
        assert_eq!(refused.code(), Some("InvalidArgumentException"), "{bucket}");
    }
    put_lines(&client, "yaml-logs", &["kept-2\n"]).await;
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(delivered_lines(&dir.path().join("yaml-out")), ["kept-1", "kept-2"]);
    assert!(!dir.path().join("buckets").exists(), "no folder was made for a refused bucket");
}

#[tokio::test]
async fn yaml_streams_are_read_only_and_bad_requests_get_aws_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    let code = |error: aws_sdk_firehose::Error| error.code().unwrap_or("none").to_string();

    let delete = client.delete_delivery_stream().delivery_stream_name("yaml-logs").send().await.expect_err("yaml");
    assert_eq!(code(delete.into()), "ResourceInUseException");
    let tag = client
        .tag_delivery_stream()
        .delivery_stream_name("yaml-logs")
        .tags(Tag::builder().key("k").value("v").build().expect("tag"))
        .send()
        .await
        .expect_err("yaml");
    assert_eq!(code(tag.into()), "ResourceInUseException");
    let update = client
        .update_destination()
        .delivery_stream_name("yaml-logs")
        .current_delivery_stream_version_id("1")
        .destination_id("destinationId-000000000001")
        .extended_s3_destination_update(ExtendedS3DestinationUpdate::builder().prefix("x/").build())
        .send()
        .await
        .expect_err("yaml");
    assert_eq!(code(update.into()), "ResourceInUseException");

    // A YAML stream describes with valid ARNs and a stable creation time.
    let described = client.describe_delivery_stream().delivery_stream_name("yaml-logs").send().await.expect("d");
    let extended = described.delivery_stream_description().expect("d").destinations()[0]
        .extended_s3_destination_description()
        .expect("extended")
        .clone();
    assert_eq!(extended.bucket_arn(), "arn:aws:s3:::spillway-local-yaml-out");

    let unsupported = client
        .create_delivery_stream()
        .delivery_stream_name("to-kinesis")
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .extended_s3_destination_configuration(terraform_destination("b-1", "p/"))
        .send()
        .await
        .expect_err("unsupported source");
    let unsupported: aws_sdk_firehose::Error = unsupported.into();
    assert_eq!(unsupported.code(), Some("InvalidArgumentException"));
    assert!(unsupported.message().unwrap_or_default().contains("KinesisStreamAsSource"));

    let backed_up = client
        .create_delivery_stream()
        .delivery_stream_name("backed-up")
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .role_arn(ROLE_ARN)
                .bucket_arn("arn:aws:s3:::b-1")
                .s3_backup_mode(S3BackupMode::Enabled)
                .build()
                .expect("destination"),
        )
        .send()
        .await
        .expect_err("source record backup");
    assert_eq!(code(backed_up.into()), "InvalidArgumentException");

    let bad_name = client.describe_delivery_stream().delivery_stream_name("bad name!").send().await.expect_err("name");
    let bad_name: aws_sdk_firehose::Error = bad_name.into();
    assert_eq!(bad_name.code(), Some("ValidationException"));
    assert!(
        bad_name
            .message()
            .unwrap_or_default()
            .starts_with("1 validation error detected: Value 'bad name!' at 'deliveryStreamName'")
    );

    let too_many: Vec<Record> =
        (0..501).map(|_| Record::builder().data(Blob::new("x")).build().expect("record")).collect();
    let batch = client
        .put_record_batch()
        .delivery_stream_name("yaml-logs")
        .set_records(Some(too_many))
        .send()
        .await
        .expect_err("501 records");
    let batch: aws_sdk_firehose::Error = batch.into();
    assert_eq!(batch.code(), Some("ValidationException"));
    assert_eq!(
        batch.message(),
        Some(
            "1 validation error detected: Value '[...]' at 'records' failed to satisfy constraint: Member must have length less than or equal to 500"
        )
    );

    let created = client
        .create_delivery_stream()
        .delivery_stream_name("yaml-logs")
        .extended_s3_destination_configuration(terraform_destination("b-1", "p/"))
        .send()
        .await
        .expect_err("exists");
    assert_eq!(code(created.into()), "ResourceInUseException");

    // Every response names its request.
    let response = reqwest::Client::new()
        .post(&spillway.endpoint)
        .header("x-amz-target", "Firehose_20150804.ListDeliveryStreams")
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .expect("raw request");
    assert!(response.headers().contains_key("x-amzn-requestid"));
}

/// The same Terraform sequence driven by boto3 (a user's script or an `awslocal`-style tool).
#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn terraform_sequence_with_boto3() {
    let python = common::s3::env("SPILLWAY_TEST_PYTHON");
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let script = r#"
import os, sys, time, boto3
fh = boto3.client('firehose', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1',
                  aws_access_key_id='test', aws_secret_access_key='test')
name = 'py-stream'
dest = {'RoleARN': 'arn:aws:iam::000000000000:role/firehose', 'BucketARN': 'arn:aws:s3:::py-bucket',
        'Prefix': 'v1/', 'BufferingHints': {'SizeInMBs': 1, 'IntervalInSeconds': 1},
        'CompressionFormat': 'UNCOMPRESSED', 'CloudWatchLoggingOptions': {'Enabled': False},
        'ProcessingConfiguration': {'Enabled': True, 'Processors': [{'Type': 'AppendDelimiterToRecord'}]},
        'S3BackupMode': 'Disabled', 'CustomTimeZone': 'UTC'}
fh.create_delivery_stream(DeliveryStreamName=name, DeliveryStreamType='DirectPut',
                          ExtendedS3DestinationConfiguration=dest, Tags=[{'Key': 'team', 'Value': 'data'}])
while fh.describe_delivery_stream(DeliveryStreamName=name)['DeliveryStreamDescription']['DeliveryStreamStatus'] != 'ACTIVE':
    time.sleep(0.1)
d = fh.describe_delivery_stream(DeliveryStreamName=name)['DeliveryStreamDescription']
assert fh.list_tags_for_delivery_stream(DeliveryStreamName=name)['Tags'] == [{'Key': 'team', 'Value': 'data'}]
fh.put_record_batch(DeliveryStreamName=name, Records=[{'Data': b'{"n":1}'}])
fh.update_destination(DeliveryStreamName=name, CurrentDeliveryStreamVersionId=d['VersionId'],
                      DestinationId=d['Destinations'][0]['DestinationId'],
                      ExtendedS3DestinationUpdate=dict(dest, Prefix='v2/'))
fh.tag_delivery_stream(DeliveryStreamName=name, Tags=[{'Key': 'env', 'Value': 'test'}])
d = fh.describe_delivery_stream(DeliveryStreamName=name)['DeliveryStreamDescription']
assert d['VersionId'] == '2', d['VersionId']
assert d['Destinations'][0]['ExtendedS3DestinationDescription']['Prefix'] == 'v2/'
try:
    fh.update_destination(DeliveryStreamName=name, CurrentDeliveryStreamVersionId='1',
                          DestinationId='destinationId-000000000001', ExtendedS3DestinationUpdate={'Prefix': 'x/'})
    sys.exit('stale update accepted')
except fh.exceptions.ConcurrentModificationException:
    pass
fh.delete_delivery_stream(DeliveryStreamName=name)
while True:
    try:
        fh.describe_delivery_stream(DeliveryStreamName=name)
        time.sleep(0.1)
    except fh.exceptions.ResourceNotFoundException:
        break
print('ok')
"#;
    let output = std::process::Command::new(python)
        .args(["-c", script])
        .env("ENDPOINT", &spillway.endpoint)
        .output()
        .expect("run python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
    let lines = delivered_lines(&dir.path().join("buckets/py-bucket"));
    assert_eq!(lines, ["{\"n\":1}"], "the record accepted before the update and the delete was delivered");
}

/// A stream created with boto3's `HttpEndpointDestinationConfiguration`, fed, described (the
/// access key never echoed) and updated, delivering to a receiver the script runs itself, written
/// from AWS's published contract: it checks the protocol headers and the body of every request.
#[cfg(feature = "sink-http-endpoint")]
#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn an_http_endpoint_stream_with_boto3() {
    let python = common::s3::env("SPILLWAY_TEST_PYTHON");
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let script = r#"
import base64, gzip, json, os, sys, threading, time, boto3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received, problems = [], []

class Intake(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(405); self.send_header('Content-Length', '0'); self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        if self.headers.get('Content-Encoding') == 'gzip':
            body = gzip.decompress(body)
        request = json.loads(body)
        request_id = self.headers['X-Amz-Firehose-Request-Id']
        checks = {
            'protocol': self.headers.get('X-Amz-Firehose-Protocol-Version') == '1.0',
            'content type': self.headers.get('Content-Type') == 'application/json',
            'access key': self.headers.get('X-Amz-Firehose-Access-Key') == 'py-key',
            'source arn': self.headers.get('X-Amz-Firehose-Source-Arn') == 'arn:aws:firehose:us-east-1:000000000000:deliverystream/py-http',
            'request id': request['requestId'] == request_id,
            'timestamp': abs(request['timestamp'] - time.time() * 1000) < 600000,
            'records': 1 <= len(request['records']) <= 10000,
        }
        problems.extend(name for name, ok in checks.items() if not ok)
        attributes = json.loads(self.headers['X-Amz-Firehose-Common-Attributes'])['commonAttributes']
        received.append((request_id, attributes, [base64.b64decode(r['data']) for r in request['records']]))
        answer = json.dumps({'requestId': request_id, 'timestamp': int(time.time() * 1000)}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

server = ThreadingHTTPServer(('127.0.0.1', 0), Intake)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = 'http://127.0.0.1:%d/intake' % server.server_address[1]

fh = boto3.client('firehose', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1',
                  aws_access_key_id='test', aws_secret_access_key='test')
name = 'py-http'
destination = {
    'EndpointConfiguration': {'Url': url, 'Name': 'py intake', 'AccessKey': 'py-key'},
    'BufferingHints': {'SizeInMBs': 1, 'IntervalInSeconds': 1},
    'CloudWatchLoggingOptions': {'Enabled': False},
    'RequestConfiguration': {'ContentEncoding': 'GZIP',
                             'CommonAttributes': [{'AttributeName': 'env', 'AttributeValue': 'test'}]},
    'RoleARN': 'arn:aws:iam::000000000000:role/firehose',
    'RetryOptions': {'DurationInSeconds': 60},
    'S3BackupMode': 'FailedDataOnly',
    'S3Configuration': {'RoleARN': 'arn:aws:iam::000000000000:role/firehose',
                        'BucketARN': 'arn:aws:s3:::py-http-backup', 'CompressionFormat': 'GZIP'},
}
fh.create_delivery_stream(DeliveryStreamName=name, DeliveryStreamType='DirectPut',
                          HttpEndpointDestinationConfiguration=destination)
while fh.describe_delivery_stream(DeliveryStreamName=name)['DeliveryStreamDescription']['DeliveryStreamStatus'] != 'ACTIVE':
    time.sleep(0.1)

def wait_for(count):
    deadline = time.time() + 60
    while sum(len(records) for _, _, records in received) < count:
        if time.time() > deadline:
            sys.exit('records not delivered: %r' % received)
        time.sleep(0.1)

fh.put_record_batch(DeliveryStreamName=name, Records=[{'Data': b'{"n":%d}' % n} for n in range(3)])
wait_for(3)
d = fh.describe_delivery_stream(DeliveryStreamName=name)['DeliveryStreamDescription']
http = d['Destinations'][0]['HttpEndpointDestinationDescription']
assert http['EndpointConfiguration'] == {'Url': url, 'Name': 'py intake'}, http['EndpointConfiguration']
assert 'py-key' not in json.dumps(d, default=str), 'the access key is never echoed'
assert http['RequestConfiguration'] == destination['RequestConfiguration'], http['RequestConfiguration']
assert http['BufferingHints'] == {'SizeInMBs': 1, 'IntervalInSeconds': 1}, http['BufferingHints']
assert http['RetryOptions'] == {'DurationInSeconds': 60}, http['RetryOptions']
assert http['S3BackupMode'] == 'FailedDataOnly'
assert http['S3DestinationDescription']['CompressionFormat'] == 'GZIP'
fh.update_destination(DeliveryStreamName=name, CurrentDeliveryStreamVersionId=d['VersionId'],
                      DestinationId=d['Destinations'][0]['DestinationId'],
                      HttpEndpointDestinationUpdate={'RequestConfiguration': {
                          'ContentEncoding': 'NONE',
                          'CommonAttributes': [{'AttributeName': 'env', 'AttributeValue': 'prod'}]}})
d = fh.describe_delivery_stream(DeliveryStreamName=name)['DeliveryStreamDescription']
assert d['VersionId'] == '2', d['VersionId']
assert d['Destinations'][0]['HttpEndpointDestinationDescription']['RequestConfiguration']['ContentEncoding'] == 'NONE'
fh.put_record(DeliveryStreamName=name, Record={'Data': b'{"n":3}'})
wait_for(4)
assert received[-1][1] == {'env': 'prod'}, received[-1]
records = sorted(r for _, _, batch in received for r in batch)
assert records == [b'{"n":%d}' % n for n in range(4)], records
assert not problems, problems
fh.delete_delivery_stream(DeliveryStreamName=name)
print('ok')
"#;
    let output = std::process::Command::new(python)
        .args(["-c", script])
        .env("ENDPOINT", &spillway.endpoint)
        .output()
        .expect("run python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
}

/// One AWS CLI call against spillway: `Ok(stdout)` or `Err(stderr)`.
fn aws_cli(cli: &str, endpoint: &str, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(cli)
        .args(["--endpoint-url", endpoint, "--region", "us-east-1", "--output", "json", "firehose"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_PAGER", "")
        .output()
        .unwrap_or_else(|error| panic!("run {cli}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    if output.status.success() { Ok(stdout) } else { Err(stderr) }
}

fn cli_json(cli: &str, endpoint: &str, args: &[&str]) -> serde_json::Value {
    let stdout = aws_cli(cli, endpoint, args).unwrap_or_else(|stderr| panic!("aws firehose {args:?} failed: {stderr}"));
    if stdout.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("aws firehose {args:?}: {error}: {stdout}"))
}

/// Terraform's call sequence (see `terraform_sequence_with_the_rust_sdk`) driven by the AWS CLI, as
/// a shell script or a Makefile would, with `put-record` / `put-record-batch` in between; the
/// objects must hold exactly the bytes the CLI sent. `binary_format` is what v2 needs to take
/// `Data` as text (v1 takes text and base64-encodes it itself).
async fn terraform_sequence_with_the_aws_cli(cli: &str, binary_format: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let endpoint = spillway.endpoint.clone();
    let name = "cli-stream";
    let destination = serde_json::json!({
        "RoleARN": ROLE_ARN, "BucketARN": "arn:aws:s3:::cli-bucket", "Prefix": "v1/",
        "BufferingHints": { "SizeInMBs": 1, "IntervalInSeconds": 900 },
        "CompressionFormat": "UNCOMPRESSED", "CloudWatchLoggingOptions": { "Enabled": false },
        "ProcessingConfiguration": { "Enabled": true, "Processors": [{ "Type": "AppendDelimiterToRecord" }] },
        // No CustomTimeZone: Debian's AWS CLI v2 (2.9) predates it in the model.
        "S3BackupMode": "Disabled",
    });
    let destination = destination.to_string();
    let created = cli_json(
        cli,
        &endpoint,
        &[
            "create-delivery-stream",
            "--delivery-stream-name",
            name,
            "--delivery-stream-type",
            "DirectPut",
            "--extended-s3-destination-configuration",
            &destination,
            "--tags",
            "Key=team,Value=data",
        ],
    );
    assert_eq!(created["DeliveryStreamARN"], "arn:aws:firehose:us-east-1:000000000000:deliverystream/cli-stream");
    let describe = || cli_json(cli, &endpoint, &["describe-delivery-stream", "--delivery-stream-name", name]);
    let described = eventually(WAIT, "ACTIVE", || {
        let description = describe()["DeliveryStreamDescription"].clone();
        (description["DeliveryStreamStatus"] == "ACTIVE").then_some(description)
    })
    .await;
    assert_eq!(described["VersionId"], "1");
    let destination_id = described["Destinations"][0]["DestinationId"].as_str().expect("destination id").to_string();
    let tags = cli_json(cli, &endpoint, &["list-tags-for-delivery-stream", "--delivery-stream-name", name]);
    assert_eq!(tags["Tags"], serde_json::json!([{ "Key": "team", "Value": "data" }]));

    // Records: text with non-ASCII bytes, quotes and commas, as the CLI sends them.
    let first = r#"{"n":1,"s":"héllo, \"world\""}"#;
    let batch = [r#"{"n":2}"#, "plain text, not JSON ✓"];
    let record = serde_json::json!({ "Data": first }).to_string();
    let mut put_record = vec!["put-record", "--delivery-stream-name", name, "--record", &record];
    put_record.extend_from_slice(binary_format);
    let answer = cli_json(cli, &endpoint, &put_record);
    assert!(answer["RecordId"].as_str().is_some_and(|id| !id.is_empty()), "{answer}");
    let records =
        serde_json::json!(batch.iter().map(|data| serde_json::json!({ "Data": data })).collect::<Vec<_>>()).to_string();
    let mut put_batch = vec!["put-record-batch", "--delivery-stream-name", name, "--records", &records];
    put_batch.extend_from_slice(binary_format);
    let answer = cli_json(cli, &endpoint, &put_batch);
    assert_eq!(answer["FailedPutCount"], 0, "{answer}");

    // Update: the records held so far are delivered under the old prefix, in one object.
    let update = serde_json::json!({ "Prefix": "v2/" }).to_string();
    cli_json(
        cli,
        &endpoint,
        &[
            "update-destination",
            "--delivery-stream-name",
            name,
            "--current-delivery-stream-version-id",
            "1",
            "--destination-id",
            &destination_id,
            "--extended-s3-destination-update",
            &update,
        ],
    );
    cli_json(cli, &endpoint, &["tag-delivery-stream", "--delivery-stream-name", name, "--tags", "Key=env,Value=test"]);
    let described = describe()["DeliveryStreamDescription"].clone();
    assert_eq!(described["VersionId"], "2");
    assert_eq!(described["Destinations"][0]["ExtendedS3DestinationDescription"]["Prefix"], "v2/");
    let stale = aws_cli(
        cli,
        &endpoint,
        &[
            "update-destination",
            "--delivery-stream-name",
            name,
            "--current-delivery-stream-version-id",
            "1",
            "--destination-id",
            &destination_id,
            "--extended-s3-destination-update",
            &update,
        ],
    )
    .expect_err("a stale version is refused");
    assert!(stale.contains("ConcurrentModificationException"), "{stale}");

    let after_update = "after the update";
    let record = serde_json::json!({ "Data": after_update }).to_string();
    let mut put_record = vec!["put-record", "--delivery-stream-name", name, "--record", &record];
    put_record.extend_from_slice(binary_format);
    cli_json(cli, &endpoint, &put_record);

    // Delete delivers what was accepted, then describe answers ResourceNotFoundException.
    cli_json(cli, &endpoint, &["delete-delivery-stream", "--delivery-stream-name", name]);
    eventually(WAIT, "ResourceNotFoundException", || {
        match aws_cli(cli, &endpoint, &["describe-delivery-stream", "--delivery-stream-name", name]) {
            Err(stderr) if stderr.contains("ResourceNotFoundException") => Some(()),
            _ => None,
        }
    })
    .await;

    let bucket = dir.path().join("buckets/cli-bucket");
    let mut objects = local_objects(&bucket);
    objects.sort();
    let keys: Vec<&str> = objects.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(objects.len(), 2, "{keys:?}");
    assert!(objects[0].0.starts_with("v1/") && objects[0].0.contains("/cli-stream-1-"), "{keys:?}");
    assert!(objects[1].0.starts_with("v2/") && objects[1].0.contains("/cli-stream-2-"), "{keys:?}");
    let expected_first = format!("{first}\n{}\n{}\n", batch[0], batch[1]);
    assert!(objects[0].1 == expected_first.as_bytes(), "{:?}", String::from_utf8_lossy(&objects[0].1));
    assert!(objects[1].1 == format!("{after_update}\n").as_bytes(), "{:?}", String::from_utf8_lossy(&objects[1].1));
}

/// AWS CLI v1 (pip `awscli`, installed in the test venv by scripts/services.sh).
#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn terraform_sequence_with_the_aws_cli_v1() {
    let cli = common::s3::env("SPILLWAY_TEST_AWS_CLI_V1");
    let version = std::process::Command::new(&cli).arg("--version").output().expect("aws --version");
    let version = String::from_utf8_lossy(&version.stdout).to_string() + &String::from_utf8_lossy(&version.stderr);
    assert!(version.starts_with("aws-cli/1."), "{version}");
    terraform_sequence_with_the_aws_cli(&cli, &[]).await;
}

/// AWS CLI v2 (Debian's `awscli` package, installed by scripts/services.sh).
#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn terraform_sequence_with_the_aws_cli_v2() {
    let cli = common::s3::env("SPILLWAY_TEST_AWS_CLI_V2");
    let version = std::process::Command::new(&cli).arg("--version").output().expect("aws --version");
    let version = String::from_utf8_lossy(&version.stdout).to_string() + &String::from_utf8_lossy(&version.stderr);
    assert!(version.starts_with("aws-cli/2."), "{version}");
    terraform_sequence_with_the_aws_cli(&cli, &["--cli-binary-format", "raw-in-base64-out"]).await;
}

/// `DescribeDeliveryStream` reports each stream's source as AWS does: a Kinesis-sourced stream is
/// `KinesisStreamAsSource` with `Source.KinesisStreamSourceDescription`; a tailed file is
/// `DirectPut` with the file in the `SpillwaySourceDescription` extension; `ListDeliveryStreams`
/// filters by type; a source type spillway does not have (MSK) is refused by name.
#[cfg(all(feature = "source-kinesis", feature = "source-file"))]
#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn describe_reports_kinesis_and_file_sources() {
    let kinesis_endpoint = common::s3::env("SPILLWAY_TEST_KINESIS_ENDPOINT");
    let kinesis = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .endpoint_url(&kinesis_endpoint)
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "test"))
            .build(),
    );
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    let kinesis_stream = format!("spw-describe-{}-{}", std::process::id(), nanos % 1_000_000_000);
    kinesis.create_stream().stream_name(&kinesis_stream).shard_count(1).send().await.expect("create kinesis stream");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.log"), "").expect("log file");
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n  account_id: '123456789012'\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: from-kinesis\n\
         \x20   source: {{ type: kinesis, stream_name: {kinesis_stream}, endpoint: '{kinesis_endpoint}', region: eu-west-1 }}\n\
         \x20   sink: {{ type: s3, url: file://./k-out }}\n\
         \x20 - name: from-file\n\
         \x20   source: {{ type: file, path: ./app.log }}\n\
         \x20   sink: {{ type: s3, url: file://./f-out }}\n\
         \x20 - name: pushed\n\
         \x20   sink: {{ type: s3, url: file://./p-out }}\n"
    );
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, yaml).expect("config");
    let spillway = Spillway::start_with_env(
        dir.path(),
        &config,
        &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")],
        &["AWS_PROFILE", "AWS_SESSION_TOKEN"],
    );
    let client = spillway.client().await;

    let described =
        client.describe_delivery_stream().delivery_stream_name("from-kinesis").send().await.expect("described");
    let description = described.delivery_stream_description().expect("description");
    assert_eq!(description.delivery_stream_type(), &DeliveryStreamType::KinesisStreamAsSource);
    let source = description.source().and_then(|source| source.kinesis_stream_source_description()).expect("source");
    assert_eq!(
        source.kinesis_stream_arn(),
        Some(format!("arn:aws:kinesis:eu-west-1:123456789012:stream/{kinesis_stream}").as_str())
    );
    assert_eq!(source.role_arn(), Some("arn:aws:iam::123456789012:role/spillway"));
    assert_eq!(
        source.delivery_start_timestamp().map(|time| time.secs()),
        description.create_timestamp().map(|time| time.secs()),
        "delivery from the Kinesis stream started when the delivery stream was first started"
    );

    let described = client.describe_delivery_stream().delivery_stream_name("from-file").send().await.expect("file");
    let description = described.delivery_stream_description().expect("description");
    assert_eq!(description.delivery_stream_type(), &DeliveryStreamType::DirectPut);
    assert!(description.source().is_none());
    let raw = reqwest::Client::new()
        .post(&spillway.endpoint)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "Firehose_20150804.DescribeDeliveryStream")
        .body(r#"{"DeliveryStreamName":"from-file"}"#)
        .send()
        .await
        .expect("raw describe");
    let raw: serde_json::Value = raw.json().await.expect("json");
    assert_eq!(raw["DeliveryStreamDescription"]["SpillwaySourceDescription"]["Type"], "file");

    let kinesis_only = client
        .list_delivery_streams()
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .send()
        .await
        .expect("listed");
    assert_eq!(kinesis_only.delivery_stream_names(), ["from-kinesis"]);
    let direct = client.list_delivery_streams().delivery_stream_type(DeliveryStreamType::DirectPut).send().await;
    assert_eq!(direct.expect("listed").delivery_stream_names(), ["from-file", "pushed"]);

    let refused = client
        .create_delivery_stream()
        .delivery_stream_name("api-msk")
        .delivery_stream_type(DeliveryStreamType::MskAsSource)
        .extended_s3_destination_configuration(terraform_destination("k-bucket", "k/"))
        .send()
        .await
        .expect_err("refused");
    let refused = refused.into_service_error();
    assert_eq!(refused.code(), Some("InvalidArgumentException"));
    assert!(refused.message().unwrap_or_default().contains("MSKAsSource"), "{refused:?}");
    drop(spillway);
    kinesis.delete_stream().stream_name(&kinesis_stream).send().await.expect("delete kinesis stream");
}

/// `CreateDeliveryStream` with `KinesisStreamAsSource`: the stream reads the Kinesis data stream
/// (kinesalite, reached through `AWS_ENDPOINT_URL_KINESIS`, the standard AWS configuration) from
/// `LATEST`, as Firehose does, and delivers every record once; it is described with the ARNs it
/// was given, refuses `PutRecord`, survives a restart and is gone after delete.
#[cfg(feature = "source-kinesis")]
#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn an_api_created_kinesis_sourced_stream_reads_its_stream() {
    let kinesis_endpoint = common::s3::env("SPILLWAY_TEST_KINESIS_ENDPOINT");
    let kinesis = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .endpoint_url(&kinesis_endpoint)
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "test"))
            .build(),
    );
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    let kinesis_stream = format!("spw-api-{}-{}", std::process::id(), nanos % 1_000_000_000);
    kinesis.create_stream().stream_name(&kinesis_stream).shard_count(1).send().await.expect("create kinesis stream");
    let put_kinesis = |data: String| {
        let kinesis = kinesis.clone();
        let stream = kinesis_stream.clone();
        async move {
            kinesis
                .put_record()
                .stream_name(stream)
                .partition_key("k")
                .data(aws_sdk_kinesis::primitives::Blob::new(data.into_bytes()))
                .send()
                .await
                .expect("kinesis put")
        }
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let summary = kinesis.describe_stream_summary().stream_name(&kinesis_stream).send().await.expect("summary");
        let status = summary.stream_description_summary().map(|summary| summary.stream_status().clone());
        if status == Some(aws_sdk_kinesis::types::StreamStatus::Active) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the kinesis stream never became ACTIVE");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, yaml()).expect("config");
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_ENDPOINT_URL_KINESIS", kinesis_endpoint.as_str()),
    ];
    let spillway = Spillway::start_with_env(dir.path(), &config, &env, &["AWS_PROFILE", "AWS_SESSION_TOKEN"]);
    let client = spillway.client().await;
    let stream_arn = format!("arn:aws:kinesis:us-east-1:000000000000:stream/{kinesis_stream}");
    let source_role = "arn:aws:iam::000000000000:role/firehose-source";
    client
        .create_delivery_stream()
        .delivery_stream_name("from-kds")
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .kinesis_stream_source_configuration(
            aws_sdk_firehose::types::KinesisStreamSourceConfiguration::builder()
                .kinesis_stream_arn(&stream_arn)
                .role_arn(source_role)
                .build()
                .expect("source"),
        )
        .extended_s3_destination_configuration(terraform_destination("kds-bucket", "kds/"))
        .send()
        .await
        .expect("created");
    let described = client.describe_delivery_stream().delivery_stream_name("from-kds").send().await.expect("described");
    let description = described.delivery_stream_description().expect("description");
    assert_eq!(description.delivery_stream_type(), &DeliveryStreamType::KinesisStreamAsSource);
    let source = description.source().and_then(|source| source.kinesis_stream_source_description()).expect("source");
    assert_eq!(source.kinesis_stream_arn(), Some(stream_arn.as_str()));
    assert_eq!(source.role_arn(), Some(source_role));
    let put = client
        .put_record()
        .delivery_stream_name("from-kds")
        .record(Record::builder().data(Blob::new("x")).build().expect("record"))
        .send()
        .await;
    assert!(put.is_err(), "a Kinesis-sourced stream takes no PutRecord");

    // The reader starts at LATEST: send markers until one arrives, then the records counted.
    let bucket = dir.path().join("buckets/kds-bucket");
    let deadline = std::time::Instant::now() + WAIT;
    while delivered_lines(&bucket).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no marker record arrived from the kinesis stream:\n{}",
            spillway.log_text()
        );
        put_kinesis("marker".to_string()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for n in 0..20 {
        put_kinesis(format!("{{\"n\":{n}}}")).await;
    }
    let expected: Vec<String> = (0..20).map(|n| format!("{{\"n\":{n}}}")).collect();
    let counted = |lines: Vec<String>| lines.into_iter().filter(|line| line != "marker").collect::<Vec<_>>();
    eventually(WAIT, "the 20 records delivered", || (counted(delivered_lines(&bucket)).len() >= 20).then_some(()))
        .await;
    let mut delivered = counted(delivered_lines(&bucket));
    delivered.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(delivered, sorted_expected, "every Kinesis record delivered once");
    assert!(local_objects(&bucket).iter().all(|(key, _)| key.starts_with("kds/") && key.contains("/from-kds-1-")));

    // A restart rebuilds the stream from its catalog record, with its source.
    assert_eq!(spillway.terminate(), 0);
    let spillway = Spillway::start_with_env(dir.path(), &config, &env, &["AWS_PROFILE", "AWS_SESSION_TOKEN"]);
    let client = spillway.client().await;
    let described = client.describe_delivery_stream().delivery_stream_name("from-kds").send().await.expect("described");
    let description = described.delivery_stream_description().expect("description");
    assert_eq!(description.delivery_stream_type(), &DeliveryStreamType::KinesisStreamAsSource);
    put_kinesis("{\"n\":20}".to_string()).await;
    eventually(WAIT, "a record after the restart", || (counted(delivered_lines(&bucket)).len() == 21).then_some(()))
        .await;

    client.delete_delivery_stream().delivery_stream_name("from-kds").send().await.expect("deleted");
    wait_for(&client, "from-kds", "ResourceNotFoundException", |status| {
        status.as_ref().is_err_and(|code| code == "ResourceNotFoundException")
    })
    .await;
    drop(spillway);
    kinesis.delete_stream().stream_name(&kinesis_stream).send().await.expect("delete kinesis stream");
}

/// One raw Firehose call (for requests an SDK would not send): status and `__type`, message.
async fn raw_call(endpoint: &str, operation: &str, body: Vec<u8>) -> (u16, String, String) {
    let response = reqwest::Client::new()
        .post(endpoint)
        .header("x-amz-target", format!("Firehose_20150804.{operation}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(body)
        .send()
        .await
        .expect("call");
    let status = response.status().as_u16();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    let field = |name: &str| answer[name].as_str().unwrap_or_default().to_string();
    (status, field("__type"), field("message"))
}

/// What botocore's model and AWS's documented behaviour say, where spillway used to differ.
#[tokio::test]
async fn answers_follow_the_firehose_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spillway = Spillway::start(dir.path(), &yaml());
    let client = spillway.client().await;
    let endpoint = spillway.endpoint.clone();

    // PutRecord and PutRecordBatch refuse a bad name and a missing member alike.
    for (operation, body) in [
        ("PutRecord", r#"{"DeliveryStreamName":"bad name!","Record":{"Data":"aGk="}}"#),
        ("PutRecordBatch", r#"{"DeliveryStreamName":"bad name!","Records":[{"Data":"aGk="}]}"#),
        ("PutRecord", r#"{"DeliveryStreamName":"yaml-logs"}"#),
        ("PutRecordBatch", r#"{"DeliveryStreamName":"yaml-logs"}"#),
        ("PutRecord", r#"{"DeliveryStreamName":"yaml-logs","Record":{}}"#),
    ] {
        let (status, code, message) = raw_call(&endpoint, operation, body.as_bytes().to_vec()).await;
        assert_eq!((status, code.as_str()), (400, "ValidationException"), "{operation} {body}: {message}");
    }
    // A body over the request limit names that limit.
    let (_, code, message) = raw_call(&endpoint, "PutRecordBatch", vec![b' '; 7 << 20]).await;
    assert_eq!(code, "InvalidArgumentException");
    assert!(message.contains("6 MiB request limit"), "{message}");

    // Record ids differ between streams and between a stream and its re-creation.
    let query = "{customer_id: .customer_id, day: .day}";
    let create = |name: &'static str| {
        let mut destination = terraform_destination("ids-bucket", "c=!{partitionKeyFromQuery:customer_id}/");
        destination.processing_configuration = Some(
            ProcessingConfiguration::builder()
                .enabled(true)
                .processors(
                    Processor::builder()
                        .r#type(ProcessorType::MetadataExtraction)
                        .parameters(
                            aws_sdk_firehose::types::ProcessorParameter::builder()
                                .parameter_name(
                                    aws_sdk_firehose::types::ProcessorParameterName::MetadataExtractionQuery,
                                )
                                .parameter_value(query)
                                .build()
                                .expect("parameter"),
                        )
                        .parameters(
                            aws_sdk_firehose::types::ProcessorParameter::builder()
                                .parameter_name(aws_sdk_firehose::types::ProcessorParameterName::JsonParsingEngine)
                                .parameter_value("JQ-1.6")
                                .build()
                                .expect("parameter"),
                        )
                        .build()
                        .expect("processor"),
                )
                .build(),
        );
        destination.dynamic_partitioning_configuration =
            Some(aws_sdk_firehose::types::DynamicPartitioningConfiguration::builder().enabled(true).build());
        destination.error_output_prefix = Some("errors/!{firehose:error-output-type}/".to_string());
        client
            .create_delivery_stream()
            .delivery_stream_name(name)
            .extended_s3_destination_configuration(destination)
            .send()
    };
    create("ids-a").await.expect("created a");
    create("ids-b").await.expect("created b");
    let record = || Record::builder().data(Blob::new(r#"{"customer_id":"c1","day":"d"}"#)).build().expect("record");
    let put = |name: &'static str| client.put_record().delivery_stream_name(name).record(record()).send();
    let first_a = put("ids-a").await.expect("put a");
    let first_b = put("ids-b").await.expect("put b");
    assert_ne!(first_a.record_id(), first_b.record_id(), "the first record of two streams");
    assert_eq!(first_a.encrypted(), Some(false));

    // The MetadataExtractionQuery comes back exactly as sent.
    let described = client.describe_delivery_stream().delivery_stream_name("ids-a").send().await.expect("described");
    let processors = described.delivery_stream_description().expect("d").destinations()[0]
        .extended_s3_destination_description()
        .and_then(|extended| extended.processing_configuration())
        .map(|processing| processing.processors().to_vec())
        .unwrap_or_default();
    let sent_back: Vec<&str> = processors
        .iter()
        .flat_map(|processor| processor.parameters())
        .filter(|parameter| parameter.parameter_name().as_str() == "MetadataExtractionQuery")
        .map(|parameter| parameter.parameter_value())
        .collect();
    assert_eq!(sent_back, [query]);

    // Encryption is reported in put answers once started.
    client.start_delivery_stream_encryption().delivery_stream_name("ids-a").send().await.expect("encryption");
    let encrypted = put("ids-a").await.expect("put");
    assert_eq!(encrypted.encrypted(), Some(true));
    let batch =
        client.put_record_batch().delivery_stream_name("ids-a").records(record()).send().await.expect("batch put");
    assert_eq!(batch.encrypted(), Some(true));

    client.delete_delivery_stream().delivery_stream_name("ids-b").send().await.expect("deleted");
    wait_for(&client, "ids-b", "ResourceNotFoundException", |status| {
        status.as_ref().is_err_and(|code| code == "ResourceNotFoundException")
    })
    .await;
    create("ids-b").await.expect("created again");
    let again = put("ids-b").await.expect("put after re-create");
    assert_ne!(again.record_id(), first_b.record_id(), "the first record of a re-created stream");

    // AWS refuses server-side encryption for a Kinesis-sourced stream.
    let refused = client
        .create_delivery_stream()
        .delivery_stream_name("kds-encrypted")
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .kinesis_stream_source_configuration(
            aws_sdk_firehose::types::KinesisStreamSourceConfiguration::builder()
                .kinesis_stream_arn("arn:aws:kinesis:us-east-1:000000000000:stream/s")
                .role_arn(ROLE_ARN)
                .build()
                .expect("source"),
        )
        .delivery_stream_encryption_configuration_input(
            aws_sdk_firehose::types::DeliveryStreamEncryptionConfigurationInput::builder()
                .key_type(aws_sdk_firehose::types::KeyType::AwsOwnedCmk)
                .build()
                .expect("encryption"),
        )
        .extended_s3_destination_configuration(terraform_destination("kds-bucket", "kds/"))
        .send()
        .await
        .expect_err("encryption on a Kinesis source");
    let refused: aws_sdk_firehose::Error = refused.into();
    assert_eq!(refused.code(), Some("InvalidArgumentException"), "{refused:?}");
    assert_eq!(spillway.terminate(), 0);
}
