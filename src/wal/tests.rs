//! WAL behaviour on real files: group commit, rotation and trimming, reading back across
//! segments, a torn tail cut off on open, corruption in the middle reported with its offset.

use std::io::Write;

use bytes::Bytes;

use super::*;

fn options(dir: &Path) -> WalOptions {
    WalOptions {
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_millis(10),
        segment_bytes: 4096,
        max_bytes: 1 << 30,
        full_wait: Duration::ZERO,
        track_positions: false,
    }
}

fn records(prefix: &str, count: usize) -> Vec<Bytes> {
    (0..count).map(|index| Bytes::from(format!("{prefix}-{index:04}-{}", "x".repeat(100)))).collect()
}

fn read_all(wal: &Wal, from: u64) -> Vec<Bytes> {
    read_records(&mut wal.reader(from), *wal.committed().borrow())
}

fn read_records(reader: &mut WalReader, committed: u64) -> Vec<Bytes> {
    reader.read(committed, usize::MAX).unwrap().into_iter().flat_map(|frame| frame.records).collect()
}

/// Flip the byte at `offset` of the oldest segment, returning that segment.
fn damage_first_segment(dir: &Path, offset: usize) -> segment::SegmentFile {
    let first = segment::list(dir).unwrap().remove(0);
    let mut bytes = std::fs::read(&first.path).unwrap();
    bytes[offset] ^= 0xff;
    std::fs::write(&first.path, &bytes).unwrap();
    first
}

#[tokio::test]
async fn appends_rotate_and_read_back_in_order_from_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, report) = Wal::open(options(dir.path()), 0).unwrap();
    assert_eq!(report.next_sequence, 0);
    let mut expected = Vec::new();
    for round in 0..20 {
        let batch = records(&format!("r{round}"), 10);
        let range = wal.append(1000 + round, batch.clone()).await.unwrap();
        assert_eq!(range, (round as u64 * 10)..(round as u64 * 10 + 10));
        expected.extend(batch);
    }
    assert!(segment::list(dir.path()).unwrap().len() > 3, "small segments rotate");
    assert_eq!(read_all(&wal, 0), expected);
    assert_eq!(read_all(&wal, 37), expected[37..].to_vec(), "a position inside a frame cuts it");

    let before = wal.disk_bytes();
    wal.trim(150);
    wal.close();
    assert!(wal.disk_bytes() < before, "delivered segments are deleted");
    let (wal, report) = Wal::open(options(dir.path()), 150).unwrap();
    assert_eq!(report.next_sequence, 200);
    assert_eq!(read_all(&wal, 150), expected[150..].to_vec());
    wal.close();
}

#[tokio::test]
async fn concurrent_appends_share_group_commits_and_get_distinct_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1 << 20, ..options(dir.path()) }, 0).unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let wal = wal.clone();
            tokio::spawn(async move { wal.append(0, records(&format!("t{task}"), 5)).await.unwrap() })
        })
        .collect();
    let mut ranges = Vec::new();
    for task in tasks {
        ranges.push(task.await.unwrap());
    }
    ranges.sort_by_key(|range| range.start);
    for (index, range) in ranges.iter().enumerate() {
        assert_eq!(range.start, index as u64 * 5);
    }
    assert_eq!(read_all(&wal, 0).len(), 160);
    wal.close();
}

#[tokio::test]
async fn a_full_wal_refuses_appends_until_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { max_bytes: 3000, ..options(dir.path()) }, 0).unwrap();
    wal.append(0, records("a", 10)).await.unwrap();
    let second = wal.append(0, records("b", 10)).await.unwrap();
    let started = std::time::Instant::now();
    let error = wal.append(0, records("c", 10)).await.unwrap_err();
    assert!(matches!(error, WalError::Full { .. }), "{error}");
    assert!(error.is_retriable());
    assert!(started.elapsed() < Duration::from_secs(1), "full_wait 0 refuses at once");
    wal.trim(second.end);
    wal.append(0, records("c", 10)).await.expect("a trim makes room");
    wal.close();
}

/// Appends into a WAL with `max_bytes` far below the segment size until one is refused;
/// returns the committed sequence.
async fn fill(wal: &Wal, prefix: &str) -> u64 {
    for round in 0.. {
        match wal.append(0, records(&format!("{prefix}{round}"), 10)).await {
            Ok(_) => continue,
            Err(WalError::Full { .. }) => break,
            Err(error) => panic!("unexpected append error: {error}"),
        }
    }
    *wal.committed().borrow()
}

fn small_budget(dir: &Path) -> WalOptions {
    WalOptions { segment_bytes: 1 << 20, max_bytes: 64 << 10, ..options(dir) }
}

#[tokio::test]
async fn a_wal_smaller_than_one_segment_drains_and_reclaims_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_budget(dir.path()), 0).unwrap();
    for round in 0..4 {
        let committed = fill(&wal, &format!("round{round}-")).await;
        assert!(wal.undelivered_bytes() <= 64 << 10);
        wal.trim(committed);
        // Appends and trims are handled in order: this append sees the trim.
        let range = wal.append(0, records("after", 10)).await.expect("delivered bytes no longer count");
        assert_eq!(range.start, committed);
        let segments = segment::list(dir.path()).unwrap();
        assert_eq!(segments.len(), 1, "the delivered segment was closed early and deleted: {segments:?}");
        assert_eq!(segments[0].first_sequence, committed);
        assert_eq!(wal.disk_bytes(), std::fs::metadata(&segments[0].path).unwrap().len());
        assert_eq!(wal.undelivered_bytes(), wal.disk_bytes());
        wal.trim(range.end);
    }
    wal.close();
}

#[tokio::test]
async fn after_a_reopen_only_records_past_the_checkpoint_count_as_undelivered() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(small_budget(dir.path()), 0).unwrap();
    let committed = fill(&wal, "a").await;
    wal.close();

    // Everything was delivered before the restart: the full WAL takes appends again.
    let (wal, report) = Wal::open(small_budget(dir.path()), committed).unwrap();
    assert_eq!(report.next_sequence, committed);
    assert_eq!(wal.undelivered_bytes(), 0);
    assert!(wal.disk_bytes() > 0);
    wal.append(0, records("b", 10)).await.expect("delivered bytes do not count after a reopen");
    wal.close();

    // A checkpoint inside the active segment: the frames from it on count, the earlier do not.
    let (wal, _) = Wal::open(options(dir.path()), committed / 2).unwrap();
    let undelivered = wal.undelivered_bytes();
    assert!(undelivered > 0 && undelivered < wal.disk_bytes(), "{undelivered} of {}", wal.disk_bytes());
    wal.close();
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    assert_eq!(wal.undelivered_bytes(), wal.disk_bytes());
    wal.close();

    // Closed segments count whole until the checkpoint passes their end.
    let rotating = WalOptions { segment_bytes: 4096, ..options(dir.path()) };
    let (wal, _) = Wal::open(rotating.clone(), 0).unwrap();
    for round in 0..10 {
        wal.append(0, records(&format!("c{round}"), 10)).await.unwrap();
    }
    let end = *wal.committed().borrow();
    wal.close();
    let segments = segment::list(dir.path()).unwrap();
    assert!(segments.len() > 2);
    let (wal, _) = Wal::open(rotating, segments[1].first_sequence).unwrap();
    let first_len = std::fs::metadata(&segments[0].path).unwrap().len();
    assert_eq!(wal.undelivered_bytes(), wal.disk_bytes() - first_len);
    wal.trim(end);
    wal.append(0, records("d", 1)).await.unwrap();
    assert!(wal.undelivered_bytes() < 4096);
    wal.close();
}

fn frame_len(records: &[Bytes]) -> u64 {
    frame::encoded_len(records, None, &[]) as u64
}

/// A WAL whose budget is exactly `max_bytes`, waiting `full_wait` for room.
fn budget(dir: &Path, max_bytes: u64, full_wait: Duration) -> WalOptions {
    WalOptions { segment_bytes: 1 << 20, max_bytes, full_wait, ..options(dir) }
}

#[tokio::test]
async fn records_delivered_ahead_of_the_trim_point_stop_counting_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let frame = frame_len(&records("a0", 10));
    let (wal, _) = Wal::open(budget(dir.path(), 3 * frame, Duration::ZERO), 0).unwrap();
    for round in 0..3 {
        wal.append(0, records(&format!("a{round}"), 10)).await.unwrap();
    }
    let refused = wal.append(0, records("a3", 10)).await.expect_err("full");
    assert!(matches!(refused, WalError::Full { .. }), "{refused}");
    // The oldest batch still waits (no trim), two younger ones left.
    wal.delivered_ahead(2 * frame);
    let range = wal.append(0, records("a3", 10)).await.expect("room: only one frame is undelivered");
    assert_eq!(range, 30..40);
    assert_eq!(wal.undelivered_bytes(), 2 * frame);
    // The trim point passes them: the smaller figure first, then the trim.
    wal.delivered_ahead(0);
    wal.trim(30);
    wal.append(0, records("a4", 10)).await.expect("room after the trim");
    assert_eq!(wal.undelivered_bytes(), 2 * frame);
    wal.close();
}

#[tokio::test]
async fn a_waiting_append_succeeds_when_a_trim_makes_room_within_full_wait() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 3 * frame_len(&records("a0", 10));
    let (wal, _) = Wal::open(budget(dir.path(), max_bytes, Duration::from_secs(10)), 0).unwrap();
    for round in 0..3 {
        wal.append(0, records(&format!("a{round}"), 10)).await.unwrap();
    }
    let waiting = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append(0, records("a3", 10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a full wal keeps the append waiting");
    wal.trim(10);
    let range = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(range, 30..40);
    wal.close();
}

#[tokio::test]
async fn a_waiting_append_fails_with_full_when_no_trim_comes_within_full_wait() {
    let dir = tempfile::tempdir().unwrap();
    let full_wait = Duration::from_millis(300);
    let max_bytes = 2 * frame_len(&records("a", 10));
    let (wal, _) = Wal::open(budget(dir.path(), max_bytes, full_wait), 0).unwrap();
    wal.append(0, records("a", 10)).await.unwrap();
    wal.append(0, records("b", 10)).await.unwrap();
    let started = std::time::Instant::now();
    let error = wal.append(0, records("c", 10)).await.unwrap_err();
    assert!(matches!(error, WalError::Full { .. }), "{error}");
    assert!(started.elapsed() >= full_wait, "{:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5));
    wal.close();
}

#[tokio::test]
async fn appends_wait_in_arrival_order_so_a_big_one_is_not_starved() {
    let dir = tempfile::tempdir().unwrap();
    let small_len = frame_len(&records("s", 10));
    let max_bytes = 3 * frame_len(&records("a0", 10)) + small_len;
    assert!(frame_len(&records("big", 20)) > small_len);
    let (wal, _) = Wal::open(budget(dir.path(), max_bytes, Duration::from_secs(10)), 0).unwrap();
    for round in 0..3 {
        wal.append(0, records(&format!("a{round}"), 10)).await.unwrap();
    }
    // Room for the small append only: the big one waits, the small one queues behind it.
    let big = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append(0, records("big", 20)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let small = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append(0, records("s", 10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!big.is_finished() && !small.is_finished());
    wal.trim(30);
    let big = tokio::time::timeout(Duration::from_secs(5), big).await.unwrap().unwrap().unwrap();
    let small = tokio::time::timeout(Duration::from_secs(5), small).await.unwrap().unwrap().unwrap();
    assert_eq!((big, small), (30..50, 50..60));
    wal.close();
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1 << 20, ..options(dir.path()) }, 0).unwrap();
    wal.append(0, records("a", 3)).await.unwrap();
    wal.close();
    let last = segment::list(dir.path()).unwrap().pop().unwrap();
    let good_len = std::fs::metadata(&last.path).unwrap().len();
    // A crash in the middle of the next frame: its header promises more than was written.
    let mut torn = Vec::new();
    frame::encode(3, 0, &records("torn", 2), None, &[], &mut torn);
    std::fs::OpenOptions::new().append(true).open(&last.path).unwrap().write_all(&torn[..torn.len() / 2]).unwrap();

    let (wal, report) = Wal::open(options(dir.path()), 0).unwrap();
    assert!(report.truncated_tail.as_deref().unwrap().contains(&format!("offset {good_len}")));
    assert_eq!(report.next_sequence, 3);
    wal.append(0, records("b", 2)).await.unwrap();
    let all = read_all(&wal, 0);
    assert_eq!(all.len(), 5);
    assert!(all[3].starts_with(b"b-0000"));
    wal.close();
}

#[tokio::test]
async fn corruption_in_the_middle_names_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    for round in 0..10 {
        wal.append(0, records(&format!("r{round}"), 10)).await.unwrap();
    }
    let first = damage_first_segment(dir.path(), 200);

    let committed = *wal.committed().borrow();
    let error = wal.reader(0).read(committed, usize::MAX).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&first.path.display().to_string()), "{message}");
    assert!(message.contains("offset 0"), "{message}");
    wal.close();
}

#[tokio::test]
async fn interval_fsync_acknowledges_after_the_write_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let interval = WalOptions { fsync: FsyncPolicy::Interval, segment_bytes: 1 << 20, ..options(dir.path()) };
    let (wal, _) = Wal::open(interval.clone(), 0).unwrap();
    let mut expected = Vec::new();
    for round in 0..5 {
        let batch = records(&format!("i{round}"), 4);
        wal.append(0, batch.clone()).await.unwrap();
        expected.extend(batch);
    }
    assert_eq!(read_all(&wal, 0), expected, "readable before the timed fsync");
    tokio::time::sleep(Duration::from_millis(30)).await;
    wal.close();
    let (wal, report) = Wal::open(interval, 0).unwrap();
    assert_eq!(report.next_sequence, 20);
    assert!(report.truncated_tail.is_none());
    assert_eq!(read_all(&wal, 0), expected);
    wal.close();
}

/// Three frames of three records in one segment; returns the offsets where frames 2 and 3 start.
async fn three_frames_in_one_segment(dir: &Path) -> (segment::SegmentFile, u64, u64) {
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1 << 20, ..options(dir) }, 0).unwrap();
    let mut frame_ends = Vec::new();
    for name in ["a", "b", "c"] {
        wal.append(0, records(name, 3)).await.unwrap();
        let last = segment::list(dir).unwrap().pop().unwrap();
        frame_ends.push(std::fs::metadata(&last.path).unwrap().len());
    }
    wal.close();
    (segment::list(dir).unwrap().pop().unwrap(), frame_ends[0], frame_ends[1])
}

#[tokio::test]
async fn a_zero_filled_tail_after_a_power_loss_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1 << 20, ..options(dir.path()) }, 0).unwrap();
    wal.append(0, records("a", 3)).await.unwrap();
    wal.close();
    let last = segment::list(dir.path()).unwrap().pop().unwrap();
    let good_len = std::fs::metadata(&last.path).unwrap().len();
    // The file was extended but its data never reached the disk.
    std::fs::OpenOptions::new().append(true).open(&last.path).unwrap().write_all(&[0u8; 4096]).unwrap();

    let (wal, report) = Wal::open(options(dir.path()), 0).unwrap();
    let truncated = report.truncated_tail.unwrap();
    assert!(truncated.contains(&format!("offset {good_len}")) && truncated.contains("zero bytes"), "{truncated}");
    assert_eq!(std::fs::metadata(&last.path).unwrap().len(), good_len);
    assert_eq!(report.next_sequence, 3);
    wal.append(0, records("b", 2)).await.unwrap();
    let all = read_all(&wal, 0);
    assert_eq!(all.len(), 5);
    assert!(all[3].starts_with(b"b-0000"));
    wal.close();
}

#[tokio::test]
async fn damage_followed_by_good_frames_in_the_last_segment_fails_the_open_naming_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (last, second_frame_offset, _) = three_frames_in_one_segment(dir.path()).await;
    let original = std::fs::read(&last.path).unwrap();
    // A flipped high byte in the second frame's length: it now "runs past the end of the file",
    // which alone looks like a torn write, but the third frame after it still verifies.
    let mut bytes = original.clone();
    bytes[second_frame_offset as usize + 3] ^= 0x40;
    std::fs::write(&last.path, &bytes).unwrap();

    let error = Wal::open(options(dir.path()), 0).err().expect("damage in acknowledged data fails the open");
    let message = error.to_string();
    assert!(message.contains(&last.path.display().to_string()), "{message}");
    assert!(message.contains(&format!("offset {second_frame_offset}")), "{message}");
    assert_eq!(std::fs::read(&last.path).unwrap(), bytes, "nothing is cut");

    // A flipped payload byte with data after it: damage too.
    let mut bytes = original;
    bytes[second_frame_offset as usize + 40] ^= 0xff;
    std::fs::write(&last.path, &bytes).unwrap();
    let message = Wal::open(options(dir.path()), 0).err().expect("damage fails the open").to_string();
    assert!(message.contains(&format!("offset {second_frame_offset}: checksum mismatch")), "{message}");
}

#[tokio::test]
async fn quarantining_a_damaged_last_segment_skips_exactly_its_range_and_never_reuses_sequences() {
    let data_dir = tempfile::tempdir().unwrap();
    let wal_dir = data_dir.path().join("s").join("wal");
    let (last, second_frame_offset, _) = three_frames_in_one_segment(&wal_dir).await;
    let mut bytes = std::fs::read(&last.path).unwrap();
    bytes[second_frame_offset as usize + 40] ^= 0xff;
    std::fs::write(&last.path, &bytes).unwrap();
    assert_damaged_at(&wal_dir, second_frame_offset);

    let quarantine::QuarantineOutcome::SetAside(set_aside) = quarantine::quarantine(&wal_dir, None).unwrap() else {
        panic!("a damaged segment is set aside");
    };
    assert_eq!((set_aside.start, set_aside.end), (3, 6), "resync saves the third frame: only frame two is set aside");
    assert_eq!(std::fs::read(&set_aside.quarantined_segment).unwrap(), bytes, "the original bytes are kept");
    assert_eq!(std::fs::metadata(&last.path).unwrap().len(), second_frame_offset, "good frames stay");

    let (wal, report) = Wal::open(options(&wal_dir), 0).unwrap();
    assert_eq!(report.next_sequence, 9, "sequences continue after the saved frame");
    wal.append(0, records("d", 2)).await.unwrap();
    let all = read_all(&wal, 0);
    let prefixes: Vec<_> = all.iter().map(|record| String::from_utf8_lossy(&record[..6]).to_string()).collect();
    assert_eq!(prefixes, ["a-0000", "a-0001", "a-0002", "c-0000", "c-0001", "c-0002", "d-0000", "d-0001"]);
    wal.close();
    let again = quarantine::quarantine(&wal_dir, None).unwrap();
    assert!(matches!(again, quarantine::QuarantineOutcome::NothingToDo(_)), "{again:?}");
}

#[tokio::test]
async fn quarantining_a_damaged_middle_segment_lets_the_reader_skip_to_the_next_segment() {
    let data_dir = tempfile::tempdir().unwrap();
    let wal_dir = data_dir.path().join("s").join("wal");
    let (wal, _) = Wal::open(options(&wal_dir), 0).unwrap();
    for round in 0..10 {
        wal.append(0, records(&format!("r{round}"), 10)).await.unwrap();
    }
    wal.close();
    let segments = segment::list(&wal_dir).unwrap();
    assert!(segments.len() >= 3);
    let damaged = &segments[1];
    let next_first_sequence = segments[2].first_sequence;
    let mut bytes = std::fs::read(&damaged.path).unwrap();
    bytes[200] ^= 0xff;
    std::fs::write(&damaged.path, &bytes).unwrap();

    let (wal, _) = Wal::open(options(&wal_dir), 0).unwrap();
    let committed = *wal.committed().borrow();
    assert!(matches!(wal.reader(0).read(committed, usize::MAX), Err(WalError::Corrupt { .. })));
    wal.close();

    let named = Some(damaged.path.file_name().unwrap().as_ref());
    let quarantine::QuarantineOutcome::SetAside(set_aside) = quarantine::quarantine(&wal_dir, named).unwrap() else {
        panic!("the named segment is set aside");
    };
    // Byte 200 is in the segment's first frame; the frames after it verify and are kept.
    assert_eq!((set_aside.start, set_aside.end), (damaged.first_sequence, damaged.first_sequence + 10));
    assert!(set_aside.end < next_first_sequence);
    let (wal, _) = Wal::open(options(&wal_dir), 0).unwrap();
    assert_eq!(read_all(&wal, 0).len(), 90);
    assert_eq!(read_all(&wal, set_aside.start + 1).len() as u64, 100 - set_aside.end, "from inside the range");
}

#[tokio::test]
async fn a_failed_fsync_fails_its_group_and_every_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    wal.append(0, records("a", 2)).await.unwrap();
    writer::fail_points::fail_syncs_in(dir.path(), true);
    let error = wal.append(0, records("b", 2)).await.unwrap_err();
    assert!(matches!(&error, WalError::Io { path, .. } if path.starts_with(dir.path())), "{error}");
    assert!(!error.is_retriable());
    // The disk may have dropped the pages: no retried fsync may pretend otherwise, even one that
    // would now succeed.
    writer::fail_points::fail_syncs_in(dir.path(), false);
    for _ in 0..2 {
        let error = wal.append(0, records("c", 2)).await.unwrap_err();
        assert!(matches!(&error, WalError::Failed { reason, .. } if reason.contains("fsync")), "{error}");
        assert!(!error.is_retriable());
    }
    assert_eq!(*wal.committed().borrow(), 2, "nothing after the failure is committed");
    let mut delivery = wal.delivery_reader(0);
    let committed = *wal.committed().borrow();
    assert_eq!(read_records(&mut delivery, committed), records("a", 2), "the failed group never reaches delivery");
    wal.close();
}

#[tokio::test]
async fn a_failed_timed_fsync_fails_every_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let interval = WalOptions { fsync: FsyncPolicy::Interval, ..options(dir.path()) };
    let (wal, _) = Wal::open(interval, 0).unwrap();
    writer::fail_points::fail_syncs_in(dir.path(), true);
    wal.append(0, records("a", 2)).await.expect("acknowledged before the timed fsync");
    // The writer wakes for the due fsync by itself.
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer::fail_points::fail_syncs_in(dir.path(), false);
    let error = wal.append(0, records("b", 2)).await.unwrap_err();
    assert!(matches!(&error, WalError::Failed { .. }), "{error}");
    wal.close();
}

fn shard_position(shard: &str, position: u64) -> SourcePosition {
    SourcePosition { shard: shard.to_string(), position: format!("{position:020}") }
}

#[tokio::test]
async fn pulled_positions_survive_a_reopen_and_a_fully_delivered_wal() {
    let dir = tempfile::tempdir().unwrap();
    let options = |dir: &Path| WalOptions { track_positions: true, ..options(dir) };
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    for round in 0..30u64 {
        let shard = if round % 2 == 0 { "shard-a" } else { "shard-b" };
        wal.append_pulled(0, records(shard, 3), shard_position(shard, round)).await.unwrap();
        wal.append(0, records("pushed", 1)).await.unwrap();
    }
    let expected = std::collections::BTreeMap::from([
        ("shard-a".to_string(), format!("{:020}", 28)),
        ("shard-b".to_string(), format!("{:020}", 29)),
    ]);
    assert_eq!(wal.positions(), expected, "visible as soon as the appends are durable");
    wal.close();

    // A crash right after the appends: the file may be older than the frames; the frames after
    // it bring the positions up to date.
    let (wal, report) = Wal::open(options(dir.path()), 0).unwrap();
    assert_eq!(wal.positions(), expected);
    assert!(report.position_frames_read < 120, "only frames after the saved file are read");

    // Everything delivered: every segment is deleted, the positions stay.
    let committed = *wal.committed().borrow();
    wal.trim(committed);
    wal.append(0, records("later", 1)).await.unwrap();
    wal.trim(committed + 1);
    wal.close();
    let (wal, _) = Wal::open(options(dir.path()), committed + 1).unwrap();
    assert_eq!(wal.positions(), expected);
    wal.close();
}

/// Frames without records carry positions too (a `LATEST` start time, a closed shard): a crash
/// before the positions file is next saved must not lose them, wherever they lie in the WAL.
#[tokio::test]
async fn positions_of_frames_without_records_survive_a_crash_before_the_file_is_saved() {
    let dir = tempfile::tempdir().unwrap();
    let options = |dir: &Path| WalOptions { track_positions: true, ..options(dir) };
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    wal.append_pulled(0, Vec::new(), shard_position("marker-first", 1)).await.unwrap();
    wal.append_pulled(0, records("a", 2), shard_position("shard-a", 2)).await.unwrap();
    wal.append_pulled(0, Vec::new(), shard_position("shard-a", 3)).await.unwrap();
    wal.append_pulled(0, Vec::new(), shard_position("marker-last", 4)).await.unwrap();
    let expected = std::collections::BTreeMap::from([
        ("marker-first".to_string(), format!("{:020}", 1)),
        ("shard-a".to_string(), format!("{:020}", 3)),
        ("marker-last".to_string(), format!("{:020}", 4)),
    ]);
    assert_eq!(wal.positions(), expected);
    wal.close();
    // The crash came before the first save: only the frames know.
    std::fs::remove_file(positions::path(dir.path())).unwrap();
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    assert_eq!(wal.positions(), expected, "markers at the head, between and after records");
    wal.close();
}

#[tokio::test]
async fn a_forgotten_shard_stays_forgotten_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = |dir: &Path| WalOptions { track_positions: true, ..options(dir) };
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    wal.append_pulled(0, records("a", 2), shard_position("file:1:10", 5)).await.unwrap();
    wal.append_pulled(0, records("b", 2), shard_position("file:1:11", 7)).await.unwrap();
    wal.forget_position("file:1:10".to_string()).await.unwrap();
    let expected = std::collections::BTreeMap::from([("file:1:11".to_string(), format!("{:020}", 7))]);
    assert_eq!(wal.positions(), expected);
    wal.close();
    // Recovered from the frames (the positions file may predate the forgetting frame).
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    assert_eq!(wal.positions(), expected);
    wal.close();
}

#[tokio::test]
async fn a_source_position_that_cannot_be_stored_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { track_positions: true, ..options(dir.path()) }, 0).unwrap();
    let too_long = SourcePosition { shard: "s".into(), position: "9".repeat(MAX_SOURCE_FIELD_LEN + 1) };
    let error = wal.append_pulled(0, records("x", 1), too_long).await.unwrap_err();
    assert!(matches!(error, WalError::SourcePositionTooLong { .. }), "{error}");
    assert!(wal.positions().is_empty());
    wal.close();
}

#[tokio::test]
async fn record_metadata_reads_back_aligned_with_its_records_from_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { track_positions: true, ..options(dir.path()) }, 0).unwrap();
    let metadata: Vec<Bytes> = (0..4).map(|index| Bytes::from(format!("meta-{index}"))).collect();
    wal.append_pulled_with_metadata(0, records("m", 4), shard_position("s", 1), metadata.clone()).await.unwrap();
    let error = wal
        .append_pulled_with_metadata(0, records("m", 2), shard_position("s", 2), metadata.clone())
        .await
        .unwrap_err();
    assert!(matches!(error, WalError::MetadataCount { records: 2, metadata: 4 }), "{error}");
    let committed = *wal.committed().borrow();
    let frames = wal.reader(2).read(committed, 1 << 20).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].records, records("m", 4)[2..]);
    assert_eq!(frames[0].metadata, metadata[2..], "the entries of the records read, in order");
    wal.close();
}

#[tokio::test]
async fn frames_copied_as_stored_decode_to_what_the_reader_reads_from_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { track_positions: true, ..options(dir.path()) }, 0).unwrap();
    for round in 0..12u64 {
        let metadata: Vec<Bytes> = (0..10).map(|index| Bytes::from(format!("meta-{round}-{index}"))).collect();
        let position = shard_position("s", round);
        wal.append_pulled_with_metadata(round as i64, records(&format!("r{round}"), 10), position, metadata)
            .await
            .unwrap();
    }
    let segments = segment::list(dir.path()).unwrap().len();
    assert!(segments > 1, "the copy crosses segments: {segments}");
    let committed = *wal.committed().borrow();
    for from in [0, 10, 37, 119] {
        let mut stored = b"earlier".to_vec();
        let mut reader = wal.reader(from);
        reader.read_stored(committed, usize::MAX, &mut stored).unwrap();
        assert_eq!(reader.position(), committed);
        assert_eq!(&stored[..7], b"earlier", "appended after what the buffer held");
        let copied = frame::decode_all(Bytes::from(stored).slice(7..)).unwrap();
        let read = wal.reader(from).read(committed, usize::MAX).unwrap();
        assert_eq!(format!("{copied:?}"), format!("{read:?}"), "from {from}");
    }
    // Bounded by size: whole frames, the reader goes on where the copy stopped.
    let mut reader = wal.reader(0);
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    reader.read_stored(committed, 1, &mut first).unwrap();
    assert_eq!(reader.position(), 10, "one frame");
    reader.read_stored(committed, usize::MAX, &mut rest).unwrap();
    let records_of = |bytes: Vec<u8>| -> Vec<Bytes> {
        frame::decode_all(Bytes::from(bytes)).unwrap().into_iter().flat_map(|frame| frame.records).collect()
    };
    let mut all = records_of(first);
    all.extend(records_of(rest));
    assert_eq!(all, read_all(&wal, 0));
    // A damaged frame is refused, naming its segment, and leaves the buffer as it was.
    let damaged = damage_first_segment(dir.path(), 30);
    let mut stored = b"kept".to_vec();
    let error = wal.reader(0).read_stored(committed, usize::MAX, &mut stored).unwrap_err();
    assert!(error.to_string().contains(&damaged.path.display().to_string()), "{error}");
    assert_eq!(stored, b"kept");
    wal.close();
}

#[tokio::test]
async fn the_delivery_reader_takes_new_frames_from_memory_not_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1 << 20, ..options(dir.path()) }, 0).unwrap();
    let mut delivery = wal.delivery_reader(0);
    let batch = records("m", 10);
    wal.append(0, batch.clone()).await.unwrap();
    // Damage the frame on disk: only a reader of the file can notice.
    damage_first_segment(dir.path(), 100);

    let committed = *wal.committed().borrow();
    assert!(wal.reader(0).read(committed, usize::MAX).is_err(), "the file reader checks the damaged frame");
    assert_eq!(read_records(&mut delivery, committed), batch, "the delivery reader got the writer's records");
    wal.close();
}

#[tokio::test]
async fn the_delivery_reader_goes_on_from_the_file_wherever_memory_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(options(dir.path()), 0).unwrap();
    let mut delivery = wal.delivery_reader(0);
    let mut expected = Vec::new();
    let mut got = Vec::new();
    for round in 0..30 {
        let batch = records(&format!("r{round}"), 10);
        wal.append(0, batch.clone()).await.unwrap();
        expected.extend(batch);
        match round % 5 {
            // Read what is committed.
            2 | 4 => got.extend(read_records(&mut delivery, *wal.committed().borrow())),
            // Another reader takes the newest frame out of memory: the delivery reader reads it
            // from the file, after the frame it took last.
            3 => {
                let committed = *wal.committed().borrow();
                let stolen = wal.delivery_reader(committed - 10).read(committed, usize::MAX).unwrap();
                assert_eq!(stolen.len(), 1);
            }
            _ => {}
        }
    }
    got.extend(read_records(&mut delivery, *wal.committed().borrow()));
    assert_eq!(got, expected);
    assert!(segment::list(dir.path()).unwrap().len() > 3, "small segments rotate");

    // More than memory holds arrives before the reader reads on: the oldest come from the file.
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let over_the_bound = tail::TAIL_MAX_BYTES / big.len() + 2;
    for _ in 0..over_the_bound {
        wal.append(0, vec![big.clone()]).await.unwrap();
        expected.push(big.clone());
    }
    got.extend(read_records(&mut delivery, *wal.committed().borrow()));
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "every record once, in order");
    wal.close();
}

#[tokio::test]
async fn the_delivery_reader_finds_the_next_segment_when_the_one_it_read_last_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // Every frame gets a segment of its own.
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1, ..options(dir.path()) }, 0).unwrap();
    let mut delivery = wal.delivery_reader(0);
    let first = records("first", 10);
    wal.append(0, first.clone()).await.unwrap();
    assert_eq!(read_records(&mut delivery, 10), first, "taken from memory");
    let second = records("second", 10);
    wal.append(0, second.clone()).await.unwrap();
    wal.trim(10);
    // The writer thread trims in the background.
    for _ in 0..200 {
        if segment::list(dir.path()).unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(segment::list(dir.path()).unwrap().len(), 1, "the first frame's segment is deleted");
    // The second frame is no longer in memory either: the reader must find its segment.
    wal.delivery_reader(10).read(20, usize::MAX).unwrap();
    assert_eq!(read_records(&mut delivery, 20), second);
    wal.close();
}

#[tokio::test]
async fn frames_from_memory_equal_frames_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { track_positions: true, ..options(dir.path()) }, 0).unwrap();
    let mut delivery = wal.delivery_reader(0);
    let position = |at: &str| SourcePosition { shard: "shard-1".into(), position: at.into() };
    wal.append(7, records("push", 3)).await.unwrap();
    wal.append_pulled(8, records("pulled", 2), position("2")).await.unwrap();
    let metadata = vec![Bytes::from_static(b"m0"), Bytes::from_static(b"m1")];
    wal.append_pulled_with_metadata(9, records("meta", 2), position("4"), metadata).await.unwrap();
    wal.forget_position("shard-1".into()).await.unwrap();
    wal.append(10, records("last", 1)).await.unwrap();

    let committed = *wal.committed().borrow();
    let from_file = wal.reader(0).read(committed, usize::MAX).unwrap();
    let from_memory = delivery.read(committed, usize::MAX).unwrap();
    let shape = |frames: &[Frame]| -> Vec<_> {
        frames
            .iter()
            .map(|frame| {
                (
                    frame.first_sequence,
                    frame.arrival_ms,
                    frame.records.clone(),
                    frame.source.clone(),
                    frame.metadata.clone(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&from_memory), shape(&from_file));
    assert_eq!(from_memory.len(), 4, "the frame without records is skipped alike");
    wal.close();
}

/// `records(prefix, count)` laid out in place, as Direct PUT decodes them.
fn framed(prefix: &str, count: usize) -> Records {
    let mut framed = FramedRecords::default();
    for record in records(prefix, count) {
        framed
            .push_with(record.len(), |out| -> Result<usize, ()> {
                out.copy_from_slice(&record);
                Ok(record.len())
            })
            .unwrap();
    }
    framed.finish()
}

#[tokio::test]
async fn records_laid_out_in_place_are_written_as_any_others_also_when_sharing_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1 << 20, ..options(dir.path()) }, 0).unwrap();
    let mut delivery = wal.delivery_reader(0);
    // Concurrent appends share groups: laid-out and separate records mixed in one write.
    let appends = (0..40).map(|index| {
        let wal = wal.clone();
        tokio::spawn(async move {
            let name = format!("c{index}");
            let range = if index % 3 == 0 {
                wal.append(0, records(&name, 5)).await.unwrap()
            } else {
                wal.append(0, framed(&name, 5)).await.unwrap()
            };
            (range, records(&name, 5))
        })
    });
    let mut expected = vec![Bytes::new(); 200];
    for append in appends {
        let (range, batch) = append.await.unwrap();
        for (sequence, record) in range.zip(batch) {
            expected[sequence as usize] = record;
        }
    }
    let committed = *wal.committed().borrow();
    assert_eq!(committed, 200);
    assert_eq!(read_records(&mut delivery, committed), expected, "from memory");
    assert_eq!(read_all(&wal, 0), expected, "from the file, every frame checksummed");
    assert_eq!(read_all(&wal, 37), expected[37..].to_vec(), "from inside a frame");
    wal.close();
    let (wal, report) = Wal::open(options(dir.path()), 0).unwrap();
    assert_eq!(report.next_sequence, 200);
    assert!(report.truncated_tail.is_none(), "the whole segment verifies on open");
    assert_eq!(read_all(&wal, 0), expected);
    wal.close();
}

#[tokio::test]
async fn the_tail_counts_what_tiny_records_hold_not_only_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 64 << 20, ..options(dir.path()) }, 0).unwrap();
    let mut delivery = wal.delivery_reader(0);
    let tiny: Vec<Bytes> = (0..500).map(|index| Bytes::from(format!("{index}"))).collect();
    let record_bytes: usize = tiny.iter().map(Bytes::len).sum();
    // Far under the bound in record bytes, far over it in what the records hold.
    let appends = tail::TAIL_MAX_BYTES / (tiny.len() * std::mem::size_of::<Bytes>()) + 4;
    assert!(appends * record_bytes < tail::TAIL_MAX_BYTES / 2);
    for _ in 0..appends {
        wal.append(0, tiny.clone()).await.unwrap();
    }
    // The oldest frames were dropped: damage the first one on disk, and the delivery reader,
    // which must read it from the file, finds the damage.
    damage_first_segment(dir.path(), 100);
    let committed = *wal.committed().borrow();
    assert!(delivery.read(committed, usize::MAX).is_err(), "the first frame was no longer held in memory");
    wal.close();
}

/// Frames of `records_per_frame` records each, one append per prefix, in one segment, left as a
/// SIGKILL after the last acknowledgement leaves them: the committed mark is the one written at
/// open (it covers none of them), since the writer records the synced length at most once a
/// second and at a clean shutdown. Returns the segment and where each frame starts.
async fn frames_killed_before_the_next_mark(
    dir: &Path,
    prefixes: &[&str],
    records_per_frame: usize,
) -> (segment::SegmentFile, Vec<u64>) {
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1 << 20, ..options(dir) }, 0).unwrap();
    let mark_at_open = std::fs::read(committed::path(dir)).unwrap();
    let mut frame_starts = Vec::new();
    for prefix in prefixes {
        frame_starts
            .push(segment::list(dir).unwrap().pop().map_or(0, |last| std::fs::metadata(last.path).unwrap().len()));
        wal.append(0, records(prefix, records_per_frame)).await.unwrap();
    }
    wal.close();
    std::fs::write(committed::path(dir), mark_at_open).unwrap();
    (segment::list(dir).unwrap().pop().unwrap(), frame_starts)
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn open_error(dir: &Path) -> String {
    Wal::open(options(dir), 0).err().expect("damage in acknowledged data fails the open").to_string()
}

#[tokio::test]
async fn the_mark_covers_every_frame_after_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (last, _, _) = three_frames_in_one_segment(dir.path()).await;
    let len = std::fs::metadata(&last.path).unwrap().len();
    let mark = committed::load(dir.path()).unwrap().expect("a mark");
    assert_eq!(mark, committed::CommittedMark { segment_first_sequence: 0, len, end_sequence: 9 });
}

#[tokio::test]
async fn the_mark_follows_the_synced_length_while_running_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions { segment_bytes: 1 << 20, ..options(dir.path()) }, 0).unwrap();
    let generation_at_open = committed::newest_generation(dir.path()).unwrap();
    let started = std::time::Instant::now();
    for round in 0..40 {
        wal.append(0, records(&format!("r{round}"), 2)).await.unwrap();
    }
    let generations = committed::newest_generation(dir.path()).unwrap() - generation_at_open;
    let intervals = started.elapsed().as_secs_f64() / committed::MARK_INTERVAL.as_secs_f64();
    assert!(
        (generations as f64) <= intervals.ceil(),
        "40 group commits wrote {generations} marks in {intervals:.2} intervals"
    );

    // Without another append or a shutdown, the mark catches up with the synced length.
    let last = segment::list(dir.path()).unwrap().pop().unwrap();
    let len = std::fs::metadata(&last.path).unwrap().len();
    let expected = committed::CommittedMark { segment_first_sequence: 0, len, end_sequence: 80 };
    let deadline = std::time::Instant::now() + committed::MARK_INTERVAL * 5;
    while committed::load(dir.path()).unwrap() != Some(expected) {
        assert!(std::time::Instant::now() < deadline, "the mark never caught up: {:?}", committed::load(dir.path()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wal.close();
}

#[tokio::test]
async fn a_flipped_byte_in_the_acknowledged_last_frame_fails_the_open_and_can_be_set_aside() {
    let data_dir = tempfile::tempdir().unwrap();
    let wal_dir = data_dir.path().join("s").join("wal");
    let (last, _, third_frame_offset) = three_frames_in_one_segment(&wal_dir).await;
    let bytes = rewrite(&last.path, |bytes| bytes[third_frame_offset as usize + 40] ^= 0x01);

    let message = open_error(&wal_dir);
    assert!(message.contains(&last.path.display().to_string()), "{message}");
    assert!(message.contains(&format!("offset {third_frame_offset}: checksum mismatch")), "{message}");
    assert!(message.contains("committed length"), "{message}");
    assert_eq!(std::fs::read(&last.path).unwrap(), bytes, "nothing is cut");
    assert_damaged_at(&wal_dir, third_frame_offset);

    let quarantine::QuarantineOutcome::SetAside(set_aside) = quarantine::quarantine(&wal_dir, None).unwrap() else {
        panic!("the damaged last frame is set aside");
    };
    assert_eq!(set_aside.start, 6);
    assert!(set_aside.end >= 9, "the set-aside range covers the frame's records: {set_aside:?}");
    assert_eq!(std::fs::read(&set_aside.quarantined_segment).unwrap(), bytes, "the original bytes are kept");
    let (wal, report) = Wal::open(options(&wal_dir), 0).unwrap();
    assert!(report.truncated_tail.is_none());
    assert_eq!(report.next_sequence, set_aside.end, "no sequence of the damaged frame is reused");
    let all = read_all(&wal, 0);
    assert_eq!(all.len(), 6);
    assert!(all[5].starts_with(b"b-0002"));
    wal.close();
}

#[tokio::test]
async fn a_flipped_byte_in_a_last_frame_no_mark_covers_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (last, starts) = frames_killed_before_the_next_mark(dir.path(), &["a", "b", "c"], 3).await;
    assert_eq!(committed::load(dir.path()).unwrap().map(|mark| mark.len), Some(0), "the mark covers no frame");
    // A process crash leaves an exact prefix of what was written: a whole frame with a bad
    // checksum is not something a torn write leaves.
    let bytes = rewrite(&last.path, |bytes| bytes[starts[2] as usize + 40] ^= 0x01);
    let message = open_error(dir.path());
    assert!(message.contains(&format!("offset {}: checksum mismatch", starts[2])), "{message}");
    assert!(message.contains("not a torn write"), "{message}");
    assert_eq!(std::fs::read(&last.path).unwrap(), bytes, "nothing is cut");

    // The checksum field itself damaged: the same.
    rewrite(&last.path, |bytes| {
        bytes[starts[2] as usize + 40] ^= 0x01;
        bytes[starts[2] as usize + 5] ^= 0x80;
    });
    assert!(open_error(dir.path()).contains(&format!("offset {}: checksum mismatch", starts[2])));
}

#[tokio::test]
async fn a_last_frame_cut_short_above_the_mark_is_a_torn_tail_and_below_it_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (last, starts) = frames_killed_before_the_next_mark(dir.path(), &["a", "b", "c"], 3).await;
    let full_len = std::fs::metadata(&last.path).unwrap().len();
    let cut_at = starts[2] + (full_len - starts[2]) / 2;
    std::fs::OpenOptions::new().write(true).open(&last.path).unwrap().set_len(cut_at).unwrap();

    let (wal, report) = Wal::open(options(dir.path()), 0).unwrap();
    let truncated = report.truncated_tail.expect("a torn tail is cut");
    assert!(
        truncated.contains(&format!("offset {}", starts[2])) && truncated.contains("runs past the end"),
        "{truncated}"
    );
    assert_eq!(report.next_sequence, 6);
    assert_eq!(read_all(&wal, 0).len(), 6);
    wal.close();

    // After the clean shutdown the mark covers both frames left: cutting the file is damage.
    let mark = committed::load(dir.path()).unwrap().expect("a mark");
    assert_eq!((mark.len, mark.end_sequence), (starts[2], 6));
    std::fs::OpenOptions::new().write(true).open(&last.path).unwrap().set_len(starts[1] + 10).unwrap();
    let message = open_error(dir.path());
    assert!(message.contains(&format!("offset {}", starts[1])) && message.contains("committed length"), "{message}");
    // A cut exactly between frames leaves nothing bad to read: only the mark tells.
    std::fs::OpenOptions::new().write(true).open(&last.path).unwrap().set_len(starts[1]).unwrap();
    let message = open_error(dir.path());
    assert!(
        message.contains(&format!("offset {}", starts[1])) && message.contains("acknowledged frames are missing"),
        "{message}"
    );
}

#[tokio::test]
async fn a_damaged_length_field_in_the_last_frame_is_damage_though_it_runs_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (last, starts) = frames_killed_before_the_next_mark(dir.path(), &["a", "b", "c"], 3).await;
    // A flipped high bit in the last frame's length: "runs past the end of the file", as a write
    // cut short would, but the whole payload is there and verifies at its true length.
    let bytes = rewrite(&last.path, |bytes| bytes[starts[2] as usize + 2] ^= 0x10);
    let message = open_error(dir.path());
    assert!(
        message.contains(&format!("offset {}", starts[2])) && message.contains("length field is damaged"),
        "{message}"
    );
    assert_eq!(std::fs::read(&last.path).unwrap(), bytes, "nothing is cut");
}

#[tokio::test]
async fn a_zero_filled_block_in_the_last_frame_is_a_torn_tail_above_the_mark_and_damage_below_it() {
    let dir = tempfile::tempdir().unwrap();
    // Frames of ten ~110-byte records: over 1 KiB, so the last one holds a whole 512-byte block.
    let (last, starts) = frames_killed_before_the_next_mark(dir.path(), &["a", "b", "c"], 10).await;
    let original = std::fs::read(&last.path).unwrap();
    let block = (starts[2] / 512 + 1) * 512;
    assert!(block + 512 <= original.len() as u64, "the last frame holds a whole block");
    let zero_block = |bytes: &mut Vec<u8>| bytes[block as usize..block as usize + 512].fill(0);

    // A power loss: that block of the last (unacknowledged) write never reached the disk.
    rewrite(&last.path, zero_block);
    let (wal, report) = Wal::open(options(dir.path()), 0).unwrap();
    let truncated = report.truncated_tail.expect("a torn tail is cut");
    assert!(truncated.contains(&format!("offset {}", starts[2])) && truncated.contains("read as zeros"), "{truncated}");
    assert_eq!(report.next_sequence, 20);
    wal.close();

    // The same block zeroed in frames the mark covers: damage.
    std::fs::write(&last.path, &original).unwrap();
    let mark = committed::CommittedMark { segment_first_sequence: 0, len: original.len() as u64, end_sequence: 30 };
    committed::MarkFile::open(dir.path()).unwrap().write(mark).unwrap();
    rewrite(&last.path, zero_block);
    let message = open_error(dir.path());
    assert!(message.contains(&format!("offset {}", starts[2])) && message.contains("committed length"), "{message}");
}

#[tokio::test]
async fn an_append_whose_requester_is_gone_while_it_waits_for_room_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let frame = frame_len(&records("a0", 10));
    let (wal, _) = Wal::open(budget(dir.path(), 2 * frame, Duration::from_secs(10)), 0).unwrap();
    for round in 0..2 {
        wal.append(0, records(&format!("a{round}"), 10)).await.unwrap();
    }
    let waiting = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append(0, records("gone", 10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    waiting.abort();
    let _ = waiting.await;
    wal.trim(20);
    let range = wal.append(0, records("next", 10)).await.expect("room after the trim");
    assert_eq!(range, 20..30, "the abandoned append took no sequences");
    wal.close();
}

/// The survey `spillway wal inspect` shows names the damage in `wal_dir` at `offset`.
fn assert_damaged_at(wal_dir: &Path, offset: u64) {
    let survey = quarantine::survey(wal_dir).unwrap();
    let damaged_at = |report: &quarantine::SegmentReport| match &report.scan.status {
        SegmentStatus::Damaged { offset, .. } => Some(*offset),
        _ => None,
    };
    assert!(survey.segments.iter().any(|report| damaged_at(report) == Some(offset)), "{survey:?}");
}
