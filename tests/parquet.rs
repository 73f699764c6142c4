//! JSON → Parquet end to end: YAML in, `.parquet` objects out, read back with the tools users
//! query them with (pyarrow and DuckDB from the test venv): row count, column types, values,
//! nested fields, decimals, dates, timestamps, nulls, unicode; records that do not fit the schema
//! land under `format-conversion-failed/` with Firehose's codes while the rest is delivered; and
//! seeded SIGKILL rounds deliver every acknowledged row exactly once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, files_under, local_objects};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn yaml(interval_seconds: u64) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: events\n\
         \x20   buffering: {{ size_mib: 64, interval_seconds: {interval_seconds} }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     prefix: 'events/'\n\
         \x20     error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n\
         \x20     format:\n\
         \x20       type: parquet\n\
         \x20       compression: snappy\n\
         \x20       column_to_json_key_mappings: {{ event_time: '@timestamp' }}\n\
         \x20       schema:\n\
         \x20         columns:\n\
         \x20           - {{ name: id, type: bigint }}\n\
         \x20           - {{ name: user, type: string }}\n\
         \x20           - {{ name: ok, type: boolean }}\n\
         \x20           - {{ name: price, type: 'decimal(10,2)' }}\n\
         \x20           - {{ name: day, type: date }}\n\
         \x20           - {{ name: event_time, type: timestamp }}\n\
         \x20           - {{ name: tags, type: 'array<string>' }}\n\
         \x20           - {{ name: attrs, type: 'map<string,int>' }}\n\
         \x20           - {{ name: geo, type: 'struct<lat:double,lon:double>' }}\n"
    )
}

async fn put(client: &aws_sdk_firehose::Client, records: &[String]) -> bool {
    let records = records.iter().map(|data| Record::builder().data(Blob::new(data.as_bytes())).build().unwrap());
    let sent =
        client.put_record_batch().delivery_stream_name("events").set_records(Some(records.collect())).send().await;
    matches!(sent, Ok(output) if output.failed_put_count() == 0)
}

/// Run `script` with the test venv's Python; its stdout as JSON.
fn python(script: &str) -> serde_json::Value {
    let output =
        std::process::Command::new(common::s3::env("SPILLWAY_TEST_PYTHON")).args(["-c", script]).output().unwrap();
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("{error}: {}", String::from_utf8_lossy(&output.stdout));
    })
}

fn parquet_files(dir: &Path) -> Vec<String> {
    files_under(&dir.join("out/events"))
        .into_iter()
        .map(|path| path.to_string_lossy().into_owned())
        .filter(|path| path.ends_with(".parquet"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn pyarrow_and_duckdb_read_typed_rows_and_bad_records_are_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml(60));
    let client = spillway.client().await;
    let mut records = vec![
        r#"{"id":1,"User":"zoë ✓","ok":true,"price":12.5,"day":"2026-11-25","@timestamp":"2026-11-25T12:00:00.123Z","tags":["a","b"],"attrs":{"x":1,"y":2},"geo":{"lat":52.5,"lon":13.4}}"#.to_string(),
        r#"{"id":"2","user":null,"ok":"false","price":"0.055","day":"2026-01-02","@timestamp":1764072000,"tags":[],"attrs":{},"geo":null,"unknown":"ignored"}"#.to_string(),
        r#"{"id":3}"#.to_string(),
        r#"{"id":"x4"}"#.to_string(),
        r#"{"id":5,"price":123456789.5}"#.to_string(),
        "{not json".to_string(),
    ];
    for id in 6..1006 {
        records.push(format!(
            r#"{{"id":{id},"user":"u{}","tags":["t{}"],"@timestamp":"2026-11-25 10:00:{:02}"}}"#,
            id % 7,
            id % 3,
            id % 60
        ));
    }
    for chunk in records.chunks(500) {
        assert!(put(&client, chunk).await);
    }
    assert_eq!(spillway.terminate(), 0);

    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 1, "one object per batch: {files:?}");
    let script = format!(
        r#"
import json, pyarrow.parquet as pq, duckdb
path = {path:?}
table = pq.read_table(path)
rows = {{r["id"]: r for r in table.to_pylist()}}
con = duckdb.connect()
duck = con.execute(f"SELECT count(*), count(DISTINCT id), sum(len(tags)), min(event_time)::VARCHAR, any_value(typeof(price)), any_value(typeof(event_time)), any_value(typeof(geo)), max(geo.lat) FROM read_parquet('{{path}}')").fetchone()
def plain(v):
    if isinstance(v, (list, tuple)): return [plain(x) for x in v]
    if isinstance(v, dict): return {{k: plain(x) for k, x in v.items()}}
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)
print(json.dumps({{
  "schema": {{f.name: str(f.type) for f in table.schema}},
  "rows": table.num_rows,
  "row1": plain(rows[1]), "row2": plain(rows[2]), "row3": plain(rows[3]),
  "duckdb": plain(list(duck)),
}}))
"#,
        path = files[0]
    );
    let read = python(&script);
    assert_eq!(read["rows"], 1003, "three of the first six and the 1,000 after: {read}");
    let schema = &read["schema"];
    assert_eq!(schema["id"], "int64");
    assert_eq!(schema["price"], "decimal128(10, 2)");
    assert_eq!(schema["day"], "date32[day]");
    assert_eq!(schema["event_time"], "timestamp[us, tz=UTC]");
    assert_eq!(schema["tags"], "list<element: string>");
    assert!(schema["attrs"].as_str().unwrap().starts_with("map<string, int32"), "{schema}");
    assert_eq!(schema["geo"], "struct<lat: double, lon: double>");
    let row1 = &read["row1"];
    assert_eq!(row1["user"], "zoë ✓", "case-insensitive keys, unicode intact");
    assert_eq!(row1["ok"], true);
    assert_eq!(row1["price"], "12.50");
    assert_eq!(row1["day"], "2026-11-25");
    assert_eq!(row1["event_time"], "2026-11-25 12:00:00.123000+00:00");
    assert_eq!(row1["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(row1["attrs"], serde_json::json!([["x", 1], ["y", 2]]));
    assert_eq!(row1["geo"], serde_json::json!({"lat": 52.5, "lon": 13.4}));
    let row2 = &read["row2"];
    assert_eq!(
        (row2["user"].clone(), row2["ok"].clone(), row2["price"].clone()),
        (serde_json::Value::Null, false.into(), "0.06".into())
    );
    assert_eq!(row2["event_time"], "2025-11-25 12:00:00+00:00", "epoch seconds");
    assert_eq!(row2["geo"], serde_json::Value::Null);
    let row3 = &read["row3"];
    assert!(
        ["user", "ok", "price", "day", "event_time", "tags", "attrs", "geo"].iter().all(|f| row3[f].is_null()),
        "{row3}"
    );
    let duck = &read["duckdb"];
    assert_eq!(duck[0], 1003);
    assert_eq!(duck[1], 1003);
    assert_eq!(duck[2], 1002, "tags: 2 + 0 + 1000 × 1");
    assert_eq!(duck[4], "DECIMAL(10,2)");
    assert_eq!(duck[5], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(duck[7], 52.5);

    let objects = local_objects(&dir.path().join("out"));
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    for (key, body) in objects.iter().filter(|(key, _)| key.starts_with("errors/format-conversion-failed/")) {
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let line: serde_json::Value = serde_json::from_slice(line).unwrap();
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            failed.insert(String::from_utf8(raw).unwrap(), format!("{} {}", line["errorCode"], line["errorMessage"]));
            assert!(key.ends_with(|c: char| c.is_ascii_hexdigit()), "error objects are JSON lines, not Parquet: {key}");
        }
    }
    assert_eq!(failed.len(), 3, "{failed:#?}");
    assert!(failed[r#"{"id":"x4"}"#].contains("DataFormatConversion.MalformedData"), "{failed:#?}");
    assert!(failed[r#"{"id":"x4"}"#].contains("column `id`"), "{failed:#?}");
    assert!(failed[r#"{"id":5,"price":123456789.5}"#].contains("does not fit decimal(10,2)"), "{failed:#?}");
    assert!(failed["{not json"].contains("DataFormatConversion.ParseError"), "{failed:#?}");
}

#[test]
fn validate_refuses_a_bad_schema_and_a_compressed_parquet_sink() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    let yaml = yaml(60)
        .replace("type: 'decimal(10,2)'", "type: 'decimal(10,2'")
        .replace("      format:\n", "      compression: gzip\n      format:\n");
    std::fs::write(&config, yaml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("sink.format.schema.columns[3]"), "{stderr}");
    assert!(stderr.contains("sink.compression"), "{stderr}");
}

/// `schema.infer`: the first records make the table (Hive types from JSON values), every later
/// record is written to it: unknown fields ignored, a value of another type refused under
/// `format-conversion-failed` with `DataFormatConversion.MalformedData`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn the_table_inferred_from_the_first_records_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = {
        let base = yaml(60).replace("{ event_time: '@timestamp' }", "{}");
        let at = base.find("columns:").unwrap();
        format!("{}infer: {{ records: 3 }}\n", &base[..at])
    };
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let mut records = vec![
        r#"{"id":1,"User":"zoë","ok":true,"ts":"2026-11-25T12:00:00.5Z","price":1,"tags":["a"],"geo":{"lat":1.5}}"#
            .to_string(),
        r#"{"id":2,"user":"b","price":2.25,"tags":[],"geo":{"lat":2,"city":"x"},"nothing":null}"#.to_string(),
        r#"{"id":3,"ts":"2026-11-25 13:00:00","extra":{"deep":[1,2]}}"#.to_string(),
        r#"{"id":4,"user":"d","late_field":"ignored"}"#.to_string(),
        r#"{"id":"five"}"#.to_string(),
    ];
    for id in 6..506 {
        records.push(format!(r#"{{"id":{id},"price":{id}.5,"ok":false}}"#));
    }
    for chunk in records.chunks(500) {
        assert!(put(&client, chunk).await);
    }
    assert_eq!(spillway.terminate(), 0);
    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let read = python(&format!(
        r#"
import json, pyarrow.parquet as pq, duckdb
path = {path:?}
table = pq.read_table(path)
rows = {{r["id"]: r for r in table.to_pylist()}}
duck = duckdb.connect().execute(f"SELECT count(*), sum(price), typeof(any_value(ts)), max(geo.lat), max(ts)::VARCHAR FROM read_parquet('{{path}}')").fetchone()
print(json.dumps({{"schema": {{f.name: str(f.type) for f in table.schema}}, "order": table.schema.names,
  "first": {{k: str(v) for k, v in rows[1].items()}}, "third": {{k: str(v) for k, v in rows[3].items()}},
  "duckdb": [str(v) for v in duck]}}))
"#,
        path = files[0]
    ));
    let order: Vec<&str> = read["order"].as_array().unwrap().iter().map(|name| name.as_str().unwrap()).collect();
    assert_eq!(
        order,
        ["id", "user", "ok", "ts", "price", "tags", "geo", "nothing", "extra"],
        "first-seen order, keys lowercased"
    );
    let schema = &read["schema"];
    assert_eq!(schema["id"], "int64");
    assert_eq!(schema["user"], "string");
    assert_eq!(schema["ok"], "bool");
    assert_eq!(schema["ts"], "timestamp[us, tz=UTC]");
    assert_eq!(schema["price"], "double", "bigint and double widen to double");
    assert_eq!(schema["tags"], "list<element: string>");
    assert_eq!(schema["geo"], "struct<lat: double, city: string>");
    assert_eq!(schema["nothing"], "string", "only null: string");
    assert_eq!(schema["extra"], "struct<deep: list<element: int64>>");
    assert_eq!(read["first"]["ts"], "2026-11-25 12:00:00.500000+00:00");
    assert_eq!(read["first"]["user"], "zoë");
    assert_eq!(read["third"]["extra"], "{'deep': [1, 2]}");
    let duck = &read["duckdb"];
    assert_eq!(duck[0], "504", "all but the refused record");
    assert_eq!(duck[1], (1.0 + 2.25 + (6..506).map(|id| id as f64 + 0.5).sum::<f64>()).to_string());
    assert_eq!(duck[2], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(duck[3], "2.0");

    let objects = local_objects(&dir.path().join("out"));
    let failed: Vec<String> = objects
        .iter()
        .filter(|(key, _)| key.starts_with("errors/format-conversion-failed/"))
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("DataFormatConversion.MalformedData"), "{failed:?}");
    assert!(failed[0].contains("column `id`"), "{failed:?}");
}

/// `schema.file`: the columns of a Parquet file written by pyarrow (as an existing table's file
/// would be) become the sink's; what it writes reads back with the same types (widened only where
/// Hive has no such type: uint32 → int64, seconds → milliseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn the_schema_of_an_existing_parquet_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("sample.parquet");
    python(&format!(
        r#"
import json, pyarrow as pa, pyarrow.parquet as pq
schema = pa.schema([
  ("id", pa.int64()), ("name", pa.string()), ("n", pa.uint32()), ("price", pa.decimal128(12, 3)),
  ("day", pa.date32()), ("at", pa.timestamp("s", tz="UTC")), ("tags", pa.list_(pa.string())),
  ("attrs", pa.map_(pa.string(), pa.float64())), ("geo", pa.struct([("lat", pa.float32()), ("ok", pa.bool_())])),
])
pq.write_table(pa.Table.from_pylist([], schema=schema), {path:?})
# The same schema as an Arrow IPC file (Feather v2) and an IPC stream.
import pyarrow.feather as feather
feather.write_feather(pa.Table.from_pylist([], schema=schema), {path:?}.replace(".parquet", ".arrow"))
with pa.ipc.new_stream({path:?}.replace(".parquet", ".arrows"), schema) as writer:
    pass
print(json.dumps(True))
"#,
        path = sample.to_string_lossy()
    ));
    // The same stream, its `columns` list replaced by the file (same indentation).
    let yaml = {
        let base = yaml(60).replace("{ event_time: '@timestamp' }", "{}");
        let at = base.find("columns:").unwrap();
        format!("{}file: ./sample.parquet\n", &base[..at])
    };
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let records = [
        r#"{"id":1,"name":"ä","n":4000000000,"price":"1.005","day":"2026-11-26","at":1764115200,"tags":["x"],"attrs":{"k":0.5},"geo":{"lat":1.5,"ok":true}}"#.to_string(),
        r#"{"id":2}"#.to_string(),
    ];
    assert!(put(&client, &records).await);
    assert_eq!(spillway.terminate(), 0);
    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let read = python(&format!(
        r#"
import json, pyarrow.parquet as pq
table = pq.read_table({path:?})
rows = table.to_pylist()
print(json.dumps({{"schema": {{f.name: str(f.type) for f in table.schema}}, "first": {{k: str(v) for k, v in rows[0].items()}}, "rows": len(rows)}}))
"#,
        path = files[0]
    ));
    assert_eq!(read["rows"], 2);
    let schema = &read["schema"];
    assert_eq!(schema["id"], "int64");
    assert_eq!(schema["name"], "string");
    assert_eq!(schema["n"], "int64", "uint32 widened");
    assert_eq!(schema["price"], "decimal128(12, 3)");
    assert_eq!(schema["day"], "date32[day]");
    assert_eq!(schema["at"], "timestamp[ms, tz=UTC]", "seconds widened to milliseconds");
    assert_eq!(schema["tags"], "list<element: string>");
    assert!(schema["attrs"].as_str().unwrap().starts_with("map<string, double"), "{schema}");
    assert_eq!(schema["geo"], "struct<lat: float, ok: bool>");
    let first = &read["first"];
    assert_eq!(first["n"], "4000000000");
    assert_eq!(first["price"], "1.005");
    assert_eq!(first["at"], "2025-11-26 00:00:00+00:00");

    // A file with a type no column can hold, a missing file, and both ways at once are refused.
    python(&format!(
        "import json, pyarrow as pa, pyarrow.parquet as pq\npq.write_table(pa.table({{'raw': pa.array([b'x'], pa.binary())}}), {path:?})\nprint(json.dumps(True))",
        path = dir.path().join("binary.parquet").to_string_lossy()
    ));
    // `spillway validate` of the config: whether it passed, and what it said.
    let validates = |yaml: String| {
        let config = dir.path().join("check.yaml");
        std::fs::write(&config, yaml).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .current_dir(dir.path())
            .args(["validate", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let validate = |yaml: String| {
        let (passed, stderr) = validates(yaml);
        assert!(!passed);
        stderr
    };
    // The Arrow IPC file and stream of the same schema are read too.
    for arrow in ["sample.arrow", "sample.arrows"] {
        let (passed, stderr) = validates(yaml.replace("sample.parquet", arrow));
        assert!(passed, "{arrow}: {stderr}");
    }
    let binary = validate(yaml.replace("sample.parquet", "binary.parquet"));
    assert!(binary.contains("sink.format.schema.file") && binary.contains("column `raw`"), "{binary}");
    let missing = validate(yaml.replace("sample.parquet", "nowhere.parquet"));
    assert!(missing.contains("cannot open ./nowhere.parquet"), "{missing}");
    let indent = " ".repeat(yaml.lines().find(|line| line.contains("file: ./")).unwrap().find("file: ./").unwrap());
    let both = validate(yaml.replace(
        "file: ./sample.parquet",
        &format!("file: ./sample.parquet\n{indent}columns: [{{ name: a, type: int }}]"),
    ));
    assert!(both.contains("give one of `columns`, `file` or `infer`"), "{both}");
}

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`, `SPILLWAY_CHAOS_ROUNDS`, default 10) while a
/// client puts rows, one in 50 of them not fitting the schema: every acknowledged id is in
/// exactly one Parquet row or (the misfits, refused on the conversion threads and routed when
/// their batch is delivered) exactly one `format-conversion-failed` record, none twice. Each
/// round also puts one poison record (an unknown field nested 10,000 deep, which sonic-rs once
/// skipped by recursing until the stack overflowed): refused before conversion, it is one more
/// `format-conversion-failed` record (`DataFormatConversion.ParseError`), and no run crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_rounds_deliver_every_acknowledged_row_once() {
    sigkill_rounds(&yaml(1), true).await;
}

/// The same with `schema.infer` (no misfits: a replayed batch that began with one would infer
/// `id` as a string): the table is inferred again after each restart, from the first records
/// the pipeline reads (a replayed batch's), and every acknowledged row lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_rounds_with_an_inferred_table_deliver_every_acknowledged_row_once() {
    let base = yaml(1).replace("{ event_time: '@timestamp' }", "{}");
    let at = base.find("columns:").unwrap();
    sigkill_rounds(&format!("{}infer: {{ records: 20 }}\n", &base[..at]), false).await;
}

async fn sigkill_rounds(yaml: &str, misfits: bool) {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(17);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let acknowledged = Arc::new(Mutex::new(Vec::<u64>::new()));
    for round in 0..rounds as u64 {
        let spillway = Spillway::start(dir.path(), yaml);
        let client = spillway.client().await;
        let poison_id = round * 1_000_000 + 999_999;
        let poison = format!(r#"{{"id":"poison-{poison_id}","deep":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        if put(&client, &[poison]).await {
            acknowledged.lock().unwrap().push(poison_id);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pusher = tokio::spawn({
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            async move {
                let mut id = round * 1_000_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ids: Vec<u64> = (id..id + 100).collect();
                    id += 100;
                    let records: Vec<String> = ids
                        .iter()
                        .map(|id| match id % 50 {
                            49 if misfits => format!(r#"{{"id":"misfit-{id}"}}"#),
                            _ => format!(r#"{{"id":{id},"user":"u","tags":["a"]}}"#),
                        })
                        .collect();
                    if put(&client, &records).await {
                        acknowledged.lock().unwrap().extend(ids);
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
        spillway.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pusher.await.unwrap();
    }
    let final_run = Spillway::start(dir.path(), yaml);
    assert_eq!(final_run.terminate(), 0, "no run crashed on a poison record");

    let files = parquet_files(dir.path());
    let script = format!(
        "import json, duckdb\nfiles = {files:?}\nids = [r[0] for r in duckdb.connect().execute('SELECT id FROM read_parquet(?)', [files]).fetchall()]\nprint(json.dumps(ids))"
    );
    let delivered: Vec<u64> = serde_json::from_value(python(&script)).unwrap();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for id in delivered {
        assert!(!misfits || id % 50 != 49, "a misfit became a row: {id}");
        *counts.entry(id).or_default() += 1;
    }
    let objects = local_objects(&dir.path().join("out"));
    for (key, body) in objects.iter().filter(|(key, _)| key.starts_with("errors/format-conversion-failed/")) {
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let line: serde_json::Value = serde_json::from_slice(line).unwrap();
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            // `{"id":"misfit-<id>"}` or `{"id":"poison-<id>","deep":…}` (too deep to parse).
            let raw = String::from_utf8(raw).unwrap();
            let (kind, id) = raw
                .strip_prefix(r#"{"id":""#)
                .and_then(|rest| rest.split('"').next())
                .and_then(|id| id.split_once('-'))
                .unwrap_or_else(|| panic!("{key}: an unexpected failed record {line}"));
            let code =
                if kind == "poison" { "DataFormatConversion.ParseError" } else { "DataFormatConversion.MalformedData" };
            assert_eq!(line["errorCode"], code, "{key}: {line}");
            *counts.entry(id.parse().unwrap()).or_default() += 1;
        }
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 1_000, "the client got work done: {}", acknowledged.len());
    let missing: Vec<&u64> = acknowledged.iter().filter(|id| !counts.contains_key(id)).collect();
    let duplicated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "seed {seed}, {rounds} rounds, {} objects: {} missing (first {:?}), {} duplicated (first {:?})",
        files.len(),
        missing.len(),
        missing.first(),
        duplicated.len(),
        duplicated.first()
    );
}
