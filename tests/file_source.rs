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

    // A writer appends lines all along, across every kill and restart.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                append_lines(&log, (0..50).map(|n| format!("line-{:08}-{}", written + n, "x".repeat(100))));
                written += 50;
                std::thread::sleep(Duration::from_millis(5));
            }
            written
        })
    };
    for _ in 0..rounds {
        let spillway = Spillway::start(dir.path(), &yaml);
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..1500))).await;
        spillway.kill();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
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
    eprintln!("seed {seed}: {rounds} SIGKILL rounds, {written} lines tailed, each delivered once");
}
