//! The PostgreSQL sink end to end against real PostgreSQL (`scripts/services.sh`): YAML in,
//! records through the Firehose API of the real binary, rows out. Types, bad rows split out to
//! the error output with their SQLSTATE, seeded SIGKILL rounds (every acknowledged row exactly
//! once), a PostgreSQL restart mid-run (a throwaway server of the test's own), and
//! `validate --connect`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use base64::Engine;
use common::pg::{self, OwnPostgres};
use common::{Spillway, WAIT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A config with one stream `rows` into `table` on `url`; error output in `./errors`.
fn yaml(url: &str, table: &str, extra_sink: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: 60 }}\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: rows\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   retry: {{ duration_seconds: 600 }}\n\
         \x20   sink:\n\
         \x20     type: postgres\n\
         \x20     url: {url}\n\
         \x20     table: {table}\n\
         \x20     backup: {{ sink: {{ url: 'file://./errors' }} }}\n\
         {extra_sink}"
    )
}

/// PutRecordBatch in calls of at most 500 records.
async fn put(client: &aws_sdk_firehose::Client, stream: &str, records: &[String]) {
    for chunk in records.chunks(500) {
        let batch: Vec<Record> =
            chunk.iter().map(|data| Record::builder().data(Blob::new(data.as_bytes())).build().unwrap()).collect();
        let output = client
            .put_record_batch()
            .delivery_stream_name(stream)
            .set_records(Some(batch))
            .send()
            .await
            .expect("put records");
        assert_eq!(output.failed_put_count(), 0);
    }
}

/// Error output records (Firehose error JSON) under `dir/errors`.
fn error_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    common::local_objects(&dir.join("errors"))
        .into_iter()
        .flat_map(|(_, body)| {
            body.split(|&byte| byte == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_slice(line).expect("error record is JSON"))
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

fn raw_data(record: &serde_json::Value) -> String {
    let raw = base64::engine::general_purpose::STANDARD.decode(record["rawData"].as_str().unwrap()).unwrap();
    String::from_utf8(raw).unwrap()
}

async fn wait_errors(dir: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    common::eventually(WAIT, "error records", || {
        let found = error_records(dir);
        (found.len() >= count).then_some(found)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn json_values_land_as_postgres_types() {
    let db = pg::connect(&pg::shared_url()).await;
    let table = pg::unique_table("types");
    let whole = pg::unique_table("whole");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id text, n integer, big bigint, amount numeric, flag boolean, at timestamptz,
                               at_epoch timestamptz, doc jsonb, tags text[], scores integer[], note text, day date);
         CREATE TABLE {whole} (seq bigserial, doc jsonb, loaded_at timestamptz NOT NULL DEFAULT now());
         SET TIME ZONE 'UTC';"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = yaml(&pg::shared_url(), &table, "");
    config.push_str(&format!(
        "\x20 - name: whole\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: postgres, url: '{}', table: {whole}, record_column: doc, backup: {{ sink: {{ url: 'file://./errors' }} }} }}\n",
        pg::shared_url()
    ));
    let spillway = Spillway::start(dir.path(), &config);
    let client = spillway.client().await;
    let records = [
        r#"{"id":"full","n":42,"big":9007199254740993,"amount":12345678901234567890.123456789,"flag":true,
            "at":"2024-05-06T07:08:09.123+02:00","at_epoch":1700000000.5,"doc":{"k":[1,{"x":null}],"s":"é"},
            "tags":["a b","c\"d","ünï",null],"scores":[1,null,3],"note":"line1\nline2\ttab\\back","day":"2024-02-29"}"#,
        r#"{"id":"nulls","n":null,"unknown_field":1}"#,
        r#"{"id":"unicode","note":"日本語 🚀 \u00e9","doc":"just a string","flag":false,"day":0,"amount":"1e-3","at":"epoch"}"#,
    ]
    .map(|record| record.replace('\n', " "));
    put(&client, "rows", &records).await;
    put(&client, "whole", &[r#"{"a":1,"b":"x\ty"}"#.to_string(), "[1,2]".to_string()]).await;

    pg::wait_rows(&db, &table, 3, WAIT).await;
    pg::wait_rows(&db, &whole, 2, WAIT).await;
    let rows = db
        .query(
            &format!(
                "SELECT id, n::text, big::text, amount::text, flag::text, at::text, at_epoch::text, doc::text,
                        tags::text, scores::text, note, day::text FROM {table} ORDER BY id"
            ),
            &[],
        )
        .await
        .unwrap();
    let as_strings = |index: usize| -> Vec<Option<String>> { (0..12).map(|column| rows[index].get(column)).collect() };
    let some = |text: &str| Some(text.to_string());
    assert_eq!(
        as_strings(0),
        vec![
            some("full"),
            some("42"),
            some("9007199254740993"),
            some("12345678901234567890.123456789"),
            some("true"),
            some("2024-05-06 05:08:09.123+00"),
            some("2023-11-14 22:13:20.5+00"),
            some(r#"{"k": [1, {"x": null}], "s": "é"}"#),
            some(r#"{"a b","c\"d",ünï,NULL}"#),
            some("{1,NULL,3}"),
            some("line1\nline2\ttab\\back"),
            some("2024-02-29"),
        ]
    );
    assert_eq!(as_strings(1), [vec![some("nulls")], vec![None; 11]].concat());
    let unicode = as_strings(2);
    assert_eq!(unicode[3], some("0.001"));
    assert_eq!(unicode[4], some("false"));
    assert_eq!(unicode[5], some("1970-01-01 00:00:00+00"));
    assert_eq!(unicode[7], some(r#""just a string""#));
    assert_eq!(unicode[10], some("日本語 🚀 é"));
    assert_eq!(unicode[11], some("1970-01-01"));

    let docs: Vec<String> = db
        .query(&format!("SELECT doc::text FROM {whole} ORDER BY seq"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(docs, [r#"{"a": 1, "b": "x\ty"}"#, "[1, 2]"]);
    let batches: i64 = db
        .query_one("SELECT count(*) FROM spillway_batches WHERE target IN ($1, $2)", &[&table, &whole])
        .await
        .unwrap()
        .get(0);
    assert!(batches >= 2, "each load recorded its batch id");
    assert_eq!(spillway.terminate(), 0);
    assert!(error_records(dir.path()).is_empty());
}

/// Binary COPY (the default where every column type converts exactly) and text COPY load the
/// same records into the same rows, and refuse the same bad records with the same SQLSTATE:
/// two streams, one per format, into two identical tables, compared row by row as PostgreSQL
/// prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn binary_and_text_copy_load_the_same_rows_and_refuse_the_same_records() {
    let db = pg::connect(&pg::shared_url()).await;
    let binary_table = pg::unique_table("binary");
    let text_table = pg::unique_table("text");
    let columns = "id bigint NOT NULL, small smallint, n integer, r real, d double precision, flag boolean,
                   name varchar(12), note text, doc json, docb jsonb, at timestamptz, wall timestamp, day date,
                   amount numeric, money numeric(8,2)";
    db.batch_execute(&format!("CREATE TABLE {binary_table} ({columns}); CREATE TABLE {text_table} ({columns});"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = yaml(&pg::shared_url(), &binary_table, "");
    config.push_str(&format!(
        "\x20 - name: text\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: postgres, url: '{}', table: {text_table}, copy_format: text, backup: {{ sink: {{ url: 'file://./errors' }} }} }}\n",
        pg::shared_url()
    ));
    let spillway = Spillway::start(dir.path(), &config);
    let client = spillway.client().await;
    let good = [
        r#"{"id":1,"small":-32768,"n":2147483647,"r":0.1,"d":-1.5e300,"flag":true,"name":"ünïcødé 🚀","note":"tab\there\nnew \\ line",
            "doc":{"k":[1,{"x":null}]},"docb":{"s":"é","n":1.50},"at":"2024-05-06T07:08:09.123456+02:00",
            "wall":"2024-05-06T07:08:09.5-05:00","day":"2024-02-29","amount":12345678901234567890.123456789,"money":"123456.785"}"#,
        r#"{"id":2,"n":null,"unknown":1}"#,
        r#"{"id":-9223372036854775808,"small":" +7 ","n":"-12","r":"-Infinity","d":"NaN","flag":"yes","note":12.50,
            "doc":"just a string","docb":[1,"two",null],"at":1700000000.25,"wall":1700000000123,"day":86400,
            "amount":"1e-3","money":-0.5}"#,
        r#"{"id":9223372036854775807,"flag":"off","note":{"nested":["a",1]},"at":1700000000123,"wall":"2024-02-28 24:00:00",
            "day":"2024-02-29T23:30:00-05:00","amount":"-0.000","d":4.9e-324,"r":3.4028235e38}"#,
        r#"{"id":5,"flag":1,"at":"epoch","wall":"-infinity","day":"infinity","amount":"NaN","d":"-0","note":"","name":""}"#,
        r#"{"id":6,"at":"1999-12-31 23:59:60Z","wall":"0001-01-01T00:00:00","day":-1,"amount":"-12.5E3","d":1e-300}"#,
        r#"{"id":7,"at":"2024-05-06T07:08:09+0530","day":0,"amount":0.1,"flag":false}"#,
    ]
    .map(|record| record.replace('\n', " "));
    let bad = [
        (r#"{"id":100,"n":"seven"}"#, "Postgres.22P02"),
        (r#"{"id":101,"n":99999999999}"#, "Postgres.22003"),
        (r#"{"id":102,"small":40000}"#, "Postgres.22003"),
        (r#"{"id":103,"flag":"maybe"}"#, "Postgres.22P02"),
        (r#"{"id":104,"amount":"12abc"}"#, "Postgres.22P02"),
        (r#"{"id":105,"d":"1e400"}"#, "Postgres.22003"),
        (r#"{"id":106,"at":"not a time"}"#, "Postgres.22007"),
        (r#"{"id":107,"day":"2023-02-29"}"#, "Postgres.22008"),
        (r#"{"id":108,"name":"thirteen chars"}"#, "Postgres.22001"),
        (r#"{"id":109,"money":1234567.5}"#, "Postgres.22003"),
        (r#"{"id":110,"docb":"a\u0000b"}"#, "Postgres.22P05"),
        (r#"{"id":111,"note":"a\u0000b"}"#, "Postgres.22021"),
        (r#"{"id":112,"at":1e300}"#, "Postgres.InvalidRecord"),
        (r#"{"n":1}"#, "Postgres.23502"),
        ("not json", "Postgres.InvalidRecord"),
    ];
    let mut records: Vec<String> = good.to_vec();
    records.extend(bad.iter().map(|(record, _)| record.to_string()));
    put(&client, "rows", &records).await;
    put(&client, "text", &records).await;
    pg::wait_rows(&db, &binary_table, good.len() as i64, WAIT).await;
    pg::wait_rows(&db, &text_table, good.len() as i64, WAIT).await;
    let errors = wait_errors(dir.path(), 2 * bad.len()).await;
    let log = spillway.log_text();
    assert_eq!(spillway.terminate(), 0);
    assert!(
        log.lines().any(|line| line.contains("postgres table read")
            && line.contains(&binary_table)
            && line.replace(&binary_table, "").contains("binary")),
        "the first stream loads binary: {log}"
    );

    let rows = |table: String| {
        let db = &db;
        async move {
            db.query(&format!("SELECT t::text FROM {table} t ORDER BY id"), &[])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<_, String>(0))
                .collect::<Vec<String>>()
        }
    };
    let (binary_rows, text_rows) = (rows(binary_table).await, rows(text_table).await);
    assert_eq!(binary_rows.len(), good.len());
    for (binary_row, text_row) in binary_rows.iter().zip(&text_rows) {
        assert_eq!(binary_row, text_row);
    }
    // A few values checked against what they must be, not only against text COPY.
    let row = |id: &str| binary_rows.iter().find(|row| row.starts_with(&format!("({id},"))).unwrap();
    let first = row("1");
    assert!(first.contains("\"2024-05-06 05:08:09.123456+00\""), "{first}");
    assert!(first.contains("\"2024-05-06 07:08:09.5\""), "{first}");
    assert!(first.contains("12345678901234567890.123456789"), "{first}");
    assert!(first.contains("123456.79"), "{first}");
    let millis = row("9223372036854775807");
    assert!(millis.contains("\"2023-11-14 22:13:20.123+00\""), "epoch milliseconds: {millis}");

    // Each bad record once from each stream, with the same code.
    for (record, code) in bad {
        let found: Vec<&str> = errors
            .iter()
            .filter(|error| raw_data(error) == record)
            .map(|error| error["errorCode"].as_str().unwrap())
            .collect();
        assert_eq!(found, [code, code], "{record}: {errors:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn one_bad_row_among_10000_goes_to_the_error_output_and_the_rest_load_once() {
    let db = pg::connect(&pg::shared_url()).await;
    let table = pg::unique_table("bad_row");
    db.batch_execute(&format!("CREATE TABLE {table} (id bigint NOT NULL, n integer, body text)")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml(&pg::shared_url(), &table, ""));
    let client = spillway.client().await;
    let bad = r#"{"id":7777,"n":"seven thousand","body":"bad"}"#.to_string();
    let records: Vec<String> =
        (0..10_000)
            .map(|id| {
                if id == 7777 { bad.clone() } else { format!(r#"{{"id":{id},"n":{id},"body":"{}"}}"#, "x".repeat(100)) }
            })
            .collect();
    put(&client, "rows", &records).await;

    pg::wait_rows(&db, &table, 9_999, WAIT).await;
    let errors = wait_errors(dir.path(), 1).await;
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(pg::count(&db, &table).await, 9_999);
    let distinct: i64 = db.query_one(&format!("SELECT count(DISTINCT id) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(distinct, 9_999, "no row twice");
    let missing: i64 =
        db.query_one(&format!("SELECT count(*) FROM {table} WHERE id = 7777"), &[]).await.unwrap().get(0);
    assert_eq!(missing, 0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["errorCode"], "Postgres.22P02");
    let message = errors[0]["errorMessage"].as_str().unwrap();
    assert!(message.contains("invalid input syntax for type integer") && message.contains("column n"), "{message}");
    assert_eq!(raw_data(&errors[0]), bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn every_kind_of_bad_record_is_reported_with_its_reason() {
    let db = pg::connect(&pg::shared_url()).await;
    let table = pg::unique_table("kinds");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint NOT NULL CHECK (id >= 0), n integer, body text, at timestamptz)"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml(&pg::shared_url(), &table, ""));
    let client = spillway.client().await;
    let cases = [
        ("hello, not json", "Postgres.InvalidRecord", "not JSON"),
        ("[1,2,3]", "Postgres.InvalidRecord", "not a JSON object"),
        (r#"{"id":6,"at":1e300}"#, "Postgres.InvalidRecord", "out of range"),
        (r#"{"id":1,"n":99999999999}"#, "Postgres.22003", "out of range for type integer"),
        (r#"{"n":1}"#, "Postgres.23502", "null value in column \"id\""),
        (r#"{"id":-1}"#, "Postgres.23514", "violates check constraint"),
        (r#"{"id":5,"body":"a\u0000b"}"#, "Postgres.22021", "0x00"),
        (r#"{"id":7,"at":"not a time"}"#, "Postgres.22007", "invalid input syntax for type timestamp"),
    ];
    let mut records: Vec<String> = Vec::new();
    for (index, (record, _, _)) in cases.iter().enumerate() {
        records.push(format!(r#"{{"id":{},"body":"good"}}"#, 100 + index));
        records.push(record.to_string());
    }
    put(&client, "rows", &records).await;
    let errors = wait_errors(dir.path(), cases.len()).await;
    pg::wait_rows(&db, &table, cases.len() as i64, WAIT).await;
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(pg::count(&db, &table).await, cases.len() as i64, "every good row loaded once");
    let by_data: BTreeMap<String, &serde_json::Value> = errors.iter().map(|error| (raw_data(error), error)).collect();
    assert_eq!(by_data.len(), cases.len(), "one error record per bad record: {errors:?}");
    for (record, code, reason) in cases {
        let error = by_data.get(record).unwrap_or_else(|| panic!("no error record for {record}: {errors:?}"));
        assert_eq!(error["errorCode"], code, "{record}");
        let message = error["errorMessage"].as_str().unwrap();
        assert!(message.contains(reason), "{record}: {message}");
    }
}

/// What the clients did: acknowledged ids, and ids whose call died with the server.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeSet<String>,
    unknown: BTreeSet<String>,
}

/// `clients` tasks push small batches of unique records every 20 ms until `stop` is set or a call
/// fails (the server died).
async fn push_until_stopped(
    endpoint: String,
    clients: usize,
    tag: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let (endpoint, tag, ledger, stop) = (endpoint.clone(), tag.clone(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = common::firehose_client(&endpoint).await;
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let ids: Vec<String> = (0..100)
                    .map(|_| {
                        counter += 1;
                        format!("{tag}-c{client_index}-{counter}")
                    })
                    .collect();
                let records: Vec<Record> = ids
                    .iter()
                    .map(|id| {
                        let data = format!(r#"{{"id":"{id}","client":{client_index},"pad":"{}"}}"#, "p".repeat(200));
                        Record::builder().data(Blob::new(data)).build().unwrap()
                    })
                    .collect();
                let result =
                    client.put_record_batch().delivery_stream_name("rows").set_records(Some(records)).send().await;
                match result {
                    Ok(output) if output.failed_put_count() == 0 => ledger.lock().unwrap().acknowledged.extend(ids),
                    Ok(_) => panic!("batches are all or nothing"),
                    Err(error) if error.as_service_error().is_some_and(|e| e.is_service_unavailable_exception()) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(_) => {
                        ledger.lock().unwrap().unknown.extend(ids);
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
}

/// Every acknowledged id exactly once, nothing nobody sent.
async fn assert_exactly_once(db: &tokio_postgres::Client, table: &str, ledger: &Ledger) -> usize {
    let rows = db.query(&format!("SELECT id, count(*) FROM {table} GROUP BY id"), &[]).await.unwrap();
    let delivered: BTreeMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let duplicates: Vec<_> = delivered.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(duplicates.is_empty(), "rows loaded twice: {duplicates:?}");
    let missing: Vec<_> = ledger.acknowledged.iter().filter(|id| !delivered.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged records missing: {missing:?} (of {})", ledger.acknowledged.len());
    let invented: Vec<_> = delivered
        .keys()
        .filter(|id| !ledger.acknowledged.contains(*id) && !ledger.unknown.contains(*id))
        .take(5)
        .collect();
    assert!(invented.is_empty(), "rows nobody sent: {invented:?}");
    delivered.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_during_copy_loads_every_acknowledged_row_exactly_once() {
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20261126);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let db = pg::connect(&pg::shared_url()).await;
    let table = pg::unique_table("chaos");
    // No unique key: a duplicate must show up, not be refused.
    db.batch_execute(&format!("CREATE TABLE {table} (id text NOT NULL, client integer, pad text)")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = yaml(&pg::shared_url(), &table, "");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // One poison record per round (a field nested 10,000 deep): acknowledged, then refused as
    // that record's failure, never loaded, never crashing a run.
    let (mut poisons, mut poisons_unknown) = (BTreeSet::new(), BTreeSet::new());
    for round in 0..rounds {
        let spillway = Spillway::start(dir.path(), &config);
        let poison = format!("poison-r{round}");
        let data = format!(r#"{{"id":"{poison}","client":0,"deep":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let client = spillway.client().await;
        let record = Record::builder().data(Blob::new(data)).build().unwrap();
        match client.put_record().delivery_stream_name("rows").record(record).send().await {
            Ok(_) => poisons.insert(poison),
            Err(_) => poisons_unknown.insert(poison),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let pushers = tokio::spawn(push_until_stopped(
            spillway.endpoint.clone(),
            4,
            format!("r{round}"),
            ledger.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        spillway.kill();
        stop.store(true, Ordering::Relaxed);
        pushers.await.unwrap();
    }
    let final_run = Spillway::start(dir.path(), &config);
    assert_eq!(final_run.terminate(), 0, "no run crashed on a poison record");
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.acknowledged.len() > 1000, "the clients got work done: {}", ledger.acknowledged.len());
    let delivered = assert_exactly_once(&db, &table, &ledger).await;
    let loaded_poisons: i64 =
        db.query_one(&format!("SELECT count(*) FROM {table} WHERE id LIKE 'poison-%'"), &[]).await.unwrap().get(0);
    assert_eq!(loaded_poisons, 0);
    let mut set_aside: BTreeMap<String, usize> = BTreeMap::new();
    for record in error_records(dir.path()) {
        assert_eq!(record["errorCode"], "Postgres.InvalidRecord", "{record}");
        assert!(record["errorMessage"].as_str().unwrap_or_default().contains("JSON nested deeper than 100 levels"));
        let raw = raw_data(&record);
        let id = raw.strip_prefix(r#"{"id":""#).and_then(|rest| rest.split('"').next()).unwrap_or_default();
        *set_aside.entry(id.to_string()).or_default() += 1;
    }
    assert!(!poisons.is_empty(), "seed {seed}: a poison put was acknowledged");
    for (id, count) in &set_aside {
        assert!(poisons.contains(id) || poisons_unknown.contains(id), "seed {seed}: only poison records failed: {id}");
        assert_eq!(*count, 1, "seed {seed}: {id} set aside once");
    }
    let missing: Vec<_> = poisons.iter().filter(|id| !set_aside.contains_key(*id)).collect();
    assert!(missing.is_empty(), "seed {seed}: acknowledged poison records not set aside: {missing:?}");
    let batches: i64 =
        db.query_one("SELECT count(*) FROM spillway_batches WHERE target = $1", &[&table]).await.unwrap().get(0);
    let logs: String = common::files_under(dir.path())
        .iter()
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect();
    let resent = logs.matches("re-sending a batch recorded before a restart").count();
    let already = logs.matches("batch already loaded; acknowledged without loading again").count();
    eprintln!(
        "seed {seed}: {rounds} SIGKILL rounds, {} acknowledged, {} unknown at a kill, {delivered} rows, {batches} batches, \
         {resent} re-sent after a kill, {already} of them already committed",
        ledger.acknowledged.len(),
        ledger.unknown.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_postgres_restart_mid_run_is_retried_and_loses_nothing() {
    let server = OwnPostgres::start();
    let url = server.url("postgres");
    let table = pg::unique_table("restart");
    pg::connect(&url)
        .await
        .batch_execute(&format!("CREATE TABLE {table} (id text NOT NULL, client integer, pad text)"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml(&url, &table, ""));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let pushers =
        tokio::spawn(push_until_stopped(spillway.endpoint.clone(), 2, "restart".into(), ledger.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.start_again();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    pushers.await.unwrap();
    let log = spillway.log.clone();
    assert_eq!(spillway.terminate(), 0);
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.unknown.is_empty(), "spillway kept answering");
    let db = pg::connect(&url).await;
    let delivered = assert_exactly_once(&db, &table, &ledger).await;
    assert_eq!(delivered, ledger.acknowledged.len());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("delivery failed, retrying"), "the outage was seen and retried");
    assert!(error_records(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn validate_connect_reports_a_missing_table_or_column() {
    let db = pg::connect(&pg::shared_url()).await;
    let table = pg::unique_table("validate");
    let dir = tempfile::tempdir().unwrap();
    let validate = |config: &str| {
        let path = dir.path().join("spillway.yaml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(["validate", "--connect", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, output) = validate(&yaml(&pg::shared_url(), &table, ""));
    assert!(!ok);
    assert!(output.contains(&format!("table {table} does not exist")), "{output}");

    db.batch_execute(&format!("CREATE TABLE {table} (id bigint, doc jsonb, at timestamptz DEFAULT now())"))
        .await
        .unwrap();
    let (ok, output) = validate(&yaml(&pg::shared_url(), &table, "      columns: [id, doc, missing]\n"));
    assert!(!ok);
    assert!(output.contains("has no column \"missing\""), "{output}");

    let (ok, output) = validate(&yaml(&pg::shared_url(), &table, ""));
    assert!(ok, "{output}");
    assert!(output.contains("loads columns (id bigint, doc jsonb)"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn tls_is_used_when_the_url_asks_for_it_and_the_certificate_is_checked() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "spillway test ca");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
    let server = OwnPostgres::start_tls(&server_cert.pem(), &server_key.serialize_pem());

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let table = pg::unique_table("tls");
    let plain = pg::connect(&server.url("postgres")).await;
    plain.batch_execute(&format!("CREATE TABLE {table} (id bigint)")).await.unwrap();
    let url = format!("{}?sslmode=require", server.url("postgres"));

    // Not trusted (system store only): refused, and said why.
    let path = dir.path().join("untrusted.yaml");
    std::fs::write(&path, yaml(&url, &table, "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "--connect", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    let spillway = Spillway::start(dir.path(), &yaml(&url, &table, &format!("      ca_file: {}\n", ca_file.display())));
    put(&spillway.client().await, "rows", &[r#"{"id":1}"#.to_string(), r#"{"id":2}"#.to_string()]).await;
    pg::wait_rows(&plain, &table, 2, WAIT).await;
    let encrypted: i64 = plain
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = 'spillway'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "spillway's connections use tls");
    assert_eq!(spillway.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn spillway_starts_while_postgres_is_down_and_loads_once_it_is_back() {
    let server = OwnPostgres::start();
    let url = server.url("postgres");
    let table = pg::unique_table("late");
    pg::connect(&url).await.batch_execute(&format!("CREATE TABLE {table} (id bigint, at timestamptz)")).await.unwrap();
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &yaml(&url, &table, ""));
    // Encoded before the table could be read: kept raw, turned into rows at the load.
    let records: Vec<String> = (0..1000).map(|id| format!(r#"{{"id":{id},"at":{}}}"#, 1_700_000_000 + id)).collect();
    put(&spillway.client().await, "rows", &records).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.start_again();
    let db = pg::connect(&url).await;
    pg::wait_rows(&db, &table, 1000, WAIT).await;
    assert_eq!(spillway.terminate(), 0);
    let (rows, distinct, first): (i64, i64, String) = {
        let row = db
            .query_one(&format!("SELECT count(*), count(DISTINCT id), min(at)::text FROM {table}"), &[])
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!((rows, distinct), (1000, 1000));
    assert!(first.starts_with("2023-11-14"), "epoch seconds converted after the fact: {first}");
}

/// `mode: s3_manifest` (Redshift) through the binary: records are staged in MinIO with their
/// manifest, and the real Redshift COPY statement is sent to PostgreSQL, which cannot run it
/// (`COPY … FROM 's3://…' CREDENTIALS … MANIFEST` is a syntax error there). The failure is
/// retried until the stream's `retry.duration_seconds` (3 s here), then the batch's manifest goes
/// under `<prefix>errors/manifests/`, Firehose's layout, and nothing is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn s3_manifest_stages_on_minio_retries_the_copy_then_writes_the_manifest_under_errors() {
    use common::s3;
    let db = pg::connect(&pg::shared_url()).await;
    let table = pg::unique_table("redshift_e2e");
    db.batch_execute(&format!("CREATE TABLE {table} (id bigint, note text)")).await.unwrap();
    let client = s3::client().await;
    let bucket = s3::new_bucket(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: to-redshift\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   retry: {{ duration_seconds: 3 }}\n\
         \x20   sink:\n\
         \x20     type: postgres\n\
         \x20     mode: s3_manifest\n\
         \x20     url: {}\n\
         \x20     table: {table}\n\
         \x20     columns: [id, note]\n\
         \x20     copy_options: \"JSON 'auto' GZIP\"\n\
         \x20     iam_role: arn:aws:iam::123456789012:role/spillway-copy\n\
         \x20     s3_staging:\n\
         \x20       url: s3://{bucket}\n\
         \x20       prefix: staging/\n\
         \x20       compression: gzip\n\
         \x20       endpoint: ${{SPILLWAY_TEST_S3_ENDPOINT}}\n\
         \x20       region: ${{SPILLWAY_TEST_S3_REGION}}\n\
         \x20       access_key_id: ${{SPILLWAY_TEST_S3_ACCESS_KEY}}\n\
         \x20       secret_access_key: ${{SPILLWAY_TEST_S3_SECRET_KEY}}\n",
        pg::shared_url()
    );
    let spillway = Spillway::start(dir.path(), &config);
    let firehose = spillway.client().await;
    let records: Vec<String> = (0..20).map(|id| format!("{{\"id\":{id},\"note\":\"n{id}\"}}")).collect();
    put(&firehose, "to-redshift", &records).await;

    // Retried, then given up on: the manifest under errors/manifests/.
    let mut error_manifests = Vec::new();
    for _ in 0..(WAIT.as_millis() / 200) {
        error_manifests = s3::objects(&client, &bucket, "staging/errors/manifests/").await;
        if !error_manifests.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(error_manifests.len(), 1, "one failed manifest");
    let objects = s3::objects(&client, &bucket, "staging/").await;
    let staged: Vec<&(String, Vec<u8>)> = objects
        .iter()
        .filter(|(key, _)| !key.starts_with("staging/manifests/") && !key.starts_with("staging/errors/"))
        .collect();
    assert_eq!(staged.len(), 1, "{:?}", objects.iter().map(|(key, _)| key).collect::<Vec<_>>());
    let (object_key, body) = staged[0];
    assert!(object_key.ends_with(".gz") && object_key.contains("/to-redshift-1-"), "{object_key}");
    let expected: String = records.iter().map(|record| format!("{record}\n")).collect();
    assert_eq!(String::from_utf8_lossy(body), expected, "the staged object holds the records, gzip");
    let manifests: Vec<&(String, Vec<u8>)> =
        objects.iter().filter(|(key, _)| key.starts_with("staging/manifests/")).collect();
    assert_eq!(manifests.len(), 1);
    let listing = format!(r#"{{"entries":[{{"url":"s3://{bucket}/{object_key}","mandatory":true}}]}}"#);
    assert_eq!(String::from_utf8_lossy(&manifests[0].1), listing);
    let (error_key, error_body) = &error_manifests[0];
    assert_eq!(String::from_utf8_lossy(error_body), listing);
    assert_eq!(
        error_key.strip_prefix("staging/errors/manifests/"),
        manifests[0].0.strip_prefix("staging/manifests/"),
        "the same dated name"
    );

    let log = spillway.log_text();
    assert!(log.contains("delivery failed, retrying"), "{log}");
    assert!(log.contains("Postgres.42601"), "PostgreSQL refused the Redshift COPY as a syntax error: {log}");
    assert!(!log.contains("aws_iam_role="), "the credentials clause is never logged");
    let loaded: i64 = db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(loaded, 0);
    assert_eq!(spillway.terminate(), 0);
}
