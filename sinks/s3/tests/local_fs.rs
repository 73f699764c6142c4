//! The S3 sink against the local filesystem (`file://`): conformance, the Firehose key shape,
//! compression round trips, multipart uploads and error output. No services needed.

use std::io::Read;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use spillway_sink_api::testkit::{ReadBack, check_conformance, encode_batch, sample_batch, sample_records};
use spillway_sink_api::{Batch, Compression, ErrorOutput, PartitionKeys, Record, Sink};
use spillway_sink_s3::{S3Sink, S3SinkConfig};
use uuid::Uuid;

fn config(dir: &Path, extra: serde_json::Value) -> S3SinkConfig {
    let mut value = serde_json::json!({ "url": format!("file://{}", dir.display()) });
    if let (Some(object), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    serde_json::from_value(value).expect("config deserializes")
}

fn build(dir: &Path, extra: serde_json::Value) -> S3Sink {
    let config = config(dir, extra);
    assert_eq!(config.validate(), Vec::new());
    config.build("stream").expect("sink builds")
}

/// Every regular file under `dir`, as (key relative to `dir`, path).
fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let key = path.strip_prefix(dir).expect("under dir").to_string_lossy().replace('\\', "/");
            found.push((key, path));
        }
    }
    found.sort();
    found
}

fn decode(compression: Compression, bytes: &[u8]) -> Vec<u8> {
    match compression {
        Compression::None => bytes.to_vec(),
        Compression::Gzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("gunzip");
            out
        }
        Compression::Zstd => zstd::decode_all(bytes).expect("unzstd"),
        // Read back by their own readers in tests/compression.rs (zipfile, python-snappy).
        other => panic!("this test writes none, gzip and zstd only, not {other:?}"),
    }
}

fn concatenated(records: &[Record]) -> Vec<u8> {
    records.iter().flat_map(|record| record.data.to_vec()).collect()
}

struct LocalReadBack {
    dir: PathBuf,
    compression: Compression,
}

#[async_trait]
impl ReadBack for LocalReadBack {
    async fn read_back(&self, batch: &Batch) -> Vec<Vec<u8>> {
        let id = batch.id.hyphenated().to_string();
        files(&self.dir)
            .into_iter()
            .filter(|(key, _)| key.contains(&id))
            .filter(|(key, _)| !key.contains("failed/"))
            .map(|(_, path)| decode(self.compression, &std::fs::read(path).expect("read object")))
            .collect()
    }

    async fn read_error_output(&self, batch: &Batch, error_output_type: &str) -> Vec<Vec<u8>> {
        let id = batch.id.hyphenated().to_string();
        files(&self.dir)
            .into_iter()
            .filter(|(key, _)| key.contains(&id) && key.starts_with(error_output_type))
            .map(|(_, path)| std::fs::read(path).expect("read error object"))
            .collect()
    }
}

fn matches_firehose_gzip_key(key: &str) -> bool {
    // ^\d{4}/\d{2}/\d{2}/\d{2}/stream-1-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-[0-9a-f-]{36}\.gz$
    let digits = |text: &str, count: usize| text.len() == count && text.chars().all(|c| c.is_ascii_digit());
    let Some(name) = key.strip_suffix(".gz") else { return false };
    let parts: Vec<&str> = name.splitn(5, '/').collect();
    let [year, month, day, hour, name] = parts.as_slice() else { return false };
    if !(digits(year, 4) && digits(month, 2) && digits(day, 2) && digits(hour, 2)) {
        return false;
    }
    let Some(rest) = name.strip_prefix("stream-1-") else { return false };
    let fields: Vec<&str> = rest.splitn(7, '-').collect();
    let [y, mo, d, h, mi, s, uuid] = fields.as_slice() else { return false };
    let widths = [(y, 4), (mo, 2), (d, 2), (h, 2), (mi, 2), (s, 2)];
    widths.iter().all(|(text, count)| digits(text, *count))
        && uuid.len() == 36
        && uuid.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase() || c == '-')
}

#[tokio::test]
async fn local_sink_passes_conformance() {
    for compression in ["none", "gzip", "zstd"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = build(dir.path(), serde_json::json!({ "compression": compression }));
        let compression: Compression =
            serde_json::from_value(serde_json::json!(compression)).expect("compression parses");
        let reader = LocalReadBack { dir: dir.path().to_path_buf(), compression };
        let factory = sink.encoder_factory();
        check_conformance(&sink, &sink, &*factory, &reader, "stream", PartitionKeys::new()).await;
    }
}

#[tokio::test]
async fn gzip_object_has_the_firehose_key_and_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = build(dir.path(), serde_json::json!({ "compression": "gzip" }));
    let batch = sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 20);
    sink.write(&batch).await.expect("write");

    let written = files(dir.path());
    assert_eq!(written.len(), 1, "{written:?}");
    let (key, path) = &written[0];
    assert!(matches_firehose_gzip_key(key), "{key}");
    assert_eq!(key, &sink.object_key(&batch).expect("key"));
    // sample_batch's oldest record arrived at 1_764_000_000_000 ms = 2025-11-24T16:00:00Z.
    let expected_name = format!("2025/11/24/16/stream-1-2025-11-24-16-00-00-{}.gz", batch.id);
    assert_eq!(key, &expected_name);
    assert_eq!(decode(Compression::Gzip, &std::fs::read(path).expect("read")), concatenated(&sample_records(20)));
}

#[tokio::test]
async fn prefix_expressions_and_file_extension_shape_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = build(
        dir.path(),
        serde_json::json!({
            "prefix": "logs/year=!{timestamp:yyyy}/month=!{timestamp:MM}/",
            "compression": "gzip",
            "file_extension": ".json.gz",
        }),
    );
    let batch = sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 3);
    sink.write(&batch).await.expect("write");
    let keys: Vec<String> = files(dir.path()).into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, vec![format!("logs/year=2025/month=11/stream-1-2025-11-24-16-00-00-{}.json.gz", batch.id)]);
}

#[tokio::test]
async fn large_objects_go_through_multipart_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = build(dir.path(), serde_json::json!({ "multipart_threshold_mib": 1, "part_size_mib": 5 }));
    // 6 MiB in 96 records of 64 KiB, each a different byte so part boundaries are checked.
    let records: Vec<Record> = (0..96u64)
        .map(|sequence| Record {
            data: Bytes::from(vec![b'a' + (sequence % 26) as u8; 64 * 1024]),
            arrival_ms: 1_764_000_000_000,
            sequence,
            output: 0,
        })
        .collect();
    let batch = encode_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), PartitionKeys::new(), &records);
    assert!(batch.payload.chunks().len() > 1, "the payload arrives in several chunks");
    sink.write(&batch).await.expect("multipart write");
    sink.write(&batch).await.expect("multipart replay");

    let written = files(dir.path());
    assert_eq!(written.len(), 1, "one object, no leftover staging files: {written:?}");
    let bytes = std::fs::read(&written[0].1).expect("read");
    assert_eq!(bytes.len(), 6 * 1024 * 1024);
    assert!(bytes == concatenated(&records), "multipart object differs from the records");
}

#[tokio::test]
async fn error_records_go_under_the_error_output_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = build(dir.path(), serde_json::json!({ "compression": "gzip" }));
    let batch = sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 2);
    let lines = b"{\"errorCode\":\"Lambda.FunctionError\"}\n".to_vec();
    sink.write_error_records(&batch, "processing-failed", lines.clone()).await.expect("error output");
    sink.write_error_records(&batch, "processing-failed", lines.clone()).await.expect("error output replay");

    let written = files(dir.path());
    let expected_key = format!("processing-failed/2025/11/24/16/stream-1-2025-11-24-16-00-00-{}", batch.id);
    assert_eq!(written.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(), vec![expected_key]);
    assert_eq!(std::fs::read(&written[0].1).expect("read"), lines, "error output is not compressed");
}

#[tokio::test]
async fn literal_error_prefix_keeps_error_types_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = build(dir.path(), serde_json::json!({ "error_output_prefix": "errors/" }));
    let batch = sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 2);
    sink.write_error_records(&batch, "processing-failed", b"a\n".to_vec()).await.expect("first type");
    sink.write_error_records(&batch, "format-conversion-failed", b"b\n".to_vec()).await.expect("second type");
    let keys: Vec<String> = files(dir.path()).into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|key| key.starts_with("errors/2025/11/24/16/stream-1-2025-11-24-16-00-00-")), "{keys:?}");
}

#[tokio::test]
async fn missing_partition_key_is_a_permanent_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = build(
        dir.path(),
        serde_json::json!({
            "prefix": "service=!{partitionKeyFromQuery:service}/",
            "error_output_prefix": "errors/!{firehose:error-output-type}/",
        }),
    );
    let batch = sample_batch(&*sink.encoder_factory(), "stream", Uuid::new_v4(), 2);
    let error = sink.write(&batch).await.expect_err("no partition keys");
    assert_eq!(error.code, "S3.InvalidKey");
    assert!(!error.is_retriable());

    let keys = PartitionKeys::from([("service".to_string(), "api".to_string())]);
    let batch = encode_batch(&*sink.encoder_factory(), "stream", batch.id, keys, &sample_records(2));
    sink.write(&batch).await.expect("write with keys");
    let written: Vec<String> = files(dir.path()).into_iter().map(|(key, _)| key).collect();
    assert_eq!(written, vec![format!("service=api/stream-1-2025-11-24-16-00-00-{}", batch.id)]);
}

#[tokio::test]
async fn healthcheck_passes_before_the_first_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = build(dir.path(), serde_json::json!({ "prefix": "not/yet/created/" }));
    sink.healthcheck().await.expect("healthcheck on an empty folder");
}
