//! One smoke test per test service started by `scripts/services.sh`, through the real protocol
//! with the Rust client the project uses. They fail loudly when the environment is missing: run
//! them with `scripts/test.sh` (or `eval "$(scripts/services.sh env)"` first).

use std::time::Duration;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh (it starts the services)"))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn aws_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test"))
        .load()
        .await
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn postgres_copy_and_query() {
    let url = env("SPILLWAY_TEST_PG_URL");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let table = unique("smoke");
    client.batch_execute(&format!("CREATE TABLE \"{table}\" (id bigint, payload jsonb)")).await.unwrap();
    client
        .execute(&format!("INSERT INTO \"{table}\" VALUES ($1, $2::text::jsonb)"), &[&7i64, &"{\"a\":1}"])
        .await
        .unwrap();
    let row = client.query_one(&format!("SELECT count(*), max(payload->>'a') FROM \"{table}\""), &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, String>(1), "1");
    client.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn opensearch_bulk_count_search_and_templates() {
    let base = env("SPILLWAY_TEST_OPENSEARCH_URL");
    let http = reqwest::Client::new();
    let index = unique("smoke");
    let template = serde_json::json!({
        "index_patterns": [format!("{index}*")],
        "template": { "settings": { "number_of_replicas": 0 }, "mappings": { "properties": { "level": { "type": "keyword" } } } }
    });
    let response = http.put(format!("{base}/_index_template/{index}")).json(&template).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let bulk = format!(
        "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"1\"}}}}\n{{\"level\":\"info\"}}\n{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"2\"}}}}\n{{\"level\":\"warn\"}}\n"
    );
    let response = http
        .post(format!("{base}/_bulk?refresh=true"))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"], false, "{body}");
    let count: serde_json::Value =
        http.get(format!("{base}/{index}/_count")).send().await.unwrap().json().await.unwrap();
    assert_eq!(count["count"], 2);
    let search = serde_json::json!({ "query": { "term": { "level": "warn" } } });
    let hits: serde_json::Value =
        http.post(format!("{base}/{index}/_search")).json(&search).send().await.unwrap().json().await.unwrap();
    assert_eq!(hits["hits"]["total"]["value"], 1);
    let mapping: serde_json::Value =
        http.get(format!("{base}/{index}/_mapping")).send().await.unwrap().json().await.unwrap();
    assert_eq!(mapping[&index]["mappings"]["properties"]["level"]["type"], "keyword", "the template applied");
    let health: serde_json::Value =
        http.get(format!("{base}/_cluster/health")).send().await.unwrap().json().await.unwrap();
    assert_ne!(health["status"], "red");
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn kinesis_put_and_get_records() {
    let config = aws_config(&env("SPILLWAY_TEST_KINESIS_ENDPOINT")).await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique("smoke");
    kinesis.create_stream().stream_name(&stream).shard_count(1).send().await.unwrap();
    for _ in 0..100 {
        let description = kinesis.describe_stream_summary().stream_name(&stream).send().await.unwrap();
        if description.stream_description_summary().map(|summary| summary.stream_status().as_str()) == Some("ACTIVE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("k")
        .data(aws_sdk_kinesis::primitives::Blob::new("hello kinesis"))
        .send()
        .await
        .unwrap();
    let shards = kinesis.list_shards().stream_name(&stream).send().await.unwrap();
    let shard_id = shards.shards()[0].shard_id().to_string();
    let iterator = kinesis
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(&shard_id)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let records = kinesis.get_records().shard_iterator(iterator.shard_iterator().unwrap()).send().await.unwrap();
    assert_eq!(records.records()[0].data().as_ref(), b"hello kinesis");
}

#[tokio::test]
#[ignore = "needs services: scripts/test.sh"]
async fn dynamodb_streams_see_item_changes() {
    let config = aws_config(&env("SPILLWAY_TEST_DYNAMODB_ENDPOINT")).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let table = unique("smoke");
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        StreamSpecification, StreamViewType,
    };
    let created = dynamodb
        .create_table()
        .table_name(&table)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("pk").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().unwrap())
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let stream_arn = created.table_description().unwrap().latest_stream_arn().unwrap().to_string();
    dynamodb.put_item().table_name(&table).item("pk", AttributeValue::S("a".into())).send().await.unwrap();
    let description = streams.describe_stream().stream_arn(&stream_arn).send().await.unwrap();
    let shard_id = description.stream_description().unwrap().shards()[0].shard_id().unwrap().to_string();
    let iterator = streams
        .get_shard_iterator()
        .stream_arn(&stream_arn)
        .shard_id(&shard_id)
        .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let records = streams.get_records().shard_iterator(iterator.shard_iterator().unwrap()).send().await.unwrap();
    let record = &records.records()[0];
    assert_eq!(record.event_name().unwrap().as_str(), "INSERT");
}
