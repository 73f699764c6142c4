//! Poison records end to end (issue 22, item 2): a record or a request body nested far deeper
//! than any real one (10,000 and 100,000 levels) must never take the process down. Records that
//! a stage of delivery must parse go to the error output with the reason while their neighbours
//! are delivered, and the process starts again cleanly; bodies and NDJSON lines are refused at
//! intake with a 400 naming the problem. The bound is `spillway_sink_api::MAX_JSON_DEPTH` (100).

mod common;

use std::collections::BTreeMap;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use base64::Engine;
use common::{Spillway, files_under, local_objects};

/// JSON nested `depth` arrays deep inside a field of an object that has an `id` and a `service`.
fn deep_record(id: u64, depth: usize) -> String {
    format!(r#"{{"id":{id},"service":"svc","deep":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth))
}

fn stream_yaml(processing: &str, format: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         {processing}\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 60 }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     prefix: 'logs/'\n\
         \x20     error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n\
         {format}"
    )
}

async fn put(client: &aws_sdk_firehose::Client, records: &[String]) {
    let records = records.iter().map(|data| Record::builder().data(Blob::new(data.as_bytes())).build().unwrap());
    let output = client
        .put_record_batch()
        .delivery_stream_name("app-logs")
        .set_records(Some(records.collect()))
        .send()
        .await
        .expect("the put is acknowledged: Direct PUT records are opaque bytes");
    assert_eq!(output.failed_put_count(), 0);
}

/// Error records under `errors/<type>/`: (type, errorCode, errorMessage, the record as sent).
fn error_records(dir: &std::path::Path) -> Vec<(String, String, String, String)> {
    let mut found = Vec::new();
    for (key, body) in local_objects(&dir.join("out")) {
        let Some(rest) = key.strip_prefix("errors/") else { continue };
        let output_type = rest.split('/').next().unwrap_or_default().to_string();
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let line: serde_json::Value = serde_json::from_slice(line).expect("an error record");
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            found.push((
                output_type.clone(),
                line["errorCode"].as_str().unwrap().to_string(),
                line["errorMessage"].as_str().unwrap().to_string(),
                String::from_utf8(raw).unwrap(),
            ));
        }
    }
    found
}

/// Ids of the JSON lines delivered under `logs/`, with how often each came.
fn delivered_ids(dir: &std::path::Path) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    for (key, body) in local_objects(&dir.join("out")) {
        if !key.starts_with("logs/") {
            continue;
        }
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let line: serde_json::Value = serde_json::from_slice(line).expect("a JSON line");
            *ids.entry(line["id"].as_u64().unwrap()).or_default() += 1;
        }
    }
    ids
}

/// Put neighbours around one 10,000-deep record (~20 KB), stop, and start again: both runs
/// exit cleanly, which they did not when jaq overflowed its stack at every start.
async fn put_poison_between_neighbours(dir: &std::path::Path, yaml: &str) -> String {
    let spillway = Spillway::start(dir, yaml);
    let client = spillway.client().await;
    let poison = deep_record(2, 10_000);
    assert!(poison.len() > 20_000);
    put(&client, &[deep_record(1, 3), poison.clone(), deep_record(3, 3)]).await;
    assert_eq!(spillway.terminate(), 0, "the process delivered and stopped cleanly");
    let again = Spillway::start(dir, yaml);
    assert_eq!(again.terminate(), 0, "and starts again cleanly");
    poison
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_record_through_a_jq_transform_is_set_aside_and_its_neighbours_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let processing = "    processing:\n\
                      \x20     record_delimiter: newline\n\
                      \x20     transforms: [ { type: jq, expr: '{id, service}' } ]\n";
    let poison = put_poison_between_neighbours(dir.path(), &stream_yaml(processing, "")).await;
    assert_eq!(delivered_ids(dir.path()), BTreeMap::from([(1, 1), (3, 1)]));
    assert_eq!(
        error_records(dir.path()),
        [(
            "processing-failed".to_string(),
            "Jq.RecordTooDeep".to_string(),
            "jq cannot read the record: JSON nested deeper than 100 levels (the bracket at byte 130 opens level 101)"
                .to_string(),
            poison
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_record_has_no_partition_keys_and_its_neighbours_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    // A jq expression (not a plain path): jaq reads the record.
    let processing = "    processing:\n\
                      \x20     record_delimiter: newline\n\
                      \x20     dynamic_partitioning: { keys: { service: '.service | ascii_upcase' } }\n";
    let yaml =
        stream_yaml(processing, "").replace("prefix: 'logs/'", "prefix: 'logs/!{partitionKeyFromQuery:service}/'");
    let poison = put_poison_between_neighbours(dir.path(), &yaml).await;
    assert_eq!(delivered_ids(dir.path()), BTreeMap::from([(1, 1), (3, 1)]));
    assert_eq!(
        error_records(dir.path()),
        [(
            "metadata-extraction-failed".to_string(),
            "DynamicPartitioning.MetadataExtractionFailed".to_string(),
            "the record cannot be read: JSON nested deeper than 100 levels (the bracket at byte 130 opens level 101)"
                .to_string(),
            poison
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_record_is_refused_by_the_parquet_encoder_and_its_neighbours_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let format = "\x20     format:\n\
                  \x20       type: parquet\n\
                  \x20       compression: uncompressed\n\
                  \x20       schema: { columns: [ { name: id, type: bigint }, { name: service, type: string } ] }\n";
    let yaml = stream_yaml("", format);
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let poison = deep_record(2, 10_000);
    let neighbour = |id: u64| format!(r#"{{"id":{id},"service":"neighbour-{id}"}}"#);
    put(&client, &[neighbour(1), poison.clone(), neighbour(3)]).await;
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(Spillway::start(dir.path(), &yaml).terminate(), 0);

    assert_eq!(
        error_records(dir.path()),
        [(
            "format-conversion-failed".to_string(),
            "DataFormatConversion.ParseError".to_string(),
            "the record cannot be read: JSON nested deeper than 100 levels (the bracket at byte 130 opens level 101)"
                .to_string(),
            poison
        )]
    );
    // Uncompressed, the neighbours' strings are in the one Parquet object as written.
    let objects: Vec<Vec<u8>> = files_under(&dir.path().join("out/logs"))
        .into_iter()
        .filter(|path| path.to_string_lossy().ends_with(".parquet"))
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    assert_eq!(objects.len(), 1);
    let contains = |needle: &[u8]| objects[0].windows(needle.len()).any(|window| window == needle);
    assert!(objects[0].starts_with(b"PAR1") && contains(b"neighbour-1") && contains(b"neighbour-3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_ndjson_lines_nested_too_deep_are_refused_and_the_process_lives() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &stream_yaml("", ""));
    let http = reqwest::Client::new();
    let api = |target: &str, body: String| {
        http.post(&spillway.endpoint)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("Firehose_20150804.{target}"))
            .body(body)
            .send()
    };
    // 200 KB nested 100,000 deep, in a field the decoder skips: it killed the process.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies = [
        ("PutRecordBatch", format!(r#"{{"DeliveryStreamName":"app-logs","Records":[{{"Data":"eA=="}}],"X":{deep}}}"#)),
        ("PutRecord", format!(r#"{{"DeliveryStreamName":"app-logs","Record":{{"Data":"eA==","X":{deep}}}}}"#)),
        ("CreateDeliveryStream", format!(r#"{{"DeliveryStreamName":"other","Tags":{deep}}}"#)),
    ];
    for (target, body) in bodies {
        assert!(body.len() > 200_000);
        let response = api(target, body).await.unwrap();
        assert_eq!(response.status(), 400, "{target}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["__type"], "SerializationException", "{target}");
        let message = json["message"].as_str().or(json["Message"].as_str()).unwrap_or_default().to_string();
        assert!(message.contains("JSON nested deeper than 100 levels"), "{target}: {json}");
    }

    // NDJSON: refused at intake, naming the line (acknowledging it could only fail it later).
    let ndjson = format!("{}\n{}\n", deep_record(1, 3), deep_record(2, 10_000));
    let response =
        http.post(format!("{}/streams/app-logs/records", spillway.endpoint)).body(ndjson).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "InvalidArgumentException");
    assert_eq!(
        json["message"], "line 2: JSON nested deeper than 100 levels (the bracket at byte 130 opens level 101)",
        "{json}"
    );

    // Alive and taking records.
    let client = spillway.client().await;
    put(&client, &[deep_record(7, 3)]).await;
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(delivered_ids(dir.path()), BTreeMap::from([(7, 1)]));
}
