//! A damaged WAL stops at most its own stream, end to end with the real binary: a zero-filled
//! tail after a power loss is cut and every record delivered; damage in acknowledged data stops
//! only that stream (the other delivers, `/ready` names segment and offset, puts are refused),
//! and `spillway wal inspect` / `quarantine` let it start again, delivering every record outside
//! the range it reports exactly once.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, WAIT, eventually, files_under, local_objects, local_yaml};

const RECORDS_PER_BATCH: usize = 50;

/// `app-logs` (stream A, sink `out/`) and `other` (stream B, sink `out-other/`, 1 s interval).
fn two_streams_yaml() -> String {
    local_yaml(
        128,
        900,
        "\x20 - name: other\n\
         \x20   buffering: { size_mib: 128, interval_seconds: 1 }\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out-other\n",
    )
}

fn line(stream: &str, batch: usize, index: usize) -> String {
    format!("{{\"s\":\"{stream}\",\"b\":{batch},\"i\":{index}}}\n")
}

/// Put `batches` batches of 50 records numbered from `first_batch`; returns the lines sent.
async fn put_batches(spillway: &Spillway, stream: &str, first_batch: usize, batches: usize) -> Vec<String> {
    let client = spillway.client().await;
    let mut sent = Vec::new();
    for batch in first_batch..first_batch + batches {
        let lines: Vec<String> = (0..RECORDS_PER_BATCH).map(|index| line(stream, batch, index)).collect();
        let records =
            lines.iter().map(|data| Record::builder().data(Blob::new(data.clone())).build().unwrap()).collect();
        client.put_record_batch().delivery_stream_name(stream).set_records(Some(records)).send().await.unwrap();
        sent.extend(lines);
    }
    sent
}

/// Every delivered line under `out` with how often it was delivered.
fn delivered_lines(out: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, body) in local_objects(out) {
        for line in String::from_utf8(body).unwrap().split_inclusive('\n') {
            *counts.entry(line.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn wal_segments(dir: &Path, stream: &str) -> Vec<PathBuf> {
    files_under(&dir.join(format!("data/streams/{stream}/wal")))
}

/// Run `spillway wal <args>` in `dir`; returns (exit code, stdout + stderr).
fn wal_command(dir: &Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("wal")
        .args(args)
        .args(["--config", "spillway.yaml"])
        .current_dir(dir)
        .output()
        .expect("run spillway wal");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// Offsets where each frame of a segment starts (frame = u32 LE payload length, u32 crc, payload).
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        offsets.push(offset);
        let payload_len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + payload_len;
    }
    offsets
}

#[tokio::test]
async fn a_zero_filled_tail_after_a_power_loss_is_cut_and_every_record_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = two_streams_yaml();
    let spillway = Spillway::start(dir.path(), &yaml);
    let sent_a = put_batches(&spillway, "app-logs", 0, 10).await;
    let sent_b = put_batches(&spillway, "other", 0, 2).await;
    spillway.kill();

    // A power loss: the file was extended, its data never reached the disk.
    let last = wal_segments(dir.path(), "app-logs").pop().expect("a wal segment");
    std::fs::OpenOptions::new().append(true).open(&last).unwrap().write_all(&[0u8; 4096]).unwrap();

    let restarted = Spillway::start(dir.path(), &yaml);
    let log_path = restarted.log.clone();
    assert_eq!(restarted.terminate(), 0);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("cut off a torn wal tail"), "{log}");
    let expected_a: BTreeMap<String, usize> = sent_a.into_iter().map(|line| (line, 1)).collect();
    assert_eq!(delivered_lines(&dir.path().join("out")), expected_a);
    let expected_b: BTreeMap<String, usize> = sent_b.into_iter().map(|line| (line, 1)).collect();
    assert_eq!(delivered_lines(&dir.path().join("out-other")), expected_b);
}

#[tokio::test]
async fn damage_in_acknowledged_data_stops_only_its_stream_until_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = two_streams_yaml();
    let spillway = Spillway::start(dir.path(), &yaml);
    let sent_a = put_batches(&spillway, "app-logs", 0, 10).await;
    spillway.kill();

    // Flip bytes inside the payload of a frame in the middle of A's (only, last) segment.
    let segment = wal_segments(dir.path(), "app-logs").pop().expect("a wal segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let offsets = frame_offsets(&bytes);
    assert_eq!(offsets.len(), 10, "one frame per batch");
    let damaged_offset = offsets[4];
    for byte in &mut bytes[damaged_offset + 40..damaged_offset + 44] {
        *byte ^= 0xff;
    }
    std::fs::write(&segment, &bytes).unwrap();
    let segment_name = segment.file_name().unwrap().to_string_lossy().to_string();

    // The process runs; B works; A is stopped with segment and offset named.
    let restarted = Spillway::start(dir.path(), &yaml);
    let sent_b = put_batches(&restarted, "other", 0, 2).await;
    let out_other = dir.path().join("out-other");
    eventually(WAIT, "stream other delivers", || (delivered_lines(&out_other).len() == sent_b.len()).then_some(()))
        .await;
    let health = reqwest::get(format!("{}/ready", restarted.endpoint)).await.unwrap();
    assert_eq!(health.status(), 503);
    let body = health.text().await.unwrap();
    assert!(
        body.contains("stream app-logs stopped")
            && body.contains(&segment_name)
            && body.contains(&format!("offset {damaged_offset}"))
            && !body.contains("stream other"),
        "{body}"
    );
    let refused = restarted
        .client()
        .await
        .put_record()
        .delivery_stream_name("app-logs")
        .record(Record::builder().data(Blob::new("x")).build().unwrap())
        .send()
        .await
        .expect_err("a stopped stream refuses puts");
    assert_eq!(aws_sdk_firehose::error::ProvideErrorMetadata::code(&refused), Some("InternalFailure"));
    assert_eq!(restarted.terminate(), 0);
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "the damaged segment is kept as it was");

    // The operator looks, then sets the damaged range aside.
    let (code, inspection) = wal_command(dir.path(), &["inspect", "--stream", "app-logs"]);
    assert_eq!(code, 0, "{inspection}");
    assert!(
        inspection.contains(&segment_name) && inspection.contains(&format!("DAMAGED at offset {damaged_offset}")),
        "{inspection}"
    );
    let (code, unknown) = wal_command(dir.path(), &["inspect", "--stream", "nope"]);
    assert_eq!(code, 1, "{unknown}");
    let (code, quarantined) = wal_command(dir.path(), &["quarantine", "--stream", "app-logs"]);
    assert_eq!(code, 0, "{quarantined}");
    let range = quarantined
        .split("set aside sequences ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|range| range.split_once(".."))
        .map(|(start, end)| (start.parse::<usize>().unwrap(), end.parse::<usize>().unwrap()))
        .unwrap_or_else(|| panic!("no range in {quarantined:?}"));
    assert_eq!(range, (4 * RECORDS_PER_BATCH, 5 * RECORDS_PER_BATCH), "exactly the damaged frame: {quarantined}");
    assert!(dir.path().join("data/streams/app-logs/wal-quarantine").join(&segment_name).exists());
    let (code, again) = wal_command(dir.path(), &["quarantine", "--stream", "app-logs"]);
    assert_eq!(code, 1, "nothing left to do: {again}");

    // A starts again, delivers every record outside the range exactly once, and takes new puts.
    let healthy = Spillway::start(dir.path(), &yaml);
    let health = reqwest::get(format!("{}/ready", healthy.endpoint)).await.unwrap();
    assert_eq!(health.status(), 200);
    let sent_after = put_batches(&healthy, "app-logs", 100, 1).await;
    let log_path = healthy.log.clone();
    assert_eq!(healthy.terminate(), 0);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("skipping wal records an operator set aside"), "{log}");
    let expected: BTreeMap<String, usize> = sent_a
        .into_iter()
        .enumerate()
        .filter(|(sequence, _)| !(range.0..range.1).contains(sequence))
        .map(|(_, line)| line)
        .chain(sent_after)
        .map(|line| (line, 1))
        .collect();
    assert_eq!(delivered_lines(&dir.path().join("out")), expected);
}
