//! A damaged WAL stops at most its own stream, end to end with the real binary: a zero-filled
//! tail after a power loss, or a put's frame cut short by a crash, is cut and every acknowledged
//! record delivered; damage in acknowledged data stops only that stream (the other delivers,
//! `/ready` names segment and offset, puts are refused), also when it is the last frame of the
//! active segment (a flipped byte after a crash, a file cut after a clean stop), and
//! `spillway wal inspect` / `quarantine` let it start again, delivering every record outside the
//! range it reports exactly once.

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

/// The stream's segment files, oldest first (the folder also holds the committed mark).
fn wal_segments(dir: &Path, stream: &str) -> Vec<PathBuf> {
    let files = files_under(&dir.join(format!("data/streams/{stream}/wal")));
    files.into_iter().filter(|path| path.extension().is_some_and(|ext| ext == "wal")).collect()
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
    healthy.wait_ready().await;
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

/// `/ready` once it answers 503 (within `WAIT`): its status and body.
async fn ready_once_stopped(spillway: &Spillway) -> (u16, String) {
    let url = format!("{}/ready", spillway.endpoint);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let response = reqwest::get(&url).await.unwrap();
        let status = response.status().as_u16();
        if status == 503 || std::time::Instant::now() > deadline {
            return (status, response.text().await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Parse "set aside sequences A..B" from `spillway wal quarantine`'s output.
fn set_aside_range(quarantined: &str) -> (usize, usize) {
    quarantined
        .split("set aside sequences ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|range| range.split_once(".."))
        .map(|(start, end)| (start.parse::<usize>().unwrap(), end.parse::<usize>().unwrap()))
        .unwrap_or_else(|| panic!("no range in {quarantined:?}"))
}

#[tokio::test]
async fn a_flipped_byte_in_the_acknowledged_last_frame_stops_its_stream_until_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = two_streams_yaml();
    let spillway = Spillway::start(dir.path(), &yaml);
    let sent_a = put_batches(&spillway, "app-logs", 0, 10).await;
    // Every put above was answered 200: its frame was synced. Then a crash.
    spillway.kill();

    // One flipped bit in the payload of the newest frame, the last bytes of the active segment.
    let segment = wal_segments(dir.path(), "app-logs").pop().expect("a wal segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let offsets = frame_offsets(&bytes);
    assert_eq!(offsets.len(), 10, "one frame per batch");
    let last_offset = offsets[9];
    bytes[last_offset + 40] ^= 0x04;
    std::fs::write(&segment, &bytes).unwrap();
    let segment_name = segment.file_name().unwrap().to_string_lossy().to_string();

    let (code, inspection) = wal_command(dir.path(), &["inspect", "--stream", "app-logs"]);
    assert_eq!(code, 0, "{inspection}");
    assert!(inspection.contains(&format!("DAMAGED at offset {last_offset}")), "{inspection}");

    // A is stopped with segment and offset named, its bytes kept; B works.
    let restarted = Spillway::start(dir.path(), &yaml);
    let sent_b = put_batches(&restarted, "other", 0, 2).await;
    let out_other = dir.path().join("out-other");
    eventually(WAIT, "stream other delivers", || (delivered_lines(&out_other).len() == sent_b.len()).then_some(()))
        .await;
    let (status, body) = ready_once_stopped(&restarted).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("stream app-logs stopped")
            && body.contains(&segment_name)
            && body.contains(&format!("offset {last_offset}"))
            && !body.contains("stream other"),
        "{body}"
    );
    let log_path = restarted.log.clone();
    assert_eq!(restarted.terminate(), 0);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("cannot open the wal") && log.contains(&format!("offset {last_offset}")), "{log}");
    assert!(!log.contains("cut off a torn wal tail"), "acknowledged records are never cut: {log}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "the damaged segment is kept as it was");
    assert!(!dir.path().join("out").exists() || delivered_lines(&dir.path().join("out")).is_empty());

    // The operator sets the damaged frame aside; A starts and delivers everything else once.
    let (code, quarantined) = wal_command(dir.path(), &["quarantine", "--stream", "app-logs"]);
    assert_eq!(code, 0, "{quarantined}");
    let range = set_aside_range(&quarantined);
    assert_eq!(range.0, 9 * RECORDS_PER_BATCH, "from the damaged frame's first record: {quarantined}");
    assert!(range.1 >= 10 * RECORDS_PER_BATCH, "to at least its last: {quarantined}");
    assert!(dir.path().join("data/streams/app-logs/wal-quarantine").join(&segment_name).exists());
    let healthy = Spillway::start(dir.path(), &yaml);
    healthy.wait_ready().await;
    let sent_after = put_batches(&healthy, "app-logs", 100, 1).await;
    assert_eq!(healthy.terminate(), 0);
    let expected: BTreeMap<String, usize> =
        sent_a.into_iter().take(9 * RECORDS_PER_BATCH).chain(sent_after).map(|line| (line, 1)).collect();
    assert_eq!(delivered_lines(&dir.path().join("out")), expected);
}

#[tokio::test]
async fn an_acknowledged_last_frame_cut_after_a_clean_stop_stops_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = two_streams_yaml();
    let spillway = Spillway::start(dir.path(), &yaml);
    put_batches(&spillway, "app-logs", 0, 10).await;
    assert_eq!(spillway.terminate(), 0);

    // A clean stop recorded how far the segment is synced; the file now ends inside its last frame,
    // as a torn write would leave it, but those bytes were acknowledged.
    let segment = wal_segments(dir.path(), "app-logs").pop().expect("a wal segment");
    let bytes = std::fs::read(&segment).unwrap();
    let last_offset = frame_offsets(&bytes)[9];
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(last_offset as u64 + 100).unwrap();
    let segment_name = segment.file_name().unwrap().to_string_lossy().to_string();

    let restarted = Spillway::start(dir.path(), &yaml);
    let (status, body) = ready_once_stopped(&restarted).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("stream app-logs stopped")
            && body.contains(&segment_name)
            && body.contains(&format!("offset {last_offset}"))
            && body.contains("committed length"),
        "{body}"
    );
    let log_path = restarted.log.clone();
    assert_eq!(restarted.terminate(), 0);
    assert!(!std::fs::read_to_string(log_path).unwrap().contains("cut off a torn wal tail"));
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), last_offset as u64 + 100, "nothing is cut");
    let (code, inspection) = wal_command(dir.path(), &["inspect", "--stream", "app-logs"]);
    assert_eq!(code, 0, "{inspection}");
    assert!(inspection.contains(&format!("DAMAGED at offset {last_offset}")), "{inspection}");
}

/// A whole frame as the WAL writes it (see src/wal/frame.rs): u32 LE payload length, u32 LE
/// crc32c of the payload, payload = first sequence, arrival ms, count, (u32 LE len, bytes)*.
fn encode_frame(first_sequence: u64, records: &[String]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&first_sequence.to_le_bytes());
    payload.extend_from_slice(&0i64.to_le_bytes());
    payload.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for record in records {
        payload.extend_from_slice(&(record.len() as u32).to_le_bytes());
        payload.extend_from_slice(record.as_bytes());
    }
    let mut frame = Vec::new();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

#[tokio::test]
async fn a_put_cut_short_by_a_crash_is_cut_with_a_warning_and_the_stream_runs() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = two_streams_yaml();
    let spillway = Spillway::start(dir.path(), &yaml);
    let sent_a = put_batches(&spillway, "app-logs", 0, 10).await;
    spillway.kill();

    // The crash came while the next put's frame was being written: only its first half reached
    // the file, and that put was never answered.
    let segment = wal_segments(dir.path(), "app-logs").pop().expect("a wal segment");
    let acknowledged_len = std::fs::metadata(&segment).unwrap().len();
    let unanswered: Vec<String> = (0..RECORDS_PER_BATCH).map(|index| line("app-logs", 10, index)).collect();
    let frame = encode_frame(10 * RECORDS_PER_BATCH as u64, &unanswered);
    std::fs::OpenOptions::new().append(true).open(&segment).unwrap().write_all(&frame[..frame.len() / 2]).unwrap();

    let (code, inspection) = wal_command(dir.path(), &["inspect", "--stream", "app-logs"]);
    assert_eq!(code, 0, "{inspection}");
    assert!(inspection.contains(&format!("torn tail at offset {acknowledged_len}")), "{inspection}");
    let (code, quarantined) = wal_command(dir.path(), &["quarantine", "--stream", "app-logs"]);
    assert_eq!(code, 1, "nothing to set aside: {quarantined}");

    let restarted = Spillway::start(dir.path(), &yaml);
    restarted.wait_ready().await;
    let sent_after = put_batches(&restarted, "app-logs", 100, 1).await;
    let log_path = restarted.log.clone();
    assert_eq!(restarted.terminate(), 0);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("cut off a torn wal tail") && log.contains(&format!("offset {acknowledged_len}")), "{log}");
    let expected: BTreeMap<String, usize> = sent_a.into_iter().chain(sent_after).map(|line| (line, 1)).collect();
    assert_eq!(delivered_lines(&dir.path().join("out")), expected, "every answered put, once; the cut one never");
}
