//! The `file` source end to end (YAML in, objects out, local sink): tailed lines are delivered
//! once each, across rotation by rename and across SIGKILLs at random moments — the reader
//! resumes from the position the WAL holds, never skipping, never repeating.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, eventually, local_objects};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn file_yaml(log: &Path) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: tailed\n\
         \x20   source: {{ type: file, path: {}, poll_interval_ms: 20 }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     compression: gzip\n",
        log.display()
    )
}

fn append_lines(log: &Path, lines: impl IntoIterator<Item = String>) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

/// Delivered lines and how often each arrived.
fn delivered(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, body) in local_objects(&dir.join("out")) {
        for line in String::from_utf8(body).unwrap().lines() {
            *counts.entry(line.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailed_lines_arrive_once_across_rotation_and_puts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_lines(&log, (0..100).map(|n| format!("first-{n}")));
    let spillway = Spillway::start(dir.path(), &file_yaml(&log));
    eventually(Duration::from_secs(20), "the existing lines", || (delivered(dir.path()).len() == 100).then_some(()))
        .await;

    // Rename rotation: the rest of the old file, then the new file from its start.
    append_lines(&log, (0..10).map(|n| format!("before-rotation-{n}")));
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append_lines(&log, (0..50).map(|n| format!("after-rotation-{n}")));
    eventually(Duration::from_secs(20), "lines of both files", || (delivered(dir.path()).len() == 160).then_some(()))
        .await;

    let client = spillway.client().await;
    let refused = client
        .put_record_batch()
        .delivery_stream_name("tailed")
        .records(Record::builder().data(Blob::new("x")).build().unwrap())
        .send()
        .await
        .expect_err("a file-sourced stream takes no puts");
    assert!(refused.as_service_error().is_some_and(|error| error.is_invalid_argument_exception()), "{refused:?}");
    assert_eq!(spillway.terminate(), 0);
    let counts = delivered(dir.path());
    assert_eq!(counts.len(), 160);
    assert!(counts.values().all(|&count| count == 1), "no line twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_while_tailing_loses_and_repeats_no_line() {
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20261125);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let yaml = file_yaml(&log);

    // A writer appends lines all along, across every kill and restart; one in about 1,000 is a
    // poison record (JSON nested 10,000 deep, which once aborted the process where it was
    // parsed). Nothing parses a tailed line on its way to a raw object: it is delivered as
    // written, once, like any other, and no run crashes.
    let poison =
        |number: u64| format!("{{\"poison\":{number},\"deep\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut written, mut poisons) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                append_lines(&log, (0..50).map(|n| format!("line-{:08}-{}", written + n, "x".repeat(100))));
                written += 50;
                if written % 1_000 == 0 {
                    append_lines(&log, [poison(written)]);
                    poisons.push(written);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (written, poisons)
        })
    };
    for _ in 0..rounds {
        let spillway = Spillway::start(dir.path(), &yaml);
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..1500))).await;
        spillway.kill();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (lines, poisons) = writer.join().unwrap();
    let written = lines + poisons.len() as u64;
    let spillway = Spillway::start(dir.path(), &yaml);
    eventually(Duration::from_secs(60), "every written line", || {
        (delivered(dir.path()).len() as u64 == written).then_some(())
    })
    .await;
    assert_eq!(spillway.terminate(), 0);

    let counts = delivered(dir.path());
    let duplicates: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(duplicates.is_empty(), "lines delivered twice: {duplicates:?}");
    assert_eq!(counts.len() as u64, written, "every line written to the file delivered");
    assert!(!poisons.is_empty(), "poison lines were written");
    for number in poisons {
        assert_eq!(
            counts.get(&poison(number)),
            Some(&1),
            "seed {seed}: poison line {number} delivered as written, once"
        );
    }
    eprintln!("seed {seed}: {rounds} SIGKILL rounds, {written} lines tailed, each delivered once");
}

/// A file-source stream named `tailed` with the given `source:` fields after `type: file`.
fn source_yaml(source_fields: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: tailed\n\
         \x20   source: {{ type: file, {source_fields} }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     compression: gzip\n"
    )
}

fn gzip_file(path: &Path) {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&std::fs::read(path).unwrap()).unwrap();
    std::fs::write(
        path.with_extension(format!("{}.gz", path.extension().unwrap().to_string_lossy())),
        encoder.finish().unwrap(),
    )
    .unwrap();
    std::fs::remove_file(path).unwrap();
}

/// A writer appends as fast as it can while the log is rotated every few hundred milliseconds,
/// in turn by rename and by copytruncate, and rotated files are gzip-compressed two rotations
/// later; the pattern matches every rotated name (also the `.gz` ones, which must be recognised
/// and skipped), and spillway is SIGKILLed once mid-way. Every line arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_copytruncate_rotations_under_a_fast_writer_lose_and_repeat_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let pattern = format!("{}/app.log*", dir.path().display());
    let yaml = source_yaml(&format!("paths: ['{pattern}'], poll_interval_ms: 20, glob_interval_ms: 50"));
    let spillway = Spillway::start(dir.path(), &yaml);

    let writer = {
        let (dir, log) = (dir.path().to_path_buf(), log.clone());
        std::thread::spawn(move || {
            let mut written = 0u64;
            for round in 0..12u64 {
                let until = std::time::Instant::now() + Duration::from_millis(250);
                while std::time::Instant::now() < until {
                    append_lines(&log, (0..100).map(|n| format!("line-{:08}-{}", written + n, "x".repeat(80))));
                    written += 100;
                    std::thread::sleep(Duration::from_millis(2));
                }
                let rotated = dir.join(format!("app.log.{round}"));
                if round % 2 == 0 {
                    std::fs::rename(&log, &rotated).unwrap();
                } else {
                    // logrotate's copytruncate (the writer is paused meanwhile, as logrotate
                    // cannot make it pause, lines written between the copy and the truncation
                    // are lost by copytruncate itself).
                    std::fs::copy(&log, &rotated).unwrap();
                    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
                }
                if round >= 2 {
                    gzip_file(&dir.join(format!("app.log.{}", round - 2)));
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    spillway.kill();
    let spillway = Spillway::start(dir.path(), &yaml);
    let written = tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
    eventually(Duration::from_secs(90), "every written line", || {
        (delivered(dir.path()).len() as u64 >= written).then_some(())
    })
    .await;
    assert_eq!(spillway.terminate(), 0);

    let counts = delivered(dir.path());
    let duplicates: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(duplicates.is_empty(), "lines delivered twice: {duplicates:?}");
    let expected: Vec<String> = (0..written).map(|n| format!("line-{n:08}-{}", "x".repeat(80))).collect();
    let missing: Vec<_> = expected.iter().filter(|line| !counts.contains_key(*line)).take(5).collect();
    assert!(missing.is_empty(), "lines never delivered: {missing:?}");
    assert_eq!(counts.len() as u64, written, "nothing but the written lines (no gzip bytes read as text)");
    eprintln!("{written} lines across 12 rotations and a SIGKILL, each delivered once");
}

/// Stack traces become one record each with a start pattern; the last one, with no start line
/// after it, is sent once the multi-line timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiline_groups_a_stack_trace_into_one_record_and_the_last_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Not in `dir` itself: spillway's own log is written there.
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let log = logs.join("service.log");
    let yaml = source_yaml(&format!(
        "paths: ['{}/*.log'], poll_interval_ms: 20, glob_interval_ms: 50, \
         multiline: {{ start_pattern: '^\\d{{4}}-\\d{{2}}-\\d{{2}} ', timeout_ms: 300 }}",
        logs.display()
    ));
    let text = "2026-11-26 10:00:00 INFO started\n\
                2026-11-26 10:00:01 ERROR request failed\n\
                java.lang.IllegalStateException: boom\n\
                \tat com.example.Handler.handle(Handler.java:42)\n\
                \tat com.example.Server.run(Server.java:7)\n\
                2026-11-26 10:00:02 INFO recovered\n\
                2026-11-26 10:00:03 ERROR again\n\
                Caused by: java.io.IOException: disk\n\
                \tat java.io.File.write(File.java:1)\n";
    std::fs::write(&log, text).unwrap();
    let spillway = Spillway::start(dir.path(), &yaml);
    let all = || -> String {
        local_objects(&dir.path().join("out")).into_iter().map(|(_, body)| String::from_utf8(body).unwrap()).collect()
    };
    eventually(Duration::from_secs(20), "the last group, sent by the timeout", || {
        all().contains("\tat java.io.File.write(File.java:1)\n").then_some(())
    })
    .await;
    let records = spillway.metric("spillway_incoming_records_total{stream=\"tailed\"}").await.unwrap();
    assert_eq!(records, 4.0, "four log events, three of them single lines and two with their traces");
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(all(), text, "the groups keep their lines and newlines");
}

/// `read_from: end` skips what the files held when the stream first started, but not lines
/// written while spillway was stopped, nor files that appeared meanwhile; excluded files are
/// never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_end_skips_only_what_was_there_at_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let (app, debug) = (logs.join("app.log"), logs.join("debug.log"));
    append_lines(&app, (0..50).map(|n| format!("old-{n}")));
    append_lines(&debug, ["debug-old".to_string()]);
    let yaml = source_yaml(&format!(
        "paths: ['{base}/*.log'], exclude: ['{base}/debug.log'], read_from: end, poll_interval_ms: 20, glob_interval_ms: 50",
        base = logs.display()
    ));
    let spillway = Spillway::start(dir.path(), &yaml);
    eventually(Duration::from_secs(20), "the reader's start", || {
        spillway.log_text().contains("tailing file").then_some(())
    })
    .await;
    append_lines(&app, (0..10).map(|n| format!("new-{n}")));
    eventually(Duration::from_secs(20), "the new lines", || (delivered(dir.path()).len() == 10).then_some(())).await;
    assert_eq!(spillway.terminate(), 0);

    append_lines(&app, (0..10).map(|n| format!("while-down-{n}")));
    append_lines(&logs.join("other.log"), (0..5).map(|n| format!("other-{n}")));
    append_lines(&debug, ["debug-new".to_string()]);
    let spillway = Spillway::start(dir.path(), &yaml);
    eventually(Duration::from_secs(20), "the lines written while stopped", || {
        (delivered(dir.path()).len() == 25).then_some(())
    })
    .await;
    assert_eq!(spillway.terminate(), 0);
    let counts = delivered(dir.path());
    assert!(counts.keys().all(|line| !line.starts_with("old-") && !line.starts_with("debug")), "{counts:?}");
    assert!(counts.values().all(|&count| count == 1), "{counts:?}");
}

/// A line source keeps its lines apart by default: a `file` stream without
/// `processing.record_delimiter` delivers each line followed by `\n`, as it was in the file;
/// `record_delimiter: none` still writes the records back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_stream_ends_each_line_with_a_newline_unless_told_none() {
    let dir = tempfile::tempdir().unwrap();
    let stream_yaml = |name: &str, processing: &str| {
        let log = dir.path().join(format!("{name}.log"));
        append_lines(&log, ["alpha", "beta", "gamma"].map(String::from));
        format!(
            "\x20 - name: {name}\n\
             \x20   source: {{ type: file, path: {}, poll_interval_ms: 20 }}\n\
             {processing}\
             \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
             \x20   sink: {{ type: s3, url: file://./out-{name} }}\n",
            log.display()
        )
    };
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n{}{}",
        stream_yaml("by-default", ""),
        stream_yaml("back-to-back", "\x20   processing: { record_delimiter: none }\n"),
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    let delivered_text = |name: &str| {
        let objects = local_objects(&dir.path().join(format!("out-{name}")));
        String::from_utf8(objects.into_iter().flat_map(|(_, body)| body).collect()).unwrap()
    };
    for (name, expected) in [("by-default", "alpha\nbeta\ngamma\n"), ("back-to-back", "alphabetagamma")] {
        let delivered = eventually(Duration::from_secs(20), &format!("{name}'s three lines"), || {
            let text = delivered_text(name);
            (text.len() >= expected.len()).then_some(text)
        })
        .await;
        assert_eq!(delivered, expected, "{name}");
    }
    assert_eq!(spillway.terminate(), 0);
}
