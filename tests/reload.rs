//! Reloading the configuration while records flow (SIGHUP, and `run --watch-config`): an added
//! stream takes records, a changed stream loses and repeats none of the records it acknowledged
//! across its restart, a removed stream refuses puts and delivered what it had accepted, an API
//! stream stays, and a file with problems keeps the running configuration and says why.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{BufferingHints, CompressionFormat, ExtendedS3DestinationConfiguration, Record};
use common::{Spillway, WAIT, eventually, local_objects};

/// One stream block: records are lines (`record_delimiter: newline`) written as they are to
/// `file://./out/<folder>`, under `prefix`.
fn stream(name: &str, folder: &str, prefix: &str, interval_seconds: u64) -> String {
    format!(
        "  - name: {name}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: {interval_seconds} }}\n\
         \x20   sink: {{ type: s3, url: 'file://./out/{folder}', prefix: '{prefix}' }}\n"
    )
}

fn config(streams: &[String]) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: 30 }}\n\
         data_dir: ./data\n\
         api_defaults: {{ s3: {{ url: 'file://./buckets/{{bucket}}' }} }}\n\
         streams:\n{}",
        streams.concat()
    )
}

/// Write the file the way editors do (a new file renamed over the old one).
fn rewrite(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write config");
    std::fs::rename(&next, path).expect("replace config");
}

/// Put `count` records with ids from `first` in one batch; the ids the answer acknowledged, or
/// the error code of a refused call.
async fn put_ids(client: &Client, stream: &str, first: u64, count: u64) -> Result<Vec<u64>, String> {
    let ids: Vec<u64> = (first..first + count).collect();
    let records: Vec<Record> = ids
        .iter()
        .map(|id| Record::builder().data(Blob::new(format!("{{\"id\":{id}}}"))).build().expect("record"))
        .collect();
    let output = client
        .put_record_batch()
        .delivery_stream_name(stream)
        .set_records(Some(records))
        .send()
        .await
        .map_err(|error| error.into_service_error().code().unwrap_or("unknown").to_string())?;
    let acknowledged = output
        .request_responses()
        .iter()
        .zip(&ids)
        .filter(|(entry, _)| entry.error_code().is_none())
        .map(|(_, id)| *id)
        .collect();
    Ok(acknowledged)
}

/// How often each record id appears in the objects under `folder`.
fn delivered_ids(folder: &Path) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for (_, body) in local_objects(folder) {
        for line in String::from_utf8_lossy(&body).lines().filter(|line| !line.is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line).expect("a json line");
            *counts.entry(value["id"].as_u64().expect("an id")).or_insert(0) += 1;
        }
    }
    counts
}

/// Every acknowledged id exactly once, and nothing that was not sent.
fn assert_exactly_once(what: &str, acknowledged: &[u64], delivered: &BTreeMap<u64, usize>, sent_below: u64) {
    let missing: Vec<u64> = acknowledged.iter().copied().filter(|id| !delivered.contains_key(id)).collect();
    let repeated: Vec<(u64, usize)> =
        delivered.iter().filter(|(_, count)| **count > 1).map(|(id, count)| (*id, *count)).collect();
    let unknown: Vec<u64> = delivered.keys().copied().filter(|id| *id >= sent_below).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} acknowledged records missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(repeated.is_empty(), "{what}: records delivered more than once: {repeated:?}");
    assert!(unknown.is_empty(), "{what}: records never sent: {unknown:?}");
}

/// Puts batches into `stream` until stopped; returns the acknowledged ids and the next unused id.
fn spawn_producer(
    client: Client,
    stream: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<u64>, u64)> {
    tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut next = 0;
        while !stop.load(Ordering::SeqCst) {
            match put_ids(&client, stream, next, 20).await {
                Ok(ids) => acknowledged.extend(ids),
                Err(code) => panic!("a put to {stream} failed during the reloads: {code}"),
            }
            next += 20;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acknowledged, next)
    })
}

async fn wait_for_log(spillway: &Spillway, what: &str, occurrences: usize) -> String {
    eventually(WAIT, what, || {
        let log = spillway.log_text();
        (log.matches(what).count() >= occurrences).then_some(log)
    })
    .await
}

#[tokio::test]
async fn sighup_adds_changes_and_removes_streams_while_records_flow_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let path = dir.path().join("spillway.yaml");
    let a_before = stream("a", "a", "before/", 1);
    let c = stream("c", "c", "", 60);
    let d = stream("d", "d", "", 60);
    std::fs::write(&path, config(&[a_before, c, d.clone()])).expect("write config");
    let spillway = Spillway::start_with_config(dir.path(), &path);
    spillway.wait_ready().await;
    let client = spillway.client().await;

    // An API-created stream: a reload must leave it alone.
    client
        .create_delivery_stream()
        .delivery_stream_name("from-api")
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::000000000000:role/firehose")
                .bucket_arn("arn:aws:s3:::api-bucket")
                .buffering_hints(BufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build())
                .compression_format(CompressionFormat::Uncompressed)
                .build()
                .expect("destination"),
        )
        .send()
        .await
        .expect("created through the api");

    let acknowledged_by_c = put_ids(&client, "c", 0, 50).await.expect("puts to c");
    assert_eq!(acknowledged_by_c.len(), 50);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = spawn_producer(client.clone(), "a", stop.clone());
    eventually(WAIT, "records of a delivered before the reload", || {
        (!delivered_ids(&out.join("a")).is_empty()).then_some(())
    })
    .await;

    // (a) add b, (b) change a's buffering and prefix, (c) remove c; d stays as it is.
    let a_after = stream("a", "a", "after/", 2);
    rewrite(&path, &config(&[a_after.clone(), stream("b", "b", "", 1), d.clone()]));
    common::signal(&spillway.child, "HUP");
    let log = wait_for_log(&spillway, "configuration reloaded: 1 added, 1 changed, 1 removed, 1 unchanged", 1).await;
    let reload_log = log.split_once("reloading the configuration").map_or("", |(_, after)| after);
    assert!(!reload_log.contains("stream=d"), "the unchanged stream is not touched:\n{reload_log}");

    // c: refused at once, and everything it acknowledged was delivered before it stopped.
    assert_eq!(put_ids(&client, "c", 50, 1).await, Err("ResourceNotFoundException".to_string()));
    assert_exactly_once("c", &acknowledged_by_c, &delivered_ids(&out.join("c")), 50);
    // b: takes records and delivers them.
    let acknowledged_by_b = put_ids(&client, "b", 0, 30).await.expect("puts to b");
    eventually(WAIT, "b's records delivered", || (delivered_ids(&out.join("b")).len() == 30).then_some(())).await;
    assert_exactly_once("b", &acknowledged_by_b, &delivered_ids(&out.join("b")), 30);
    // a: its records go under the new prefix now.
    eventually(WAIT, "a's objects under its new prefix", || out.join("a/after").exists().then_some(())).await;
    // The API stream still answers.
    put_ids(&client, "from-api", 0, 1).await.expect("the api stream still takes records");

    // A syntax error, then a validation error: the running configuration stays, the log says why.
    let broken =
        format!("{}  - name: broken\n    sink: {{ type: s3, url: [unclosed\n", config(std::slice::from_ref(&a_after)));
    rewrite(&path, &broken);
    common::signal(&spillway.child, "HUP");
    wait_for_log(&spillway, "kept the running configuration", 1).await;
    let invalid = config(&[a_after.clone(), stream("b", "b", "", 1), d.clone()])
        .replace("size_mib: 1, interval_seconds: 2", "size_mib: 500, interval_seconds: 2");
    rewrite(&path, &invalid);
    common::signal(&spillway.child, "HUP");
    let log = wait_for_log(&spillway, "kept the running configuration", 2).await;
    assert!(log.contains("did not find expected ',' or ']'"), "the syntax error is logged:\n{log}");
    assert!(log.contains("streams[0].buffering.size_mib: must be between 1 and 128"), "the problem is logged:\n{log}");
    assert_eq!(spillway.metric("spillway_config_reloads_total{result=\"rejected\"}").await, Some(2.0));
    assert_eq!(spillway.metric("spillway_config_reloads_total{result=\"applied\"}").await, Some(1.0));
    assert!(spillway.metric("spillway_config_last_reload_success_timestamp_seconds").await.is_some_and(|at| at > 0.0));
    // Nothing changed: b still takes records (the broken files dropped it), c is still gone.
    put_ids(&client, "b", 30, 1).await.expect("b kept");
    assert_eq!(put_ids(&client, "c", 50, 1).await, Err("ResourceNotFoundException".to_string()));

    stop.store(true, Ordering::SeqCst);
    let (acknowledged_by_a, sent) = producer.await.expect("producer");
    assert!(acknowledged_by_a.len() > 100, "records flowed during the reloads: {}", acknowledged_by_a.len());
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once("a", &acknowledged_by_a, &delivered_ids(&out.join("a")), sent);
}

#[tokio::test]
async fn watch_config_applies_a_changed_file_without_a_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spillway.yaml");
    std::fs::write(&path, config(&[stream("a", "a", "", 1)])).expect("write config");
    let spillway = Spillway::start_with_args(dir.path(), &path, &["--watch-config", "--watch-interval-seconds", "0.2"]);
    spillway.wait_ready().await;
    let client = spillway.client().await;
    assert_eq!(put_ids(&client, "b", 0, 1).await, Err("ResourceNotFoundException".to_string()));

    rewrite(&path, &config(&[stream("a", "a", "", 1), stream("b", "b", "", 1)]));
    wait_for_log(&spillway, "configuration reloaded: 1 added, 0 changed, 0 removed, 1 unchanged", 1).await;
    let acknowledged = put_ids(&client, "b", 0, 10).await.expect("b takes records");
    let out = dir.path().join("out/b");
    eventually(WAIT, "b's records delivered", || (delivered_ids(&out).len() == 10).then_some(())).await;
    assert_exactly_once("b", &acknowledged, &delivered_ids(&out), 10);

    // A broken file is reported once, not at every look.
    rewrite(&path, "streams: [\n");
    wait_for_log(&spillway, "kept the running configuration", 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(spillway.metric("spillway_config_reloads_total{result=\"rejected\"}").await, Some(1.0));
    put_ids(&client, "b", 10, 1).await.expect("b kept");
    assert_eq!(spillway.terminate(), 0);
}
