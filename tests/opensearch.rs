//! The OpenSearch sink end to end against the real OpenSearch node of `scripts/services.sh`:
//! YAML in, documents out. Searchable documents with their fields intact, Firehose's index
//! rotation names, a mapping conflict (only those records in the S3 backup, with the reason),
//! throttled items and requests (a proxy answering 429 / 503) retried without loss or duplicates,
//! and seeded SIGKILL rounds: `_count` = unique ids = acknowledged records.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use base64::Engine;
use common::{Spillway, WAIT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn opensearch_url() -> String {
    std::env::var("SPILLWAY_TEST_OPENSEARCH_URL")
        .expect("SPILLWAY_TEST_OPENSEARCH_URL (eval \"$(scripts/services.sh env)\")")
}

/// A unique lowercase name for this test run's indices.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("spw-{name}-{}", nanos % 1_000_000_000_000)
}

fn stream_yaml(stream: &str, buffering: &str, sink: &str) -> String {
    format!("  - name: {stream}\n    buffering: {buffering}\n    sink:\n{sink}")
}

fn opensearch_sink(url: &str, index: &str, extra: &str) -> String {
    format!(
        "      type: opensearch\n      url: {url}\n      index: {index}\n{extra}      backup:\n        sink: {{ url: 'file://./backup' }}\n"
    )
}

fn config(streams: &[String]) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: 30 }}\ndata_dir: ./data\nstreams:\n{}",
        streams.concat()
    )
}

async fn put(client: &aws_sdk_firehose::Client, stream: &str, records: &[String]) {
    for chunk in records.chunks(500) {
        let records: Vec<Record> =
            chunk.iter().map(|data| Record::builder().data(Blob::new(data.clone())).build().unwrap()).collect();
        let output = client
            .put_record_batch()
            .delivery_stream_name(stream)
            .set_records(Some(records))
            .send()
            .await
            .expect("put");
        assert_eq!(output.failed_put_count(), 0);
    }
}

async fn refresh_and_count(http: &reqwest::Client, url: &str, pattern: &str) -> u64 {
    let _ = http.post(format!("{url}/{pattern}/_refresh?allow_no_indices=true")).send().await;
    let Ok(response) = http.get(format!("{url}/{pattern}/_count?allow_no_indices=true")).send().await else { return 0 };
    let body: Value = response.json().await.unwrap_or_default();
    body["count"].as_u64().unwrap_or(0)
}

async fn wait_for_count(http: &reqwest::Client, url: &str, pattern: &str, expected: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let count = refresh_and_count(http, url, pattern).await;
        if count >= expected {
            assert_eq!(count, expected, "documents in {pattern}");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{pattern}: {count} of {expected} documents after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every document of `pattern`: (_index, _id, _source), by scrolling through search_after.
async fn all_documents(http: &reqwest::Client, url: &str, pattern: &str) -> Vec<(String, String, Value)> {
    let mut documents = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut query = json!({ "size": 5000, "sort": [{ "_id": "asc" }], "query": { "match_all": {} } });
        if let Some(after) = &after {
            query["search_after"] = after.clone();
        }
        let body: Value =
            http.post(format!("{url}/{pattern}/_search")).json(&query).send().await.unwrap().json().await.unwrap();
        let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            return documents;
        }
        after = hits.last().map(|hit| hit["sort"].clone());
        for hit in hits {
            documents.push((
                hit["_index"].as_str().unwrap().to_string(),
                hit["_id"].as_str().unwrap().to_string(),
                hit["_source"].clone(),
            ));
        }
    }
}

/// Failed-document records written to the local backup folder.
fn backup_records(dir: &std::path::Path) -> Vec<(String, Value)> {
    common::local_objects(&dir.join("backup"))
        .into_iter()
        .flat_map(|(key, body)| {
            body.split(|&byte| byte == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| (key.clone(), serde_json::from_slice::<Value>(line).expect("backup line is json")))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Firehose's index suffixes, computed here independently of the sink (week: strftime's %U,
/// Sunday-started weeks, shifted so that the week holding January 1st is week 1).
fn expected_suffixes(now: chrono::DateTime<chrono::Utc>) -> (String, String, String) {
    use chrono::Datelike;
    let hour = now.format("-%Y-%m-%d-%H").to_string();
    let day = now.format("-%Y-%m-%d").to_string();
    let date = now.date_naive();
    let week_of = |date: chrono::NaiveDate| -> (i32, u32) {
        let strftime: u32 = date.format("%U").to_string().parse().unwrap();
        let january_first = chrono::NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap();
        (date.year(), if january_first.weekday() == chrono::Weekday::Sun { strftime } else { strftime + 1 })
    };
    let saturday = date + chrono::Duration::days(6 - i64::from(date.weekday().num_days_from_sunday()));
    let (year, week) = if saturday.year() != date.year() { (saturday.year(), 1) } else { week_of(date) };
    (hour, day, format!("-{year:04}-w{week:02}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn documents_are_searchable_with_their_fields_in_firehose_rotated_indices() {
    let url = opensearch_url();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let base = unique("rot");
    let rotations = ["hour", "day", "week", "none"];
    let streams: Vec<String> = rotations
        .iter()
        .map(|rotation| {
            stream_yaml(
                &format!("docs-{rotation}"),
                "{ size_mib: 1, interval_seconds: 1 }",
                &opensearch_sink(&url, &format!("{base}-{rotation}"), &format!("      index_rotation: {rotation}\n")),
            )
        })
        .collect();
    let spillway = Spillway::start(dir.path(), &config(&streams));
    let client = spillway.client().await;
    let before = chrono::Utc::now();
    let records: Vec<String> = (0..300)
        .map(|n| {
            json!({ "n": n, "message": format!("hello {n}"), "nested": { "tags": ["a", "b"], "ok": n % 2 == 0 } })
                .to_string()
        })
        .collect();
    for rotation in rotations {
        put(&client, &format!("docs-{rotation}"), &records).await;
    }
    let after = chrono::Utc::now();
    for rotation in rotations {
        wait_for_count(&http, &url, &format!("{base}-{rotation}*"), 300).await;
    }

    // Names: the suffix of the arrival time (a boundary during the puts allows either side).
    let allowed = |pick: fn(&(String, String, String)) -> &String| -> BTreeSet<String> {
        [expected_suffixes(before), expected_suffixes(after)].iter().map(|s| pick(s).clone()).collect()
    };
    let expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
        ("hour", allowed(|s| &s.0)),
        ("day", allowed(|s| &s.1)),
        ("week", allowed(|s| &s.2)),
        ("none", BTreeSet::from([String::new()])),
    ]);
    for rotation in rotations {
        let documents = all_documents(&http, &url, &format!("{base}-{rotation}*")).await;
        assert_eq!(documents.len(), 300);
        let mut sources = BTreeMap::new();
        for (index, id, source) in documents {
            let suffix = index.strip_prefix(&format!("{base}-{rotation}")).unwrap().to_string();
            assert!(
                expected[rotation].contains(&suffix),
                "{rotation}: index {index}, expected suffix in {:?}",
                expected[rotation]
            );
            assert!(id.starts_with(&format!("docs-{rotation}-")), "firehose_default id from stream and sequence: {id}");
            sources.insert(source["n"].as_u64().unwrap(), source);
        }
        for (n, record) in records.iter().enumerate() {
            let sent: Value = serde_json::from_str(record).unwrap();
            assert_eq!(sources[&(n as u64)], sent, "{rotation}: document {n} as sent");
        }
    }
    assert!(backup_records(dir.path()).is_empty(), "nothing failed");
    assert_eq!(spillway.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_mapping_conflict_sends_only_those_records_to_the_backup_with_the_reason() {
    let url = opensearch_url();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let index = unique("map");
    let created = http
        .put(format!("{url}/{index}"))
        .json(&json!({
            "settings": { "number_of_replicas": 0 },
            "mappings": { "properties": { "n": { "type": "integer" }, "id": { "type": "keyword" } } }
        }))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{:?}", created.text().await);
    let yaml = config(&[stream_yaml(
        "conflicts",
        "{ size_mib: 1, interval_seconds: 1 }",
        &opensearch_sink(&url, &index, "      index_rotation: none\n"),
    )]);
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    // Every 10th record has a string where the mapping wants an integer; two more are not JSON
    // documents a `_bulk` body could carry (empty; several lines with a line break in a string).
    let mut records: Vec<String> = (0..200)
        .map(|n| {
            if n % 10 == 3 {
                json!({ "id": format!("r{n}"), "n": format!("not a number {n}") }).to_string()
            } else {
                json!({ "id": format!("r{n}"), "n": n }).to_string()
            }
        })
        .collect();
    records.push("   ".to_string());
    records.push("this is not json".to_string());
    records.push("{\"id\": \"broken\",\n \"text\": \"line one\nline two\"}".to_string());
    put(&client, "conflicts", &records).await;

    let failed = common::eventually(WAIT, "20 + 3 failed documents in the backup", || {
        let failed = backup_records(dir.path());
        (failed.len() >= 23).then_some(failed)
    })
    .await;
    wait_for_count(&http, &url, &index, 180).await;
    assert_eq!(failed.len(), 23, "only the refused records: {failed:#?}");
    let mut refused_ids = BTreeSet::new();
    let mut not_json = 0;
    for (key, document) in &failed {
        assert!(key.starts_with("AmazonOpenSearchService-failed/"), "key {key}");
        let raw = base64::engine::general_purpose::STANDARD.decode(document["rawData"].as_str().unwrap()).unwrap();
        assert_eq!(document["esIndexName"], json!(index));
        assert_eq!(document["esTypeName"], json!(""));
        assert!(document["esDocumentId"].as_str().unwrap().starts_with("conflicts-"));
        for field in ["attemptsMade", "arrivalTimestamp", "attemptEndingTimestamp"] {
            assert!(document[field].is_i64(), "{field} in {document}");
        }
        let raw_text = String::from_utf8(raw).unwrap();
        if raw_text == "this is not json" {
            // Not JSON: OpenSearch refuses the item (400), only that one.
            assert_eq!(document["errorCode"], json!("400"), "{document}");
            not_json += 1;
        } else if document["errorCode"] == json!("400") {
            assert!(document["errorMessage"].as_str().unwrap().contains("mapper_parsing_exception"), "{document}");
            let value: Value = serde_json::from_str(&raw_text).unwrap();
            refused_ids.insert(value["id"].as_str().unwrap().to_string());
        } else {
            assert_eq!(document["errorCode"], json!("OpenSearch.InvalidRecord"), "{document}");
            assert!(raw_text == "   " || raw_text.contains("line one\nline two"), "raw bytes as sent: {raw_text:?}");
        }
    }
    let expected: BTreeSet<String> = (0..200).filter(|n| n % 10 == 3).map(|n| format!("r{n}")).collect();
    assert_eq!(refused_ids, expected);
    assert_eq!(not_json, 1);
    let indexed: BTreeSet<String> = all_documents(&http, &url, &index)
        .await
        .into_iter()
        .map(|(_, _, source)| source["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(indexed.len(), 180);
    assert!(indexed.is_disjoint(&expected));
    assert_eq!(spillway.terminate(), 0);
}

/// Which documents the throttling proxy withholds with a 429 item.
#[derive(Clone, Copy)]
enum Throttle {
    /// One document in three (by its id's hash), the first time its id is seen.
    OnceForAThird,
    /// Every document, every time.
    Always,
    /// Every document whose source contains this text, every time.
    AlwaysWhenContains(&'static str),
}

/// A proxy in front of OpenSearch that throttles: the first two `_bulk` requests get 503 as a
/// whole; afterwards documents are withheld with a 429 item as `throttle` says (the rest is
/// forwarded and their items spliced back in order).
struct ThrottlingProxy {
    address: String,
    withheld: Arc<AtomicUsize>,
    whole_refusals: Arc<AtomicUsize>,
}

async fn start_throttling_proxy(upstream: String, throttle: Throttle) -> ThrottlingProxy {
    let withheld = Arc::new(AtomicUsize::new(0));
    let whole_refusals = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let http = reqwest::Client::new();
    let state = (upstream, withheld.clone(), whole_refusals.clone(), seen, http);
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| {
            let (upstream, withheld, whole_refusals, seen, http) = state.clone();
            async move {
                let path_and_query = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
                if method != axum::http::Method::POST || !uri.path().ends_with("/_bulk") {
                    let response = http.request(method, format!("{upstream}{path_and_query}")).body(body.to_vec()).send().await.unwrap();
                    let status = response.status().as_u16();
                    return (axum::http::StatusCode::from_u16(status).unwrap(), response.bytes().await.unwrap().to_vec());
                }
                if whole_refusals.fetch_add(1, Ordering::SeqCst) < 2 {
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, b"{\"error\":\"test proxy: unavailable\"}".to_vec());
                }
                let text = String::from_utf8(body.to_vec()).unwrap();
                let lines: Vec<&str> = text.lines().collect();
                let mut forwarded = String::new();
                let mut plan = Vec::new(); // true = forwarded
                for pair in lines.chunks(2) {
                    let action: Value = serde_json::from_str(pair[0]).unwrap();
                    let id = action["index"]["_id"].as_str().unwrap_or_default().to_string();
                    let first_time = seen.lock().unwrap().insert(id.clone());
                    let hash = id.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                    let withhold = match throttle {
                        Throttle::OnceForAThird => first_time && hash % 3 == 0,
                        Throttle::Always => true,
                        Throttle::AlwaysWhenContains(text) => pair[1].contains(text),
                    };
                    if withhold {
                        withheld.fetch_add(1, Ordering::SeqCst);
                        plan.push(false);
                    } else {
                        forwarded.push_str(pair[0]);
                        forwarded.push('\n');
                        forwarded.push_str(pair[1]);
                        forwarded.push('\n');
                        plan.push(true);
                    }
                }
                let mut upstream_items = Vec::new().into_iter();
                if !forwarded.is_empty() {
                    let response: Value = http
                        .post(format!("{upstream}{path_and_query}"))
                        .header("content-type", "application/x-ndjson")
                        .body(forwarded)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    upstream_items = response["items"].as_array().cloned().unwrap_or_default().into_iter();
                }
                let items: Vec<Value> = plan
                    .iter()
                    .map(|&forwarded| {
                        if forwarded {
                            upstream_items.next().unwrap()
                        } else {
                            json!({ "index": { "status": 429, "error": { "type": "es_rejected_execution_exception", "reason": "test proxy: rejected" } } })
                        }
                    })
                    .collect();
                let errors = items.iter().any(|item| item["index"]["status"].as_u64().unwrap_or(0) >= 300);
                (axum::http::StatusCode::OK, serde_json::to_vec(&json!({ "errors": errors, "items": items })).unwrap())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    ThrottlingProxy { address, withheld, whole_refusals }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn throttled_items_and_requests_are_retried_with_nothing_lost_or_duplicated() {
    // 3 MiB batches of 1 MiB requests: a batch's requests go out side by side.
    let url = opensearch_url();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_throttling_proxy(url.clone(), Throttle::OnceForAThird).await;
    let index = unique("throttle");
    let yaml = config(&[stream_yaml(
        "throttled",
        "{ size_mib: 3, interval_seconds: 1 }",
        &opensearch_sink(&proxy.address, &index, "      index_rotation: none\n      bulk_max_mib: 1\n"),
    )]);
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let records: Vec<String> =
        (0..3000).map(|n| json!({ "id": format!("t{n}"), "pad": "x".repeat(1000) }).to_string()).collect();
    put(&client, "throttled", &records).await;
    wait_for_count(&http, &url, &index, 3000).await;
    assert!(
        proxy.withheld.load(Ordering::SeqCst) > 500,
        "items were throttled: {}",
        proxy.withheld.load(Ordering::SeqCst)
    );
    assert!(proxy.whole_refusals.load(Ordering::SeqCst) >= 3, "whole requests were refused, then retried");
    let ids: BTreeSet<String> = all_documents(&http, &url, &index)
        .await
        .into_iter()
        .map(|(_, _, source)| source["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3000, "every record once");
    assert!(backup_records(dir.path()).is_empty(), "throttling is retried, never sent to the backup");
    assert_eq!(spillway.terminate(), 0);
}

/// A transform that splits each record into several documents, with `firehose_default` ids:
/// each output gets its own id (`<stream>-<sequence>`, then `-1`, `-2`…), stable across the
/// whole-request refusals and per-item throttling the proxy injects, so every document is
/// indexed once and none overwrites another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn each_output_of_a_splitting_transform_is_its_own_document_across_retries() {
    let url = opensearch_url();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_throttling_proxy(url.clone(), Throttle::OnceForAThird).await;
    let index = unique("split");
    let yaml = config(&[format!(
        "  - name: split\n    processing: {{ transforms: [ {{ type: jq, expr: '.events[]' }} ] }}\n    buffering: {{ size_mib: 1, interval_seconds: 1 }}\n    sink:\n{}",
        opensearch_sink(&proxy.address, &index, "      index_rotation: none\n")
    )]);
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    // `n` is a number, except in record 7's third event: a mapping conflict for that output alone.
    let event = |n: u32, e: u32| match (n, e) {
        (7, 2) => json!({ "id": format!("r{n}-{e}"), "n": "not a number" }),
        _ => json!({ "id": format!("r{n}-{e}"), "n": e }),
    };
    let records: Vec<String> =
        (0..400).map(|n| json!({ "events": (0..3).map(|e| event(n, e)).collect::<Vec<_>>() }).to_string()).collect();
    put(&client, "split", &records).await;
    wait_for_count(&http, &url, &index, 1199).await;
    assert!(proxy.withheld.load(Ordering::SeqCst) > 100, "items were throttled and re-sent");
    let documents = all_documents(&http, &url, &index).await;
    let sources: BTreeSet<String> =
        documents.iter().map(|(_, _, source)| source["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(sources.len(), 1199, "every output once, but the conflicting one");
    // The three outputs of one record: the plain id, then -1 and -2; the event order is kept.
    let by_id: BTreeMap<&str, &str> =
        documents.iter().map(|(_, id, source)| (id.as_str(), source["id"].as_str().unwrap())).collect();
    let (first_id, first_source) = by_id.iter().find(|(_, source)| source.ends_with("-0")).unwrap();
    let record = first_source.trim_end_matches("-0");
    assert_eq!(by_id[format!("{first_id}-1").as_str()], format!("{record}-1"));
    assert_eq!(by_id[format!("{first_id}-2").as_str()], format!("{record}-2"));
    assert_eq!(spillway.terminate(), 0);
    // The conflicting output in the backup, under the id it was sent with (its WAL record's
    // plain id, -2).
    let backup = backup_records(dir.path());
    assert_eq!(backup.len(), 1, "{backup:?}");
    let failed = &backup[0].1;
    let raw = base64::engine::general_purpose::STANDARD.decode(failed["rawData"].as_str().unwrap()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap()["id"], "r7-2");
    let id = failed["esDocumentId"].as_str().unwrap();
    assert!(id.starts_with("split-") && id.ends_with("-2"), "{failed}");
    assert!(!by_id.contains_key(id), "no document took its id");
    assert!(by_id.contains_key(id.trim_end_matches("-2")), "its record's first output is indexed: {id}");
}

/// `backup.mode: all` (Firehose's `AllDocuments`): every document is also in the S3 backup,
/// exactly once, even when items are throttled and re-sent in partial retries (a retry re-sends a
/// subset of the batch under the same id and must not replace the batch's backup object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn backup_mode_all_keeps_every_document_once_across_partial_retries() {
    let url = opensearch_url();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_throttling_proxy(url.clone(), Throttle::OnceForAThird).await;
    let index = unique("all");
    let sink = format!(
        "      type: opensearch\n      url: {}\n      index: {index}\n      index_rotation: none\n\
         \x20     backup:\n        mode: all\n        sink: {{ url: 'file://./backup', prefix: 'all/', compression: gzip }}\n",
        proxy.address
    );
    let yaml = config(&[stream_yaml("everything", "{ size_mib: 1, interval_seconds: 1 }", &sink)]);
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let records: Vec<String> = (0..2000).map(|n| json!({ "id": format!("a{n}"), "n": n }).to_string()).collect();
    put(&client, "everything", &records).await;
    wait_for_count(&http, &url, &index, 2000).await;
    assert!(proxy.withheld.load(Ordering::SeqCst) > 100, "items were throttled and retried");
    assert_eq!(spillway.terminate(), 0);

    let mut backed_up: Vec<String> = Vec::new();
    for (key, body) in common::local_objects(&dir.path().join("backup")) {
        assert!(key.starts_with("all/") && key.ends_with(".gz"), "only all-documents objects, no failures: {key}");
        backed_up.extend(String::from_utf8(body).unwrap().lines().map(str::to_string));
    }
    backed_up.sort();
    let mut expected = records.clone();
    expected.sort();
    assert_eq!(backed_up.len(), expected.len(), "each document once in the backup");
    assert_eq!(backed_up, expected, "the documents as indexed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn items_throttled_past_the_retry_duration_go_to_the_backup() {
    let url = opensearch_url();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_throttling_proxy(url.clone(), Throttle::Always).await;
    let index = unique("expire");
    let yaml = config(&[format!(
        "{}    retry: {{ duration_seconds: 3 }}\n",
        stream_yaml(
            "expiring",
            "{ size_mib: 1, interval_seconds: 1 }",
            &opensearch_sink(&proxy.address, &index, "      index_rotation: none\n"),
        )
    )]);
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let records: Vec<String> = (0..50).map(|n| json!({ "id": format!("e{n}") }).to_string()).collect();
    put(&client, "expiring", &records).await;
    let failed = common::eventually(WAIT, "50 throttled documents in the backup", || {
        let failed = backup_records(dir.path());
        (failed.len() >= 50).then_some(failed)
    })
    .await;
    assert_eq!(failed.len(), 50);
    for (_, document) in &failed {
        assert_eq!(document["errorCode"], json!("429"), "{document}");
        assert!(document["attemptsMade"].as_i64().unwrap() > 1, "retried before giving up: {document}");
    }
    assert_eq!(refresh_and_count(&http, &url, &index).await, 0);
    assert_eq!(spillway.terminate(), 0);
}

/// One batch, two kinds of failure at different attempts: mapping conflicts refused on the first
/// attempt, and documents throttled on every attempt until the retry duration ends. Both reach
/// the backup: the later give-up writes an object of its own instead of replacing the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn failures_given_up_at_different_attempts_of_one_batch_all_reach_the_backup() {
    let url = opensearch_url();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_throttling_proxy(url.clone(), Throttle::AlwaysWhenContains("slow")).await;
    let index = unique("mixed");
    let created = http
        .put(format!("{url}/{index}"))
        .json(&json!({ "settings": { "number_of_replicas": 0 }, "mappings": { "properties": { "n": { "type": "integer" } } } }))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{:?}", created.text().await);
    let yaml = config(&[format!(
        "{}    retry: {{ duration_seconds: 3 }}\n",
        stream_yaml(
            "mixed",
            "{ size_mib: 1, interval_seconds: 1 }",
            &opensearch_sink(&proxy.address, &index, "      index_rotation: none\n"),
        )
    )]);
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    // 100 records in one put (one batch): 10 conflict with the mapping, 10 are always throttled.
    let records: Vec<String> = (0..100)
        .map(|n| match n % 10 {
            3 => json!({ "id": format!("m{n}"), "n": "not a number" }).to_string(),
            7 => json!({ "id": format!("m{n}"), "n": n, "kind": "slow" }).to_string(),
            _ => json!({ "id": format!("m{n}"), "n": n }).to_string(),
        })
        .collect();
    put(&client, "mixed", &records).await;
    common::eventually(WAIT, "20 failed documents in the backup", || {
        (backup_records(dir.path()).len() >= 20).then_some(())
    })
    .await;
    wait_for_count(&http, &url, &index, 80).await;
    assert_eq!(spillway.terminate(), 0);
    let failed = backup_records(dir.path());
    let mut by_code: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut objects = BTreeSet::new();
    for (key, document) in &failed {
        let raw = base64::engine::general_purpose::STANDARD.decode(document["rawData"].as_str().unwrap()).unwrap();
        let value: Value = serde_json::from_slice(&raw).unwrap();
        by_code
            .entry(document["errorCode"].as_str().unwrap().to_string())
            .or_default()
            .insert(value["id"].as_str().unwrap().to_string());
        objects.insert(key.clone());
    }
    let ids = |remainder: usize| -> BTreeSet<String> {
        (0..100).filter(|n| n % 10 == remainder).map(|n| format!("m{n}")).collect()
    };
    assert_eq!(failed.len(), 20, "each failed document once: {by_code:?}");
    assert_eq!(by_code.get("400"), Some(&ids(3)), "the mapping conflicts, refused on the first attempt");
    assert_eq!(by_code.get("429"), Some(&ids(7)), "the throttled documents, given up after 3 s");
    assert_eq!(objects.len(), 2, "one object per attempt that gave up: {objects:?}");
}

/// What the clients did: ids acknowledged, and ids whose put died with the server.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeSet<String>,
    unknown: BTreeSet<String>,
    /// Poison records (nested 10,000 deep), one per round when asked: acknowledged, and those
    /// whose put died with the server.
    poisons: BTreeSet<String>,
    poisons_unknown: BTreeSet<String>,
}

/// `clients` tasks put batches of unique records until `stop` or until the server dies.
async fn push_until_stopped(
    endpoint: String,
    clients: usize,
    tag: String,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let (endpoint, tag, ledger, stop) = (endpoint.clone(), tag.clone(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = common::firehose_client(&endpoint).await;
            let mut rng = StdRng::seed_from_u64(seed ^ client_index as u64);
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let ids: Vec<String> = (0..rng.random_range(1..=200))
                    .map(|_| {
                        counter += 1;
                        format!("{tag}-c{client_index}-{counter}")
                    })
                    .collect();
                let records = ids
                    .iter()
                    .map(|id| {
                        Record::builder()
                            .data(Blob::new(format!("{{\"id\":\"{id}\",\"pad\":\"{}\"}}\n", "x".repeat(200))))
                            .build()
                            .unwrap()
                    })
                    .collect();
                let result =
                    client.put_record_batch().delivery_stream_name("crashy").set_records(Some(records)).send().await;
                match result {
                    Ok(output) => {
                        assert_eq!(output.failed_put_count(), 0);
                        ledger.lock().unwrap().acknowledged.extend(ids);
                    }
                    Err(error) => {
                        if error.as_service_error().is_some_and(|e| e.is_service_unavailable_exception()) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
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

/// Seeded SIGKILL rounds (`SPILLWAY_CHAOS_SEED`, `SPILLWAY_CHAOS_ROUNDS`, default 10) while 4
/// clients put records to the stream `crashy` of `yaml`, then a last run that delivers the rest.
/// Checks that the index holds every acknowledged record once (`_count` = unique ids =
/// acknowledged, plus puts that died with the server and still made it); returns the ledger, the
/// seed and the ids indexed.
async fn sigkill_rounds(
    dir: &std::path::Path,
    yaml: &str,
    index: &str,
    default_seed: u64,
    poison: bool,
) -> (Ledger, u64, BTreeSet<String>) {
    let url = opensearch_url();
    let http = reqwest::Client::new();
    let seed: u64 =
        std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(default_seed);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for round in 0..rounds {
        let spillway = Spillway::start(dir, yaml);
        if poison {
            let id = format!("poison-r{round}");
            let data = format!(r#"{{"id":"{id}","deep":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
            let record = Record::builder().data(Blob::new(data)).build().unwrap();
            let sent = spillway.client().await.put_record().delivery_stream_name("crashy").record(record).send().await;
            let mut ledger = ledger.lock().unwrap();
            match sent {
                Ok(_) => ledger.poisons.insert(id),
                Err(_) => ledger.poisons_unknown.insert(id),
            };
        }
        let stop = Arc::new(AtomicBool::new(false));
        let pushers = tokio::spawn(push_until_stopped(
            spillway.endpoint.clone(),
            4,
            format!("r{round}"),
            rng.random(),
            ledger.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        spillway.kill();
        stop.store(true, Ordering::Relaxed);
        pushers.await.unwrap();
    }
    let final_run = Spillway::start(dir, yaml);
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.acknowledged.len() > 1000, "the clients got work done: {}", ledger.acknowledged.len());
    // Every acknowledged record arrives; unknown ones (put died with the server) may. Wait for
    // the acknowledged ids themselves: a count reaches their number early when unknown ones made
    // it, and the last batches were then still on their way.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        refresh_and_count(&http, &url, index).await;
        let documents = all_documents(&http, &url, index).await;
        let indexed = count_by_id(documents.iter().map(|(_, _, source)| source));
        let missing = ledger.acknowledged.iter().filter(|id| !indexed.contains_key(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "seed {seed}: {missing} acknowledged records not indexed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(final_run.terminate(), 0, "no run crashed on a poison record");
    // Refreshed before the search: documents a shutdown flush indexed are searchable only then.
    let count = refresh_and_count(&http, &url, index).await;
    let documents = all_documents(&http, &url, index).await;
    let by_record = count_by_id(documents.iter().map(|(_, _, source)| source));
    check_once(&by_record, &ledger, seed, "indexed");
    let acknowledged_unknown_delivered = by_record.keys().filter(|id| ledger.unknown.contains(*id)).count();
    assert_eq!(count as usize, by_record.len(), "_count equals unique record ids");
    assert_eq!(
        by_record.len(),
        ledger.acknowledged.len() + acknowledged_unknown_delivered,
        "unique ids = acknowledged (+ unknown that made it)"
    );
    eprintln!(
        "seed {seed}, {rounds} rounds: {} acknowledged, {} unknown ({} of them delivered), _count {count}",
        ledger.acknowledged.len(),
        ledger.unknown.len(),
        acknowledged_unknown_delivered
    );
    (ledger, seed, by_record.into_keys().collect())
}

/// How many times each record id (`id` field) occurs.
fn count_by_id<'a>(sources: impl Iterator<Item = &'a Value>) -> BTreeMap<String, usize> {
    let mut by_record: BTreeMap<String, usize> = BTreeMap::new();
    for source in sources {
        *by_record.entry(source["id"].as_str().expect("record id").to_string()).or_default() += 1;
    }
    by_record
}

/// Every acknowledged record once, no record twice, none that nobody sent.
fn check_once(by_record: &BTreeMap<String, usize>, ledger: &Ledger, seed: u64, what: &str) {
    let duplicates: Vec<_> = by_record.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(duplicates.is_empty(), "seed {seed}: records {what} twice: {duplicates:?}");
    let missing: Vec<_> = ledger.acknowledged.iter().filter(|id| !by_record.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty(), "seed {seed}: acknowledged records not {what}: {missing:?}");
    let invented: Vec<_> = by_record
        .keys()
        .filter(|id| !ledger.acknowledged.contains(*id) && !ledger.unknown.contains(*id))
        .take(5)
        .collect();
    assert!(invented.is_empty(), "seed {seed}: records {what} that nobody sent: {invented:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_rounds_leave_count_equal_to_unique_ids_equal_to_acknowledged() {
    let url = opensearch_url();
    let dir = tempfile::tempdir().unwrap();
    let index = unique("crash");
    let yaml = config(&[stream_yaml(
        "crashy",
        "{ size_mib: 1, interval_seconds: 1 }",
        &opensearch_sink(&url, &index, "      index_rotation: none\n"),
    )]);
    let (ledger, seed, indexed) = sigkill_rounds(dir.path(), &yaml, &index, 20261126, true).await;
    // Each round's poison record is never sent to OpenSearch; every acknowledged one is in the
    // backup's failed documents exactly once, with the reason, and nothing else failed.
    assert!(indexed.iter().all(|id| !id.starts_with("poison-")), "seed {seed}: a poison record was indexed");
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for (key, body) in common::local_objects(&dir.path().join("backup")) {
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let line: Value = serde_json::from_slice(line).expect("a failed-document record");
            assert_eq!(line["errorCode"], "OpenSearch.InvalidRecord", "{key}: {line}");
            let message = line["errorMessage"].as_str().unwrap_or_default();
            assert!(message.contains("JSON nested deeper than 100 levels"), "{key}: {message}");
            let raw = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            let raw = String::from_utf8(raw).unwrap();
            let id = raw.strip_prefix(r#"{"id":""#).and_then(|rest| rest.split('"').next()).unwrap_or_default();
            *failed.entry(id.to_string()).or_default() += 1;
        }
    }
    assert!(!ledger.poisons.is_empty(), "seed {seed}: a poison put was acknowledged");
    for (id, count) in &failed {
        let sent = ledger.poisons.contains(id) || ledger.poisons_unknown.contains(id);
        assert!(sent && *count == 1, "seed {seed}: failed document {id} ({count} times)");
    }
    let missing: Vec<_> = ledger.poisons.iter().filter(|id| !failed.contains_key(*id)).collect();
    assert!(missing.is_empty(), "seed {seed}: acknowledged poison records not in the backup: {missing:?}");
}

/// `backup.mode: all` under seeded SIGKILL rounds, behind the throttling proxy (a third of the
/// documents are re-sent in partial retries): besides the index, the backup holds every
/// acknowledged record exactly once — a batch re-sent after a crash or a partial retry finds its
/// backup object and leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigkill_rounds_with_backup_mode_all_keep_every_acknowledged_record_once_in_the_backup() {
    let url = opensearch_url();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_throttling_proxy(url.clone(), Throttle::OnceForAThird).await;
    let index = unique("crashall");
    let sink = format!(
        "      type: opensearch\n      url: {}\n      index: {index}\n      index_rotation: none\n\
         \x20     backup:\n        mode: all\n        sink: {{ url: 'file://./backup', prefix: 'all/', compression: gzip }}\n",
        proxy.address
    );
    let yaml = config(&[stream_yaml("crashy", "{ size_mib: 1, interval_seconds: 1 }", &sink)]);
    let (ledger, seed, indexed) = sigkill_rounds(dir.path(), &yaml, &index, 20261127, false).await;
    assert!(proxy.withheld.load(Ordering::SeqCst) > 100, "items were throttled and retried");

    let mut backed_up = Vec::new();
    for (key, body) in common::local_objects(&dir.path().join("backup")) {
        assert!(key.starts_with("all/") && key.ends_with(".gz"), "only all-documents objects, no failures: {key}");
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            backed_up.push(serde_json::from_slice::<Value>(line).expect("backup line is a record"));
        }
    }
    let by_record = count_by_id(backed_up.iter());
    check_once(&by_record, &ledger, seed, "in the backup");
    let backed_up_ids: BTreeSet<String> = by_record.into_keys().collect();
    assert_eq!(backed_up_ids, indexed, "seed {seed}: the backup holds exactly the documents indexed");
    eprintln!("seed {seed}: {} records in the backup", backed_up_ids.len());
}
