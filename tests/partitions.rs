//! Dynamic partitioning end to end on the local sink (YAML in, objects out): one open batch per
//! partition under Firehose-shaped per-partition prefixes, every record exactly once; idle
//! partitions close by their interval while busy ones fill; the partition cap closes batches
//! early without losing anything; records whose keys cannot be evaluated land in the error output.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::{Spillway, eventually, local_objects};

fn partitioned_yaml(size_mib: u64, interval_seconds: u64, max_active_partitions: u32) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\n\
         data_dir: ./data\n\
         streams:\n\
         \x20 - name: app-logs\n\
         \x20   processing:\n\
         \x20     record_delimiter: newline\n\
         \x20     dynamic_partitioning:\n\
         \x20       keys: {{ service: .service }}\n\
         \x20       max_active_partitions: {max_active_partitions}\n\
         \x20   buffering: {{ size_mib: {size_mib}, interval_seconds: {interval_seconds} }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     compression: gzip\n\
         \x20     prefix: 'logs/service=!{{partitionKeyFromQuery:service}}/'\n\
         \x20     error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n"
    )
}

async fn put_lines(spillway: &Spillway, lines: &[String]) {
    let client = spillway.client().await;
    for chunk in lines.chunks(500) {
        let records = chunk.iter().map(|line| Record::builder().data(Blob::new(line.as_bytes())).build().unwrap());
        let output = client
            .put_record_batch()
            .delivery_stream_name("app-logs")
            .set_records(Some(records.collect()))
            .send()
            .await
            .expect("put");
        assert_eq!(output.failed_put_count(), 0);
    }
}

/// Record ids per partition value read from the key (`logs/service=<value>/…`), and how often
/// each id was delivered.
fn delivered_by_partition(objects: &[(String, Vec<u8>)]) -> (BTreeMap<String, Vec<u64>>, BTreeMap<u64, usize>) {
    let mut by_partition: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for (key, body) in objects.iter().filter(|(key, _)| key.starts_with("out/logs/")) {
        let service = key.split("service=").nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_string();
        for line in body.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(value["service"], service.as_str(), "record {value} in the object of {key}");
            let id = value["id"].as_u64().unwrap();
            by_partition.entry(service.clone()).or_default().push(id);
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    (by_partition, counts)
}

fn lines(count: u64, partitions: u64) -> Vec<String> {
    (0..count).map(|id| format!(r#"{{"id":{id},"service":"svc-{:03}","msg":"hello"}}"#, id % partitions)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_partitions_get_their_own_objects_and_every_record_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &partitioned_yaml(1, 60, 500));
    let sent = lines(5_000, 100);
    put_lines(&spillway, &sent).await;
    assert_eq!(spillway.terminate(), 0, "a clean stop closes every open batch");

    let objects = local_objects(dir.path());
    let (by_partition, counts) = delivered_by_partition(&objects);
    assert_eq!(by_partition.len(), 100, "one prefix per partition");
    assert_eq!(counts.len(), 5_000, "every record delivered");
    assert!(counts.values().all(|&count| count == 1), "no record twice");
    for (service, ids) in &by_partition {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, &sorted, "records of {service} in order");
    }
    let data_objects = objects.iter().filter(|(key, _)| key.starts_with("out/logs/")).count();
    assert_eq!(data_objects, 100, "with buffers far from full, one object per partition at stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_closes_by_its_interval_while_a_busy_one_keeps_filling() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &partitioned_yaml(1, 2, 500));
    put_lines(&spillway, &[r#"{"id":0,"service":"idle"}"#.to_string()]).await;
    // The idle partition's batch must close by its interval with no new record of its own.
    let idle_closed = eventually(Duration::from_secs(20), "the idle partition's object", || {
        local_objects(dir.path()).into_iter().find(|(key, _)| key.starts_with("out/logs/service=idle/"))
    })
    .await;
    for id in 1..=5u64 {
        put_lines(&spillway, &[format!(r#"{{"id":{id},"service":"busy"}}"#)]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(String::from_utf8_lossy(&idle_closed.1).contains(r#""service":"idle""#));
    assert_eq!(spillway.terminate(), 0);
    let (by_partition, counts) = delivered_by_partition(&local_objects(dir.path()));
    // The busy partition's records may span two objects of the same second, whose keys then sort
    // by their uuid: compare the set, not the order across objects.
    let mut busy = by_partition["busy"].clone();
    busy.sort_unstable();
    assert_eq!(busy, vec![1, 2, 3, 4, 5]);
    assert_eq!(counts.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_partition_cap_batches_close_early_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &partitioned_yaml(1, 5, 5));
    let sent = lines(2_000, 40);
    put_lines(&spillway, &sent).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let exceeded = spillway.metric("spillway_partition_count_exceeded_total{stream=\"app-logs\"}").await;
        if exceeded.is_some_and(|value| value > 0.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "early closes are counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the cap nearly every record closes a batch of its own: on a loaded machine those many
    // small objects take longer than the stop's grace period, so wait for them to be delivered
    // (bounded; the last open batches close by their 5 s interval) instead of asking the stop to
    // finish them.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let delivered = spillway.metric("spillway_delivered_records_total{stream=\"app-logs\"}").await;
        if delivered.is_some_and(|value| value >= 2_000.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "delivered {delivered:?} of 2000 records in 180 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(spillway.terminate(), 0);
    let objects = local_objects(dir.path());
    let (by_partition, counts) = delivered_by_partition(&objects);
    assert_eq!(by_partition.len(), 40);
    assert_eq!(counts.len(), 2_000, "every record delivered");
    assert!(counts.values().all(|&count| count == 1), "no record twice");
    assert!(!objects.iter().any(|(key, _)| key.starts_with("out/errors/")), "nothing in the error output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_whose_keys_cannot_be_evaluated_go_to_the_error_output_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let spillway = Spillway::start(dir.path(), &partitioned_yaml(1, 60, 500));
    let sent = vec![
        r#"{"id":1,"service":"api"}"#.to_string(),
        r#"{"id":2}"#.to_string(),
        "not json at all".to_string(),
        r#"{"id":3,"service":"api"}"#.to_string(),
    ];
    put_lines(&spillway, &sent).await;
    assert_eq!(spillway.terminate(), 0);

    let objects = local_objects(dir.path());
    let (by_partition, _) = delivered_by_partition(&objects);
    assert_eq!(by_partition["api"], vec![1, 3]);
    let errors: Vec<serde_json::Value> = objects
        .iter()
        .filter(|(key, _)| key.starts_with("out/errors/metadata-extraction-failed/"))
        .flat_map(|(_, body)| {
            body.split(|&byte| byte == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_slice::<serde_json::Value>(line).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    use base64::Engine;
    let raw: Vec<String> = errors
        .iter()
        .map(|line| {
            assert_eq!(line["errorCode"], "DynamicPartitioning.MetadataExtractionFailed");
            assert!(!line["errorMessage"].as_str().unwrap().is_empty());
            let bytes = base64::engine::general_purpose::STANDARD.decode(line["rawData"].as_str().unwrap()).unwrap();
            String::from_utf8(bytes).unwrap()
        })
        .collect();
    assert_eq!(raw, vec![r#"{"id":2}"#.to_string(), "not json at all".to_string()]);
}
