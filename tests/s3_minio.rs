//! The core job against real MinIO: spillway from YAML with an `s3://` sink, the real
//! `aws-sdk-firehose` client sending, objects read back with `aws-sdk-s3` and with boto3.
//! Needs the services of `scripts/test.sh`.

mod common;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, WAIT};

use common::s3::{self, env};

/// A stream with newline-delimited records and a dated prefix, delivering to `bucket` on the
/// test MinIO with the keys from the environment.
fn minio_yaml(bucket: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 900 }}\n\
         {}\
         \x20     prefix: 'logs/!{{timestamp:yyyy/MM/dd}}/'\n",
        s3::sink_yaml(bucket, "${SPILLWAY_TEST_S3_ENDPOINT}")
    )
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn direct_put_to_minio_delivers_gzip_objects_readable_by_aws_clients() {
    let s3 = s3::client().await;
    let bucket = s3::new_bucket(&s3).await;

    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &minio_yaml(&bucket));
    let firehose = spillway.client().await;
    let mut expected = Vec::new();
    // 4 × 500 records of ~1 KiB: the 1 MiB size hint flushes while running (after the third
    // call's whole frame), the fourth call at SIGTERM.
    for batch in 0..4 {
        let lines: Vec<String> = (0..500)
            .map(|index| format!("{{\"batch\":{batch},\"index\":{index},\"pad\":\"{}\"}}", "p".repeat(1000)))
            .collect();
        for line in &lines {
            expected.extend_from_slice(line.as_bytes());
            expected.push(b'\n');
        }
        let records = lines.into_iter().map(|line| Record::builder().data(Blob::new(line)).build().unwrap()).collect();
        let output =
            firehose.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await;
        assert_eq!(output.expect("batch accepted").failed_put_count(), 0);
    }
    let s3_for_poll = s3.clone();
    let bucket_for_poll = bucket.clone();
    let mut first = None;
    for _ in 0..(WAIT.as_millis() / 100) {
        let listed = s3_for_poll.list_objects_v2().bucket(&bucket_for_poll).send().await.unwrap();
        if listed.key_count().unwrap_or(0) > 0 {
            first = Some(listed);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(first.is_some(), "a size-triggered object reached MinIO while spillway ran");
    assert_eq!(spillway.terminate(), 0);

    let objects = s3::objects(&s3, &bucket, "").await;
    assert!(objects.len() >= 2, "size flush + shutdown flush");
    for (key, _) in &objects {
        assert!(key.starts_with("logs/") && key.ends_with(".gz") && key.contains("/app-logs-1-"), "{key}");
    }
    let delivered = common::concat_in_sent_order(objects.clone(), &expected);
    assert_eq!(delivered, expected, "every record once, each object an in-order run");

    // boto3, as a user's script would read the bucket.
    let script = format!(
        "import boto3, gzip, os\n\
         s3 = boto3.client('s3', endpoint_url=os.environ['SPILLWAY_TEST_S3_ENDPOINT'], region_name=os.environ['SPILLWAY_TEST_S3_REGION'],\n\
         \x20   aws_access_key_id=os.environ['SPILLWAY_TEST_S3_ACCESS_KEY'], aws_secret_access_key=os.environ['SPILLWAY_TEST_S3_SECRET_KEY'])\n\
         keys = sorted(o['Key'] for o in s3.list_objects_v2(Bucket='{bucket}')['Contents'])\n\
         lines = sum(len(gzip.decompress(s3.get_object(Bucket='{bucket}', Key=k)['Body'].read()).splitlines()) for k in keys)\n\
         print(lines)\n"
    );
    let output = std::process::Command::new(env("SPILLWAY_TEST_PYTHON")).args(["-c", &script]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "2000");
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_then_restart_delivers_to_minio_without_duplicates() {
    let s3 = s3::client().await;
    let bucket = s3::new_bucket(&s3).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = minio_yaml(&bucket);
    let spillway = Spillway::start(dir.path(), &yaml);
    let firehose = spillway.client().await;
    let mut expected = Vec::new();
    for batch in 0..10 {
        let lines: Vec<String> = (0..200).map(|index| format!("{{\"b\":{batch},\"i\":{index}}}")).collect();
        for line in &lines {
            expected.extend_from_slice(line.as_bytes());
            expected.push(b'\n');
        }
        let records = lines.into_iter().map(|line| Record::builder().data(Blob::new(line)).build().unwrap()).collect();
        firehose.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await.unwrap();
    }
    spillway.kill();
    let restarted = Spillway::start(dir.path(), &yaml);
    assert_eq!(restarted.terminate(), 0);
    let delivered = common::concat_in_sent_order(s3::objects(&s3, &bucket, "").await, &expected);
    assert_eq!(delivered, expected);
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn credentials_come_from_an_aws_profile_when_the_yaml_names_none() {
    let s3 = s3::client().await;
    let bucket = s3::new_bucket(&s3).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("aws-credentials");
    std::fs::write(
        &credentials,
        format!(
            "[spillway-test]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            env("SPILLWAY_TEST_S3_ACCESS_KEY"),
            env("SPILLWAY_TEST_S3_SECRET_KEY")
        ),
    )
    .unwrap();
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0 }}\ndata_dir: ./data\nstreams:\n  - name: app-logs\n    sink:\n      type: s3\n      url: s3://{bucket}\n      endpoint: {}\n      region: {}\n",
        env("SPILLWAY_TEST_S3_ENDPOINT"),
        env("SPILLWAY_TEST_S3_REGION")
    );
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let spillway = Spillway::start_with_env(
        dir.path(),
        &config,
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
            ("AWS_PROFILE", "spillway-test"),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"],
    );
    let firehose = spillway.client().await;
    let record = Record::builder().data(Blob::new("{\"from\":\"profile\"}\n")).build().unwrap();
    firehose.put_record().delivery_stream_name("app-logs").record(record).send().await.unwrap();
    assert_eq!(spillway.terminate(), 0);
    let objects = s3::objects(&s3, &bucket, "").await;
    assert_eq!(objects.len(), 1, "signed with the profile's keys, MinIO accepted the object");
    assert_eq!(objects[0].1, b"{\"from\":\"profile\"}\n");
}
