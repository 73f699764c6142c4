//! SigV4 verification (`server.auth`) end to end: the real binary with an access key from the
//! environment (`${ENV}` in the YAML), the real `aws-sdk-firehose` client signing with the right
//! key, a wrong secret and an unknown key; only the signed call's records land. NDJSON puts and
//! the read-only routes need a signature too (made here with the SDK's own signer, as curl's
//! `--aws-sigv4` makes one); a signature must cover the route's required headers; and anonymous
//! requests never take body memory from signed ones.

mod common;

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as SigningCredentials;
use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{DeliveryStreamType, ExtendedS3DestinationConfiguration, Record};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;
use common::{Spillway, local_objects};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY_ID: &str = "AKIDSPILLWAYTEST";
const SECRET: &str = "right-secret/with+symbols";

fn auth_yaml() -> String {
    auth_yaml_with("", "")
}

/// `auth_extra` goes under `server.auth`, `top_extra` at the top level.
fn auth_yaml_with(auth_extra: &str, top_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n  auth:\n    access_keys:\n\
         \x20     - access_key_id: ${{SPILLWAY_TEST_KEY_ID}}\n\
         \x20       secret_access_key: ${{SPILLWAY_TEST_SECRET}}\n\
         {auth_extra}\
         data_dir: ./data\n\
         {top_extra}\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   buffering: {{ size_mib: 128, interval_seconds: 900 }}\n\
         \x20   sink: {{ type: s3, url: file://./out }}\n"
    )
}

fn start(dir: &std::path::Path, yaml: &str) -> Spillway {
    let config = dir.join("spillway.yaml");
    std::fs::write(&config, yaml).unwrap();
    Spillway::start_with_env(dir, &config, &[("SPILLWAY_TEST_KEY_ID", KEY_ID), ("SPILLWAY_TEST_SECRET", SECRET)], &[])
}

/// Sign a request as curl's `--aws-sigv4 aws:amz:us-east-1:firehose` does: `host` (from the
/// url), `x-amz-date` and `headers` are signed, except those named in `unsigned`, which are sent
/// as they are.
fn signed_request(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    unsigned: &[&str],
    body: &[u8],
    secret: &str,
) -> reqwest::RequestBuilder {
    let identity = SigningCredentials::new(KEY_ID, secret, None, None, "test").into();
    let mut settings = SigningSettings::default();
    let excluded = settings.excluded_headers.get_or_insert_with(Vec::new);
    excluded.extend(unsigned.iter().map(|name| name.to_string().into()));
    let params = SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("firehose")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .expect("signing params")
        .into();
    let request = SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body))
        .expect("signable request");
    let (instructions, _signature) = sign(request, &params).expect("signed").into_parts();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut builder = client.request(method, url).body(body.to_vec());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    for (name, value) in instructions.headers() {
        builder = builder.header(name, value);
    }
    builder
}

fn host_of(endpoint: &str) -> String {
    endpoint.trim_start_matches("http://").trim_start_matches("https://").to_string()
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

#[tokio::test]
async fn ndjson_needs_a_signature_with_auth_on_into_yaml_and_api_created_streams() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = auth_yaml_with("", "api_defaults:\n  s3:\n    url: file://./buckets/{bucket}\n");
    let spillway = start(dir.path(), &yaml);
    let signed = client(&spillway.endpoint, KEY_ID, SECRET).await;
    signed
        .create_delivery_stream()
        .delivery_stream_name("api-logs")
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::000000000000:role/firehose")
                .bucket_arn("arn:aws:s3:::api-bucket")
                .build()
                .expect("destination"),
        )
        .send()
        .await
        .expect("a signed create is accepted");

    let http = reqwest::Client::new();
    for stream in ["app-logs", "api-logs"] {
        let url = format!("{}/streams/{stream}/records", spillway.endpoint);
        let anonymous = http
            .post(&url)
            .header("content-type", "application/x-ndjson")
            .body("{\"anonymous\":true}\n")
            .send()
            .await
            .expect("answered");
        assert_eq!(anonymous.status(), 403, "{stream}");
        let body: serde_json::Value = anonymous.json().await.expect("json error");
        assert_eq!(body["error"], "MissingAuthenticationTokenException", "{stream}: {body}");

        let wrong_secret = signed_request(
            &http,
            "POST",
            &url,
            &[("content-type", "application/x-ndjson")],
            &[],
            b"{\"wrong\":true}\n",
            "wrong-secret",
        );
        let answer = wrong_secret.send().await.expect("answered");
        assert_eq!(answer.status(), 403, "{stream}");
        let body: serde_json::Value = answer.json().await.expect("json error");
        assert_eq!(body["error"], "InvalidSignatureException", "{stream}: {body}");

        let line = format!("{{\"signed\":\"{stream}\"}}\n");
        let accepted = signed_request(
            &http,
            "POST",
            &url,
            &[("content-type", "application/x-ndjson")],
            &[],
            line.as_bytes(),
            SECRET,
        )
        .send()
        .await
        .expect("answered");
        assert_eq!(accepted.status(), 200, "{stream}: {:?}", accepted.text().await);
    }

    let out = spillway.dir.join("out");
    let bucket = spillway.dir.join("buckets/api-bucket");
    assert_eq!(spillway.terminate(), 0);
    let delivered: Vec<u8> = local_objects(&out).into_iter().flat_map(|(_, body)| body).collect();
    assert_eq!(String::from_utf8_lossy(&delivered), "{\"signed\":\"app-logs\"}");
    let delivered: Vec<u8> = local_objects(&bucket).into_iter().flat_map(|(_, body)| body).collect();
    assert_eq!(String::from_utf8_lossy(&delivered), "{\"signed\":\"api-logs\"}");
}

#[tokio::test]
async fn a_signature_that_does_not_cover_the_required_headers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(dir.path(), &auth_yaml());
    let http = reqwest::Client::new();
    let api = format!("{}/", spillway.endpoint);
    let body = br#"{"DeliveryStreamName":"app-logs","Record":{"Data":"dW5zaWduZWQK"}}"#;
    let all = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", "Firehose_20150804.PutRecord")];
    for left_out in ["host", "content-type", "x-amz-target"] {
        let answer =
            signed_request(&http, "POST", &api, &all, &[left_out], body, SECRET).send().await.expect("answered");
        assert_eq!(answer.status(), 400, "{left_out}");
        let error: serde_json::Value = answer.json().await.expect("json error");
        assert_eq!(error["__type"], "IncompleteSignatureException", "{left_out}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.ends_with(&format!("SignedHeaders lacks {left_out}")), "{message}");
    }
    // Every SigV4 signer signs x-amz-date; a header listing it out is refused by name as well.
    let full = signed_request(&http, "POST", &api, &all, &[], body, SECRET).build().expect("request");
    let authorization = full.headers()["authorization"].to_str().expect("ascii").replace(";x-amz-date", "");
    let mut request = full;
    request.headers_mut().insert("authorization", authorization.parse().expect("header value"));
    let answer = http.execute(request).await.expect("answered");
    let error: serde_json::Value = answer.json().await.expect("json error");
    assert!(error["message"].as_str().unwrap_or_default().ends_with("SignedHeaders lacks x-amz-date"), "{error}");

    // NDJSON: curl signs content-type only when given with -H; without it, refused by name.
    let url = format!("{}/streams/app-logs/records", spillway.endpoint);
    let answer = signed_request(&http, "POST", &url, &[], &[], b"{\"a\":1}\n", SECRET).send().await.expect("answered");
    assert_eq!(answer.status(), 403);
    let error: serde_json::Value = answer.json().await.expect("json error");
    assert_eq!(error["error"], "IncompleteSignatureException", "{error}");
    assert!(error["message"].as_str().unwrap_or_default().ends_with("SignedHeaders lacks content-type"), "{error}");

    let out = spillway.dir.join("out");
    assert_eq!(spillway.terminate(), 0);
    assert!(local_objects(&out).is_empty(), "nothing was appended");
}

#[tokio::test]
async fn only_health_and_ready_stay_open_unless_open_routes_lists_more() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(dir.path(), &auth_yaml());
    let http = reqwest::Client::new();
    for open in ["/health", "/ready"] {
        let answer = http.get(format!("{}{open}", spillway.endpoint)).send().await.expect("answered");
        assert_eq!(answer.status(), 200, "{open}");
    }
    for protected in ["/metrics", "/", "/api/status"] {
        let url = format!("{}{protected}", spillway.endpoint);
        let anonymous = http.get(&url).send().await.expect("answered");
        assert_eq!(anonymous.status(), 403, "{protected}");
        let error: serde_json::Value = anonymous.json().await.expect("json error");
        assert_eq!(error["error"], "MissingAuthenticationTokenException", "{protected}: {error}");
        let signed = signed_request(&http, "GET", &url, &[], &[], b"", SECRET);
        let answer = signed.send().await.expect("answered");
        assert_eq!(answer.status(), 200, "{protected}");
    }
    drop(spillway);

    let dir = tempfile::tempdir().unwrap();
    let spillway = start(dir.path(), &auth_yaml_with("    open_routes: [metrics]\n", ""));
    let metrics = http.get(format!("{}/metrics", spillway.endpoint)).send().await.expect("answered");
    assert_eq!(metrics.status(), 200);
    let status = http.get(format!("{}/api/status", spillway.endpoint)).send().await.expect("answered");
    assert_eq!(status.status(), 403, "only the listed group is open");
}

/// Eight anonymous puts declare 6 MB bodies and never send them: with a 48 MiB body budget they
/// would hold nearly all of it (until the request deadline) if memory were reserved before the
/// signature check. A signed 2 MiB PutRecordBatch must go through.
#[tokio::test]
async fn anonymous_stalled_bodies_take_no_body_memory_from_signed_puts() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = auth_yaml_with("", "limits:\n  max_inflight_request_mib: 48\n  body_wait_ms: 1000\n");
    let spillway = start(dir.path(), &yaml);
    let address = host_of(&spillway.endpoint);
    let mut stalled = Vec::new();
    for index in 0..8 {
        let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connect");
        let head = if index % 2 == 0 {
            format!(
                "POST / HTTP/1.1\r\nhost: {address}\r\nx-amz-target: Firehose_20150804.PutRecordBatch\r\n\
                 content-type: application/x-amz-json-1.1\r\ncontent-length: 6000000\r\n\r\n{{\"Deli"
            )
        } else {
            format!(
                "POST /streams/app-logs/records HTTP/1.1\r\nhost: {address}\r\n\
                 content-type: application/x-ndjson\r\ncontent-length: 6000000\r\n\r\n{{\"a\""
            )
        };
        socket.write_all(head.as_bytes()).await.expect("send head");
        stalled.push(socket);
    }
    // The refusals, where they come: read all at once, for at most 3 s (the old code reserved
    // the budget and held it until the 30 s request deadline instead of answering).
    let reads = stalled.iter_mut().map(|socket| async move {
        let mut answer = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(3), socket.read(&mut answer)).await {
            Ok(Ok(read)) => String::from_utf8_lossy(&answer[..read]).into_owned(),
            other => format!("no answer: {other:?}"),
        }
    });
    let answers = futures::future::join_all(reads).await;

    let signed = client(&spillway.endpoint, KEY_ID, SECRET).await;
    let line = format!("{}\n", "x".repeat(4 * 1024 + 99));
    let records: Vec<Record> =
        (0..500).map(|_| Record::builder().data(Blob::new(line.clone())).build().expect("record")).collect();
    let output = signed
        .put_record_batch()
        .delivery_stream_name("app-logs")
        .set_records(Some(records))
        .send()
        .await
        .expect("a signed 2 MiB batch is accepted");
    assert_eq!(output.failed_put_count(), 0);
    for answer in answers {
        assert!(answer.contains("MissingAuthenticationTokenException"), "{answer}");
    }
    drop(stalled);
}
