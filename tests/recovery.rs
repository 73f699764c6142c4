//! Crash artefacts in the WAL, end to end: a torn last frame is cut off and everything before
//! it delivered; a corrupt frame in the middle stops that stream with the segment and offset
//! named, keeps its data, and refuses further puts instead of piling them up.

mod common;

use std::io::Write;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, WAIT, files_under, local_objects, local_yaml};

async fn put_batches(spillway: &Spillway, batches: usize) -> Vec<u8> {
    let client = spillway.client().await;
    let mut expected = Vec::new();
    for batch in 0..batches {
        let data: Vec<Vec<u8>> =
            (0..50).map(|index| format!("{{\"b\":{batch},\"i\":{index}}}\n").into_bytes()).collect();
        expected.extend(data.concat());
        let records = data.into_iter().map(|data| Record::builder().data(Blob::new(data)).build().unwrap()).collect();
        client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await.unwrap();
    }
    expected
}

/// The stream's segment files, oldest first (the folder also holds the committed mark).
fn wal_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let files = files_under(&dir.join("data/streams/app-logs/wal"));
    files.into_iter().filter(|path| path.extension().is_some_and(|ext| ext == "wal")).collect()
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_every_acknowledged_record_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = local_yaml(128, 900, "");
    let spillway = Spillway::start(dir.path(), &yaml);
    let expected = put_batches(&spillway, 10).await;
    spillway.kill();

    // A crash in the middle of writing the next frame: a header promising more than is there.
    let last = wal_segments(dir.path()).pop().expect("a wal segment");
    let mut file = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']).unwrap();
    drop(file);

    let restarted = Spillway::start(dir.path(), &yaml);
    let log_path = restarted.log.clone();
    assert_eq!(restarted.terminate(), 0);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("cut off a torn wal tail"), "{log}");
    let delivered = common::concat_in_sent_order(local_objects(&dir.path().join("out")), &expected);
    assert_eq!(delivered, expected);
}

#[tokio::test]
async fn a_corrupt_segment_stops_its_stream_naming_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("wal: {{ segment_mib: 1 }}\n{}", local_yaml(128, 900, ""));
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    // ~3 MiB in 100 KiB records: several 1 MiB segments.
    for _ in 0..6 {
        let records = (0..5).map(|_| Record::builder().data(Blob::new(vec![b'r'; 100_000])).build().unwrap()).collect();
        client.put_record_batch().delivery_stream_name("app-logs").set_records(Some(records)).send().await.unwrap();
    }
    spillway.kill();
    let segments = wal_segments(dir.path());
    assert!(segments.len() >= 2, "{segments:?}");
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(first, &bytes).unwrap();

    let restarted = Spillway::start(dir.path(), &yaml);
    let health_url = format!("{}/ready", restarted.endpoint);
    let http = reqwest::Client::new();
    let body = {
        let mut body = String::new();
        for _ in 0..(WAIT.as_millis() / 50) {
            let response = http.get(&health_url).send().await.unwrap();
            if response.status() == 503 {
                body = response.text().await.unwrap();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        body
    };
    let segment_name = first.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        body.contains("stream app-logs stopped") && body.contains(&segment_name) && body.contains("offset 0"),
        "{body:?}"
    );
    let put = restarted
        .client()
        .await
        .put_record()
        .delivery_stream_name("app-logs")
        .record(Record::builder().data(Blob::new("x")).build().unwrap())
        .send()
        .await;
    let error = put.expect_err("a stopped stream refuses puts");
    assert_eq!(aws_sdk_firehose::error::ProvideErrorMetadata::code(&error), Some("InternalFailure"), "{error:?}");
    let log_path = restarted.log.clone();
    drop(restarted);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("delivery stopped") && log.contains(&segment_name), "{log}");
    assert!(first.exists(), "the corrupt segment is kept for inspection, never skipped");
}
