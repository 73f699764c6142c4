//! The `dynamodb_streams` source end to end against moto (`SPILLWAY_TEST_DYNAMODB_ENDPOINT`), with
//! the real `aws-sdk-dynamodb` as producer: YAML in, objects out (local sink). INSERT / MODIFY /
//! REMOVE arrive with their images in the Lambda record shape, typed and `unmarshal`ed; thousands
//! of items arrive once; SIGTERM and seeded SIGKILL rounds while a producer writes lose and repeat
//! nothing; `LATEST` skips what was there before the first start but not what arrived while
//! spillway was down; a table without a stream and an unknown table are named in clear errors; a
//! full WAL pauses reading without loss. In cluster mode, a killed owner's shard moves to the
//! other node and every item arrives once.
//! moto has one shard per stream and never rolls it over: lineage is covered by the shard core's
//! unit tests (`src/sources/shards`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest, ScalarAttributeType,
    StreamSpecification, StreamViewType, WriteRequest,
};
use common::{Spillway, eventually, local_objects};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn endpoint() -> String {
    std::env::var("SPILLWAY_TEST_DYNAMODB_ENDPOINT").expect("SPILLWAY_TEST_DYNAMODB_ENDPOINT (scripts/services.sh env)")
}

fn dynamodb() -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// A table name no other test (or run) uses.
fn unique_name(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("spw-{test}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Deletes its table when dropped (moto keeps every stream record in memory).
struct TableGuard(String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async { dynamodb().delete_table().table_name(name).send().await.is_ok() })
        });
        let _ = deleted.join();
    }
}

/// A table keyed by the string `id`, with a stream of `view` (none when `None`); returns its
/// latest stream ARN (empty without a stream).
async fn create_table(client: &Client, table: &str, view: Option<StreamViewType>) -> (TableGuard, String) {
    let mut request = client
        .create_table()
        .table_name(table)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("id").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("id").key_type(KeyType::Hash).build().unwrap())
        .billing_mode(BillingMode::PayPerRequest);
    if let Some(view) = view {
        request = request.stream_specification(
            StreamSpecification::builder().stream_enabled(true).stream_view_type(view).build().unwrap(),
        );
    }
    let created = request.send().await.unwrap();
    let arn = created.table_description().and_then(|table| table.latest_stream_arn()).unwrap_or_default().to_string();
    (TableGuard(table.to_string()), arn)
}

/// Put items `{id: <prefix>-<n>, n: <n>}` for `range`, 25 per `BatchWriteItem`.
async fn put_items(client: &Client, table: &str, prefix: &str, range: std::ops::Range<u64>) {
    let ids: Vec<u64> = range.collect();
    for chunk in ids.chunks(25) {
        let writes = chunk
            .iter()
            .map(|n| {
                let item = [
                    ("id".to_string(), AttributeValue::S(format!("{prefix}-{n}"))),
                    ("n".to_string(), AttributeValue::N(n.to_string())),
                ];
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item.into_iter().collect())).build().unwrap())
                    .build()
            })
            .collect();
        let output = client.batch_write_item().request_items(table, writes).send().await.unwrap();
        assert!(output.unprocessed_items().is_none_or(|left| left.is_empty()), "moto left items unprocessed");
    }
}

fn ids(prefix: &str, range: std::ops::Range<u64>) -> BTreeSet<String> {
    range.map(|n| format!("{prefix}-{n}")).collect()
}

/// One delivery stream's YAML block reading `source` (extra fields after the type), to `./<out>`.
fn stream_yaml(name: &str, source: &str, out: &str) -> String {
    format!(
        "\x20 - name: {name}\n\
         \x20   source: {{ type: dynamodb_streams, endpoint: '{}', region: us-east-1, poll_interval_ms: 200, shard_discovery_interval_ms: 300, {source} }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   sink: {{ type: s3, url: 'file://./{out}', compression: gzip }}\n",
        endpoint()
    )
}

fn config_yaml(streams: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\ndata_dir: ./data\nstreams:\n{}",
        streams.concat()
    )
}

fn start(dir: &Path, yaml: &str) -> Spillway {
    let config = dir.join("spillway.yaml");
    std::fs::write(&config, yaml).unwrap();
    Spillway::start_with_env(
        dir,
        &config,
        &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")],
        &["AWS_PROFILE", "AWS_SESSION_TOKEN"],
    )
}

/// Delivered records of `<dir>/<out>`, parsed, in object order then line order.
fn delivered(dir: &Path, out: &str) -> Vec<Value> {
    local_objects(&dir.join(out))
        .into_iter()
        .flat_map(|(_, body)| {
            String::from_utf8(body)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// How often each item id arrived (as an INSERT's `Keys.id`, typed or unmarshalled).
fn id_counts(dir: &Path, out: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in delivered(dir, out) {
        let key = &record["dynamodb"]["Keys"]["id"];
        let id = key["S"].as_str().or(key.as_str()).unwrap_or_else(|| panic!("no id: {record}")).to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

async fn wait_for_ids(dir: &Path, out: &str, expected: usize, timeout: Duration) {
    eventually(timeout, &format!("{expected} items in {out}"), || {
        (id_counts(dir, out).len() >= expected).then_some(())
    })
    .await;
}

/// Every expected id exactly once, nothing else.
fn assert_exactly_once(dir: &Path, out: &str, expected: &BTreeSet<String>) {
    let counts = id_counts(dir, out);
    let duplicated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(duplicated.is_empty(), "{out}: delivered twice: {duplicated:?}");
    let missing: Vec<_> = expected.iter().filter(|id| !counts.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty(), "{out}: {} of {} missing, e.g. {missing:?}", missing.len(), expected.len());
    let unexpected: Vec<_> = counts.keys().filter(|id| !expected.contains(*id)).take(5).collect();
    assert!(unexpected.is_empty(), "{out}: unexpected items: {unexpected:?}");
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_string())
}

fn n(text: &str) -> AttributeValue {
    AttributeValue::N(text.to_string())
}

/// An item with every attribute type.
fn rich_item(id: &str, count: &str) -> Vec<(&'static str, AttributeValue)> {
    vec![
        ("id", s(id)),
        ("count", n(count)),
        ("price", n("12.5")),
        ("big", n("123456789012345678901234567890")),
        ("blob", AttributeValue::B(Blob::new(vec![0u8, 1, 2, 255]))),
        ("tags", AttributeValue::Ss(vec!["red".into(), "blue".into()])),
        ("sizes", AttributeValue::Ns(vec!["1".into(), "2.5".into()])),
        ("blobs", AttributeValue::Bs(vec![Blob::new(b"hi".to_vec())])),
        ("gone", AttributeValue::Null(true)),
        ("active", AttributeValue::Bool(true)),
        (
            "nested",
            AttributeValue::M(
                [
                    ("list".to_string(), AttributeValue::L(vec![n("1"), s("two"), AttributeValue::Bool(false)])),
                    ("deeper".to_string(), AttributeValue::M([("x".to_string(), n("-0.25"))].into_iter().collect())),
                ]
                .into_iter()
                .collect(),
            ),
        ),
    ]
}

async fn put_item(client: &Client, table: &str, item: Vec<(&'static str, AttributeValue)>) {
    let item = item.into_iter().map(|(name, value)| (name.to_string(), value)).collect();
    client.put_item().table_name(table).set_item(Some(item)).send().await.unwrap();
}

/// A set's items in sorted order (DynamoDB sets have none of their own).
fn sorted(value: &Value) -> Vec<Value> {
    let mut items = value.as_array().unwrap_or_else(|| panic!("not an array: {value}")).clone();
    items.sort_by_key(|item| item.to_string());
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn inserts_modifies_and_removes_arrive_with_their_images_typed_and_unmarshalled() {
    let client = dynamodb();
    let (images_table, keys_table) = (unique_name("images"), unique_name("newimage"));
    let (_images, images_arn) = create_table(&client, &images_table, Some(StreamViewType::NewAndOldImages)).await;
    let (_keys, _) = create_table(&client, &keys_table, Some(StreamViewType::NewImage)).await;
    for table in [&images_table, &keys_table] {
        put_item(&client, table, rich_item("a", "1")).await;
        put_item(&client, table, rich_item("a", "2")).await;
        client.delete_item().table_name(table.as_str()).key("id", s("a")).send().await.unwrap();
        put_item(&client, table, vec![("id", s("b")), ("count", n("7"))]).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[
        stream_yaml("typed", &format!("table_name: {images_table}, starting_position: TRIM_HORIZON"), "out-typed"),
        stream_yaml(
            "plain",
            &format!("stream_arn: '{images_arn}', starting_position: TRIM_HORIZON, unmarshal: true"),
            "out-plain",
        ),
        stream_yaml(
            "new-image",
            &format!("table_name: {keys_table}, starting_position: TRIM_HORIZON, unmarshal: true"),
            "out-new-image",
        ),
    ]);
    let spillway = start(dir.path(), &yaml);
    let four = |out: &'static str| {
        let dir = dir.path().to_path_buf();
        move || (delivered(&dir, out).len() >= 4).then_some(())
    };
    for out in ["out-typed", "out-plain", "out-new-image"] {
        eventually(Duration::from_secs(30), out, four(out)).await;
    }

    // Typed (DynamoDB JSON), NEW_AND_OLD_IMAGES: the Lambda event record, in stream order.
    let typed = delivered(dir.path(), "out-typed");
    assert_eq!(typed.len(), 4, "{typed:#?}");
    let names: Vec<&str> = typed.iter().map(|record| record["eventName"].as_str().unwrap()).collect();
    assert_eq!(names, ["INSERT", "MODIFY", "REMOVE", "INSERT"]);
    let sequences: Vec<u128> =
        typed.iter().map(|record| record["dynamodb"]["SequenceNumber"].as_str().unwrap().parse().unwrap()).collect();
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]), "in stream order: {sequences:?}");
    for record in &typed {
        assert!(record["eventID"].as_str().is_some_and(|id| !id.is_empty()), "{record}");
        assert_eq!(record["eventSource"], "aws:dynamodb");
        assert_eq!(record["awsRegion"], "us-east-1");
        assert_eq!(record["eventSourceARN"], images_arn.as_str());
        assert_eq!(record["dynamodb"]["StreamViewType"], "NEW_AND_OLD_IMAGES");
        assert!(record["dynamodb"]["SizeBytes"].as_u64().is_some_and(|size| size > 0), "{record}");
        let created = record["dynamodb"]["ApproximateCreationDateTime"].as_f64().unwrap();
        assert!((created - chrono::Utc::now().timestamp() as f64).abs() < 600.0, "epoch seconds: {created}");
    }
    let (insert, modify, remove) = (&typed[0]["dynamodb"], &typed[1]["dynamodb"], &typed[2]["dynamodb"]);
    assert_eq!(insert["Keys"], json!({"id": {"S": "a"}}));
    assert!(insert.get("OldImage").is_none(), "an INSERT has no old image: {insert}");
    assert_eq!(insert["NewImage"]["count"], json!({"N": "1"}));
    assert_eq!(insert["NewImage"]["blob"], json!({"B": "AAEC/w=="}));
    assert_eq!(insert["NewImage"]["gone"], json!({"NULL": true}));
    assert_eq!(insert["NewImage"]["active"], json!({"BOOL": true}));
    assert_eq!(sorted(&insert["NewImage"]["tags"]["SS"]), [json!("blue"), json!("red")]);
    assert_eq!(
        insert["NewImage"]["nested"],
        json!({"M": {"list": {"L": [{"N": "1"}, {"S": "two"}, {"BOOL": false}]}, "deeper": {"M": {"x": {"N": "-0.25"}}}}})
    );
    assert_eq!(modify["OldImage"]["count"], json!({"N": "1"}));
    assert_eq!(modify["NewImage"]["count"], json!({"N": "2"}));
    assert!(remove.get("NewImage").is_none(), "a REMOVE has no new image: {remove}");
    assert_eq!(remove["OldImage"]["count"], json!({"N": "2"}));
    assert_eq!(remove["Keys"], json!({"id": {"S": "a"}}));

    // unmarshal: the same records with plain JSON values, field by field.
    let plain = delivered(dir.path(), "out-plain");
    assert_eq!(plain.len(), 4);
    assert_eq!(plain[0]["eventID"], typed[0]["eventID"], "the same stream records");
    assert_eq!(plain[0]["dynamodb"]["SequenceNumber"], typed[0]["dynamodb"]["SequenceNumber"]);
    assert_eq!(plain[0]["dynamodb"]["Keys"], json!({"id": "a"}));
    let image = &plain[0]["dynamodb"]["NewImage"];
    assert_eq!(image["id"], "a");
    assert_eq!(image["count"], 1, "an integer N is a JSON integer");
    assert_eq!(image["price"], 12.5, "a decimal N is a JSON number when exact");
    assert_eq!(image["big"], "123456789012345678901234567890", "an N no JSON number holds stays a string");
    assert_eq!(image["blob"], "AAEC/w==", "B is base64");
    assert_eq!(sorted(&image["tags"]), [json!("blue"), json!("red")], "SS is an array of strings");
    assert_eq!(sorted(&image["sizes"]), [json!(1), json!(2.5)], "NS is an array of numbers");
    assert_eq!(image["blobs"], json!(["aGk="]), "BS is an array of base64");
    assert_eq!(image["gone"], Value::Null);
    assert_eq!(image["active"], true);
    assert_eq!(image["nested"], json!({"list": [1, "two", false], "deeper": {"x": -0.25}}));
    assert_eq!(plain[1]["dynamodb"]["OldImage"]["count"], 1);
    assert_eq!(plain[2]["dynamodb"]["OldImage"]["count"], 2);
    assert_eq!(plain[3]["dynamodb"]["NewImage"], json!({"id": "b", "count": 7}));

    // NEW_IMAGE: no old images anywhere, a REMOVE carries only its keys.
    let new_image = delivered(dir.path(), "out-new-image");
    assert_eq!(new_image.len(), 4);
    for record in &new_image {
        assert_eq!(record["dynamodb"]["StreamViewType"], "NEW_IMAGE");
        assert!(record["dynamodb"].get("OldImage").is_none(), "{record}");
    }
    assert_eq!(new_image[1]["dynamodb"]["NewImage"]["count"], 2);
    assert!(new_image[2]["dynamodb"].get("NewImage").is_none());
    assert_eq!(new_image[2]["dynamodb"]["Keys"], json!({"id": "a"}));

    // Per-shard metrics, the control plane, and no puts into a pulled stream.
    let metrics = reqwest::get(format!("{}/metrics", spillway.endpoint)).await.unwrap().text().await.unwrap();
    let records: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("spillway_source_records_total{stream=\"typed\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(records, 4.0, "records per shard:\n{metrics}");
    assert!(metrics.lines().any(|line| line.starts_with("spillway_source_millis_behind_latest{stream=\"typed\"")));
    let firehose = spillway.client().await;
    let described = firehose.describe_delivery_stream().delivery_stream_name("typed").send().await.unwrap();
    assert_eq!(described.delivery_stream_description().unwrap().delivery_stream_name(), "typed");
    let refused = firehose
        .put_record()
        .delivery_stream_name("typed")
        .record(
            aws_sdk_firehose::types::Record::builder()
                .data(aws_sdk_firehose::primitives::Blob::new("x"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect_err("a dynamodb_streams-sourced stream takes no puts");
    assert!(refused.as_service_error().is_some_and(|error| error.is_invalid_argument_exception()), "{refused:?}");
    assert_eq!(spillway.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn thousands_of_items_arrive_exactly_once() {
    let client = dynamodb();
    let table = unique_name("many");
    let (_table, _) = create_table(&client, &table, Some(StreamViewType::NewImage)).await;
    let total = 5_000;
    put_items(&client, &table, "item", 0..total).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        config_yaml(&[stream_yaml("many", &format!("table_name: {table}, starting_position: TRIM_HORIZON"), "out")]);
    let spillway = start(dir.path(), &yaml);
    wait_for_ids(dir.path(), "out", total as usize, Duration::from_secs(120)).await;
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out", &ids("item", 0..total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn sigterm_and_seeded_sigkill_rounds_while_writing_resume_without_gaps_or_repeats() {
    let seed: u64 = std::env::var("SPILLWAY_CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20261126);
    let rounds: usize = std::env::var("SPILLWAY_CHAOS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let client = dynamodb();
    let table = unique_name("kill");
    let (_table, _) = create_table(&client, &table, Some(StreamViewType::NewAndOldImages)).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[stream_yaml(
        "killed",
        &format!("table_name: {table}, starting_position: TRIM_HORIZON, unmarshal: true"),
        "out",
    )]);

    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let producer = tokio::spawn({
        let (client, table, stop, written) = (client.clone(), table.clone(), stop.clone(), written.clone());
        async move {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                put_items(&client, &table, "item", next..next + 25).await;
                next += 25;
                written.store(next, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    for round in 0..rounds {
        let spillway = start(dir.path(), &yaml);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if round % 4 == 3 {
            assert_eq!(spillway.terminate(), 0, "clean SIGTERM exit");
        } else {
            spillway.kill();
        }
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let total = written.load(Ordering::Relaxed);
    let spillway = start(dir.path(), &yaml);
    wait_for_ids(dir.path(), "out", total as usize, Duration::from_secs(120)).await;
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out", &ids("item", 0..total));
    // Per item in write order too: the items' numbers rise through the output.
    let numbers: Vec<u64> = delivered(dir.path(), "out")
        .iter()
        .map(|record| record["dynamodb"]["NewImage"]["n"].as_u64().unwrap())
        .collect();
    let mut sorted_numbers = numbers.clone();
    sorted_numbers.sort_unstable();
    assert_eq!(sorted_numbers, (0..total).collect::<Vec<_>>());
    eprintln!("seed {seed}: {rounds} rounds (every 4th SIGTERM, else SIGKILL), {total} items, each delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn latest_skips_what_was_there_but_not_what_arrived_while_down() {
    let client = dynamodb();
    let table = unique_name("latest");
    let (_table, _) = create_table(&client, &table, Some(StreamViewType::KeysOnly)).await;
    put_items(&client, &table, "before", 0..50).await;
    // Stream records carry their creation time to the second: the start is in a later second.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[stream_yaml("latest", &format!("table_name: {table}"), "out")]);
    let spillway = start(dir.path(), &yaml);
    eventually(Duration::from_secs(30), "the LATEST start recorded", || {
        let text = std::fs::read_to_string(&spillway.log).ok()?;
        text.contains("dynamodb_streams shard starts at LATEST (recorded)").then_some(())
    })
    .await;
    // Down before anything was read: the WAL holds only the start time.
    spillway.kill();
    put_items(&client, &table, "down", 0..50).await;
    let spillway = start(dir.path(), &yaml);
    put_items(&client, &table, "later", 0..50).await;
    wait_for_ids(dir.path(), "out", 100, Duration::from_secs(30)).await;
    // A second restart, now after records: resumes after the last one.
    assert_eq!(spillway.terminate(), 0);
    put_items(&client, &table, "last", 0..20).await;
    let spillway = start(dir.path(), &yaml);
    wait_for_ids(dir.path(), "out", 120, Duration::from_secs(30)).await;
    assert_eq!(spillway.terminate(), 0);

    let mut expected = ids("down", 0..50);
    expected.extend(ids("later", 0..50));
    expected.extend(ids("last", 0..20));
    assert_exactly_once(dir.path(), "out", &expected);
    assert!(delivered(dir.path(), "out").iter().all(|record| record["dynamodb"].get("NewImage").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_table_without_a_stream_and_an_unknown_table_are_named_until_fixed() {
    let client = dynamodb();
    let (plain_table, missing_table) = (unique_name("nostream"), unique_name("missing"));
    let (_plain, _) = create_table(&client, &plain_table, None).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(&[
        stream_yaml("no-stream", &format!("table_name: {plain_table}, starting_position: TRIM_HORIZON"), "out"),
        stream_yaml("no-table", &format!("table_name: {missing_table}"), "out-missing"),
    ]);
    let spillway = start(dir.path(), &yaml);
    let expected_no_stream = format!("table \"{plain_table}\" has no stream enabled");
    let expected_missing = format!("table \"{missing_table}\" does not exist");
    eventually(Duration::from_secs(30), "both errors logged", || {
        let text = spillway.log_text();
        (text.contains(&expected_no_stream) && text.contains(&expected_missing)).then_some(())
    })
    .await;
    let log = spillway.log_text();
    let line = log.lines().find(|line| line.contains(&expected_no_stream)).unwrap();
    assert!(line.contains("ERROR") && line.contains("StreamEnabled"), "says what to do: {line}");

    // The operator turns the stream on: no restart needed.
    client
        .update_table()
        .table_name(&plain_table)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    put_items(&client, &plain_table, "fixed", 0..10).await;
    wait_for_ids(dir.path(), "out", 10, Duration::from_secs(60)).await;
    assert_eq!(spillway.terminate(), 0);
    assert_exactly_once(dir.path(), "out", &ids("fixed", 0..10));

    // Config mistakes are refused before anything runs, each with its path.
    let bad = config_yaml(&[stream_yaml(
        "both",
        "table_name: t1, stream_arn: 'arn:aws:dynamodb:us-east-1:1:table/t1/stream/x'",
        "out",
    )]);
    std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "-c", "bad.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("source.stream_arn") && stderr.contains("only one of table_name and stream_arn"),
        "{stderr}"
    );
}

/// A sink that is down (its bucket does not exist yet) fills the 8 MiB WAL: the reader stops
/// there instead of holding records in memory, then everything arrives once when the bucket
/// appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn a_full_wal_pauses_the_reader_and_loses_nothing() {
    let client = dynamodb();
    let table = unique_name("full");
    let (_table, _) = create_table(&client, &table, Some(StreamViewType::NewImage)).await;
    let total = 12_000u64;
    let pad = "y".repeat(1000);
    let ids_written: Vec<u64> = (0..total).collect();
    for chunk in ids_written.chunks(25) {
        let writes = chunk
            .iter()
            .map(|n| {
                let item = [
                    ("id".to_string(), AttributeValue::S(format!("item-{n}"))),
                    ("pad".to_string(), AttributeValue::S(pad.clone())),
                ];
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item.into_iter().collect())).build().unwrap())
                    .build()
            })
            .collect();
        client.batch_write_item().request_items(&table, writes).send().await.unwrap();
    }

    let s3 = common::s3::client().await;
    let bucket = format!("spillway-later-{}", uuid::Uuid::new_v4().simple());
    let s3_endpoint = common::s3::env("SPILLWAY_TEST_S3_ENDPOINT");
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 30\ndata_dir: ./data\nlimits: {{ max_wal_mib: 8 }}\nstreams:\n\
         \x20 - name: paused\n\
         \x20   source: {{ type: dynamodb_streams, table_name: {table}, endpoint: '{}', region: us-east-1, poll_interval_ms: 200, starting_position: TRIM_HORIZON, max_concurrent_reads: 1 }}\n\
         \x20   processing: {{ record_delimiter: newline }}\n\
         \x20   buffering: {{ size_mib: 1, interval_seconds: 1 }}\n\
         \x20   retry: {{ duration_seconds: 600 }}\n{}",
        endpoint(),
        common::s3::sink_yaml(&bucket, &s3_endpoint)
    );
    let dir = tempfile::tempdir().unwrap();
    let spillway = start(dir.path(), &yaml);
    eventually(Duration::from_secs(60), "the reader waiting on a full wal", || {
        spillway.log_text().contains("wal full; the dynamodb_streams reader waits").then_some(())
    })
    .await;
    let undelivered = spillway.metric("spillway_wal_bytes{stream=\"paused\"}").await.unwrap();
    assert!(undelivered <= 8.0 * 1024.0 * 1024.0, "wal within its limit: {undelivered}");
    let read = spillway.metric("spillway_incoming_records_total{stream=\"paused\"}").await.unwrap();
    assert!(read < total as f64, "reading paused before the backlog was read: {read}");

    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let expected = ids("item", 0..total);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (_, body) in common::s3::objects(&s3, &bucket, "").await {
            for line in String::from_utf8(body).unwrap().lines() {
                let record: Value = serde_json::from_str(line).unwrap();
                let id = record["dynamodb"]["Keys"]["id"]["S"].as_str().unwrap().to_string();
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        if counts.len() >= expected.len() {
            break counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} delivered after the bucket appeared",
            counts.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(spillway.terminate(), 0);
    assert!(counts.values().all(|count| *count == 1), "each once");
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), expected);
}

/// Cluster mode (one round, as the Kinesis suite's `cluster_shards` does in several): two nodes
/// on one coordinator share the table stream's shards through leases; the owner is killed with
/// SIGKILL while items are written, the other takes its shard over within two lease periods and
/// every item arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: scripts/test.sh"]
async fn in_cluster_mode_a_killed_owners_shard_moves_and_every_item_arrives_once() {
    let client = dynamodb();
    let table = unique_name("cluster");
    let (_table, _) = create_table(&client, &table, Some(StreamViewType::NewImage)).await;
    let coordinator = common::pg::fresh_database("spw_ddb_cluster").await;
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace_seconds: 20\ndata_dir: ./data\n\
         cluster: {{ coordinator: '{coordinator}', lease_seconds: 2 }}\nstreams:\n{}",
        stream_yaml("items", &format!("table_name: {table}, starting_position: TRIM_HORIZON"), "out")
            .replace("'file://./out'", &format!("'file://{}'", out.display()))
    );
    let mut nodes: Vec<Option<Spillway>> = (0..2)
        .map(|index| {
            let dir = root.path().join(format!("node-{index}"));
            std::fs::create_dir_all(&dir).unwrap();
            Some(start(&dir, &yaml))
        })
        .collect();
    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let producer = tokio::spawn({
        let (client, table, stop, written) = (client.clone(), table.clone(), stop.clone(), written.clone());
        async move {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                put_items(&client, &table, "item", next..next + 25).await;
                next += 25;
                written.store(next, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // The node reading the shard (the other holds no lease).
    let owner = lease_holder(&nodes).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    nodes[owner].take().expect("running").kill();
    let other = 1 - owner;
    let started = std::time::Instant::now();
    loop {
        let held = nodes[other].as_ref().expect("running").metric("spillway_cluster_leases_held").await;
        if held.unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(6), "the shard did not move within two lease periods");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the killed owner's shard moved in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let total = written.load(Ordering::Relaxed);
    wait_for_ids(root.path(), "out", total as usize, Duration::from_secs(90)).await;
    assert_eq!(nodes[other].take().expect("running").terminate(), 0);
    assert_exactly_once(root.path(), "out", &ids("item", 0..total));
    eprintln!("{total} items across a killed owner: each delivered once");
}

/// Index of the node that holds a lease (bounded wait).
async fn lease_holder(nodes: &[Option<Spillway>]) -> usize {
    let started = std::time::Instant::now();
    loop {
        for (index, node) in nodes.iter().enumerate() {
            let held = node.as_ref().expect("running").metric("spillway_cluster_leases_held").await;
            if held.unwrap_or(0.0) >= 1.0 {
                return index;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no node took the table stream's shard");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
