//! SigV4 verification (`server.auth`) end to end: the real binary with an access key from the
//! environment (`${ENV}` in the YAML), the real `aws-sdk-firehose` client signing with the right
//! key, a wrong secret and an unknown key; only the signed call's records land.

mod common;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, local_objects};

const KEY_ID: &str = "AKIDSPILLWAYTEST";
const SECRET: &str = "right-secret/with+symbols";

fn auth_yaml() -> String {
    "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n  auth:\n    access_keys:\n\
     \x20     - access_key_id: ${SPILLWAY_TEST_KEY_ID}\n\
     \x20       secret_access_key: ${SPILLWAY_TEST_SECRET}\n\
     data_dir: ./data\n\
     streams:\n\
     \x20 - name: app-logs\n\
     \x20   buffering: { size_mib: 128, interval_seconds: 900 }\n\
     \x20   sink: { type: s3, url: file://./out }\n"
        .to_string()
}

async fn client(endpoint: &str, key_id: &str, secret: &str) -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(key_id, secret, None, None, "test"))
        .load()
        .await;
    Client::new(&config)
}

fn record(text: &str) -> Record {
    Record::builder().data(Blob::new(format!("{text}\n"))).build().expect("record")
}

#[tokio::test]
async fn signed_calls_are_accepted_and_bad_signatures_refused_as_aws_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, auth_yaml()).unwrap();
    let spillway = Spillway::start_with_env(
        dir.path(),
        &config,
        &[("SPILLWAY_TEST_KEY_ID", KEY_ID), ("SPILLWAY_TEST_SECRET", SECRET)],
        &[],
    );

    let signed = client(&spillway.endpoint, KEY_ID, SECRET).await;
    let output = signed
        .put_record_batch()
        .delivery_stream_name("app-logs")
        .records(record("signed-1"))
        .records(record("signed-2"))
        .send()
        .await
        .expect("a correctly signed call is accepted");
    assert_eq!(output.failed_put_count(), 0);
    signed.describe_delivery_stream().delivery_stream_name("app-logs").send().await.expect("control plane too");

    let wrong_secret = client(&spillway.endpoint, KEY_ID, "wrong-secret").await;
    let error = wrong_secret
        .put_record_batch()
        .delivery_stream_name("app-logs")
        .records(record("wrong-secret"))
        .send()
        .await
        .expect_err("a wrong secret is refused");
    assert_eq!(error.code(), Some("InvalidSignatureException"), "{error:?}");
    assert!(error.message().unwrap_or_default().contains("signature we calculated does not match"), "{error:?}");

    let unknown = client(&spillway.endpoint, "AKIDUNKNOWN", SECRET).await;
    let error = unknown
        .put_record()
        .delivery_stream_name("app-logs")
        .record(record("unknown-key"))
        .send()
        .await
        .expect_err("an unknown key is refused");
    assert_eq!(error.code(), Some("UnrecognizedClientException"), "{error:?}");
    assert_eq!(error.message(), Some("The security token included in the request is invalid."));

    // An unsigned request (no Authorization header).
    let unsigned = reqwest::Client::new()
        .post(format!("{}/", spillway.endpoint))
        .header("X-Amz-Target", "Firehose_20150804.ListDeliveryStreams")
        .header("Content-Type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(unsigned.status(), 400);
    let body: serde_json::Value = unsigned.json().await.expect("json error");
    assert_eq!(body["__type"], "MissingAuthenticationTokenException", "{body}");

    let out = spillway.dir.join("out");
    assert_eq!(spillway.terminate(), 0);
    let delivered: Vec<u8> = local_objects(&out).into_iter().flat_map(|(_, body)| body).collect();
    assert_eq!(String::from_utf8_lossy(&delivered), "signed-1\nsigned-2\n");
}
