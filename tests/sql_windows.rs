//! Windowed `sql` transforms end to end (YAML in, objects out on the local sink): an intake
//! stream archives every record and a stream reading it aggregates per window.
//!
//! - Per-minute counts and averages per service by event time over a log with out-of-order and
//!   late records, compared window by window with DuckDB computing the same over the records the
//!   test itself classifies as on time; late records and records without a readable time land in
//!   the error output under their own codes.
//! - Arrival-time windows close while the stream is idle.
//! - Seeded SIGKILL rounds: the window rows delivered are exactly those of the archive's records
//!   (what the WAL held), each window and group once.
//! - Configurations a window cannot run with are refused by `spillway validate`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use base64::Engine;
use common::{Spillway, eventually, local_json_lines, put_in_batches, validate_yaml};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const SCHEMA: &str = "schema: { columns: [ { name: ts, type: string }, { name: service, type: string }, { name: latency_ms, type: double } ] }";

/// An archive stream `app-logs` and a stream `windows` reading it with one windowed transform.
fn config(query: &str, window: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: file://./out, prefix: 'archive/' }}\n\
         \x20 - name: windows\n\
         \x20   source: {{ type: stream, stream: app-logs }}\n\
         \x20   processing:\n\
         \x20     record_delimiter: newline\n\
         \x20     transforms:\n\
         \x20       - type: sql\n\
         \x20         query: \"{query}\"\n\
         \x20         {SCHEMA}\n\
         \x20         window: {window}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: file://./out, prefix: 'windows/', error_output_prefix: 'errors/!{{firehose:error-output-type}}/' }}\n"
    )
}

/// `rawData` → `errorCode` of the records in the error output.
fn failures(dir: &std::path::Path) -> BTreeMap<String, String> {
    local_json_lines(&dir.join("out"), "errors/")
        .into_iter()
        .map(|line| {
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            (String::from_utf8(raw).unwrap(), line["errorCode"].as_str().unwrap().to_string())
        })
        .collect()
}

fn iso(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh (DuckDB in its Python)"]
async fn event_time_windows_equal_duckdb_over_the_records_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(
        "SELECT service, count(*) AS n, avg(latency_ms) AS avg_ms, max(latency_ms) AS max_ms FROM records GROUP BY service",
        "{ type: tumbling, size_seconds: 60, time: { field: .ts }, allowed_lateness_seconds: 30 }",
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    // ~6 minutes of events, 0.1 s apart, most up to 20 s out of order (within the lateness),
    // every 97th two minutes behind (late once its window closed); some without a usable time.
    let base = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").unwrap().timestamp_millis();
    let services = ["checkout", "search", "auth"];
    let mut rng = StdRng::seed_from_u64(29);
    let mut records = Vec::new();
    let mut timed = Vec::new();
    for i in 0..3600i64 {
        let service = services[(i % 3) as usize];
        let latency = (i * 37 % 500) as f64 + 0.125;
        if i % 211 == 5 {
            records.push(json!({"service": service, "latency_ms": latency}).to_string());
            continue;
        }
        if i % 211 == 9 {
            records.push(json!({"ts": "yesterday", "service": service, "latency_ms": latency}).to_string());
            continue;
        }
        let behind = if i % 97 == 0 { 120_000 } else { rng.random_range(0..20_000) };
        let ts = base + i * 100 - behind;
        records.push(json!({"ts": iso(ts), "service": service, "latency_ms": latency}).to_string());
        timed.push((records.len() - 1, ts, service, latency));
    }
    // A record an hour later closes every window before it.
    let flush_ts = base + 3_600_000;
    records.push(json!({"ts": iso(flush_ts), "service": "flush", "latency_ms": 0.0}).to_string());
    put_in_batches(&client, "app-logs", &records, 250).await;

    // The test's own classification, record by record in WAL order: late when the newest time
    // seen before it, less the lateness, has passed its window's end.
    let mut newest = i64::MIN;
    let (mut on_time, mut late) = (Vec::new(), Vec::new());
    for (index, ts, service, latency) in &timed {
        let end = ts.div_euclid(60_000) * 60_000 + 60_000;
        if end <= newest.saturating_sub(30_000) {
            late.push(records[*index].clone());
        } else {
            on_time.push(json!({"ts": ts, "service": service, "latency_ms": latency}));
        }
        newest = newest.max(*ts);
    }
    assert!(late.len() > 10, "the log has late records: {}", late.len());
    let windows_expected = {
        let file = dir.path().join("on_time.json");
        std::fs::write(&file, serde_json::to_vec(&on_time).unwrap()).unwrap();
        let script = format!(
            r#"
import json, duckdb
con = duckdb.connect()
rows = con.execute("""
  SELECT CAST(floor(ts / 60000) * 60000 AS BIGINT) AS start_ms, service, count(*) AS n, avg(latency_ms) AS avg_ms, max(latency_ms) AS max_ms
  FROM read_json('{}', columns = {{'ts': 'BIGINT', 'service': 'VARCHAR', 'latency_ms': 'DOUBLE'}})
  GROUP BY ALL ORDER BY ALL""").fetchall()
print(json.dumps([list(row) for row in rows]))
"#,
            file.display()
        );
        let output =
            std::process::Command::new(common::s3::env("SPILLWAY_TEST_PYTHON")).args(["-c", &script]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        rows.into_iter()
            .map(|row| {
                let start = iso(row[0].as_i64().unwrap()).replace(".000Z", "Z");
                (
                    (start, row[1].as_str().unwrap().to_string()),
                    (row[2].as_u64().unwrap(), row[3].as_f64().unwrap(), row[4].as_f64().unwrap()),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let delivered = || -> BTreeMap<(String, String), Vec<Value>> {
        let mut by_window: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        for row in local_json_lines(&dir.path().join("out"), "windows/") {
            let key = (row["window_start"].as_str().unwrap().to_string(), row["service"].as_str().unwrap().to_string());
            by_window.entry(key).or_default().push(row);
        }
        by_window
    };
    eventually(Duration::from_secs(60), "every window before the flush record was delivered", || {
        (delivered().len() >= windows_expected.len() && failures(dir.path()).len() >= late.len() + 2 * 18).then_some(())
    })
    .await;
    let late_metric = spillway.metric("spillway_sql_late_records_total{stream=\"windows\"}").await;
    let rows_metric = spillway.metric("spillway_sql_window_rows_total{stream=\"windows\"}").await;
    let open_metric = spillway.metric("spillway_sql_open_windows{stream=\"windows\"}").await;
    assert_eq!(spillway.terminate(), 0);

    let delivered = delivered();
    assert_eq!(late_metric, Some(late.len() as f64), "late records counted");
    assert_eq!(rows_metric, Some(windows_expected.len() as f64), "window rows counted");
    assert_eq!(open_metric, Some(1.0), "the flush record's window is open");
    assert_eq!(
        delivered.keys().collect::<Vec<_>>(),
        windows_expected.keys().collect::<Vec<_>>(),
        "the same windows and services (the flush record's window is still open)"
    );
    for (key, (n, avg, max)) in &windows_expected {
        let rows = &delivered[key];
        assert_eq!(rows.len(), 1, "{key:?} once: {rows:?}");
        let row = &rows[0];
        assert_eq!(row["n"].as_u64(), Some(*n), "{key:?}: {row}");
        let got = row["avg_ms"].as_f64().unwrap();
        assert!((got - avg).abs() <= avg.abs() * 1e-12, "{key:?}: avg {got} vs DuckDB's {avg}");
        assert_eq!(row["max_ms"].as_f64(), Some(*max), "{key:?}: {row}");
        let start = chrono::DateTime::parse_from_rfc3339(row["window_start"].as_str().unwrap()).unwrap();
        let end = chrono::DateTime::parse_from_rfc3339(row["window_end"].as_str().unwrap()).unwrap();
        assert_eq!((end - start).num_seconds(), 60);
    }
    let failed = failures(dir.path());
    for record in &late {
        assert_eq!(failed.get(record).map(String::as_str), Some("Sql.LateRecord"), "{record}");
    }
    let invalid = failed.values().filter(|code| *code == "Sql.InvalidEventTime").count();
    assert_eq!(invalid, records.iter().filter(|record| !record.contains("\"ts\":\"2026")).count());
    assert_eq!(failed.len(), late.len() + invalid, "nothing else failed");
    // The archive holds every record as sent.
    assert_eq!(local_json_lines(&dir.path().join("out"), "archive/").len(), records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_time_windows_close_while_the_stream_is_idle() {
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        config("SELECT count(*) AS n, sum(latency_ms) AS total FROM records", "{ type: tumbling, size_seconds: 2 }");
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let records: Vec<String> = (0..100).map(|i| json!({"service": "a", "latency_ms": i as f64}).to_string()).collect();
    put_in_batches(&client, "app-logs", &records, 250).await;
    // No more records: the window still closes, by the clock.
    let rows = eventually(Duration::from_secs(30), "the idle stream's window closed", || {
        let rows = local_json_lines(&dir.path().join("out"), "windows/");
        let total: u64 = rows.iter().map(|row| row["n"].as_u64().unwrap()).sum();
        (total == 100).then_some(rows)
    })
    .await;
    assert_eq!(spillway.terminate(), 0);
    let total: f64 = rows.iter().map(|row| row["total"].as_f64().unwrap()).sum();
    assert_eq!(total, (0..100).sum::<i32>() as f64);
    assert!(rows.len() <= 2, "one window, or two if the puts crossed a boundary: {rows:?}");
}

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`, `SPILLWAY_CHAOS_ROUNDS`, default 10) while one
/// client puts records timed by the clock into 2-second windows: after a clean final run every
/// window's row per service equals the aggregate of the archive's records of that window and
/// service (the archive is what the WAL held), no window or group twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rounds_give_every_window_once_with_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(
        "SELECT service, count(*) AS n, sum(latency_ms) AS total, min(latency_ms) AS low, max(latency_ms) AS high FROM records GROUP BY service",
        "{ type: tumbling, size_seconds: 2, time: { field: .ts, format: epoch_milliseconds }, allowed_lateness_seconds: 1 }",
    )
    .replace("name: ts, type: string", "name: ts, type: bigint");
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(5);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut next_id = 0u64;
    let pusher = |spillway: &Spillway, first_id: u64, stop: Arc<std::sync::atomic::AtomicBool>| {
        let endpoint = spillway.endpoint.clone();
        let acknowledged = acknowledged.clone();
        async move {
            let client = common::firehose_client(&endpoint).await;
            let mut id = first_id;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<u64> = (id..id + 20).collect();
                id += 20;
                let now = chrono::Utc::now().timestamp_millis();
                let records = ids.iter().map(|id| {
                    let service = ["a", "b", "c"][(id % 3) as usize];
                    let data = json!({"id": id, "ts": now, "service": service, "latency_ms": (id % 1000) as f64});
                    Record::builder().data(Blob::new(data.to_string())).build().unwrap()
                });
                let sent = client
                    .put_record_batch()
                    .delivery_stream_name("app-logs")
                    .set_records(Some(records.collect()))
                    .send()
                    .await;
                match sent {
                    Ok(output) if output.failed_put_count() == 0 => acknowledged.lock().unwrap().extend(ids),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    for _ in 0..rounds {
        let spillway = Spillway::start(dir.path(), &yaml);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(pusher(&spillway, next_id, stop.clone()));
        next_id += 1_000_000;
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        spillway.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        task.await.unwrap();
    }
    let final_run = Spillway::start(dir.path(), &yaml);
    // Idle now: every window closes by the clock once the archive is complete.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let expected = || {
        let archive = local_json_lines(&dir.path().join("out"), "archive/");
        let mut windows: BTreeMap<(i64, String), (u64, f64, f64, f64)> = BTreeMap::new();
        for record in &archive {
            let start = record["ts"].as_i64().unwrap().div_euclid(2000) * 2000;
            let latency = record["latency_ms"].as_f64().unwrap();
            let entry = windows.entry((start, record["service"].as_str().unwrap().to_string())).or_insert((
                0,
                0.0,
                f64::MAX,
                f64::MIN,
            ));
            entry.0 += 1;
            entry.1 += latency;
            entry.2 = entry.2.min(latency);
            entry.3 = entry.3.max(latency);
        }
        (archive, windows)
    };
    let delivered = || {
        let mut rows: BTreeMap<(i64, String), Vec<Value>> = BTreeMap::new();
        for row in local_json_lines(&dir.path().join("out"), "windows/") {
            let start =
                chrono::DateTime::parse_from_rfc3339(row["window_start"].as_str().unwrap()).unwrap().timestamp_millis();
            rows.entry((start, row["service"].as_str().unwrap().to_string())).or_default().push(row);
        }
        rows
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, windows) = expected();
        let rows = delivered();
        if windows.keys().all(|key| rows.contains_key(key)) || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(final_run.terminate(), 0);

    let (archive, windows) = expected();
    let archived: std::collections::BTreeSet<u64> =
        archive.iter().map(|record| record["id"].as_u64().unwrap()).collect();
    assert_eq!(archived.len(), archive.len(), "the archive holds each record once");
    assert!(acknowledged.len() > 500, "the client got work done: {}", acknowledged.len());
    assert!(windows.len() >= 9, "records over several windows and services: {}", windows.len());
    assert!(acknowledged.iter().all(|id| archived.contains(id)), "every acknowledged record was archived");
    let rows = delivered();
    assert!(failures(dir.path()).is_empty(), "no record was late or refused: {:?}", failures(dir.path()));
    let mismatched: Vec<String> = windows
        .iter()
        .filter_map(|(key, (n, total, low, high))| {
            let got = rows.get(key);
            let ok = got.is_some_and(|got| {
                got.len() == 1
                    && got[0]["n"].as_u64() == Some(*n)
                    && got[0]["total"].as_f64() == Some(*total)
                    && got[0]["low"].as_f64() == Some(*low)
                    && got[0]["high"].as_f64() == Some(*high)
            });
            (!ok).then(|| format!("{key:?}: expected n={n} total={total} low={low} high={high}, got {got:?}"))
        })
        .collect();
    let extra: Vec<&(i64, String)> = rows.keys().filter(|key| !windows.contains_key(key)).collect();
    assert!(
        mismatched.is_empty() && extra.is_empty(),
        "seed {seed}, {rounds} rounds, {} windows: {} wrong (first {:?}), {} not from the archive (first {:?})",
        windows.len(),
        mismatched.len(),
        mismatched.first(),
        extra.len(),
        extra.first()
    );
}

#[test]
fn windows_that_cannot_run_are_refused_by_validate() {
    let good =
        config("SELECT service, count(*) AS n FROM records GROUP BY service", "{ type: tumbling, size_seconds: 60 }");
    let (ok, stderr) = validate_yaml(&good);
    assert!(ok, "{stderr}");
    let refused = |yaml: String, message: &str| {
        let (ok, stderr) = validate_yaml(&yaml);
        assert!(!ok && stderr.contains(message), "`{message}` in {stderr}");
    };
    // Not an aggregate, an unknown column, a bad slide, no schema.
    refused(
        config("SELECT service FROM records", "{ type: tumbling, size_seconds: 60 }"),
        "a windowed query must aggregate",
    );
    refused(config("SELECT nope, count(*) FROM records GROUP BY nope", "{ type: tumbling, size_seconds: 60 }"), "nope");
    refused(
        config("SELECT count(*) AS n FROM records", "{ type: sliding, size_seconds: 60, slide_seconds: 7 }"),
        "must divide size_seconds",
    );
    refused(good.replace(SCHEMA, ""), "a windowed query needs given columns");
    refused(
        config("SELECT count(*) AS n FROM records", "{ type: tumbling, size_seconds: 60, time: { field: 'ts' } }"),
        "is not a path of object keys",
    );
    // Where it may run: first, in a stream that reads another stream.
    refused(
        good.replace("    source: { type: stream, stream: app-logs }\n", ""),
        "a windowed sql transform runs where a stream reads another stream",
    );
    refused(
        good.replace("      transforms:\n", "      transforms:\n        - { type: jq, expr: '.' }\n"),
        "a windowed sql transform runs where a stream reads another stream",
    );
    refused(
        config(
            "SELECT service, count(*) AS n FROM records GROUP BY service",
            "{ type: tumbling, size_seconds: 60, max_groups: 9000000 }",
        ),
        "over the bound",
    );
}
