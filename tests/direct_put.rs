//! Direct PUT end to end: spillway started from YAML as a process, the real `aws-sdk-firehose`
//! client sending, gzip objects read back from the local sink folder.

mod common;

use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, WAIT, eventually, local_objects, local_yaml};

/// Wait (bounded) until the local sink folder holds at least one object; return them all.
async fn first_objects(out: &std::path::Path, what: &str) -> Vec<(String, Vec<u8>)> {
    eventually(WAIT, what, || {
        let objects = local_objects(out);
        (!objects.is_empty()).then_some(objects)
    })
    .await
}

fn record(data: impl Into<Vec<u8>>) -> Record {
    Record::builder().data(Blob::new(data)).build().expect("record")
}

fn json_record(index: usize) -> Vec<u8> {
    format!("{{\"index\":{index},\"message\":\"héllo wörld\",\"level\":\"info\"}}\n").into_bytes()
}

const KEY_PATTERN: &str = r"^\d{4}/\d{2}/\d{2}/\d{2}/app-logs-1-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-[0-9a-f-]{36}\.gz$";

fn assert_firehose_key(key: &str) {
    let parts: Vec<&str> = key.split('/').collect();
    assert_eq!(parts.len(), 5, "key {key} has the yyyy/MM/dd/HH/ prefix");
    assert!(parts[..4].iter().all(|part| part.chars().all(|c| c.is_ascii_digit())), "{key} vs {KEY_PATTERN}");
    let name = parts[4];
    assert!(name.starts_with("app-logs-1-") && name.ends_with(".gz"), "{key} vs {KEY_PATTERN}");
    let uuid = &name["app-logs-1-".len() + 20..name.len() - 3];
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{key} ends in a uuid");
}

#[tokio::test]
async fn batches_and_single_records_arrive_byte_exact_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &local_yaml(128, 900, ""));
    let client = spillway.client().await;

    let batch: Vec<Vec<u8>> = (0..500).map(json_record).collect();
    let output = client
        .put_record_batch()
        .delivery_stream_name("app-logs")
        .set_records(Some(batch.iter().cloned().map(record).collect()))
        .send()
        .await
        .expect("500-record batch accepted");
    assert_eq!(output.failed_put_count(), 0);
    assert_eq!(output.request_responses().len(), 500);
    let ids: std::collections::BTreeSet<&str> =
        output.request_responses().iter().filter_map(|entry| entry.record_id()).collect();
    assert_eq!(ids.len(), 500, "every record gets its own id");
    assert_eq!(output.encrypted(), Some(false));

    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let largest = vec![b'z'; 1_024_000];
    let mut expected: Vec<u8> = batch.concat();
    for data in [binary, "plain utf-8 text: ✓ ünïcode\n".as_bytes().to_vec(), largest] {
        let single = client.put_record().delivery_stream_name("app-logs").record(record(data.clone())).send().await;
        assert!(!single.expect("single record accepted").record_id().is_empty());
        expected.extend(data);
    }

    assert_eq!(spillway.terminate(), 0, "SIGTERM exits 0");
    let objects = local_objects(&dir.path().join("out"));
    assert_eq!(
        objects.len(),
        1,
        "one buffer flushed at shutdown: {:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert_firehose_key(&objects[0].0);
    assert_eq!(objects[0].1, expected, "objects decompress to exactly the bytes sent, in order");
}

#[tokio::test]
async fn every_refusal_has_firehose_error_type_and_loses_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &local_yaml(128, 900, ""));
    let client = spillway.client().await;

    let oversize =
        client.put_record().delivery_stream_name("app-logs").record(record(vec![b'x'; 1_024_001])).send().await;
    // Model-constraint violations are ValidationException, worded as AWS words them.
    let error = oversize.expect_err("a record over 1,000 KiB is refused").into_service_error();
    assert_eq!(error.code(), Some("ValidationException"), "{error:?}");
    assert!(error.message().unwrap_or_default().contains("1024000"), "{error:?}");

    let too_many: Vec<Record> = (0..501).map(|index| record(json_record(index))).collect();
    let error = client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(too_many)).send().await;
    assert_eq!(error.expect_err("501 records").into_service_error().code(), Some("ValidationException"));

    let too_big: Vec<Record> = (0..5).map(|_| record(vec![b'y'; 1_000_000])).collect();
    let error = client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(too_big)).send().await;
    let error = error.expect_err("5 MB in one batch");
    assert!(error.as_service_error().is_some_and(|error| error.is_invalid_argument_exception()), "{error:?}");

    let error = client.put_record().delivery_stream_name("no-such-stream").record(record("x")).send().await;
    let error = error.expect_err("unknown stream").into_service_error();
    assert!(error.is_resource_not_found_exception(), "{error:?}");
    assert!(error.message().unwrap_or_default().contains("no-such-stream"));

    let http = reqwest::Client::new();
    let raw = |target: &'static str, body: &'static str| {
        http.post(&spillway.endpoint)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", target)
            .body(body)
            .send()
    };
    for (body, what) in [
        ("{\"DeliveryStreamName\": \"app-logs\", \"Record\": {", "malformed JSON"),
        ("{\"DeliveryStreamName\": \"app-logs\", \"Record\": {\"Data\": \"not base64!!\"}}", "bad base64"),
    ] {
        let response = raw("Firehose_20150804.PutRecord", body).await.unwrap();
        assert_eq!(response.status(), 400, "{what}");
        assert_eq!(response.headers()["x-amzn-errortype"], "SerializationException", "{what}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["__type"], "SerializationException", "{what}");
    }
    let response = raw("Firehose_20150804.CreateDeliveryStream", "{}").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["__type"], "ValidationException");
    let response = raw("Firehose_20150804.NoSuchOperation", "{}").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["__type"], "UnknownOperationException");

    let good = b"{\"still\":\"delivered\"}\n".to_vec();
    client.put_record().delivery_stream_name("app-logs").record(record(good.clone())).send().await.unwrap();
    assert_eq!(spillway.terminate(), 0);
    let objects = local_objects(&dir.path().join("out"));
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].1, good, "refused calls append nothing; the good record is delivered");
}

#[tokio::test]
async fn a_full_size_buffer_flushes_before_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &local_yaml(1, 900, ""));
    let client = spillway.client().await;
    let chunk = vec![b'a'; 100_000];
    for _ in 0..3 {
        let records = (0..5).map(|_| record(chunk.clone())).collect();
        client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await.unwrap();
    }
    let out = dir.path().join("out");
    let objects = first_objects(&out, "a size-triggered object").await;
    assert!(objects[0].1.len() >= 1 << 20, "flushed at the 1 MiB hint, got {} bytes", objects[0].1.len());
    assert_eq!(spillway.terminate(), 0);
    let total: usize = local_objects(&out).iter().map(|object| object.1.len()).sum();
    assert_eq!(total, 1_500_000);
}

#[tokio::test]
async fn an_idle_stream_flushes_when_its_interval_passes() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &local_yaml(128, 1, ""));
    let client = spillway.client().await;
    client.put_record().delivery_stream_name("app-logs").record(record("one\n")).send().await.unwrap();
    let out = dir.path().join("out");
    let objects = first_objects(&out, "an interval-triggered object").await;
    assert_eq!(objects[0].1, b"one\n");
    assert_eq!(spillway.terminate(), 0);
}

#[tokio::test]
async fn zero_interval_delivers_as_soon_as_possible_with_newline_delimiters() {
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        local_yaml(5, 0, "").replace("    sink:\n", "    processing: { record_delimiter: newline }\n    sink:\n");
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let records = vec![record("{\"a\":1}"), record("{\"b\":2}")];
    client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await.unwrap();
    let out = dir.path().join("out");
    let objects = first_objects(&out, "an immediate object").await;
    assert_eq!(objects[0].1, b"{\"a\":1}\n{\"b\":2}\n");
    assert_eq!(spillway.terminate(), 0);
}

#[tokio::test]
async fn sigkill_after_acknowledgement_then_restart_delivers_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = local_yaml(128, 900, "");
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let mut expected = Vec::new();
    for batch in 0..20 {
        let data: Vec<Vec<u8>> = (0..100).map(|index| json_record(batch * 100 + index)).collect();
        expected.extend(data.iter().cloned());
        let records = data.into_iter().map(record).collect();
        client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await.unwrap();
    }
    spillway.kill();
    assert!(local_objects(&dir.path().join("out")).is_empty(), "nothing flushed before the crash");

    let restarted = Spillway::start(dir.path(), &yaml);
    assert_eq!(restarted.terminate(), 0);
    let delivered = common::concat_in_sent_order(local_objects(&dir.path().join("out")), &expected.concat());
    assert_eq!(delivered, expected.concat(), "every acknowledged record, once, in order");
}

#[tokio::test]
async fn list_and_describe_answer_from_the_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &local_yaml(7, 42, ""));
    let client = spillway.client().await;
    let list = client.list_delivery_streams().send().await.unwrap();
    assert_eq!(list.delivery_stream_names(), ["app-logs"]);
    assert!(!list.has_more_delivery_streams());
    let description = client.describe_delivery_stream().delivery_stream_name("app-logs").send().await.unwrap();
    let description = description.delivery_stream_description().unwrap();
    assert_eq!(description.delivery_stream_status().as_str(), "ACTIVE");
    let s3 = description.destinations()[0].extended_s3_destination_description().unwrap();
    let hints = s3.buffering_hints().unwrap();
    assert_eq!((hints.size_in_mbs(), hints.interval_in_seconds()), (Some(7), Some(42)));
    assert_eq!(s3.compression_format().as_str(), "GZIP");
    let missing = client.describe_delivery_stream().delivery_stream_name("nope").send().await;
    assert!(missing.expect_err("unknown").into_service_error().is_resource_not_found_exception());
    assert_eq!(spillway.terminate(), 0);
}

#[tokio::test]
async fn ndjson_over_http_is_accepted_and_bad_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        local_yaml(5, 900, "").replace("    sink:\n", "    processing: { record_delimiter: newline }\n    sink:\n");
    let spillway = Spillway::start(dir.path(), &yaml);
    let http = reqwest::Client::new();
    let url = format!("{}/streams/app-logs/records", spillway.endpoint);
    let response = http.post(&url).body("{\"a\":1}\n{\"b\":2}\n").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["accepted"], 2);
    let bad = http.post(&url).body("{\"c\":3}\n{oops\n").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("line 2"));
    let unknown = http.post(format!("{}/streams/nope/records", spillway.endpoint)).body("{}").send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let metrics = http.get(format!("{}/metrics", spillway.endpoint)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("spillway_incoming_records_total{stream=\"app-logs\"} 2"), "{metrics}");
    assert_eq!(spillway.terminate(), 0);
    let objects = local_objects(&dir.path().join("out"));
    assert_eq!(objects[0].1, b"{\"a\":1}\n{\"b\":2}\n", "the refused request appended nothing");
}
