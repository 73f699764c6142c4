//! The `kafka` source end to end against a real Apache Kafka broker (KRaft, from Maven Central:
//! `SPILLWAY_TEST_KAFKA_BOOTSTRAP` of scripts/services.sh, or a private broker started here),
//! with PyPI's kafka-python as producer (tests/services/kafka/kafka_tool.py): YAML in, objects out
//! (local sink). Every record arrives once, per partition in offset order, across seeded SIGKILL
//! rounds, partitions added mid-run and a broker restart; `start: latest` and `at_timestamp`
//! start where asked; headers and a null key reach the WAL and the Lambda event; SASL/SCRAM
//! (SHA-512 and SHA-256), TLS (the test CA of scripts/services.sh) and Amazon MSK IAM (against a
//! listener that checks SigV4 tokens as MSK does) deliver every record once; an unreachable broker,
//! an unknown topic, wrong SASL credentials, a CA that did not sign the broker's certificate, and
//! an MSK IAM token for another region or none at all are reported by cause.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use base64::Engine;
use common::{Spillway, eventually, local_objects};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/kafka/kafka_tool.py");
const BROKER_PROPERTIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/services/kafka/server.properties");

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} (scripts/services.sh env)"))
}

fn bootstrap() -> String {
    env("SPILLWAY_TEST_KAFKA_BOOTSTRAP")
}

/// Run kafka_tool.py; its stdout, trimmed. Fails the test on a non-zero exit.
fn tool(args: &[&str]) -> String {
    let output = Command::new(env("SPILLWAY_TEST_PYTHON")).arg(TOOL).args(args).output().expect("run kafka_tool.py");
    assert!(output.status.success(), "kafka_tool.py {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A topic name no other test (or run) uses.
fn unique_topic(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("spw-{test}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn create_topic(bootstrap: &str, topic: &str, partitions: u32) {
    tool(&["create", bootstrap, topic, &partitions.to_string()]);
}

/// `per_partition` records to each of `partitions` (0: as fast as possible); returns the lines.
fn produce(bootstrap: &str, topic: &str, partitions: u32, per_partition: u64, tag: &str) -> BTreeSet<String> {
    let sent = tool(&["produce", bootstrap, topic, &partitions.to_string(), &per_partition.to_string(), "0", tag]);
    assert_eq!(sent, (u64::from(partitions) * per_partition).to_string());
    expected_lines(partitions, per_partition, tag)
}

/// The lines `produce` writes.
fn expected_lines(partitions: u32, per_partition: u64, tag: &str) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for n in 0..per_partition {
        for partition in 0..partitions {
            lines.insert(json!({"k": format!("{tag}p{partition}"), "n": n, "pad": "x".repeat(48)}).to_string());
        }
    }
    lines
}

/// One stream's YAML block reading `topic`, delivering to `./<out>`.
fn stream_yaml(name: &str, bootstrap: &str, topic: &str, out: &str, extra_source: &str) -> String {
    format!(
        "\x20 - name: {name}\n\
         \x20   source: {{ type: kafka, bootstrap_servers: '{bootstrap}', topics: [{topic}], metadata_refresh_interval_ms: 1000{extra_source} }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: 'file://./{out}', compression: gzip }}\n"
    )
}

fn config_yaml(streams: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\ndata_dir: ./data\nstreams:\n{}",
        streams.concat()
    )
}

/// Delivered lines of `<dir>/<out>` as objects, each a list of lines in object order.
fn delivered_objects(dir: &Path, out: &str) -> Vec<Vec<String>> {
    local_objects(&dir.join(out))
        .into_iter()
        .filter(|(name, _)| !name.contains("error"))
        .map(|(_, body)| String::from_utf8_lossy(&body).lines().map(str::to_string).collect())
        .collect()
}

fn counts(dir: &Path, out: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in delivered_objects(dir, out).into_iter().flatten() {
        *counts.entry(line).or_insert(0) += 1;
    }
    counts
}

async fn wait_for_lines(dir: &Path, out: &str, expected: usize, timeout: Duration) {
    let what = format!("{expected} lines in {out}");
    eventually(timeout, &what, || (counts(dir, out).len() >= expected).then_some(())).await;
}

/// Every expected line exactly once, nothing else.
fn assert_exactly_once(dir: &Path, out: &str, expected: &BTreeSet<String>) {
    let counts = counts(dir, out);
    let duplicated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(duplicated.is_empty(), "{out}: delivered twice: {duplicated:?}");
    let missing: Vec<_> = expected.iter().filter(|line| !counts.contains_key(*line)).take(5).collect();
    assert!(
        missing.is_empty(),
        "{out}: {} of {} missing, e.g. {missing:?}",
        expected.iter().filter(|line| !counts.contains_key(*line)).count(),
        expected.len()
    );
    let unexpected: Vec<_> = counts.keys().filter(|line| !expected.contains(*line)).take(5).collect();
    assert!(unexpected.is_empty(), "{out}: unexpected lines: {unexpected:?}");
}

/// Per partition (`k`), the numbers within every object rise (the partition's offset order), and
/// all objects together hold each partition's 0..count.
fn assert_partition_order(objects: &[Vec<String>]) {
    let mut all: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (index, lines) in objects.iter().enumerate() {
        let mut by_partition: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for line in lines {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            let partition = value["k"].as_str().unwrap().to_string();
            by_partition.entry(partition).or_default().push(value["n"].as_u64().unwrap());
        }
        for (partition, numbers) in by_partition {
            assert!(
                numbers.windows(2).all(|pair| pair[0] + 1 == pair[1]),
                "object {index}: {partition} not in offset order: {numbers:?}"
            );
            all.entry(partition).or_default().extend(numbers);
        }
    }
    for (partition, mut numbers) in all {
        numbers.sort_unstable();
        assert!(
            numbers.iter().enumerate().all(|(i, n)| i as u64 == *n),
            "{partition}: numbers are not 0..{}",
            numbers.len()
        );
    }
}

/// 6 partitions written by kafka-python while spillway is SIGKILLed at seeded moments, then a
/// clean run: every record once, each partition's records in offset order within every object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn seeded_sigkill_rounds_under_load_deliver_every_record_once_in_partition_order() {
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20261206);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let bootstrap = bootstrap();
    let topic = unique_topic("kill");
    let partitions = 6;
    create_topic(&bootstrap, &topic, partitions);
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[stream_yaml("killed", &bootstrap, &topic, "out", ", start: earliest")]);

    // 6 × 1,000 records at 400/s: the producer writes through every round.
    let per_partition = 1_000u64;
    let mut producer = Command::new(env("SPILLWAY_TEST_PYTHON"))
        .arg(TOOL)
        .args(["produce", &bootstrap, &topic, &partitions.to_string(), &per_partition.to_string(), "400", "load"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the producer");
    let started = Instant::now();
    for _ in 0..rounds {
        let spillway = Spillway::start(dir.path(), &yaml);
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..1600))).await;
        spillway.kill();
    }
    let status = tokio::task::spawn_blocking(move || producer.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the producer failed");
    let expected = expected_lines(partitions, per_partition, "load");
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(60)).await;
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out", &expected);
    assert_partition_order(&delivered_objects(dir.path(), "out"));
    eprintln!(
        "seed {seed}: {rounds} SIGKILL rounds in {:.1} s, {} records over {partitions} partitions, each delivered once in partition order",
        started.elapsed().as_secs_f64(),
        expected.len()
    );
}

/// Partitions added to a topic while spillway reads it are found by the metadata refresh and read
/// from their first record, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn partitions_added_mid_run_are_read_from_their_start() {
    let bootstrap = bootstrap();
    let topic = unique_topic("grow");
    create_topic(&bootstrap, &topic, 2);
    let dir = tempfile::tempdir().unwrap();
    // `latest`: the two first partitions start at their end; the added ones at their start.
    let yaml = config_yaml(&[stream_yaml("grown", &bootstrap, &topic, "out", "")]);
    let spillway = Spillway::start(dir.path(), &yaml);
    eventually(Duration::from_secs(30), "both partitions assigned", || {
        (spillway.log_text().matches("reading kafka partition").count() >= 2).then_some(())
    })
    .await;
    let mut expected = produce(&bootstrap, &topic, 2, 50, "first");
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(30)).await;
    tool(&["partitions", &bootstrap, &topic, "4"]);
    // Written to all four at once: the added partitions' records precede their discovery.
    expected.extend(produce(&bootstrap, &topic, 4, 50, "second"));
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(30)).await;
    assert_eq!(spillway.terminate(), 0);
    // Grown again while spillway is down: the restart reads the new partition from its start.
    tool(&["partitions", &bootstrap, &topic, "5"]);
    expected.extend(produce(&bootstrap, &topic, 5, 20, "third"));
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(30)).await;
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out", &expected);
    assert_partition_order(&delivered_objects(dir.path(), "out"));
}

/// `start: latest` reads only what is written after the first start (and, restarted, nothing is
/// skipped); `at_timestamp` reads from the first record at or after the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn latest_and_at_timestamp_start_where_asked() {
    let bootstrap = bootstrap();
    let topic = unique_topic("start");
    create_topic(&bootstrap, &topic, 2);
    let dir = tempfile::tempdir().unwrap();
    produce(&bootstrap, &topic, 2, 30, "before");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let timestamp = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = produce(&bootstrap, &topic, 2, 30, "after");

    let at = format!(", start: {{ at_timestamp: '{}' }}", timestamp.to_rfc3339());
    let yaml = config_yaml(&[
        stream_yaml("at-timestamp", &bootstrap, &topic, "out-at", &at),
        stream_yaml("latest", &bootstrap, &topic, "out-latest", ", start: latest"),
    ]);
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out-at", after.len(), Duration::from_secs(30)).await;
    // Both streams assign both partitions after resolving their start offsets.
    eventually(Duration::from_secs(30), "all partitions assigned", || {
        (spillway.log_text().matches("reading kafka partition").count() >= 4).then_some(())
    })
    .await;
    let later = produce(&bootstrap, &topic, 2, 30, "later");
    wait_for_lines(dir.path(), "out-latest", later.len(), Duration::from_secs(30)).await;
    wait_for_lines(dir.path(), "out-at", after.len() + later.len(), Duration::from_secs(30)).await;
    assert_eq!(spillway.terminate(), 0);
    // Written while down: a restart of a `latest` stream resumes from its WAL position.
    let down = produce(&bootstrap, &topic, 2, 10, "down");
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out-latest", later.len() + down.len(), Duration::from_secs(30)).await;
    assert_eq!(spillway.terminate(), 0);

    let mut at_expected = after.clone();
    at_expected.extend(later.iter().cloned());
    at_expected.extend(down.iter().cloned());
    assert_exactly_once(dir.path(), "out-at", &at_expected);
    let mut latest_expected = later;
    latest_expected.extend(down);
    assert_exactly_once(dir.path(), "out-latest", &latest_expected);
}

/// What the stub Lambda saw: every event.
#[derive(Default)]
struct Events(Mutex<Vec<Value>>);

async fn echo_function(State(events): State<Arc<Events>>, body: axum::body::Bytes) -> axum::Json<Value> {
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let records: Vec<Value> = event["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|record| json!({ "recordId": record["recordId"], "result": "Ok", "kafkaRecordValue": record["kafkaRecordValue"] }))
        .collect();
    events.0.lock().unwrap().push(event);
    axum::Json(json!({ "records": records }))
}

/// A record with headers and a null key and one with a key: Firehose's `mskRecordMetadata`
/// (offset, partition, timestamp) and spillway's topic, key and headers reach the Lambda event,
/// whose records carry their bytes as `kafkaRecordValue` (and the answer too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn headers_and_a_null_key_reach_the_lambda_event() {
    let bootstrap = bootstrap();
    let topic = unique_topic("meta");
    create_topic(&bootstrap, &topic, 2);
    let null_key_offset =
        tool(&["one", &bootstrap, &topic, "1", r#"{"n":0}"#, "--header", "trace=abc", "--header", "tenant=t1"]);
    let keyed_offset = tool(&["one", &bootstrap, &topic, "0", r#"{"n":1}"#, "--key", "user-42"]);

    let events = Arc::new(Events::default());
    let app = axum::Router::new().route("/invoke", axum::routing::post(echo_function)).with_state(events.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/invoke", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\ndata_dir: ./data\nstreams:\n\
         \x20 - name: meta\n\
         \x20   source: {{ type: kafka, bootstrap_servers: '{bootstrap}', topics: [{topic}], start: earliest }}\n\
         \x20   processing:\n\
         \x20     record_delimiter: newline\n\
         \x20     transforms:\n\
         \x20       - {{ type: lambda, url: '{url}', function_arn: 'arn:aws:lambda:us-east-1:123456789012:function:echo', buffer_interval_seconds: 0 }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: 'file://./out' }}\n"
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    let sent = || -> Vec<Value> {
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|event| event["records"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    eventually(common::WAIT, "both records sent to the function", || (sent().len() >= 2).then_some(())).await;
    wait_for_lines(dir.path(), "out", 2, Duration::from_secs(30)).await;
    assert_eq!(spillway.terminate(), 0);

    let base64 = base64::engine::general_purpose::STANDARD;
    let mut by_n = BTreeMap::new();
    for record in sent() {
        // Firehose's MSK shape: the bytes are `kafkaRecordValue`, not `data`.
        assert!(record.get("data").is_none(), "{record}");
        let value = base64.decode(record["kafkaRecordValue"].as_str().unwrap()).unwrap();
        let data: Value = serde_json::from_slice(&value).unwrap();
        by_n.insert(data["n"].as_u64().unwrap(), record);
    }
    let headered = &by_n[&0]["mskRecordMetadata"];
    assert_eq!(headered["offset"], null_key_offset.as_str(), "{headered}");
    assert_eq!(headered["partitionId"], "1");
    assert_eq!(headered["topic"], topic.as_str());
    assert!(headered.get("key").is_none(), "a null key has no member: {headered}");
    let headers: Value = serde_json::from_str(headered["headers"].as_str().unwrap()).unwrap();
    assert_eq!(headers, json!([{ "trace": base64.encode("abc") }, { "tenant": base64.encode("t1") }]));
    assert!(headered["approximateArrivalTimestamp"].as_i64().is_some_and(|ms| ms > 1_700_000_000_000));
    let keyed = &by_n[&1]["mskRecordMetadata"];
    assert_eq!(keyed["offset"], keyed_offset.as_str());
    assert_eq!(keyed["partitionId"], "0");
    assert_eq!(keyed["key"], base64.encode("user-42"));
    assert!(keyed.get("headers").is_none(), "{keyed}");
}

/// Partition keys read the record's Kafka metadata (`$metadata`): objects per topic, partition
/// and record key, each holding only its partition's and key's records in offset order; a record
/// without a key fails its key with a message saying why and goes to the error output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn partition_keys_read_the_kafka_record_metadata() {
    let bootstrap = bootstrap();
    let topic = unique_topic("keys");
    create_topic(&bootstrap, &topic, 3);
    let expected = produce(&bootstrap, &topic, 3, 140, "m");
    // Not JSON and without a key: the keys read only `$metadata`, and the key one has no value
    // (`values` drops the null: jq's `null | @base64d` would decode the text "null").
    tool(&["one", &bootstrap, &topic, "2", "plain text, no key"]);

    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\ndata_dir: ./data\nstreams:\n\
         \x20 - name: keyed\n\
         \x20   source: {{ type: kafka, bootstrap_servers: '{bootstrap}', topics: [{topic}], start: earliest }}\n\
         \x20   processing:\n\
         \x20     record_delimiter: newline\n\
         \x20     dynamic_partitioning:\n\
         \x20       keys: {{ topic: $metadata.topic, partition: $metadata.partitionId, key: '$metadata.key | values | @base64d' }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink:\n\
         \x20     type: s3\n\
         \x20     url: file://./out\n\
         \x20     prefix: 't=!{{partitionKeyFromQuery:topic}}/p=!{{partitionKeyFromQuery:partition}}/!{{partitionKeyFromQuery:key}}/'\n\
         \x20     error_output_prefix: 'errors/!{{firehose:error-output-type}}/'\n"
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out", expected.len(), common::WAIT).await;
    eventually(common::WAIT, "the keyless record in the error output", || {
        local_objects(&dir.path().join("out")).iter().any(|(name, _)| name.starts_with("errors/")).then_some(())
    })
    .await;
    assert_eq!(spillway.terminate(), 0);

    assert_exactly_once(dir.path(), "out", &expected);
    let mut objects = 0;
    for (name, body) in local_objects(&dir.path().join("out")) {
        if let Some(rest) = name.strip_prefix("errors/") {
            assert!(rest.starts_with("metadata-extraction-failed/"), "{name}");
            let failed: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(failed["errorCode"], "DynamicPartitioning.MetadataExtractionFailed");
            assert!(failed["errorMessage"].as_str().unwrap().contains("partition key `key`"), "{failed}");
            let raw = base64::engine::general_purpose::STANDARD.decode(failed["rawData"].as_str().unwrap()).unwrap();
            assert_eq!(raw, b"plain text, no key");
            continue;
        }
        objects += 1;
        let (prefix, partition_and_key) = name.split_once("/p=").unwrap_or_else(|| panic!("{name}"));
        assert_eq!(prefix, format!("t={topic}"));
        let mut parts = partition_and_key.split('/');
        let (partition, key) = (parts.next().unwrap(), parts.next().unwrap());
        let mut numbers = Vec::new();
        for line in String::from_utf8_lossy(&body).lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["k"], format!("mp{partition}"), "{name}: {line}");
            let n = value["n"].as_u64().unwrap();
            assert_eq!(format!("key-{}", n % 7), key, "{name}: {line}");
            numbers.push(n);
        }
        assert!(numbers.windows(2).all(|pair| pair[0] < pair[1]), "{name}: not in offset order: {numbers:?}");
    }
    assert!(objects >= 3 * 7, "one object at least per partition and key, got {objects}");
}

/// A private broker (own ports and data), for the restart test: the shared one is not stopped.
struct PrivateBroker {
    child: Option<Child>,
    home: tempfile::TempDir,
    port: u16,
    properties: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PrivateBroker {
    fn start() -> PrivateBroker {
        let home = tempfile::tempdir().unwrap();
        let (port, controller, sasl, ssl, iam) = (free_port(), free_port(), free_port(), free_port(), free_port());
        let template = std::fs::read_to_string(BROKER_PROPERTIES).unwrap();
        let properties = home.path().join("spillway-private-kafka.properties");
        // The shared broker's key and certificate (for 127.0.0.1), beside the test CA.
        let ca_file = PathBuf::from(env("SPILLWAY_TEST_KAFKA_CA_FILE"));
        let keystore = ca_file.with_file_name("broker-keystore.pem");
        let text = template
            .replace("@HOST@", "127.0.0.1")
            .replace("@PORT@", &port.to_string())
            .replace("@CONTROLLER_PORT@", &controller.to_string())
            .replace("@SASL_PORT@", &sasl.to_string())
            .replace("@SSL_PORT@", &ssl.to_string())
            .replace("@IAM_PORT@", &iam.to_string())
            .replace("@KEYSTORE@", &keystore.display().to_string())
            .replace("@DATA@", &home.path().join("data").display().to_string());
        std::fs::write(&properties, text).unwrap();
        let classpath = env("SPILLWAY_TEST_KAFKA_CLASSPATH");
        let formatted = Command::new("java")
            .args(["-Xmx256m", "-cp", &classpath, "kafka.tools.StorageTool", "format", "-t"])
            .arg("spillway-private-cluster-0")
            .arg("-c")
            .arg(&properties)
            .output()
            .unwrap();
        assert!(formatted.status.success(), "format: {}", String::from_utf8_lossy(&formatted.stderr));
        let mut broker = PrivateBroker { child: None, home, port, properties };
        broker.run();
        broker
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.home.path().join("broker.log")
    }

    /// Start the broker process and wait (bounded) until it serves clients.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let before = std::fs::read_to_string(self.log()).unwrap_or_default().matches("Kafka Server started").count();
        let child = Command::new("java")
            .args(["-Xms128m", "-Xmx384m", "-cp", &env("SPILLWAY_TEST_KAFKA_CLASSPATH"), "kafka.Kafka"])
            .arg(&self.properties)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a private broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let text = std::fs::read_to_string(self.log()).unwrap_or_default();
            if text.matches("Kafka Server started").count() > before {
                return;
            }
            assert!(Instant::now() < deadline, "private broker not ready:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The broker dies (SIGKILL) and comes back while spillway reads: librdkafka reconnects, the
/// reader goes on from where it was, and every record is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_broker_restart_mid_run_loses_and_repeats_nothing() {
    let mut broker = tokio::task::spawn_blocking(PrivateBroker::start).await.unwrap();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("restart");
    create_topic(&bootstrap, &topic, 3);
    let mut expected = produce(&bootstrap, &topic, 3, 200, "before");
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[stream_yaml("restarted", &bootstrap, &topic, "out", ", start: earliest")]);
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(30)).await;
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut broker = tokio::task::spawn_blocking(move || {
        broker.run();
        broker
    })
    .await
    .unwrap();
    expected.extend(produce(&bootstrap, &topic, 3, 200, "after"));
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(60)).await;
    assert_eq!(spillway.terminate(), 0);
    broker.kill();
    assert_exactly_once(dir.path(), "out", &expected);
    assert_partition_order(&delivered_objects(dir.path(), "out"));
}

/// An unreachable broker, an unknown topic and wrong SASL credentials are each reported with the
/// cause (not retried in a hot loop), while a healthy stream beside them delivers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn bad_brokers_topics_and_credentials_are_reported_by_cause() {
    let bootstrap = bootstrap();
    let sasl = env("SPILLWAY_TEST_KAFKA_SASL_BOOTSTRAP");
    let topic = unique_topic("bad");
    create_topic(&bootstrap, &topic, 1);
    let expected = produce(&bootstrap, &topic, 1, 20, "good");
    let closed_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[
        stream_yaml("unreachable", &format!("127.0.0.1:{closed_port}"), &topic, "out-unreachable", ""),
        stream_yaml("unknown-topic", &bootstrap, "spw-no-such-topic", "out-unknown", ""),
        stream_yaml(
            "wrong-password",
            &sasl,
            &topic,
            "out-wrong",
            ", auth: { type: sasl_plain, username: spillway, password: not-the-password }",
        ),
        stream_yaml("good", &bootstrap, &topic, "out-good", ", start: earliest"),
    ]);
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out-good", expected.len(), Duration::from_secs(30)).await;
    let reported = |stream: &str, cause: &str| {
        let stream = format!("stream=\"{stream}\"");
        let stream_bare = format!("stream={}", stream.trim_start_matches("stream=").trim_matches('"'));
        let text = spillway.log_text();
        text.lines()
            .filter(|line| line.contains("ERROR") && (line.contains(&stream) || line.contains(&stream_bare)))
            .filter(|line| line.contains(cause))
            .count()
    };
    eventually(Duration::from_secs(40), "each problem reported by its cause", || {
        let found = [
            reported("unreachable", "Connection refused"),
            reported("unknown-topic", "spw-no-such-topic not found in the cluster"),
            reported("wrong-password", "uthentication"),
        ];
        found.iter().all(|count| *count > 0).then_some(())
    })
    .await;
    // The status page's API shows each stream's problem as its last error.
    let status: Value = reqwest::get(format!("{}/api/status", spillway.endpoint)).await.unwrap().json().await.unwrap();
    let last_error = |name: &str| -> String {
        let streams = status["streams"].as_array().cloned().unwrap_or_default();
        let stream = streams.into_iter().find(|stream| stream["name"] == name).unwrap_or(Value::Null);
        stream["last_error"]["message"].as_str().unwrap_or_default().to_string()
    };
    assert!(last_error("unreachable").contains("Connection refused"), "{status}");
    assert!(last_error("unknown-topic").contains("not found in the cluster"), "{status}");
    assert!(last_error("wrong-password").contains("uthentication"), "{status}");
    // Reported with backoff, not in a hot loop: a handful of lines per problem in this time.
    let unknown = reported("unknown-topic", "not found in the cluster");
    assert!(unknown < 20, "the unknown topic was reported {unknown} times");
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out-good", &expected);
    for out in ["out-unreachable", "out-unknown", "out-wrong"] {
        assert!(counts(dir.path(), out).is_empty(), "{out} delivered something");
    }
}

/// Stream `name`'s `last_error` on the status page's API once it contains `needle`.
async fn wait_for_last_error(spillway: &Spillway, name: &str, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let status: Value =
            reqwest::get(format!("{}/api/status", spillway.endpoint)).await.unwrap().json().await.unwrap();
        let streams = status["streams"].as_array().cloned().unwrap_or_default();
        let stream = streams.into_iter().find(|stream| stream["name"] == name).unwrap_or(Value::Null);
        let error = stream["last_error"]["message"].as_str().unwrap_or_default().to_string();
        if error.contains(needle) {
            return error;
        }
        assert!(Instant::now() < deadline, "{name}: no last error with {needle:?} after {timeout:?} (now {error:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SASL/SCRAM-SHA-512 (MSK's) and SCRAM-SHA-256 against the SASL listener's SCRAM user (written
/// into the broker's metadata when scripts/services.sh formats its storage): each stream delivers
/// every record once; a wrong SCRAM password is reported as an authentication failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn sasl_scram_sha_512_and_sha_256_deliver_every_record_once() {
    let bootstrap = bootstrap();
    let sasl = env("SPILLWAY_TEST_KAFKA_SASL_BOOTSTRAP");
    let topic = unique_topic("scram");
    create_topic(&bootstrap, &topic, 3);
    let expected = produce(&bootstrap, &topic, 3, 40, "scram");
    let scram = |mechanism: &str, password: &str| {
        format!(
            ", start: earliest, auth: {{ type: sasl_scram, username: spillway, password: {password}, mechanism: {mechanism} }}"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[
        stream_yaml("scram-512", &sasl, &topic, "out-512", &scram("SCRAM-SHA-512", "spillwaysecret")),
        stream_yaml("scram-256", &sasl, &topic, "out-256", &scram("SCRAM-SHA-256", "spillwaysecret")),
        stream_yaml("scram-wrong", &sasl, &topic, "out-wrong", &scram("SCRAM-SHA-512", "not-the-password")),
    ]);
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out-512", expected.len(), Duration::from_secs(30)).await;
    wait_for_lines(dir.path(), "out-256", expected.len(), Duration::from_secs(30)).await;
    let refused = wait_for_last_error(&spillway, "scram-wrong", "uthentication", Duration::from_secs(40)).await;
    eprintln!("wrong SCRAM password reported as: {refused}");
    assert!(refused.contains("SCRAM-SHA-512"), "{refused}");
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out-512", &expected);
    assert_exactly_once(dir.path(), "out-256", &expected);
    assert!(counts(dir.path(), "out-wrong").is_empty(), "a refused stream delivered something");
}

/// A CA of its own (openssl), which signed nothing the broker has.
fn other_ca(dir: &Path) -> PathBuf {
    let ca = dir.join("other-ca.pem");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=not the broker's CA", "-keyout"])
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    ca
}

/// TLS to the broker's SSL listener, whose certificate (for 127.0.0.1) the test CA signed: with
/// `tls.ca_file` naming that CA (and the host name checked) every record arrives once; with
/// another CA the stream delivers nothing and reports the certificate problem by name, in the
/// log and as its last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn tls_with_the_brokers_ca_delivers_and_another_ca_is_reported() {
    let bootstrap = bootstrap();
    let tls = env("SPILLWAY_TEST_KAFKA_TLS_BOOTSTRAP");
    let ca_file = env("SPILLWAY_TEST_KAFKA_CA_FILE");
    let topic = unique_topic("tls");
    create_topic(&bootstrap, &topic, 2);
    let expected = produce(&bootstrap, &topic, 2, 40, "tls");
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = other_ca(dir.path());
    let with_ca = |ca: &str| format!(", start: earliest, tls: {{ ca_file: '{ca}' }}");
    let yaml = config_yaml(&[
        stream_yaml("tls", &tls, &topic, "out-tls", &with_ca(&ca_file)),
        stream_yaml("wrong-ca", &tls, &topic, "out-wrong", &with_ca(&wrong_ca.display().to_string())),
    ]);
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out-tls", expected.len(), Duration::from_secs(30)).await;
    let refused =
        wait_for_last_error(&spillway, "wrong-ca", "certificate verify failed", Duration::from_secs(40)).await;
    eprintln!("wrong CA reported as: {refused}");
    assert!(refused.contains("tls.ca_file"), "the hint names spillway's setting: {refused}");
    let logged = spillway
        .log_text()
        .lines()
        .filter(|line| {
            line.contains("ERROR") && line.contains("wrong-ca") && line.contains("certificate verify failed")
        })
        .count();
    assert!(logged > 0, "the certificate problem is logged as an error:\n{}", spillway.log_text());
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out-tls", &expected);
    assert!(counts(dir.path(), "out-wrong").is_empty(), "a refused stream delivered something");
}

/// `auth: msk_iam` end to end against the test broker's IAM listener, whose validator
/// (tests/services/kafka/src/…/MskIamValidator.java) checks OAUTHBEARER tokens as MSK's IAM access
/// control does: a SigV4-presigned `kafka-cluster:Connect` URL signed by its one key, for
/// us-east-1, not expired. Credentials come from the environment (the AWS chain's first
/// provider), TLS is on with the test CA. A stream signing for another region is refused by the
/// broker; one without any region reports that before connecting. (No real MSK is reachable from
/// the tests: the validator is written from the SigV4 specification, and it accepts the tokens of
/// AWS's own Python signer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn msk_iam_authenticates_with_a_presigned_token_and_reports_what_is_missing() {
    let bootstrap = bootstrap();
    let iam = env("SPILLWAY_TEST_KAFKA_IAM_BOOTSTRAP");
    let ca_file = env("SPILLWAY_TEST_KAFKA_CA_FILE");
    let topic = unique_topic("iam");
    create_topic(&bootstrap, &topic, 2);
    let expected = produce(&bootstrap, &topic, 2, 40, "iam");
    let dir = tempfile::tempdir().unwrap();
    let msk_iam =
        |region: &str| format!(", start: earliest, auth: {{ type: msk_iam{region} }}, tls: {{ ca_file: '{ca_file}' }}");
    let yaml = config_yaml(&[
        stream_yaml("iam", &iam, &topic, "out-iam", &msk_iam(", region: us-east-1")),
        stream_yaml("iam-other-region", &iam, &topic, "out-other", &msk_iam(", region: eu-west-1")),
        stream_yaml("iam-no-region", &iam, &topic, "out-no-region", &msk_iam("")),
    ]);
    let config = dir.path().join("spillway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let nowhere = dir.path().join("no-such-aws-file").display().to_string();
    let spillway = Spillway::start_with_env(
        dir.path(),
        &config,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDSPILLWAYTEST"),
            ("AWS_SECRET_ACCESS_KEY", "spillway-msk-iam-test-secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", &nowhere),
            ("AWS_SHARED_CREDENTIALS_FILE", &nowhere),
        ],
        &[
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ],
    );
    wait_for_lines(dir.path(), "out-iam", expected.len(), Duration::from_secs(30)).await;
    let other_region =
        wait_for_last_error(&spillway, "iam-other-region", "uthentication", Duration::from_secs(40)).await;
    eprintln!("a token for another region reported as: {other_region}");
    assert!(other_region.contains("SASL authentication error"), "{other_region}");
    let no_region = wait_for_last_error(&spillway, "iam-no-region", "no AWS region", Duration::from_secs(40)).await;
    eprintln!("no region reported as: {no_region}");
    assert!(no_region.contains("auth.region"), "{no_region}");
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out-iam", &expected);
    for out in ["out-other", "out-no-region"] {
        assert!(counts(dir.path(), out).is_empty(), "{out} delivered something");
    }
}

/// `spillway validate` names every problem of a kafka block (no broker needed).
#[test]
fn validate_names_every_kafka_source_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.yaml");
    std::fs::write(
        &config,
        "streams:\n\
         \x20 - name: k\n\
         \x20   source: { type: kafka, bootstrap_servers: 'broker', topics: ['bad topic'], start: { at_timestamp: soon }, auth: { type: msk_iam, region: 'eu west 1' }, librdkafka_options: { enable.auto.commit: 'true' } }\n\
         \x20   sink: { type: s3, url: 'file://./out' }\n",
    )
    .unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_spillway")).args(["validate", "--config"]).arg(&config).output().unwrap();
    assert!(!output.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    for expected in [
        "streams[0].source.bootstrap_servers",
        "streams[0].source.topics[0]",
        "streams[0].source.start.at_timestamp",
        "streams[0].source.auth.region",
        "streams[0].source.librdkafka_options.enable.auto.commit",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

/// `CreateDeliveryStream` with `MSKAsSource` through the real `aws-sdk-firehose`: the cluster ARN
/// is reached through `api_defaults.msk`, the topic is read from `ReadFromTimestamp` (the epoch:
/// the earliest record), `DescribeDeliveryStream` answers `Source.MSKSourceDescription`, the
/// stream refuses `PutRecord`, and a cluster not listed is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn an_msk_as_source_stream_created_through_the_api_reads_its_topic() {
    use aws_sdk_firehose::primitives::{Blob, DateTime};
    use aws_sdk_firehose::types::{
        AuthenticationConfiguration, BufferingHints, CompressionFormat, Connectivity, DeliveryStreamType,
        ExtendedS3DestinationConfiguration, MskSourceConfiguration, Record,
    };
    const CLUSTER: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/orders/6b3f0c1e-1111-2222-3333-444455556666-2";
    const ROLE: &str = "arn:aws:iam::123456789012:role/firehose-msk";
    let bootstrap = bootstrap();
    let topic = unique_topic("api");
    create_topic(&bootstrap, &topic, 2);
    let expected = produce(&bootstrap, &topic, 2, 40, "api");
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\ndata_dir: ./data\n\
         api_defaults:\n  s3: {{ url: 'file://./buckets/{{bucket}}' }}\n  msk:\n    '{CLUSTER}': {{ bootstrap_servers: '{bootstrap}' }}\n"
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    let client = spillway.client().await;
    let msk = |cluster: &str| {
        MskSourceConfiguration::builder()
            .msk_cluster_arn(cluster)
            .topic_name(&topic)
            .authentication_configuration(
                AuthenticationConfiguration::builder()
                    .role_arn(ROLE)
                    .connectivity(Connectivity::Private)
                    .build()
                    .unwrap(),
            )
            .read_from_timestamp(DateTime::from_secs(0))
            .build()
            .unwrap()
    };
    let destination = ExtendedS3DestinationConfiguration::builder()
        .role_arn(ROLE)
        .bucket_arn("arn:aws:s3:::msk-bucket")
        .prefix("orders/")
        .buffering_hints(BufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build())
        .compression_format(CompressionFormat::Uncompressed)
        .build()
        .unwrap();
    client
        .create_delivery_stream()
        .delivery_stream_name("from-msk")
        .delivery_stream_type(DeliveryStreamType::MskAsSource)
        .msk_source_configuration(msk(CLUSTER))
        .extended_s3_destination_configuration(destination.clone())
        .send()
        .await
        .expect("created");

    // Records are written back to back (no delimiter): read them out by their JSON braces.
    let delivered = || -> Vec<String> {
        let mut lines = Vec::new();
        for (_, body) in local_objects(&dir.path().join("buckets/msk-bucket")) {
            let text = String::from_utf8_lossy(&body).replace("}{", "}\n{");
            lines.extend(text.lines().map(str::to_string));
        }
        lines
    };
    eventually(Duration::from_secs(60), "the topic's records in the bucket", || {
        (delivered().len() >= expected.len()).then_some(())
    })
    .await;
    let lines = delivered();
    assert_eq!(lines.len(), expected.len(), "once each");
    assert_eq!(lines.into_iter().collect::<BTreeSet<_>>(), expected);

    let described = client.describe_delivery_stream().delivery_stream_name("from-msk").send().await.unwrap();
    let description = described.delivery_stream_description().unwrap();
    assert_eq!(description.delivery_stream_type(), &DeliveryStreamType::MskAsSource);
    let source = description.source().and_then(|source| source.msk_source_description()).expect("MSKSourceDescription");
    assert_eq!(source.msk_cluster_arn(), Some(CLUSTER));
    assert_eq!(source.topic_name(), Some(topic.as_str()));
    let authentication = source.authentication_configuration().unwrap();
    assert_eq!(authentication.role_arn(), ROLE);
    assert_eq!(authentication.connectivity(), &Connectivity::Private);
    assert!(source.delivery_start_timestamp().is_some());
    assert_eq!(source.read_from_timestamp().map(DateTime::secs), Some(0));

    let put = client
        .put_record()
        .delivery_stream_name("from-msk")
        .record(Record::builder().data(Blob::new("x")).build().unwrap())
        .send()
        .await
        .expect_err("an MSK-sourced stream takes no puts");
    assert_eq!(put.into_service_error().meta().code(), Some("InvalidArgumentException"));

    let unknown = client
        .create_delivery_stream()
        .delivery_stream_name("from-elsewhere")
        .delivery_stream_type(DeliveryStreamType::MskAsSource)
        .msk_source_configuration(msk("arn:aws:kafka:us-east-1:123456789012:cluster/other/0000-1"))
        .extended_s3_destination_configuration(destination)
        .send()
        .await
        .expect_err("an unknown cluster is refused");
    let unknown = unknown.into_service_error();
    assert_eq!(unknown.meta().code(), Some("InvalidArgumentException"));
    assert!(unknown.meta().message().unwrap_or_default().contains("api_defaults.msk"), "{unknown:?}");
    assert_eq!(spillway.terminate(), 0);
}

/// What the stub HTTP endpoint receiver took, by record.
#[derive(Default)]
struct Taken(Mutex<BTreeMap<Vec<u8>, usize>>);

/// A Firehose HTTP endpoint receiver that takes records of up to 1 MiB and refuses a request
/// holding a larger one with 413 (as Datadog, New Relic and Splunk intakes do; a request over
/// axum's 2 MiB body limit gets axum's own 413).
async fn receive(
    State(taken): State<Arc<Taken>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    let request_id =
        headers.get("x-amz-firehose-request-id").and_then(|value| value.to_str().ok()).unwrap_or_default().to_string();
    let timestamp = chrono::Utc::now().timestamp_millis();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let base64 = base64::engine::general_purpose::STANDARD;
    let records: Vec<Vec<u8>> = parsed["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|record| base64.decode(record["data"].as_str().unwrap_or_default()).unwrap_or_default())
        .collect();
    if records.iter().any(|record| record.len() > 1 << 20) {
        let answer =
            json!({ "requestId": request_id, "timestamp": timestamp, "errorMessage": "record larger than 1 MiB" });
        return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, axum::Json(answer));
    }
    let mut taken = taken.0.lock().unwrap();
    for record in records {
        *taken.entry(record).or_insert(0) += 1;
    }
    (axum::http::StatusCode::OK, axum::Json(json!({ "requestId": request_id, "timestamp": timestamp })))
}

/// A 1.5 MiB Kafka record that the destination refuses (413 for it alone) goes to the error
/// output with the receiver's message; the records around it are delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_record_larger_than_the_destination_takes_goes_to_the_error_output() {
    let bootstrap = bootstrap();
    let topic = unique_topic("poison");
    tool(&["create", &bootstrap, &topic, "1", "8388608"]);
    let mut expected = produce(&bootstrap, &topic, 1, 20, "before");
    tool(&["big", &bootstrap, &topic, "0", "1572864"]);
    expected.extend(produce(&bootstrap, &topic, 1, 20, "after"));

    let taken = Arc::new(Taken::default());
    let app = axum::Router::new().route("/", axum::routing::post(receive)).with_state(taken.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\ndata_dir: ./data\nstreams:\n\
         \x20 - name: poisoned\n\
         \x20   source: {{ type: kafka, bootstrap_servers: '{bootstrap}', topics: [{topic}], start: earliest }}\n\
         \x20   buffering: {{ size_mib: 4, interval_seconds: 1 }}\n\
         \x20   retry: {{ duration_seconds: 5 }}\n\
         \x20   sink:\n\
         \x20     type: http_endpoint\n\
         \x20     url: '{url}'\n\
         \x20     backup: {{ mode: failed_only, sink: {{ url: 'file://./backup' }} }}\n"
    );
    let spillway = Spillway::start(dir.path(), &yaml);
    let backup = || -> Vec<Value> {
        local_objects(&dir.path().join("backup"))
            .into_iter()
            .flat_map(|(_, body)| {
                body.split(|byte| *byte == b'\n')
                    .filter(|line| !line.is_empty())
                    .map(|line| serde_json::from_slice::<Value>(line).expect("an error record"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let refused = eventually(Duration::from_secs(60), "the large record in the error output", || {
        let found = backup();
        (!found.is_empty()).then_some(found)
    })
    .await;
    eventually(Duration::from_secs(30), "the other records taken", || {
        let taken = taken.0.lock().unwrap();
        expected.iter().all(|line| taken.contains_key(line.as_bytes())).then_some(())
    })
    .await;
    assert_eq!(spillway.terminate(), 0);
    assert_eq!(refused.len(), 1, "only the large record");
    let raw = base64::engine::general_purpose::STANDARD.decode(refused[0]["rawData"].as_str().unwrap()).unwrap();
    assert_eq!(raw.len(), 1_572_864);
    assert!(raw.starts_with(br#"{"poison":"zzz"#));
    // axum's own body limit (2 MiB) answers the 413 before the handler sees the request.
    let message = refused[0]["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("413"), "{message}");
    assert_eq!(refused[0]["errorCode"], "HttpEndpoint.DestinationException");
    let taken = taken.0.lock().unwrap();
    assert_eq!(taken.len(), expected.len(), "nothing else");
    assert!(taken.values().all(|count| *count == 1), "each record once");
}

/// `commit_offsets_to_group`: once records are delivered, each partition's next offset is
/// committed to the group (what lag tools read); spillway itself never reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn delivered_offsets_are_committed_to_the_group_for_lag_tools() {
    let bootstrap = bootstrap();
    let topic = unique_topic("commit");
    let group = format!("{topic}-group");
    create_topic(&bootstrap, &topic, 2);
    let expected = produce(&bootstrap, &topic, 2, 50, "committed");
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(", start: earliest, commit_offsets_to_group: {group}");
    let yaml = config_yaml(&[stream_yaml("committing", &bootstrap, &topic, "out", &extra)]);
    let spillway = Spillway::start(dir.path(), &yaml);
    wait_for_lines(dir.path(), "out", expected.len(), Duration::from_secs(30)).await;
    let wanted = json!({ format!("{topic}:0"): 50, format!("{topic}:1"): 50 });
    eventually(Duration::from_secs(30), "the delivered offsets committed to the group", || {
        let committed: Value = serde_json::from_str(&tool(&["committed", &bootstrap, &group])).ok()?;
        (committed == wanted).then_some(())
    })
    .await;
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out", &expected);
}

/// Cluster mode: two nodes on one coordinator lease the topic's 6 partitions between them while
/// kafka-python writes; one node is killed with SIGKILL (its partitions move to the other within
/// two lease periods), then started again (it gets its share back by hand-off). Every record
/// once, each partition in offset order within every object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn in_cluster_mode_partitions_are_leased_and_a_killed_nodes_partitions_move() {
    let bootstrap = bootstrap();
    let topic = unique_topic("cluster");
    let partitions = 6;
    create_topic(&bootstrap, &topic, partitions);
    let coordinator = common::pg::fresh_database("spw_kafka_cluster").await;
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let group = format!("{topic}-group");
    let extra = format!(", start: earliest, commit_offsets_to_group: {group}");
    let yaml = config_yaml(&[stream_yaml("leased", &bootstrap, &topic, "out", &extra)])
        .replace(
            "data_dir: ./data\n",
            &format!("data_dir: ./data\ncluster: {{ coordinator: '{coordinator}', lease_seconds: 2 }}\n"),
        )
        .replace("'file://./out'", &format!("'file://{}'", out.display()));
    let node_dir = |index: usize| {
        let dir = root.path().join(format!("node-{index}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let mut nodes: Vec<Option<Spillway>> = (0..2).map(|index| Some(Spillway::start(&node_dir(index), &yaml))).collect();
    let per_partition = 800u64;
    let mut producer = Command::new(env("SPILLWAY_TEST_PYTHON"))
        .arg(TOOL)
        .args(["produce", &bootstrap, &topic, &partitions.to_string(), &per_partition.to_string(), "400", "lease"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the producer");
    let held = async |node: &Option<Spillway>| match node {
        Some(node) => node.metric("spillway_cluster_leases_held").await.unwrap_or(0.0) as u32,
        None => 0,
    };
    // Both nodes read: 3 partitions each.
    let started = Instant::now();
    while held(&nodes[0]).await + held(&nodes[1]).await != partitions || held(&nodes[0]).await != 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "the partitions were not shared 3/3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[0].take().expect("running").kill();
    let killed = Instant::now();
    while held(&nodes[1]).await != partitions {
        assert!(killed.elapsed() < Duration::from_secs(10), "the killed node's partitions did not move");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the killed node's partitions moved in {:?}", killed.elapsed());
    nodes[0] = Some(Spillway::start(&node_dir(0), &yaml));
    let restarted = Instant::now();
    while held(&nodes[0]).await != 3 {
        assert!(restarted.elapsed() < Duration::from_secs(30), "the restarted node did not get its share back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = tokio::task::spawn_blocking(move || producer.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the producer failed");
    let expected = expected_lines(partitions, per_partition, "lease");
    wait_for_lines(root.path(), "out", expected.len(), Duration::from_secs(60)).await;
    // Each partition's owner (whichever node it is by then) committed its delivered offsets.
    let wanted: Value =
        (0..partitions).map(|partition| (format!("{topic}:{partition}"), json!(per_partition))).collect();
    eventually(Duration::from_secs(30), "the delivered offsets committed to the group", || {
        let committed: Value = serde_json::from_str(&tool(&["committed", &bootstrap, &group])).ok()?;
        (committed == wanted).then_some(())
    })
    .await;
    for node in &mut nodes {
        assert_eq!(node.take().expect("running").terminate(), 0);
    }
    assert_exactly_once(root.path(), "out", &expected);
    assert_partition_order(&delivered_objects(root.path(), "out"));
    eprintln!("{} records over {partitions} leased partitions: each once, in partition order", expected.len());
}
