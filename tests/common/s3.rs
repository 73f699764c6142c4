//! S3 helpers for service-backed tests: the `aws-sdk-s3` client for the MinIO of
//! `scripts/services.sh`, fresh buckets, and reading objects back decompressed.

use std::io::Read;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh (it starts the services)"))
}

pub async fn client_for(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(env("SPILLWAY_TEST_S3_REGION")))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            env("SPILLWAY_TEST_S3_ACCESS_KEY"),
            env("SPILLWAY_TEST_S3_SECRET_KEY"),
            None,
            None,
            "test",
        ))
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build())
}

pub async fn client() -> aws_sdk_s3::Client {
    client_for(&env("SPILLWAY_TEST_S3_ENDPOINT")).await
}

/// A new, uniquely named bucket.
pub async fn new_bucket(s3: &aws_sdk_s3::Client) -> String {
    let bucket = format!("spillway-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
    bucket
}

/// Every object under `prefix`, decompressed when its key ends in `.gz`, sorted by key.
pub async fn objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pages = s3.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        for object in page.expect("list objects").contents() {
            let key = object.key().unwrap_or_default().to_string();
            let body = s3.get_object().bucket(bucket).key(&key).send().await.unwrap().body.collect().await.unwrap();
            let bytes = body.into_bytes();
            let decoded = if key.ends_with(".gz") {
                let mut decoded = Vec::new();
                flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut decoded).unwrap();
                decoded
            } else {
                bytes.to_vec()
            };
            out.push((key, decoded));
        }
    }
    out.sort();
    out
}

/// The `type: s3` sink block for a bucket on the test MinIO (indented for a stream's `sink:`).
pub fn sink_yaml(bucket: &str, endpoint: &str) -> String {
    format!(
        "    sink:\n\
         \x20     type: s3\n\
         \x20     url: s3://{bucket}\n\
         \x20     endpoint: {endpoint}\n\
         \x20     region: ${{SPILLWAY_TEST_S3_REGION}}\n\
         \x20     access_key_id: ${{SPILLWAY_TEST_S3_ACCESS_KEY}}\n\
         \x20     secret_access_key: ${{SPILLWAY_TEST_S3_SECRET_KEY}}\n\
         \x20     compression: gzip\n"
    )
}
